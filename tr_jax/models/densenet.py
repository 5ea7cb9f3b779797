"""CIFAR DenseNet-depth (depth = 3n + 4), structure and init of the reference
(docs/fidelity.md, Architectures).

The reference's ``models/cifar/densenet.py`` with its defaults (BasicBlock, growth 12,
compression 1, dropout 0; the Bottleneck variant and dropout are never used, so tr_jax has neither):

* stem: 3x3 conv in -> 2*growth (24), pad 1, no bias;
* 3 dense blocks of n BasicBlocks: ``out = conv1(relu(bn1(x)))`` (3x3, growth channels, no bias),
  then ``concat([x, out])`` (the input's channels first);
* transitions after blocks 1 and 2: BN -> ReLU -> 1x1 conv (c -> floor(c / compression), no bias)
  -> AvgPool 2x2;
* head: BN -> ReLU -> AvgPool 8 -> Linear(c -> classes, with bias).

DenseNet-40 (n = 12): 24 -> 168 channels after block 1, 312 after block 2, 456 after block 3.
Init: convs N(0, sqrt(2 / (k*k*out))) (He fan-out, untruncated, like PreResNet); BN 1/0; the Linear
keeps PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
Module names follow the reference's state_dict: ``conv1``, ``dense{1,2,3}_{i}/{bn1,conv1}``
(``dense1.0.bn1.*`` in PyTorch), ``trans{1,2}/{bn1,conv1}``, ``bn``, ``fc``.

Small inputs (tr_jax's extension; 32x32 is exactly the reference): the head averages the whole final
map (the reference's AvgPool 8 on the 8x8 map of a 32x32 input), and a transition's 2x2 pool only
pools spatial axes of at least 2 pixels. On 8x8 digits the final map is 2x2.

``dtype`` (mixed precision, as PreResNet): the convs and the classifier compute in ``dtype``;
parameters stay float32 and every conv/classifier output is cast back to float32, so the
concatenations, BatchNorm, the pools and the loss are float32. ``conv_impl``: how the convs are
computed (``tr_jax.models.conv``); the parameters are the same.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from tr_jax.models import conv as _conv
from tr_jax.models.batchnorm import BatchNorm
from tr_jax.models.preresnet import conv_init, torch_linear_init


def check_depth(depth: int) -> int:
    """Layers per dense block n for DenseNet-depth; raises unless depth = 3n + 4 with n >= 1."""
    if not isinstance(depth, int) or depth < 7 or (depth - 4) % 3:
        raise ValueError(f"DenseNet depth must be 3n+4 with n >= 1 (7, 10, 13, ..., 40, 100, ...); "
                         f"got depth={depth!r}")
    return (depth - 4) // 3


def avg_pool2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 average pool, stride 2, floor mode (PyTorch's), on NHWC; 1-pixel axes pass through."""
    n, h, w, c = x.shape
    kh, kw = (2 if h >= 2 else 1), (2 if w >= 2 else 1)
    x = x[:, : h // kh * kh, : w // kw * kw]
    return jnp.mean(x.reshape(n, h // kh, kh, w // kw, kw, c), axis=(2, 4))


def conv(features: int, k: int, name: str, dtype: Any = jnp.float32,
         conv_impl: str = "xla"):
    """A k x k conv, stride 1, 'same' padding, no bias, He fan-out init; returns a callable on x
    whose output is float32 whatever ``dtype`` it computes in."""
    module = _conv.conv(features, k, 1, (k - 1) // 2, name=name, kernel_init=conv_init,
                        dtype=dtype, conv_impl=conv_impl)
    return lambda x: module(x).astype(jnp.float32)


class DenseLayer(nn.Module):
    """The reference's BasicBlock: concat([x, conv3x3(relu(bn(x)))]) along channels."""

    growth_rate: int
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jnp.ndarray, mode: str) -> jnp.ndarray:
        out = nn.relu(BatchNorm(name="bn1")(x, mode))
        out = conv(self.growth_rate, 3, "conv1", self.dtype, self.conv_impl)(out)
        return jnp.concatenate([x, out], axis=-1)


class Transition(nn.Module):
    """BN -> ReLU -> 1x1 conv -> 2x2 average pool."""

    features: int
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jnp.ndarray, mode: str) -> jnp.ndarray:
        out = nn.relu(BatchNorm(name="bn1")(x, mode))
        return avg_pool2(conv(self.features, 1, "conv1", self.dtype, self.conv_impl)(out))


class DenseNet(nn.Module):
    """DenseNet-``depth`` (depth = 3n + 4) with BasicBlocks, for CIFAR."""

    depth: int = 40
    num_classes: int = 10
    growth_rate: int = 12
    compression_rate: float = 1
    dtype: Any = jnp.float32  # compute dtype of convs and classifier; params stay float32
    conv_impl: str = "xla"  # how convs are computed (tr_jax.models.conv); same parameters

    @nn.compact
    def __call__(self, x: jnp.ndarray, mode: str = "eval") -> jnp.ndarray:
        """x: [batch, H, W, C] -> logits [batch, num_classes]."""
        n = check_depth(self.depth)
        dt, impl = self.dtype, self.conv_impl
        x = conv(2 * self.growth_rate, 3, "conv1", dt, impl)(x)
        for block in (1, 2, 3):
            for i in range(n):
                x = DenseLayer(self.growth_rate, dt, impl, name=f"dense{block}_{i}")(x, mode)
            if block < 3:
                out = int(x.shape[-1] // self.compression_rate)
                x = Transition(out, dt, impl, name=f"trans{block}")(x, mode)
        x = nn.relu(BatchNorm(name="bn")(x, mode))
        x = jnp.mean(x, axis=(1, 2))  # = AvgPool2d(8) on the 8x8 map of a 32x32 input
        c = x.shape[-1]
        return nn.Dense(self.num_classes, kernel_init=torch_linear_init(c),
                        bias_init=torch_linear_init(c), dtype=self.dtype,
                        name="fc")(x).astype(jnp.float32)
