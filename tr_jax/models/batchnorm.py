"""BatchNorm with PyTorch semantics and the four modes tr_jax needs (docs/fidelity.md,
Architectures, SAM, BN recalibration).

Flax's BatchNorm keeps a *biased* running variance and has no recalibration mode, so tr_jax uses
its own module:

* ``train``   normalise with the batch statistics; update the running statistics PyTorch's way:
              ``running <- (1 - momentum) * running + momentum * batch`` with momentum 0.1 and the
              *unbiased* batch variance for ``running_var``.
* ``frozen``  batch statistics, running statistics untouched (SAM's second pass).
* ``collect`` batch statistics; the batch mean and unbiased variance are written to the
              ``bn_stats`` collection (same tree layout as ``batch_stats``) so that the caller can
              form the exact size-weighted cumulative average of BN recalibration
              (docs/fidelity.md, BN recalibration).
* ``eval``    normalise with the running statistics.

Per-channel sums are matrix-vector products (``channel_sum``) and per-channel values reach the
[..., C] activations through ``channel_broadcast``, whose JVP is an outer product, so the sums that
reverse-mode differentiation makes (d scale, d bias, and through the batch statistics) are
matrix-vector products too. XLA CPU lowers a plain ``jnp.sum`` over (N, H, W) to a slow
reduce-window (the channel axis is minor); the dot form made BatchNorm's forward + backward
2.6x (32x32x16) to 4.7x (8x8x64) faster and a PreResNet-20 CIFAR train step
``experiments/bench_vs_torch.py`` faster (README, Performance). Forward-over-reverse (Hessian-vector
products) works through both, as they are ``custom_jvp`` / linear. The sums are taken at
``Precision.HIGHEST`` so that accelerators do not round them to TF32/bf16.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

MODES = ("train", "frozen", "collect", "eval")


def channel_sum(x: jnp.ndarray) -> jnp.ndarray:
    """Sum of x [..., C] over every axis but the last, as ``ones[N] @ x[N, C]``."""
    x2 = x.reshape(-1, x.shape[-1])
    return lax.dot_general(jnp.ones((x2.shape[0],), x.dtype), x2, (((0,), (0,)), ((), ())),
                           precision=lax.Precision.HIGHEST)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def channel_broadcast(v: jnp.ndarray, shape: tuple[int, ...]) -> jnp.ndarray:
    """``broadcast_to(v [C], shape [..., C])``; its tangent is the outer product ``ones[N] v'``,
    so its transpose (the cotangent of ``v``) is ``channel_sum`` rather than a reduce."""
    return jnp.broadcast_to(v, shape)


@channel_broadcast.defjvp
def _channel_broadcast_jvp(shape, primals, tangents):
    (v,), (t,) = primals, tangents
    ones = jnp.ones((math.prod(shape[:-1]),), t.dtype)
    out = lax.dot_general(ones, t, (((), ()), ((), ())), precision=lax.Precision.HIGHEST)
    return jnp.broadcast_to(v, shape), out.reshape(shape)


class BatchNorm(nn.Module):
    """BatchNorm over the last (channel) axis of NHWC or NC inputs."""

    momentum: float = 0.1  # PyTorch convention
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jnp.ndarray, mode: str = "eval") -> jnp.ndarray:
        if mode not in MODES:
            raise ValueError(f"BatchNorm mode {mode!r} is not one of {MODES}")
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        n = x.size // c

        def bcast(v):
            return channel_broadcast(v, x.shape)

        if mode == "eval":
            mean, var = ra_mean.value, ra_var.value
            centred = x - bcast(mean)
        else:
            mean = channel_sum(x) / n
            centred = x - bcast(mean)
            var = channel_sum(jnp.square(centred)) / n  # biased: used to normalise
            unbiased = var * (n / max(n - 1, 1))
            if mode == "train" and not self.is_initializing():
                m = self.momentum
                ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
                ra_var.value = (1.0 - m) * ra_var.value + m * unbiased
            elif mode == "collect":
                self.put_variable("bn_stats", "mean", mean)
                self.put_variable("bn_stats", "var", unbiased)
        return centred * bcast(lax.rsqrt(var + self.epsilon) * scale) + bcast(bias)
