"""How members advance together: the ``members_strategy`` switch (DESIGN.md).

* ``loop``           a Python loop over members, each a jitted call on an unstacked member;
* ``vmap``           one jitted call, ``jax.vmap`` over the members axis (per-member conv weights
                     become a grouped convolution);
* ``map``            one jitted call, ``lax.map`` over members (sequential inside one program);
* ``map_chunked:k``  ``lax.map`` with ``batch_size=k`` (vmap over k members at a time).

``auto`` picks the default for the backend from ``experiments/bench_members.py``: ``loop`` on CPU
(vmap of PreResNet measured 0.24-0.85x a loop on 2 cores), ``vmap`` on GPU/TPU.
Results agree across strategies within float tolerance; bit-for-bit only for a fixed strategy.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

STRATEGIES = ("loop", "vmap", "map", "map_chunked:k", "auto")


def resolve(strategy: str, backend: str | None = None) -> str:
    """Validate ``strategy``; turn ``auto`` into the backend's measured default."""
    if strategy == "auto":
        backend = backend or jax.default_backend()
        return "loop" if backend == "cpu" else "vmap"
    if strategy in ("loop", "vmap", "map"):
        return strategy
    if strategy.startswith("map_chunked:"):
        k = strategy.split(":", 1)[1]
        if k.isdigit() and int(k) > 0:
            return strategy
    raise ValueError(f"members_strategy {strategy!r} is not one of {STRATEGIES} "
                     "(map_chunked:k with a positive integer k)")


def over_members(fn: Callable, strategy: str, in_axes: Sequence[int | None],
                 donate_argnums: tuple[int, ...] = ()) -> Callable:
    """Jitted ``fn`` lifted to a *group* of members under ``strategy``.

    ``in_axes[i]`` is 0 for per-member arguments (leading members axis) and None for shared ones
    (the dataset). Under ``loop`` a group is one member without a members axis.
    """
    strategy = resolve(strategy)
    if strategy == "loop":
        return jax.jit(fn, donate_argnums=donate_argnums)
    if strategy == "vmap":
        return jax.jit(jax.vmap(fn, in_axes=tuple(in_axes)), donate_argnums=donate_argnums)
    batch = None if strategy == "map" else int(strategy.split(":", 1)[1])

    def mapped(*args):
        per_member = tuple(a for a, ax in zip(args, in_axes) if ax == 0)

        def body(xs):
            it = iter(xs)
            return fn(*[next(it) if ax == 0 else a for a, ax in zip(args, in_axes)])

        return lax.map(body, per_member, batch_size=batch)

    return jax.jit(mapped, donate_argnums=donate_argnums)


def stack(trees: Sequence[Any]) -> Any:
    """Stack member pytrees on a new leading members axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any) -> list[Any]:
    """Inverse of ``stack``."""
    n = jax.tree.leaves(tree)[0].shape[0]
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def num_members(stacked: Any) -> int:
    return int(jax.tree.leaves(stacked)[0].shape[0])


def shard_members(stacked: Any, devices: Sequence[Any] | None = None) -> Any:
    """Place a stacked tree with its members axis sharded over ``devices`` (default: all), via a
    1-D ``jax.sharding.Mesh`` named ``members``; jitted steps then run SPMD, each device on its
    share of members. The members axis is padded (repeating the last member) to a multiple of the
    device count; ``join_groups(..., num=M)`` drops the padding. One device: returned as is."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) == 1:
        return stacked
    m, n = num_members(stacked), len(devices)
    pad = -m % n
    if pad:
        stacked = jax.tree.map(
            lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), stacked)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("members",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members"))
    return jax.device_put(stacked, spec)


def split_groups(stacked: Any, strategy: str) -> list[Any]:
    """The groups a strategy advances: one per member for ``loop``, else the whole stack, its
    members axis sharded over every device (``shard_members``)."""
    if resolve(strategy) == "loop":
        return unstack(stacked)
    return [shard_members(stacked)]


def join_groups(groups: Sequence[Any], strategy: str, num: int | None = None) -> Any:
    """Inverse of ``split_groups``; ``num`` trims a padded members axis back to ``num``."""
    out = stack(groups) if resolve(strategy) == "loop" else groups[0]
    if num is not None and num_members(out) != num:
        out = jax.tree.map(lambda x: x[:num], out)
    return out
