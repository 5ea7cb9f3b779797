"""Model registry and the functional boundary: init / apply on plain pytrees (docs/fidelity.md,
Architectures).

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

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp

from tr_jax.models.adapters import (LinenAdapter, NativeAdapter, NNXAdapter, adapter,
                                     from_linen, from_nnx, nnx_variables)
from tr_jax.models.batchnorm import MODES, BatchNorm
from tr_jax.models.densenet import DenseNet
from tr_jax.models.preresnet import PreResNet
from tr_jax.models.registry import ARCHS, build, densenet, preresnet, vgg
from tr_jax.models.torch_import import from_torch, to_torch
from tr_jax.models.vgg import VGG


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
    layout of ``batch_stats`` (BN recalibration; for ``flax.linen.BatchNorm`` / ``nnx.BatchNorm`` captured
    from each layer's input, see ``tr_jax.models.adapters``).
    """
    mode = mode or ("train" if train else "eval")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    return adapter(model).apply(variables, images, mode)


#: ``prune.leaves`` presets: which parameters are prunable
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
    """The one place that says which parameters are prunable (docs/fidelity.md, Magnitude pruning).

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


__all__ = ["ARCHS", "LEAVES", "VGG", "BatchNorm", "DenseNet", "LinenAdapter", "NNXAdapter",
           "NativeAdapter", "PreResNet", "adapter", "apply", "build", "check_leaves", "densenet",
           "from_linen", "from_nnx", "from_torch", "init", "is_prunable", "nnx_variables",
           "path_str", "preresnet", "to_torch", "vgg"]
