"""BatchNorm with PyTorch semantics and the four modes tr_jax needs (SPEC §1.2, §1.4, §2.2).

Flax's BatchNorm keeps a *biased* running variance and has no recalibration mode, so tr_jax uses
its own module:

* ``train``   normalise with the batch statistics; update the running statistics PyTorch's way:
              ``running <- (1 - momentum) * running + momentum * batch`` with momentum 0.1 and the
              *unbiased* batch variance for ``running_var``.
* ``frozen``  batch statistics, running statistics untouched (SAM's second pass, SPEC §1.4).
* ``collect`` batch statistics; the batch mean and unbiased variance are written to the
              ``bn_stats`` collection (same tree layout as ``batch_stats``) so that the caller can
              form the exact size-weighted cumulative average of SPEC §2.2 (BN recalibration).
* ``eval``    normalise with the running statistics.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

MODES = ("train", "frozen", "collect", "eval")


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
        if mode == "eval":
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)  # biased: used to normalise
            n = x.size // c
            unbiased = var * (n / max(n - 1, 1))
            if mode == "train" and not self.is_initializing():
                m = self.momentum
                ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
                ra_var.value = (1.0 - m) * ra_var.value + m * unbiased
            elif mode == "collect":
                self.put_variable("bn_stats", "mean", mean)
                self.put_variable("bn_stats", "var", unbiased)
        y = (x - mean) * lax.rsqrt(var + self.epsilon)
        return y * scale + bias
