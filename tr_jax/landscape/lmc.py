"""Linear mode connectivity (SPEC §2.2).

theta(t) = (1 - t) theta_a + t theta_b on *every* parameter (masked conv weights, BN affine, FC);
at every t (endpoints included) BN is recalibrated on the full training set (no augmentation,
fixed order, batch 64), then train (and test) error and loss are measured in eval mode.
``lmc(e)`` = e_bar - e(t*), e_bar = (e(0) + e(1)) / 2, t* = argmax_t |e(t) - e_bar|:
negative = a barrier (poorly connected), ~0 = linearly connected.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tr_jax.landscape.bn import evaluate, recalibrate


def lerp(t, a, b):
    """(1 - t) a + t b over whole pytrees."""
    return jax.tree.map(lambda x, y: (1.0 - t) * x + t * y, a, b)


def interpolation_errors(model: nn.Module, variables_a: dict, variables_b: dict,
                         train_images: jnp.ndarray, train_labels: jnp.ndarray, *,
                         mean: Sequence[float], std: Sequence[float],
                         ts: Sequence[float] | jnp.ndarray | None = None, bn_batch_size: int = 64,
                         test: tuple[jnp.ndarray, jnp.ndarray] | None = None,
                         eval_batch_size: int = 500) -> dict[str, np.ndarray]:
    """Errors and losses along the straight line between two members sharing a mask.

    train_images: uint8 [N, H, W, C] in dataset order (no augmentation); labels int [N].
    Returns ``{'t', 'train_error', 'train_loss'[, 'test_error', 'test_loss']}``, each [T].
    """
    ts = np.linspace(0.0, 1.0, 11) if ts is None else np.asarray(ts, np.float32)
    out: dict[str, list] = {"train_error": [], "train_loss": []}
    if test is not None:
        out.update(test_error=[], test_loss=[])
    for t in ts:
        params = lerp(jnp.float32(t), variables_a["params"], variables_b["params"])
        v = recalibrate(model, {"params": params, "batch_stats": variables_a["batch_stats"]},
                        train_images, mean, std, batch_size=bn_batch_size)
        tr = evaluate(model, v, train_images, train_labels, mean, std, eval_batch_size)
        out["train_error"].append(tr["error"])
        out["train_loss"].append(tr["loss"])
        if test is not None:
            te = evaluate(model, v, *test, mean, std, eval_batch_size)
            out["test_error"].append(te["error"])
            out["test_loss"].append(te["loss"])
    res = {k: np.asarray(jnp.stack(v), np.float64) for k, v in out.items()}
    res["t"] = np.asarray(ts, np.float64)
    return res


def lmc(errors) -> jnp.ndarray:
    """e_bar - e(t*) of an error curve [..., T] whose first/last points are the endpoints."""
    e = jnp.asarray(errors)
    ebar = 0.5 * (e[..., 0] + e[..., -1])
    dev = e - ebar[..., None]
    i = jnp.argmax(jnp.abs(dev), axis=-1)
    return -jnp.take_along_axis(dev, i[..., None], axis=-1)[..., 0]
