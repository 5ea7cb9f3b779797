"""Model registry and the functional boundary: init / apply on plain pytrees (SPEC §1.2).

    model = tj.models.preresnet(depth=20, num_classes=10, width=1)      # or vgg(16), densenet(40)
    model = tj.models.build("vgg_bn", depth=16, num_classes=10)         # by name (configs)
    variables = tj.models.init(model, key, input_shape=(32, 32, 3))   # {'params', 'batch_stats'}
    logits = tj.models.apply(model, variables, images)                 # eval mode
    logits, variables = tj.models.apply(model, variables, images, train=True)

Architectures (``ARCHS``): ``preresnet`` (depth 6n+2, any width), ``vgg`` and ``vgg_bn`` (depth
11/13/16/19, the reference's ``vgg16`` / ``vgg16_bn``), ``densenet`` (depth 3n+4, growth 12).
VGG without BN has an empty ``batch_stats``. Reference state_dicts: ``from_torch`` / ``to_torch``.
"""
from __future__ import annotations

import difflib
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tr_jax.models import densenet as _densenet
from tr_jax.models import vgg as _vgg
from tr_jax.models.batchnorm import MODES, BatchNorm
from tr_jax.models.conv import check_conv_impl
from tr_jax.models.densenet import DenseNet
from tr_jax.models.preresnet import PreResNet, check_depth
from tr_jax.models.vgg import VGG

ARCHS = ("preresnet", "vgg", "vgg_bn", "densenet")


def preresnet(depth: int = 20, num_classes: int = 10, width: float = 1.0) -> PreResNet:
    """PreResNet-depth (6n + 2), channels int(16w), int(32w), int(64w)."""
    check_depth(depth)
    return PreResNet(depth=depth, num_classes=num_classes, width=width)


def vgg(depth: int = 16, num_classes: int = 10, batch_norm: bool = True) -> VGG:
    """CIFAR VGG-depth (11, 13, 16, 19), BN after every conv if ``batch_norm`` (``vgg16_bn``)."""
    _vgg.check_depth(depth)
    return VGG(depth=depth, num_classes=num_classes, batch_norm=batch_norm)


def densenet(depth: int = 40, num_classes: int = 10, growth_rate: int = 12,
             compression_rate: float = 1) -> DenseNet:
    """CIFAR DenseNet-depth (3n + 4) with BasicBlocks (no bottleneck), growth 12, compression 1."""
    _densenet.check_depth(depth)
    return DenseNet(depth=depth, num_classes=num_classes, growth_rate=growth_rate,
                    compression_rate=compression_rate)


def _no_width(arch: str, width: float) -> None:
    if width != 1.0:
        raise ValueError(f"width={width!r} is only supported by arch='preresnet'; "
                         f"arch={arch!r} needs width=1.0")


def build(arch: str, depth: int | None = None, num_classes: int = 10,
          width: float = 1.0, conv_impl: str = "xla") -> nn.Module:
    """Model by name (the config entry point): ``arch`` in ``ARCHS``; depth None = the arch's usual
    one (PreResNet-20, VGG-16, DenseNet-40). ``width`` != 1 only for preresnet. ``conv_impl``:
    how the convs are computed (``tr_jax.models.conv.CONV_IMPLS``; same parameters). Unknown names
    raise with a did-you-mean."""
    if check_conv_impl(conv_impl) != "xla":
        return build(arch, depth, num_classes, width).clone(conv_impl=conv_impl)
    if arch == "preresnet":
        return preresnet(20 if depth is None else depth, num_classes, width)
    if arch in ("vgg", "vgg_bn"):
        _no_width(arch, width)
        return vgg(16 if depth is None else depth, num_classes, batch_norm=arch == "vgg_bn")
    if arch == "densenet":
        _no_width(arch, width)
        return densenet(40 if depth is None else depth, num_classes)
    raise ValueError(f"unknown arch {arch!r}; known: {ARCHS}.{_arch_hint(str(arch))}")


def _arch_hint(arch: str) -> str:
    """Did-you-mean for an unknown arch; the reference's names (``vgg16_bn``) get a translation."""
    m = re.fullmatch(r"vgg(\d+)(_bn)?", arch)
    if m:
        return f" Use arch={'vgg' + (m.group(2) or '')!r} with depth={m.group(1)}."
    close = difflib.get_close_matches(arch, ARCHS, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def init(model: nn.Module, key: jax.Array, input_shape: tuple[int, int, int]) -> dict:
    """Fresh variables ``{'params', 'batch_stats'}`` for inputs of shape [H, W, C].

    Jitted (one compile per model and shape): Flax's eager init dispatches every initializer op
    separately, 8 s for PreResNet-8 on a 2-core CPU against ~1 s compiled. Also vmappable over keys.
    """
    return _init(model, key, tuple(input_shape))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> dict:
    variables = model.init(key, jnp.zeros((1, *input_shape), jnp.float32), mode="eval")
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def apply(model: nn.Module, variables: dict, images: jnp.ndarray, train: bool = False,
          mode: str | None = None):
    """Forward pass on NHWC float images.

    ``train=False`` (or mode='eval'): logits with running statistics.
    ``train=True`` (mode='train'): ``(logits, variables)`` with updated running statistics.
    mode='frozen': logits with batch statistics, running statistics unchanged.
    mode='collect': ``(logits, bn_stats)``: per-layer batch mean and unbiased variance.
    """
    mode = mode or ("train" if train else "eval")
    v = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    if mode in ("eval", "frozen"):
        return model.apply(v, images, mode=mode)
    if mode == "train":
        logits, upd = model.apply(v, images, mode="train", mutable=["batch_stats"])
        return logits, {"params": variables["params"], "batch_stats": upd.get("batch_stats", {})}
    if mode == "collect":
        logits, upd = model.apply(v, images, mode="collect", mutable=["bn_stats"])
        return logits, upd.get("bn_stats", {})
    raise ValueError(f"mode {mode!r} is not one of {MODES}")


def is_prunable(path: tuple, leaf: Any) -> bool:
    """The one place that says which parameters are prunable: every conv kernel (SPEC §1.5).

    Conv kernels are the 4-D leaves (HWIO); the classifier, BN parameters and biases never are.
    """
    return getattr(leaf, "ndim", 0) == 4


from tr_jax.models.torch_import import from_torch, to_torch  # noqa: E402  (needs build)

__all__ = ["ARCHS", "VGG", "BatchNorm", "DenseNet", "PreResNet", "apply", "build", "densenet",
           "from_torch", "init", "is_prunable", "preresnet", "to_torch", "vgg"]
