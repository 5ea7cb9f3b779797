"""BN recalibration and dataset-wide evaluation (docs/fidelity.md, BN recalibration).

``recalibrate`` resets BN and recomputes every layer's running statistics on a dataset in order,
without augmentation, as the reference does: the size-weighted average over batches of the
per-batch means and of the per-batch *unbiased* variances (its cumulative-average momentum
b_k / (n_seen + b_k) gives exactly that). Batches are processed ``chunk_batches`` at a time by one
vmapped call (shared parameters, so the vmap is just a bigger batch), the last partial batch by a
second call.

Any model works (``tr_jax.models.adapters``): the per-batch statistics come from
``models.apply(..., mode='collect')``, which for tr_jax's own BatchNorm is its ``collect`` mode and
for ``flax.linen.BatchNorm`` / ``nnx.BatchNorm`` is each layer's input captured in train mode, its
mean and unbiased variance computed exactly (whatever the layer's momentum). The recalibrated
``batch_stats`` of a flax BatchNorm therefore hold the averaged *unbiased* variance (the
reference's), not the biased one that flax's own running update would accumulate. A model without
BatchNorm recalibrates to ``{}``.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tr_jax import models
from tr_jax.data.augment import normalize
from tr_jax import members as mem
from tr_jax.training.steps import batch_metrics, padded_batches


def collect_sums(model: nn.Module, variables: dict, x: jnp.ndarray, mean: tuple,
                 std: tuple) -> dict:
    """Sum over batches of b * (batch mean, unbiased batch var): x uint8 [nb, b, H, W, C]."""
    b = x.shape[1]

    def one(xb):
        return models.apply(model, variables, normalize(xb, mean, std), mode="collect")[1]

    stats = jax.vmap(one)(x)
    return jax.tree.map(lambda s: b * jnp.sum(s, axis=0), stats)


_collect_sums = mem.lazy_jit(collect_sums, static_argnames=("model", "mean", "std"))


@mem.lazy_jit(static_argnames=("model", "mean", "std"))
def _collect_sums_points(model: nn.Module, params: Any, batch_stats: Any, x: jnp.ndarray,
                         mean: tuple, std: tuple) -> dict:
    """``collect_sums`` for K parameter points at once (params leaves [K, ...]): one pass over
    the batches x for all points; the normalised batch is computed once and shared."""
    return jax.vmap(lambda p: collect_sums(model, {"params": p, "batch_stats": batch_stats}, x,
                                           mean, std))(params)


def _batch_pieces(images: jnp.ndarray, batch_size: int, chunk_batches: int) -> list[jnp.ndarray]:
    """The dataset in order as [nb, b, H, W, C] pieces of at most ``chunk_batches`` full batches
    (0: ``members.bn_chunk_batches``' default for this backend and image size), then the last
    partial batch as its own piece [1, rem, ...] (the reference's batches)."""
    chunk_batches = mem.bn_chunk_batches(
        chunk_batches, batch_pixels=batch_size * images.shape[1] * images.shape[2])
    n_full, rem = divmod(images.shape[0], batch_size)
    step = chunk_batches * batch_size
    pieces = []
    for s in range(0, n_full * batch_size, step):
        e = min(s + step, n_full * batch_size)
        pieces.append(images[s:e].reshape(-1, batch_size, *images.shape[1:]))
    if rem:
        pieces.append(images[n_full * batch_size:][None])
    return pieces


def _mean_stats(collect, images: jnp.ndarray, batch_size: int, chunk_batches: int) -> Any:
    """The exact size-weighted average of the per-batch statistics ``collect(piece)`` sums."""
    sums = None
    for x in _batch_pieces(images, batch_size, chunk_batches):
        part = collect(x)
        sums = part if sums is None else jax.tree.map(jnp.add, sums, part)
    return jax.tree.map(lambda s: s / images.shape[0], sums)


def recalibrate(model: nn.Module, variables: dict, images: jnp.ndarray, mean: Sequence[float],
                std: Sequence[float], batch_size: int = 64, chunk_batches: int = 0) -> dict:
    """Variables with ``batch_stats`` recomputed on ``images`` (uint8 [N, H, W, C], in order);
    ``chunk_batches`` batches per compiled call (0: ``members.bn_chunk_batches``' default)."""
    mean, std = tuple(map(float, mean)), tuple(map(float, std))
    stats = _mean_stats(lambda x: _collect_sums(model, variables, x, mean, std), images,
                        batch_size, chunk_batches)
    return {"params": variables["params"], "batch_stats": stats}


def recalibrate_points(model: nn.Module, params: Any, batch_stats: Any, images: jnp.ndarray,
                       mean: Sequence[float], std: Sequence[float], batch_size: int = 64,
                       chunk_batches: int = 0) -> Any:
    """Recalibrated ``batch_stats`` (leaves [K, ...]) of K parameter points (params leaves
    [K, ...]; ``batch_stats`` one member's tree, used for its structure only): one pass over the
    data serves every point."""
    mean, std = tuple(map(float, mean)), tuple(map(float, std))
    return _mean_stats(lambda x: _collect_sums_points(model, params, batch_stats, x, mean, std),
                       images, batch_size, chunk_batches)


_eval_batch = mem.lazy_jit(batch_metrics, static_argnames=("model", "mean", "std"))


def evaluate(model: nn.Module, variables: dict, images: jnp.ndarray, labels: jnp.ndarray,
             mean: Sequence[float], std: Sequence[float], batch_size: int = 0,
             return_logits: bool = False) -> dict[str, Any]:
    """Eval-mode error (fraction) and mean cross-entropy on a dataset; optionally the logits.
    ``batch_size`` images per call (0: ``members.eval_batch_size``' backend default)."""
    mean, std = tuple(map(float, mean)), tuple(map(float, std))
    n = images.shape[0]
    wrong, loss, logits = 0, 0.0, []
    for x, y, valid in padded_batches(images, labels, mem.eval_batch_size(batch_size)):
        w, ls, lg = _eval_batch(model, variables, x, y, valid, mean, std)
        wrong, loss = wrong + w, loss + ls
        if return_logits:
            logits.append(lg)
    out = {"error": wrong / n, "loss": loss / n}
    if return_logits:
        out["logits"] = jnp.concatenate(logits)[:n]
    return out


@mem.lazy_jit(static_argnames=("model", "mean", "std"))
def _eval_batch_points(model: nn.Module, variables: dict, x, y, valid, mean: tuple, std: tuple):
    def one(v):
        wrong, loss, _ = batch_metrics(model, v, x, y, valid, mean, std)
        return wrong, loss
    return jax.vmap(one)(variables)


def evaluate_stacked(model: nn.Module, variables: dict, images: jnp.ndarray, labels: jnp.ndarray,
                     mean: Sequence[float], std: Sequence[float],
                     batch_size: int = 0) -> dict[str, jnp.ndarray]:
    """``evaluate`` for K members at once (every leaf of ``variables`` [K, ...]): errors and mean
    losses [K], one pass over the data for all of them."""
    mean, std = tuple(map(float, mean)), tuple(map(float, std))
    wrong, loss = 0, 0.0
    for x, y, valid in padded_batches(images, labels, mem.eval_batch_size(batch_size)):
        w, ls = _eval_batch_points(model, variables, x, y, valid, mean, std)
        wrong, loss = wrong + w, loss + ls
    n = images.shape[0]
    return {"error": wrong / n, "loss": loss / n}
