"""The built-in architectures by name: ``build(arch, depth, ...)`` (what a config's ``model.arch``
and ``tr_jax.models.torch_import`` use) and one constructor per architecture."""
from __future__ import annotations

import difflib
import re

import flax.linen as nn

from tr_jax.models import densenet as _densenet
from tr_jax.models import vgg as _vgg
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
