"""Named points in tr_jax's execution, and hooks called at them (fault injection, inspection).

The package calls :func:`point` at a few moments that matter for crash safety or that tests and
tools want to observe. With no hook registered, :func:`point` costs one truth test. A hook is a
callable ``fn(name, info)`` (``name`` the point, ``info`` a read-only mapping of the keys below);
register one with :func:`add` (which returns its remover) or for a ``with`` block with
:func:`added`. Hooks are per process: a test that kills a child process installs the hook in
that child (for example with :func:`kill_at` before calling ``tr_jax.cli.main``). A hook must
not mutate what ``info`` holds.

Points emitted by the package (the ``info`` of each but ``stage:members`` has a ``name``):

``save:written``
    A checkpoint is fully written to ``stages/.{name}.new`` (committed by orbax) but not yet
    swapped in; the previous version, if any, is still in place. Info: ``name`` (str, the
    checkpoint), ``path`` (str, the temporary folder). Process 0 only.
``save:swapping``
    Between the two renames of a checkpoint swap: the previous version has been moved to
    ``stages/.{name}.old`` (when there was one), the new one is not yet at ``stages/{name}``.
    Info: ``name`` (str), ``path`` (str, the final folder). Process 0 only.
``text:written``
    A file written by the atomic writer (a table, a text, a figure, a config) is complete in its
    temporary file but not yet renamed over the destination. Info: ``name`` (str, the file name
    of the destination, e.g. ``"cells.csv"``), ``path`` (str, the destination).
``chunk:written``
    A chunk record of a stage (the results of items ``lo .. hi - 1``) is complete in its
    temporary file but not yet renamed into ``stages/{stage}.chunks``. Info: ``name`` (str, the
    stage), ``path`` (str, the record's final path), ``lo``, ``hi`` (int). Process 0 only.
``stage:members``
    Emitted by the sweep driver once a stage's per-member state is computed. Info: ``stage``
    (str, the stage), ``tree`` (a pytree of global ``jax.Array`` s whose leading axis is the
    members or the pairs). Every process.

Fault injection: :func:`kill_at` builds a hook that SIGKILLs the process the n-th time a point is
reached, optionally counting only the points whose ``info["name"]`` matches (a checkpoint or a
stage; for a point without ``name``, such as ``stage:members``, its ``stage``). The kill-anywhere
tests run the command line through a small launcher that installs it.
"""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any, Callable, Mapping

__all__ = ["Hook", "POINTS", "add", "added", "point", "kill_at"]

Hook = Callable[[str, Mapping[str, Any]], None]

#: the points the package emits (see the module docstring for their info keys)
POINTS = ("save:written", "save:swapping", "text:written", "chunk:written", "stage:members")

_hooks: list[Hook] = []


def add(fn: Hook) -> Callable[[], None]:
    """Register ``fn``: it is called at every point, after the hooks registered before it.
    Returns a function that removes it again (harmless to call twice)."""
    _hooks.append(fn)

    def remove() -> None:
        for i, h in enumerate(_hooks):
            if h is fn:
                del _hooks[i]
                return
    return remove


@contextlib.contextmanager
def added(fn: Hook) -> Iterator[Hook]:
    """Register ``fn`` for the duration of a ``with`` block (yields ``fn``)."""
    remove = add(fn)
    try:
        yield fn
    finally:
        remove()


def point(name: str, /, **info: Any) -> None:
    """Reach point ``name``: call every registered hook as ``fn(name, info)``. A no-op (one
    truth test) when no hook is registered. ``name`` is positional-only, so ``info`` may hold a
    ``name`` key too (the checkpoint, stage or file concerned)."""
    if not _hooks:
        return
    view = MappingProxyType(info)
    for fn in tuple(_hooks):
        fn(name, view)


def kill_at(name: str, n: int = 1, where: str | None = None) -> Hook:
    """A hook that SIGKILLs this process the ``n``-th time point ``name`` is reached, counting
    only the points whose ``info["name"] == where`` when ``where`` is given (``info["stage"]``
    for a point without ``name``). Each hook counts on its own."""
    if n < 1:
        raise ValueError(f"kill_at: n must be >= 1, got {n}")
    seen = 0

    def hook(point_name: str, info: Mapping[str, Any]) -> None:
        nonlocal seen
        if point_name != name or (
                where is not None and info.get("name", info.get("stage")) != where):
            return
        seen += 1
        if seen == n:
            os.kill(os.getpid(), signal.SIGKILL)
    hook.__qualname__ = f"kill_at({name!r}, {n}, where={where!r})"
    return hook
