"""Stage bodies as functions of global arrays (DESIGN.md, Scale-out).

Every function here takes and returns pytrees whose leading axis is members (or pairs), as global
``jax.Array`` s sharded over the members mesh (``tr_jax.sharding``); inputs every member needs
(dense checkpoints, the dataset) are replicated. Nothing of size M goes through host memory: only
the small per-member metrics come back (``sharding.to_host``). The driver
(``tr_jax.sweep.run``) resumes, commits and writes the tables.

* :func:`build_members`  prune (vmapped magnitude pruning, SPEC §1.5) and start every retrain
  member's state on device: each device builds only its own members from the replicated dense
  checkpoints (never M host copies);
* :func:`take_members` / :func:`concat_members`  gather members / join programs, sharded;
* :func:`finite` / :func:`pruned_stay_zero`  per-member health checks, on device;
* :func:`member_logits` / :func:`pair_cka`  the outputs of a chunk of members and the CKA of
  their pairs (SPEC §2.4), vmapped over members;
* :func:`hessian_members`  Hutchinson trace and top eigenvalue of a chunk of members in one
  program (``lax.while_loop`` inside, no host sync per iteration: accelerators).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tr_jax import landscape, models, pruning, sharding
from tr_jax.data.augment import normalize
from tr_jax.training import init_state
from tr_jax import members as mem
from tr_jax.training.steps import padded_batches


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
        return jax.tree.map(lambda x: sharding._pad_leaf(x, m_pad), cat)
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


@functools.lru_cache(maxsize=None)
def _logits_fn(model, mean: tuple, std: tuple):
    def fn(variables, x):
        return jax.vmap(lambda v: models.apply(model, v, normalize(x, mean, std)))(variables)
    return mem.jit(fn)


def member_logits(model, variables: Any, images: jnp.ndarray, mean, std,
                  batch_size: int = 0) -> jnp.ndarray:
    """Eval-mode logits [m, n, K] of m stacked members (sharded) on images [n, ...] in order."""
    fn = _logits_fn(model, tuple(map(float, mean)), tuple(map(float, std)))
    labels = jnp.zeros((images.shape[0],), jnp.int32)
    out = [fn(variables, x)
           for x, _, _ in padded_batches(images, labels, mem.eval_batch_size(batch_size))]
    return jnp.concatenate(out, axis=1)[:, :images.shape[0]]


@jax.jit
def _pair_cka(logits, a, b):
    probs = jax.nn.softmax(logits, axis=-1)
    return (landscape.cka(probs[a], probs[b]), landscape.cka(logits[a], logits[b]))


def pair_cka(logits: jnp.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """CKA of softmax outputs and of logits of pairs (rows a, b of ``logits`` [m, n, K])."""
    soft, lg = _pair_cka(logits, jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32))
    return {"cka_softmax": sharding.to_host(soft), "cka_logits": sharding.to_host(lg)}


@functools.lru_cache(maxsize=None)
def _hessian_fn(model, mean: tuple, std: tuple, max_probes: int, chunk: int, max_iters: int,
                tol: float, restrict: bool):
    def one(v, m, x, y, k):
        r = landscape.member_hessian(model, v, m if restrict else None, x, y,
                                     jax.random.wrap_key_data(k), mean=mean, std=std,
                                     max_probes=max_probes, chunk=chunk, max_iters=max_iters,
                                     tol=tol, loop="while")
        return jnp.stack([r["trace"], r["trace_stderr"], jnp.asarray(r["trace_probes"], r["trace"].dtype),
                          r["top_eigenvalue"]])
    return mem.jit(jax.vmap(one, in_axes=(0, 0, None, None, 0)))


def hessian_members(model, variables: Any, masks: Any, images, labels, keys: np.ndarray, *,
                    mean, std, max_probes: int, chunk: int, max_iters: int, tol: float,
                    restrict_to_mask: bool) -> np.ndarray:
    """[m, 4] (trace, stderr, probes, top eigenvalue) of m stacked members in one program."""
    fn = _hessian_fn(model, tuple(map(float, mean)), tuple(map(float, std)), int(max_probes),
                     int(chunk), int(max_iters), float(tol), bool(restrict_to_mask))
    return sharding.to_host(fn(variables, masks, images, labels, jnp.asarray(keys, jnp.uint32)))
