"""The one home of every private JAX API tr_jax uses (``jax._src``, underscore attributes).

Each function says what it reads, the public alternative (where JAX has one) and why the private
one is used, and falls back to a safe answer when a JAX release no longer has it, so that an
upgrade of JAX degrades a check or a mitigation instead of breaking an import. Nothing else in
tr_jax imports ``jax._src`` or calls a private attribute of a JAX object.
"""
from __future__ import annotations

from typing import Any, Callable


def backends_are_initialized() -> bool | None:
    """Whether a JAX backend (CPU, GPU, TPU) is already up in this process; None when this JAX
    cannot say.

    Reads ``jax._src.xla_bridge.backends_are_initialized()``. JAX has no public query: every
    public way to ask (``jax.devices()``, ``jax.default_backend()``) starts the backend, which is
    what the callers must not do (``jax.distributed.initialize`` and some ``jax.config`` options
    only take effect before it). Callers treat None as "cannot tell" and skip the check.
    """
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return None


def runtime_error_type() -> type[BaseException]:
    """The exception type of errors raised by the XLA runtime (a failed collective, a lost peer).

    Public since JAX 0.4.36 as ``jax.errors.JaxRuntimeError``; older releases (the package allows
    ``jax>=0.4.35``) only have ``jax._src.lib.xla_client.XlaRuntimeError``. Falls back to
    ``RuntimeError``, its base class, when neither is found.
    """
    try:
        from jax.errors import JaxRuntimeError
        return JaxRuntimeError
    except ImportError:
        pass
    try:
        from jax._src.lib import xla_client
        return xla_client.XlaRuntimeError
    except (ImportError, AttributeError):
        return RuntimeError


def compiled_count(fn: Callable[..., Any]) -> int | None:
    """How many programs a jitted function has compiled in this process (its cache size); None
    when this JAX does not expose it.

    Reads the private ``fn._cache_size()`` of a ``jax.jit`` function. The public alternative,
    ``fn.lower(...).compile()``, compiles instead of telling whether a compile happened; the count
    is used to let the first call of a fresh program run alone before threads share it (a compile
    done once, not once per thread), and in tests that count recompiles.
    """
    size = getattr(fn, "_cache_size", None)
    if not callable(size):
        return None
    try:
        return int(size())
    except Exception:  # noqa: BLE001  (an internal that changed its signature: cannot tell)
        return None
