"""The training stages' bodies as functions of global arrays (docs/design.md, docs/scale-out.md).

Every function here takes and returns pytrees whose leading axis is members (or pairs), as global
``jax.Array`` s sharded over the members mesh (``tr_jax.sharding``); inputs every member needs
(dense checkpoints, the dataset) are replicated. Nothing of size M goes through host memory: only
the small per-member metrics come back (``sharding.to_host``). The driver
(``tr_jax.sweep.run``) resumes, commits and writes the tables.

* :func:`build_members`  prune (vmapped magnitude pruning, docs/fidelity.md, Magnitude
  pruning) and start every retrain member's state on device: each device builds only its own
  members from the replicated dense checkpoints (never M host copies);
* :func:`take_members` / :func:`concat_members`  gather members / join programs, sharded;
* :func:`finite` / :func:`pruned_stay_zero`  per-member health checks, on device;

The measure stages' bodies are the compute functions of the measure registry
(:mod:`tr_jax.measures`).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tr_jax import pruning, sharding
from tr_jax.training import init_state
from tr_jax import members as mem


@functools.lru_cache(maxsize=None)
def _builder(scope: str, leaves: str, optimizer: str, momentum: float, out_sharding):
    def build(dense_params, source, mask_from, source_from, density, keys, lr, wd):
        def one(mi, si, d, k):
            params = jax.tree.map(lambda x: x[mi], dense_params)
            masks = pruning.magnitude_masks(params, d, scope, leaves)
            variables = jax.tree.map(lambda x: x[si], source)
            return init_state(variables, masks, k, lr, wd, momentum, optimizer=optimizer)
        return jax.vmap(one)(mask_from, source_from, density, keys)
    return mem.jit(build, out_shardings=out_sharding)


def build_members(dense_params: Any, source: Any, mask_from: np.ndarray, source_from: np.ndarray,
                  density: np.ndarray, keys: np.ndarray, *, lr: float, weight_decay: float,
                  momentum: float, scope: str = "uniform", leaves: str = "conv",
                  optimizer: str = "sgd"):
    """Retrain members' ``TrainState`` s [m, ...], sharded over the mesh.

    dense_params: leaves [C, ...] — the dense checkpoints pruned (replicated); source: variables
    [C', ...] retraining starts from (the checkpoints themselves, or the rewound weights);
    mask_from / source_from [m]: each member's row in them; density [m]; keys [m, 2] (uint32 key
    data); ``scope`` / ``leaves``: how and which weights are pruned (``tr_jax.pruning``). ``m``
    should be a multiple of the device count (``sharding.padded``)."""
    fn = _builder(scope, leaves, optimizer, float(momentum), sharding.members_sharding())
    return fn(dense_params, source, jnp.asarray(mask_from, jnp.int32),
              jnp.asarray(source_from, jnp.int32), jnp.asarray(density, jnp.float32),
              jnp.asarray(keys, jnp.uint32), jnp.float32(lr), jnp.float32(weight_decay))


@functools.lru_cache(maxsize=None)
def _taker(out_sharding):
    return jax.jit(lambda tree, idx: jax.tree.map(lambda x: x[idx], tree),
                   out_shardings=out_sharding)


def take_members(tree: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` [k] (host ints; k a multiple of the device count) of a stacked global tree,
    sharded over the mesh."""
    return _taker(sharding.members_sharding())(tree, jnp.asarray(idx, jnp.int32))


def concat_members(parts: list[Any], counts: list[int], m_pad: int) -> Any:
    """Join programs' stacked trees (each padded) into one of ``m_pad`` members: the first
    ``counts[i]`` members of part i, in order, the last one repeated as padding."""
    @functools.partial(jax.jit, out_shardings=sharding.members_sharding())
    def join(ps):
        cat = jax.tree.map(lambda *xs: jnp.concatenate([x[:n] for x, n in zip(xs, counts)]), *ps)
        return sharding.pad_members(cat, m_pad)
    return join(parts)


@jax.jit
def _finite(tree):
    leaves = [jnp.isfinite(x.reshape(x.shape[0], -1)).all(axis=1) for x in jax.tree.leaves(tree)]
    return functools.reduce(jnp.logical_and, leaves)


def finite(tree: Any) -> np.ndarray:
    """Host bool [m]: every value of a member finite."""
    return sharding.to_host(_finite(tree))


@jax.jit
def _zero(params, mask):
    leaves = [jnp.where(m == 0, p == 0, True).reshape(p.shape[0], -1).all(axis=1)
              for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask))]
    return functools.reduce(jnp.logical_and, leaves)


def pruned_stay_zero(params: Any, mask: Any) -> np.ndarray:
    """Host bool [m]: every pruned weight of a member is exactly 0."""
    return sharding.to_host(_zero(params, mask))
