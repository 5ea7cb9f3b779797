"""CIFAR VGG-11/13/16/19 with and without BN, structure and init of the reference
(docs/fidelity.md, Architectures).

The reference's ``models/cifar/vgg.py`` (from the "rethinking network pruning" codebase):

* ``features``: configs A/B/D/E; each number is a 3x3 conv (pad 1, **with bias**), followed by
  BN (``_bn`` variants only) and ReLU; each ``'M'`` is a 2x2 max-pool, stride 2. The stack ends
  without a final pool;
* head: AvgPool 2x2 -> 512-d -> one Linear(512 -> classes) (no hidden FC layers).

Init: convs N(0, sqrt(2 / (k*k*in))) (He **fan-in**, untruncated normal), conv bias 0; BN 1/0;
Linear N(0, 0.01), bias 0.

Module names follow the reference's state_dict: the conv / BN at index ``i`` of the
``nn.Sequential`` (ReLUs and pools take indices too) is ``features_{i}`` (``features.{i}.*`` in
PyTorch), the Linear is ``classifier``.

Small inputs (tr_jax's own extension; 32x32 is exactly the reference): a 2x2 pool only pools the
spatial axes that have at least 2 pixels (a 1-pixel axis passes through; the reference's
``MaxPool2d`` would fail there), and the head averages the whole final map when it is at most 2x2
(at 32x32 the map is exactly 2x2, so this *is* ``AvgPool2d(2)``). On 8x8 digits VGG thus ends on a
1x1x512 map. A final map larger than 2x2 (inputs above 32x32) would not give 512 features in the
reference and raises.

``dtype`` (mixed precision, as PreResNet): the convs (with their bias) and the classifier compute in
``dtype``; parameters stay float32 and every conv/classifier output is cast back to float32, so
BatchNorm, the pools and the loss are float32. ``conv_impl``: how the convs are computed
(``tr_jax.models.conv``); the parameters are the same.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from tr_jax.models.batchnorm import BatchNorm
from tr_jax.models.conv import conv

CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512),
}

conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # untruncated
linear_init = nn.initializers.normal(stddev=0.01)


def check_depth(depth: int) -> tuple:
    """The layer config (channels and ``'M'`` pools) of VGG-depth; raises unless depth is known."""
    if not isinstance(depth, int) or depth not in CONFIGS:
        raise ValueError(f"VGG depth must be one of {tuple(CONFIGS)} (configs A/B/D/E); "
                         f"got depth={depth!r}")
    return CONFIGS[depth]


def layer_indices(depth: int, batch_norm: bool) -> list[tuple[int, int | None]]:
    """``(conv index, BN index or None)`` in the reference's ``features`` Sequential."""
    out, i = [], 0
    for v in check_depth(depth):
        if v == "M":
            i += 1
            continue
        out.append((i, i + 1 if batch_norm else None))
        i += 3 if batch_norm else 2  # conv, [BN,] ReLU
    return out


def max_pool2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max-pool, stride 2, floor mode (PyTorch's), on NHWC; 1-pixel axes pass through."""
    window = tuple(2 if s >= 2 else 1 for s in x.shape[1:3])
    return nn.max_pool(x, window, strides=window, padding="VALID")


class VGG(nn.Module):
    """VGG-``depth`` (11, 13, 16, 19) for CIFAR, with BN after every conv if ``batch_norm``."""

    depth: int = 16
    num_classes: int = 10
    batch_norm: bool = True
    dtype: Any = jnp.float32  # compute dtype of convs and classifier; params stay float32
    conv_impl: str = "xla"  # how convs are computed (tr_jax.models.conv); same parameters

    @nn.compact
    def __call__(self, x: jnp.ndarray, mode: str = "eval") -> jnp.ndarray:
        """x: [batch, H, W, C] -> logits [batch, num_classes]."""
        convs = iter(layer_indices(self.depth, self.batch_norm))
        for v in check_depth(self.depth):
            if v == "M":
                x = max_pool2(x)
                continue
            ci, bi = next(convs)
            x = conv(v, 3, 1, 1, name=f"features_{ci}", kernel_init=conv_init, use_bias=True,
                     dtype=self.dtype, conv_impl=self.conv_impl)(x).astype(jnp.float32)
            if bi is not None:
                x = BatchNorm(name=f"features_{bi}")(x, mode)
            x = nn.relu(x)
        if x.shape[1] > 2 or x.shape[2] > 2:
            raise ValueError(f"VGG's head expects a final map of at most 2x2 (inputs up to 32x32), "
                             f"got {x.shape[1]}x{x.shape[2]}")
        x = jnp.mean(x, axis=(1, 2))  # = AvgPool2d(2) on the 2x2 map of a 32x32 input
        return nn.Dense(self.num_classes, kernel_init=linear_init, bias_init=nn.initializers.zeros,
                        dtype=self.dtype, name="classifier")(x).astype(jnp.float32)
