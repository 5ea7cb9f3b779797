"""BN recalibration and dataset-wide evaluation (SPEC §2.2 step 3-4).

``recalibrate`` resets BN and recomputes every layer's running statistics on a dataset in order,
without augmentation, as the reference does: the size-weighted average over batches of the
per-batch means and of the per-batch *unbiased* variances (its cumulative-average momentum
b_k / (n_seen + b_k) gives exactly that). Batches are processed ``chunk_batches`` at a time by one
vmapped call (shared parameters, so the vmap is just a bigger batch), the last partial batch by a
second call.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tr_jax import models
from tr_jax.data.augment import normalize
from tr_jax.training.steps import batch_metrics, padded_batches


@functools.partial(jax.jit, static_argnames=("model", "mean", "std"))
def _collect_sums(model: nn.Module, variables: dict, x: jnp.ndarray, mean: tuple, std: tuple):
    """Sum over batches of b * (batch mean, unbiased batch var): x uint8 [nb, b, H, W, C]."""
    b = x.shape[1]

    def one(xb):
        return models.apply(model, variables, normalize(xb, mean, std), mode="collect")[1]

    stats = jax.vmap(one)(x)
    return jax.tree.map(lambda s: b * jnp.sum(s, axis=0), stats)


def recalibrate(model: nn.Module, variables: dict, images: jnp.ndarray, mean: Sequence[float],
                std: Sequence[float], batch_size: int = 64, chunk_batches: int = 16) -> dict:
    """Variables with ``batch_stats`` recomputed on ``images`` (uint8 [N, H, W, C], in order)."""
    mean, std = tuple(map(float, mean)), tuple(map(float, std))
    n = images.shape[0]
    n_full, rem = divmod(n, batch_size)
    sums = None
    step = chunk_batches * batch_size
    pieces = []
    for s in range(0, n_full * batch_size, step):
        e = min(s + step, n_full * batch_size)
        pieces.append(images[s:e].reshape(-1, batch_size, *images.shape[1:]))
    if rem:
        pieces.append(images[n_full * batch_size:][None])
    for x in pieces:
        part = _collect_sums(model, variables, x, mean, std)
        sums = part if sums is None else jax.tree.map(jnp.add, sums, part)
    stats = jax.tree.map(lambda s: s / n, sums)
    return {"params": variables["params"], "batch_stats": stats}


_eval_batch = jax.jit(batch_metrics, static_argnames=("model", "mean", "std"))


def evaluate(model: nn.Module, variables: dict, images: jnp.ndarray, labels: jnp.ndarray,
             mean: Sequence[float], std: Sequence[float], batch_size: int = 500,
             return_logits: bool = False) -> dict[str, Any]:
    """Eval-mode error (fraction) and mean cross-entropy on a dataset; optionally the logits."""
    mean, std = tuple(map(float, mean)), tuple(map(float, std))
    n = images.shape[0]
    wrong, loss, logits = 0, 0.0, []
    for x, y, valid in padded_batches(images, labels, batch_size):
        w, ls, lg = _eval_batch(model, variables, x, y, valid, mean, std)
        wrong, loss = wrong + w, loss + ls
        if return_logits:
            logits.append(lg)
    out = {"error": wrong / n, "loss": loss / n}
    if return_logits:
        out["logits"] = jnp.concatenate(logits)[:n]
    return out
