"""Linear mode connectivity (docs/fidelity.md, LMC), batched over t points and pairs.

theta(t) = (1 - t) theta_a + t theta_b on *every* parameter (masked conv weights, BN affine, FC);
at every t (endpoints included) BN is recalibrated on the full training set (no augmentation,
fixed order, batch 64), then train (and test) error and loss are measured in eval mode.
``lmc(e)`` = e_bar - e(t*), e_bar = (e(0) + e(1)) / 2, t* = argmax_t |e(t) - e_bar|:
negative = a barrier (poorly connected), ~0 = linearly connected.

Every point of every pair is a *parameter point*; ``evaluate_points`` measures K points in one
pass over the data per chunk of ``points_per_call`` points (vmapped over points: on accelerators
the whole [pairs x t] grid is one program; on a 2-core CPU a grouped convolution is slower than a
loop, so the CPU default is one point per call — see experiments/bench_landscape.py).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tr_jax import members as mem
from tr_jax import sharding
from tr_jax.landscape.bn import evaluate_stacked, recalibrate_points


def lerp(t, a, b):
    """(1 - t) a + t b over whole pytrees."""
    return jax.tree.map(lambda x, y: (1.0 - t) * x + t * y, a, b)


def default_points_per_call() -> int:
    """Points per compiled call: 1 on CPU (measured: vmapped convs lose to a loop there), 32
    elsewhere (bounded so the activations of [points x batch] fit comfortably)."""
    return 1 if jax.default_backend() == "cpu" else 32


def resolve_points_per_call(requested: int | None = None) -> int:
    """Points per compiled call as run: ``requested`` (None/0: the backend's default), rounded up
    to a multiple of the device count, so that every call's points are split over every device
    of every process (``tr_jax.sharding``)."""
    n = int(requested or default_points_per_call())
    return sharding.padded(n) if sharding.num_shards() > 1 else n


@jax.jit
def _flatten_points(pts: Any) -> Any:
    """Leaves [P, T, ...] -> [P * T, ...]."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]), pts)


def evaluate_points(model: nn.Module, params: Any, batch_stats: Any, train_images: jnp.ndarray,
                    train_labels: jnp.ndarray, *, mean: Sequence[float], std: Sequence[float],
                    bn_batch_size: int = 64, test: tuple[jnp.ndarray, jnp.ndarray] | None = None,
                    eval_batch_size: int = 0,
                    points_per_call: int | None = None) -> dict[str, np.ndarray]:
    """Errors and losses of K parameter points, BN recalibrated at each (docs/fidelity.md, LMC).

    params: leaves [K, ...] (e.g. pairs x t flattened); batch_stats: one member's tree (structure
    only: recalibration replaces it). Images uint8 [N, H, W, C] in dataset order. Points run
    ``points_per_call`` at a time (the last call padded by repeating a point, so one compile).
    Returns ``{'train_error', 'train_loss'[, 'test_error', 'test_loss']}``, each float64 [K].
    """
    K = jax.tree.leaves(params)[0].shape[0]
    ppc = resolve_points_per_call(points_per_call)
    if sharding.num_shards() == 1:
        ppc = min(K, ppc)
    out: dict[str, list] = {}
    for s in range(0, K, ppc):
        idx = np.minimum(np.arange(s, s + ppc), K - 1)
        p = mem.take(params, idx)
        if sharding.num_shards() > 1:  # the call's points split over every device
            p = sharding.shard(p)
        stats = recalibrate_points(model, p, batch_stats, train_images, mean, std, bn_batch_size)
        v = {"params": p, "batch_stats": stats}
        sets = [("train", (train_images, train_labels))] + ([("test", test)] if test else [])
        for name, (x, y) in sets:
            r = evaluate_stacked(model, v, x, y, mean, std, eval_batch_size)
            keep = min(ppc, K - s)
            out.setdefault(f"{name}_error", []).append(sharding.to_host(r["error"])[:keep])
            out.setdefault(f"{name}_loss", []).append(sharding.to_host(r["loss"])[:keep])
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


@jax.jit
def line_points(params_a: Any, params_b: Any, ts: jnp.ndarray) -> Any:
    """theta(t) for every pair and t: params_a/b leaves [P, ...] -> leaves [P, T, ...]."""
    return jax.vmap(lambda a, b: jax.vmap(lambda t: lerp(t, a, b))(ts))(params_a, params_b)


def pair_curves(model: nn.Module, params_a: Any, params_b: Any, batch_stats: Any,
                train_images: jnp.ndarray, train_labels: jnp.ndarray, points_fn=line_points, *,
                mean: Sequence[float], std: Sequence[float], ts=None, bn_batch_size: int = 64,
                test: tuple[jnp.ndarray, jnp.ndarray] | None = None, eval_batch_size: int = 0,
                points_per_call: int | None = None) -> dict[str, np.ndarray]:
    """Curves of P pairs (params_a/b leaves [P, ...]) at T points: each metric [P, T].

    ``points_fn(params_a, params_b, ts) -> leaves [P, T, ...]`` says which path (default the
    straight line; ``tr_jax.landscape.bezier`` passes its trained curve)."""
    ts = jnp.asarray(np.linspace(0.0, 1.0, 11) if ts is None else ts, jnp.float32)
    pts = points_fn(params_a, params_b, ts)
    P, T = jax.tree.leaves(pts)[0].shape[:2]
    flat = _flatten_points(pts)
    res = evaluate_points(model, flat, batch_stats, train_images, train_labels, mean=mean,
                          std=std, bn_batch_size=bn_batch_size, test=test,
                          eval_batch_size=eval_batch_size, points_per_call=points_per_call)
    out = {k: v.reshape(P, T) for k, v in res.items()}
    out["t"] = np.asarray(ts, np.float64)
    return out


def interpolation_errors(model: nn.Module, variables_a: dict, variables_b: dict,
                         train_images: jnp.ndarray, train_labels: jnp.ndarray, *,
                         mean: Sequence[float], std: Sequence[float],
                         ts: Sequence[float] | jnp.ndarray | None = None, bn_batch_size: int = 64,
                         test: tuple[jnp.ndarray, jnp.ndarray] | None = None,
                         eval_batch_size: int = 0,
                         points_per_call: int | None = None) -> dict[str, np.ndarray]:
    """Errors and losses along the straight line between two members sharing a mask.

    One pair (variables without a pairs axis). Returns ``{'t', 'train_error', 'train_loss'[,
    'test_error', 'test_loss']}``, each [T]. For many pairs at once use ``pair_curves``.
    """
    add = lambda x: jnp.asarray(x)[None]  # noqa: E731
    res = pair_curves(model, jax.tree.map(add, variables_a["params"]),
                      jax.tree.map(add, variables_b["params"]), variables_a["batch_stats"],
                      train_images, train_labels, mean=mean, std=std, ts=ts,
                      bn_batch_size=bn_batch_size, test=test, eval_batch_size=eval_batch_size,
                      points_per_call=points_per_call)
    return {k: (v if k == "t" else v[0]) for k, v in res.items()}


def loss_barrier(losses) -> np.ndarray:
    """max_t [L(t) - ((1 - t) L(0) + t L(1))] of loss curves [..., T] on evenly spaced t."""
    losses = np.asarray(losses, np.float64)
    line = np.linspace(losses[..., 0], losses[..., -1], losses.shape[-1], axis=-1)
    return np.max(losses - line, axis=-1)


#: error fractions closer than this are one value in :func:`lmc` without ``n`` (fractions of
#: <= 10^6 images are >= 1e-6 apart; float32 rounding of a fraction is <= 6e-8)
LMC_TIE_TOL = 1e-7


def lmc(errors, n: int | None = None) -> np.ndarray:
    """e_bar - e(t*) of error curves ``[..., T]`` whose first/last points are the endpoints
    (docs/fidelity.md, LMC), as float64 numpy.

    ``t* = argmax_t |e(t) - e_bar|``, the *first* t on ties (numpy's argmax, as the reference).
    When the interior is flat, t* is an endpoint and both endpoints deviate by exactly
    ``|e(0) - e(1)| / 2``: which one wins decides the sign. In float32 rounding decided it (in a
    third of such curves over 1437 images), so the arithmetic is float64 and exact:

    * ``n`` given (the number of images the errors were measured on): the fractions are turned
      back into error counts (``rint(e * n)``) and the deviations computed on the integers;
    * ``n`` None: float64 on the fractions, with deviations within :data:`LMC_TIE_TOL` of the
      largest treated as ties.
    """
    e = np.asarray(errors, dtype=np.float64)
    if e.shape[-1] < 2:
        raise ValueError(f"lmc: an error curve needs >= 2 points (the endpoints), got shape "
                         f"{e.shape}")
    if n is not None:
        if int(n) < 1:
            raise ValueError(f"lmc: n (images measured) must be >= 1, got {n!r}")
        counts = np.rint(e * int(n))
        dev2 = 2.0 * counts - (counts[..., :1] + counts[..., -1:])  # 2 (c - c_bar): integers
        i = np.argmax(np.abs(dev2), axis=-1)
        return -np.take_along_axis(dev2, i[..., None], axis=-1)[..., 0] / (2.0 * int(n))
    ebar = 0.5 * (e[..., :1] + e[..., -1:])
    dev = e - ebar
    mag = np.abs(dev)
    i = np.argmax(mag >= mag.max(axis=-1, keepdims=True) - LMC_TIE_TOL, axis=-1)
    return -np.take_along_axis(dev, i[..., None], axis=-1)[..., 0]
