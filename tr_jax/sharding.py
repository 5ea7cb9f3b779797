"""The members mesh: one global ``jax.Array`` per stacked leaf, sharded over every device of every
process (see docs/design.md on scaling out).

A sweep's members (or pairs, or LMC points) lie on the leading axis of every leaf. That axis is
sharded over a 1-D :class:`jax.sharding.Mesh` named ``members`` that holds every device of every
process (``jax.devices()``), so one process with 4 devices and two processes with 2 devices each
run the same partitioned programs. Leading axes are padded to a multiple of the device count
(:func:`padded`) by repeating the last member; the padding's results are dropped on the host.

Host values go in with :func:`replicate` (small arrays every device needs: the dataset, dense
checkpoints) and :func:`shard` (a stacked tree, members split over the devices); both accept
host numpy that is identical on every process, and device arrays. Results come out with
:func:`to_host`, which works for arrays that span devices of other processes too: only small
per-member metrics should take that way.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tr_jax.distributed import barrier, is_primary, to_host  # noqa: F401  (re-exported)

MEMBERS = "members"


@functools.lru_cache(maxsize=None)
def _mesh(devices: tuple) -> Mesh:
    return Mesh(np.asarray(devices, dtype=object), (MEMBERS,))


def mesh() -> Mesh:
    """The 1-D mesh ``members`` over every device of every process."""
    return _mesh(tuple(jax.devices()))


def num_shards() -> int:
    """Devices the members axis is split over (all devices of all processes)."""
    return jax.device_count()


def padded(m: int, multiple: int | None = None) -> int:
    """``m`` rounded up to a multiple of the device count (or of ``multiple``)."""
    n = multiple or num_shards()
    return -(-int(m) // n) * n


def members_sharding() -> jax.sharding.Sharding:
    """Leading axis split over the mesh, the rest replicated. With one device, that device's
    plain sharding: what jitted steps return there, so a step's compile is reused call after
    call (a 1-device mesh would be a second input sharding, hence a second compile)."""
    if num_shards() == 1:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return NamedSharding(mesh(), PartitionSpec(MEMBERS))


def replicated_sharding() -> jax.sharding.Sharding:
    if num_shards() == 1:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return NamedSharding(mesh(), PartitionSpec())


def multi_process() -> bool:
    return jax.process_count() > 1


def _pad_leaf(x, m_pad: int):
    pad = m_pad - x.shape[0]
    if pad <= 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])


def pad_members(tree: Any, m_pad: int) -> Any:
    """``tree`` (leaves [M, ...]) with its members axis padded to ``m_pad`` by repeating the last
    member (unchanged when M >= ``m_pad``); traceable, so it serves inside jitted programs."""
    return jax.tree.map(lambda x: _pad_leaf(x, m_pad), tree)


@functools.lru_cache(maxsize=None)
def _resharder(m_pad: int, sharding: jax.sharding.Sharding):
    return jax.jit(lambda t: pad_members(t, m_pad), out_shardings=sharding)


def shard(tree: Any, m_pad: int | None = None) -> Any:
    """A fresh copy of ``tree`` (leaves [M, ...]: host numpy identical on every process, or device
    arrays) with the members axis padded to ``m_pad`` (default: :func:`padded`) and sharded over
    the mesh. The caller's arrays are never donated or deleted."""
    m = int(jax.tree.leaves(tree)[0].shape[0])
    m_pad = padded(m) if m_pad is None else int(m_pad)
    return _resharder(m_pad, members_sharding())(tree)


def replicate(tree: Any) -> Any:
    """``tree`` as arrays replicated on every device of the mesh (host numpy must be identical on
    every process). With one device: plain device arrays."""
    if num_shards() == 1:
        return jax.tree.map(jnp.asarray, tree)
    sh = replicated_sharding()

    def one(x):
        if isinstance(x, jax.Array) and x.sharding == sh:
            return x
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.jit(lambda y: y, out_shardings=sh)(x)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sh, lambda idx: host[idx])

    return jax.tree.map(one, tree)


def tree_to_host(tree: Any) -> Any:
    return jax.tree.map(to_host, tree)


def members_like(template: Any, m_pad: int) -> Any:
    """``ShapeDtypeStruct`` restore targets of a stacked tree of ``m_pad`` members sharded over the
    mesh (what :func:`shard` returns), from one member's ``template`` (arrays or shape structs)."""
    sh = members_sharding()
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((int(m_pad), *x.shape), x.dtype, sharding=sh),
                        template)
