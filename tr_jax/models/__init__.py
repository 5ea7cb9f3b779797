"""Model registry and the functional boundary: init / apply on plain pytrees (SPEC §1.2).

    model = tj.models.preresnet(depth=20, num_classes=10, width=1)      # or vgg(16), densenet(40)
    model = tj.models.build("vgg_bn", depth=16, num_classes=10)         # by name (configs)
    variables = tj.models.init(model, key, input_shape=(32, 32, 3))   # {'params', 'batch_stats'}
    logits = tj.models.apply(model, variables, images)                 # eval mode
    logits, variables = tj.models.apply(model, variables, images, train=True)

Architectures (``ARCHS``): ``preresnet`` (depth 6n+2, any width), ``vgg`` and ``vgg_bn`` (depth
11/13/16/19, the reference's ``vgg16`` / ``vgg16_bn``), ``densenet`` (depth 3n+4, growth 12).
VGG without BN has an empty ``batch_stats``. Reference state_dicts: ``from_torch`` / ``to_torch``.

Your own model works everywhere a built-in one does (``tr_jax.models.adapters``): any Linen module
called as ``__call__(x, train: bool)`` (``flax.linen.BatchNorm`` as it is; ``from_linen(m,
train_arg=...)`` for another flag name), or an NNX model ``from_nnx(lambda rngs: Net(rngs=rngs))``.
Which parameters pruning touches: ``is_prunable(path, leaf, leaves)`` (``prune.leaves``).
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
from tr_jax.models.adapters import (LinenAdapter, NativeAdapter, NNXAdapter, adapter,
                                     from_linen, from_nnx, nnx_variables)
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


def init(model: Any, key: jax.Array, input_shape: tuple[int, int, int]) -> dict:
    """Fresh variables ``{'params', 'batch_stats'}`` for inputs of shape [H, W, C].

    ``model``: a built-in model, any Linen module, or an NNX model through ``from_nnx`` (see
    ``tr_jax.models.adapters``). Jitted (one compile per model and shape): Flax's eager init
    dispatches every initializer op separately, 8 s for PreResNet-8 on a 2-core CPU against ~1 s
    compiled. Also vmappable over keys.
    """
    return _init(adapter(model), key, tuple(input_shape))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(model, key: jax.Array, input_shape: tuple[int, ...]) -> dict:
    return model.init(key, input_shape)


def apply(model: Any, variables: dict, images: jnp.ndarray, train: bool = False,
          mode: str | None = None):
    """Forward pass on NHWC float images, for any model ``init`` takes.

    ``train=False`` (or mode='eval'): logits with running statistics.
    ``train=True`` (mode='train'): ``(logits, variables)`` with updated running statistics.
    mode='frozen': logits with batch statistics, running statistics unchanged.
    mode='collect': ``(logits, bn_stats)``: per-layer batch mean and unbiased variance, in the
    layout of ``batch_stats`` (SPEC §2.2; for ``flax.linen.BatchNorm`` / ``nnx.BatchNorm`` captured
    from each layer's input, see ``tr_jax.models.adapters``).
    """
    mode = mode or ("train" if train else "eval")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    return adapter(model).apply(variables, images, mode)


#: ``prune.leaves`` presets (SPEC §1.5): which parameters are prunable
LEAVES = ("conv", "conv+dense")


def path_str(path: tuple) -> str:
    """A parameter's path as ``'layer1_0/conv1/kernel'`` (what a ``prune.leaves`` regex sees)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_leaves(leaves: str) -> str:
    """``leaves`` if it is a preset of ``LEAVES`` or a valid regex, else a ValueError naming it."""
    if leaves in LEAVES:
        return leaves
    try:
        re.compile(leaves)
    except (re.error, TypeError) as e:
        raise ValueError(f"prune.leaves={leaves!r} is neither one of {LEAVES} nor a valid regex "
                         f"over parameter paths such as 'Conv_0/kernel': {e}") from e
    return leaves


def is_prunable(path: tuple, leaf: Any, leaves: str = "conv") -> bool:
    """The one place that says which parameters are prunable (SPEC §1.5).

    ``leaves='conv'`` (the reference): every conv kernel, the 4-D leaves (HWIO); the classifier,
    BN parameters and biases never are. ``'conv+dense'``: also every 2-D ``kernel`` leaf (Dense
    layers). Anything else is a regex, matched with ``re.search`` against ``path_str(path)``
    (e.g. ``'block2/.*kernel'``); the regex alone decides.
    """
    ndim = getattr(leaf, "ndim", 0)
    if leaves == "conv":
        return ndim == 4
    if leaves == "conv+dense":
        return ndim == 4 or (ndim == 2 and path_str(path).rsplit("/", 1)[-1] == "kernel")
    return re.search(check_leaves(leaves), path_str(path)) is not None


from tr_jax.models.torch_import import from_torch, to_torch  # noqa: E402  (needs build)

__all__ = ["ARCHS", "LEAVES", "VGG", "BatchNorm", "DenseNet", "LinenAdapter", "NNXAdapter",
           "NativeAdapter", "PreResNet", "adapter", "apply", "build", "check_leaves", "densenet",
           "from_linen", "from_nnx", "from_torch", "init", "is_prunable", "nnx_variables",
           "path_str", "preresnet", "to_torch", "vgg"]
