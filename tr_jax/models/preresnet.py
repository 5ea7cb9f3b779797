"""PreResNet-d and width-scaled PreResNet, structure and init of the reference
(docs/fidelity.md, Architectures).

* stem: 3x3 conv in->16k, stride 1, pad 1, no bias, no BN/ReLU after it;
* 3 stages of n = (d - 2) / 6 pre-activation BasicBlocks (planes 16k, 32k, 64k; stride 2 at the
  start of stages 2 and 3): out = conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut(x), where the
  shortcut is the identity or a 1x1 stride-2 conv (no bias, no BN) applied to the *raw* input x;
* head: BN -> ReLU -> global average pool -> Linear(64k -> classes, with bias).

Init: convs N(0, sqrt(2 / (k*k*out))) (He fan-out, untruncated normal); BN 1/0; Linear weight and
bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default). Module names follow the reference's
state_dict (``conv1``, ``layer1_0/bn1`` ..., ``bn``, ``fc``) so that checkpoints map one-to-one.

``dtype`` is the compute dtype of the convolutions and the classifier (mixed precision: bfloat16
casts their inputs and kernels); parameters stay float32 and every conv/classifier output is
cast back to float32, so BatchNorm statistics, the residual sums and the loss are float32.
``conv_impl`` says how every conv is computed (``tr_jax.models.conv``: ``"xla"``, the default, or
``"gemm"``, im2col + matmul for the ``gemm`` members strategy); the parameters are the same.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tr_jax.models.batchnorm import BatchNorm
from tr_jax.models.conv import conv

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # untruncated


def torch_linear_init(fan_in: int):
    """PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv3x3(features: int, stride: int, name: str, dtype: Any = jnp.float32,
            conv_impl: str = "xla") -> nn.Module:
    return conv(features, 3, stride, 1, name=name, kernel_init=conv_init, dtype=dtype,
                conv_impl=conv_impl)


def f32(x: jnp.ndarray) -> jnp.ndarray:
    """``x`` as float32 (a no-op at float32 compute)."""
    return x.astype(jnp.float32)


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jnp.ndarray, mode: str) -> jnp.ndarray:
        impl = self.conv_impl
        out = nn.relu(BatchNorm(name="bn1")(x, mode))
        out = f32(conv3x3(self.planes, self.stride, "conv1", self.dtype, impl)(out))
        out = nn.relu(BatchNorm(name="bn2")(out, mode))
        out = f32(conv3x3(self.planes, 1, "conv2", self.dtype, impl)(out))
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = f32(conv(self.planes, 1, self.stride, 0, name="downsample",
                         kernel_init=conv_init, dtype=self.dtype, conv_impl=impl)(x))
        return out + x


class PreResNet(nn.Module):
    """PreResNet-``depth`` (depth = 6n + 2) with channel widths int(16w), int(32w), int(64w)."""

    depth: int = 20
    num_classes: int = 10
    width: float = 1.0
    dtype: Any = jnp.float32  # compute dtype of convs and classifier; params stay float32
    conv_impl: str = "xla"  # how convs are computed (tr_jax.models.conv); same parameters

    @nn.compact
    def __call__(self, x: jnp.ndarray, mode: str = "eval") -> jnp.ndarray:
        n = check_depth(self.depth)
        widths = [int(16 * self.width), int(32 * self.width), int(64 * self.width)]
        x = f32(conv3x3(widths[0], 1, "conv1", self.dtype, self.conv_impl)(x))
        for stage, planes in enumerate(widths):
            for b in range(n):
                stride = 2 if (stage > 0 and b == 0) else 1
                x = BasicBlock(planes, stride, self.dtype, self.conv_impl,
                               name=f"layer{stage + 1}_{b}")(x, mode)
        x = nn.relu(BatchNorm(name="bn")(x, mode))
        x = jnp.mean(x, axis=(1, 2))
        return f32(nn.Dense(self.num_classes, kernel_init=torch_linear_init(widths[2]),
                            bias_init=torch_linear_init(widths[2]), dtype=self.dtype,
                            name="fc")(x))


def check_depth(depth: int) -> int:
    """Blocks per stage n for PreResNet-depth; raises unless depth = 6n + 2 with n >= 1."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"PreResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 26, 32, 44, 56, 110, ...); "
            f"got depth={depth!r}")
    return (depth - 2) // 6
