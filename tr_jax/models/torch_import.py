"""Reference (PyTorch) state_dicts <-> tr_jax variables, all architectures (docs/fidelity.md, Architectures).

Keys follow the reference's ``state_dict``; a ``module.`` prefix (DataParallel) is stripped:

* PreResNet: ``conv1.weight``, ``layer{s}.{b}.{bn1,conv1,bn2,conv2}.*``,
  ``layer{s}.0.downsample.0.weight``, ``bn.*``, ``fc.{weight,bias}``;
* VGG: ``features.{i}.{weight,bias}`` (conv, or BN in ``_bn`` variants: the Sequential index ``i``
  counts ReLUs and pools too), ``classifier.{weight,bias}``;
* DenseNet: ``conv1.weight``, ``dense{1,2,3}.{i}.{bn1,conv1}.*``, ``trans{1,2}.{bn1,conv1}.*``,
  ``bn.*``, ``fc.{weight,bias}``.

The mapping is one rule for all of them: a numeric key part joins the module name before it
(``layer1.0`` <-> ``layer1_0``, ``features.3`` <-> ``features_3``; PreResNet's ``downsample.0`` is
``downsample``); BN ``weight, bias, running_mean, running_var`` <-> params ``scale, bias`` and
batch_stats ``mean, var`` (``num_batches_tracked`` is dropped, and written as 0 by ``to_torch``);
conv ``weight`` OIHW <-> ``kernel`` HWIO; Linear ``weight`` [out, in] <-> ``kernel`` [in, out].

Pruned checkpoints (``torch.nn.utils.prune``, as the reference's ``prune.py`` saves them) store
``X.weight_orig`` and ``X.weight_mask`` for every conv and Linear (the reference re-parametrises all
of them; the Linear's mask is all ones): the imported weight is ``weight_orig * weight_mask`` and
the mask becomes tr_jax's mask pytree.
torch is imported only to read a ``.pth`` / ``.pth.tar`` file (``pip install tr_jax[torch]``).
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from typing import Any, Mapping

import numpy as np

from tr_jax.errors import UserError
from tr_jax.models.registry import build

_BN_FROM_TORCH = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                  "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_BN_TO_TORCH = {v: k for k, v in _BN_FROM_TORCH.items()}
_RENAMES = {"downsample_0": "downsample"}  # PreResNet: Sequential(conv) <-> one flax Conv
_STEMS = {"preresnet": "conv1", "densenet": "conv1", "vgg": "features.0", "vgg_bn": "features.0"}
_HEADS = {"preresnet": "fc", "densenet": "fc", "vgg": "classifier", "vgg_bn": "classifier"}
_VGG_DEPTHS = {8: 11, 10: 13, 13: 16, 16: 19}  # conv layers -> VGG depth


# ----------------------------------------------------------------------------- reading

def _to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device, any float dtype) or array-like -> numpy (float32 if float)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
    x = np.asarray(x)
    return x.astype(np.float32, copy=False) if x.dtype.kind in "fbiu" else x


def _torch_load(path: str) -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading the PyTorch checkpoint {path!r} needs torch: "
                          "pip install tr_jax[torch] (or pass a dict of numpy arrays)") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # refused: a pickled model object or foreign types inside
        raise ValueError(f"could not read {path!r} with torch.load(weights_only=True): {e}. If "
                         "you trust the file, load it yourself (weights_only=False) and pass the "
                         "state_dict") from e


def read_state_dict(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, np.ndarray]:
    """Flat ``{key: numpy array}`` from a state_dict, a ``.pth`` / ``.pth.tar`` file (a state_dict
    or a dict with a ``"state_dict"`` entry, as the reference saves) or an ``.npz``; ``module.``
    prefixes stripped, ``num_batches_tracked`` dropped."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            raise UserError(f"{path!r} is a directory, not a checkpoint file (.pth, .pth.tar "
                            f"or .npz)")
        if not os.path.isfile(path):
            raise UserError(f"no such file: {path!r} (the checkpoint to read: a .pth, .pth.tar "
                            f"or .npz file)")
        source = dict(np.load(path)) if path.endswith(".npz") else _torch_load(path)
    if isinstance(source, Mapping) and "state_dict" in source:
        source = source["state_dict"]
    if not isinstance(source, Mapping):
        raise TypeError(f"expected a state_dict (a mapping of names to tensors), got "
                        f"{type(source).__name__}")
    return {k.removeprefix("module."): _to_numpy(v) for k, v in source.items()
            if not k.endswith("num_batches_tracked")}


# ----------------------------------------------------------------------------- names

def _flax_modules(torch_prefix: str) -> tuple[str, ...]:
    """``layer1.0.downsample.0`` -> ``('layer1_0', 'downsample')``."""
    out: list[str] = []
    for part in torch_prefix.split(".") if torch_prefix else []:
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return tuple(_RENAMES.get(p, p) for p in out)


def _torch_prefix(modules: tuple[str, ...]) -> str:
    """Inverse of ``_flax_modules``: ``('features_3',)`` -> ``features.3``."""
    inverse = {v: k for k, v in _RENAMES.items()}
    return ".".join(re.sub(r"^(.*)_(\d+)$", r"\1.\2", inverse.get(m, m)) for m in modules)


def torch_key(path: tuple[str, ...], bn: bool) -> str:
    """Reference key of a flax leaf ``(collection, *modules, leaf)``; ``bn``: the module is a BN."""
    coll, *modules, leaf = path
    plain = {"kernel": "weight", "bias": "bias"}
    if bn or leaf not in plain:  # BN leaves also of a module that is not a BN in this tree
        name = _BN_TO_TORCH.get((coll, leaf), leaf)  # (an unexpected key: name it, never crash)
    else:
        name = plain[leaf]
    return f"{_torch_prefix(tuple(modules))}.{name}"


def _bn_modules(sd: Mapping[str, np.ndarray]) -> set[str]:
    """Module prefixes that are BatchNorms: they keep running stats or have a 1-D weight."""
    out = set()
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf in ("running_mean", "running_var") or (leaf == "weight" and value.ndim == 1):
            out.add(prefix)
    return out


def _from_torch_layout(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T if a.ndim == 2 else a


def _to_torch_layout(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T if a.ndim == 2
                                else a)


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


# ----------------------------------------------------------------------------- conversion

def _merge_pruned(sd: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``X.weight_orig``, ``X.weight_mask`` -> ``X.weight = orig * mask``; (sd, masks by key)."""
    out, masks = {}, {}
    for key, value in sd.items():
        if key.endswith(".weight_mask"):
            continue
        if key.endswith(".weight_orig"):
            base = key.removesuffix("_orig")
            mask_key = base + "_mask"
            if mask_key not in sd:
                raise ValueError(f"pruned checkpoint has {key!r} but no {mask_key!r}")
            masks[base] = sd[mask_key].astype(np.float32)
            out[base] = value * masks[base]
        else:
            out[key] = value
    stray = [k for k in sd if k.endswith(".weight_mask") and k.removesuffix("_mask") not in masks]
    if stray:
        raise ValueError(f"weight_mask without weight_orig: {stray[:5]}")
    return out, masks


def _convert(sd: Mapping[str, np.ndarray]) -> tuple[dict, dict, bool]:
    """(variables, masks shaped like params, pruned?) from a flat reference state_dict."""
    sd, torch_masks = _merge_pruned(dict(sd))
    bns = _bn_modules(sd)
    variables: dict = {"params": {}, "batch_stats": {}}
    masks: dict = {}
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        modules = _flax_modules(prefix)
        if prefix in bns:
            if leaf not in _BN_FROM_TORCH:
                raise ValueError(f"unexpected BatchNorm entry {key!r}")
            coll, name = _BN_FROM_TORCH[leaf]
        elif leaf in ("weight", "bias"):
            coll, name = "params", {"weight": "kernel", "bias": "bias"}[leaf]
        else:
            raise ValueError(f"unexpected state_dict entry {key!r} (not a weight, bias or BN stat)")
        arr = _from_torch_layout(value)
        _set(variables[coll], (*modules, name), arr)
        if coll == "params":
            mask = torch_masks.get(key)
            _set(masks, (*modules, name),
                 np.ones_like(arr) if mask is None else _from_torch_layout(mask))
    return variables, masks, bool(torch_masks)


# ----------------------------------------------------------------------------- checking

def guess_arch(state_dict: Mapping[str, Any] | str | os.PathLike) -> dict | None:
    """``{arch, depth, num_classes, width}`` that a reference state_dict looks like, or None."""
    return _guess(read_state_dict(state_dict))


def _guess(sd: Mapping[str, np.ndarray]) -> dict | None:
    """``guess_arch`` on a flat numpy state_dict: the stem and block names pick the arch, the
    number of blocks (VGG: of convs) the depth, the classifier the classes."""

    def shape(module: str) -> tuple | None:
        w = sd.get(f"{module}.weight", sd.get(f"{module}.weight_orig"))
        return None if w is None else tuple(w.shape)

    def blocks(stem: str) -> int:
        return len({k.split(".")[1] for k in sd if k.startswith(stem + ".")})

    head = shape("fc") or shape("classifier")
    num_classes = head[0] if head else None
    if any(k.startswith("features.") for k in sd):
        convs = [k for k, v in sd.items() if k.startswith("features.") and v.ndim == 4
                 and not k.endswith("_mask")]
        bn = any(k.startswith("features.") for k in _bn_modules(sd))
        return {"arch": "vgg_bn" if bn else "vgg", "depth": _VGG_DEPTHS.get(len(convs)),
                "num_classes": num_classes, "width": 1.0}
    if blocks("dense1"):
        return {"arch": "densenet", "depth": 3 * blocks("dense1") + 4,
                "num_classes": num_classes, "width": 1.0}
    if blocks("layer1"):
        stem = shape("conv1")
        return {"arch": "preresnet", "depth": 6 * blocks("layer1") + 2,
                "num_classes": num_classes, "width": stem[0] / 16 if stem else 1.0}
    return None


def expected_shapes(arch: str, depth: int, num_classes: int, width: float = 1.0,
                    in_channels: int = 3) -> dict:
    """``{'params', 'batch_stats'}`` of a model as ``jax.ShapeDtypeStruct`` leaves (no compute)."""
    import jax
    import jax.numpy as jnp

    model = build(arch, depth=depth, num_classes=num_classes, width=width)
    x = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
    v = jax.eval_shape(lambda k, x: model.init(k, x, mode="eval"), jax.random.key(0), x)
    return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def _is_bn(path: tuple[str, ...], flat: Mapping[tuple[str, ...], Any]) -> bool:
    """Whether the module of a flat-variables path is a BatchNorm (it has a ``scale``)."""
    return ("params", *path[1:-1], "scale") in flat


def _describe(what: str, keys: list[str]) -> str:
    return f"{len(keys)} {what} ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})"


def check_structure(variables: Mapping, arch: str, depth: int, num_classes: int | None = None,
                    width: float = 1.0, guess: dict | None = None) -> None:
    """Raise ValueError naming missing / unexpected reference keys and shape mismatches unless
    ``variables`` has exactly the tree and shapes of ``build(arch, depth, num_classes, width)``.
    num_classes None: read from the classifier; input channels: read from the stem conv."""
    got = _flatten(variables)
    stem = got.get(("params", *_flax_modules(_STEMS.get(arch, "conv1")), "kernel"))
    head = got.get(("params", *_flax_modules(_HEADS.get(arch, "fc")), "kernel"))
    if num_classes is None:
        num_classes = head.shape[-1] if head is not None else 10
    in_channels = stem.shape[2] if stem is not None and stem.ndim == 4 else 3
    want = _flatten(expected_shapes(arch, depth, num_classes, width, in_channels))

    def key(p: tuple, tree: dict) -> str:
        return torch_key(p, _is_bn(p, tree))

    def torch_shape(p: tuple, s: tuple) -> tuple:
        return tuple(_to_torch_layout(np.empty(s, np.bool_)).shape) if p[-1] == "kernel" else s

    missing = sorted(key(p, want) for p in want if p not in got)
    unexpected = sorted(key(p, got) for p in got if p not in want)
    shapes = sorted(f"{key(p, want)}: checkpoint {torch_shape(p, tuple(got[p].shape))} vs model "
                    f"{torch_shape(p, tuple(want[p].shape))}" for p in want
                    if p in got and tuple(got[p].shape) != tuple(want[p].shape))
    if not (missing or unexpected or shapes):
        return
    problems = [_describe("missing keys", missing) if missing else "",
                _describe("unexpected keys", unexpected) if unexpected else "",
                _describe("shape mismatches", shapes) if shapes else ""]
    hint = ""
    if guess and guess.get("depth") is not None:
        g = ", ".join(f"{k}={v!r}" for k, v in guess.items() if k != "width" or v != 1.0)
        hint = f" The checkpoint looks like {g}: pass those to from_torch / to_torch."
    raise ValueError(f"checkpoint does not match arch={arch!r}, depth={depth!r}, "
                     f"num_classes={num_classes!r}, width={width!r}: "
                     f"{'; '.join(p for p in problems if p)}.{hint}")


# ----------------------------------------------------------------------------- public API

def from_torch(state_dict: Mapping[str, Any] | str | os.PathLike, arch: str = "preresnet",
               depth: int | None = None, num_classes: int | None = None, width: float = 1.0,
               *, return_masks: bool = False):
    """tr_jax variables ``{'params', 'batch_stats'}`` from a reference state_dict.

    state_dict: a dict of numpy arrays or torch tensors, or a path to a ``.pth`` / ``.pth.tar``
      (a state_dict or ``{"state_dict": ...}``, read with torch on the CPU) or ``.npz`` file.
    depth given: the result is checked against ``build(arch, depth, num_classes, width)`` (same tree
      and shapes) and a checkpoint of another architecture raises a ValueError naming the missing /
      unexpected keys and shape mismatches, with the architecture the checkpoint looks like;
      num_classes None reads it from the classifier. depth None: no check; partial state_dicts are
      converted as they are (e.g. trainable tensors only, or masks only).
    Pruned checkpoints (``X.weight_orig``, ``X.weight_mask``): weight = weight_orig * weight_mask.
    return_masks=False: returns ``variables`` (a pruned checkpoint then warns that its masks are
      dropped). return_masks=True: returns ``(variables, masks)``, masks shaped like
      ``variables['params']`` with float32 1.0 (kept) / 0.0 (pruned), all ones for every leaf the
      checkpoint has no mask for (BN, biases; an unpruned checkpoint gives all ones).
    Leaves are float32 numpy arrays.
    """
    sd = read_state_dict(state_dict)
    variables, masks, pruned = _convert(sd)
    if depth is not None:
        check_structure(variables, arch, depth, num_classes, width, guess=_guess(sd))
    if return_masks:
        return variables, masks
    if pruned:
        warnings.warn("the checkpoint is pruned (weight_orig / weight_mask): its weights are "
                      "imported masked and the masks dropped; pass return_masks=True to keep them",
                      stacklevel=2)
    return variables


def to_torch(variables: Mapping, arch: str = "preresnet", depth: int | None = None,
             num_classes: int | None = None, width: float = 1.0,
             masks: Mapping | None = None) -> dict[str, np.ndarray]:
    """A reference state_dict (numpy arrays) from tr_jax variables; the inverse of ``from_torch``.

    Keys are exactly the reference model's ``state_dict()`` keys (order not significant) with BN's
    ``num_batches_tracked`` as an int64 0-d array 0, so ``model.load_state_dict({k:
    torch.from_numpy(v) ...}, strict=True)`` works. depth given: variables are first checked against
    the architecture (see ``from_torch``). masks (shaped like params): every conv and Linear weight
    is written PyTorch-prune style as ``X.weight_orig`` (the parameter) and ``X.weight_mask`` — the
    reference re-parametrises all of them — for loading into a model after
    ``torch.nn.utils.prune.identity`` on its convs and Linear.
    """
    if depth is not None:
        check_structure(variables, arch, depth, num_classes, width)
    flat = {p: np.asarray(v, np.float32) for p, v in _flatten(
        {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}).items()}
    flat_masks = _flatten(masks) if masks is not None else None
    out: dict[str, np.ndarray] = {}
    for path, value in flat.items():
        bn = _is_bn(path, flat)
        key = torch_key(path, bn)
        if flat_masks is not None and path[-1] == "kernel" and not bn:
            mask = flat_masks.get(path[1:])
            if mask is None or tuple(np.shape(mask)) != value.shape:
                raise ValueError(f"masks has no leaf of shape {value.shape} at "
                                 f"{'/'.join(path[1:])} (for {key})")
            out[key + "_orig"] = _to_torch_layout(value)
            out[key + "_mask"] = _to_torch_layout(np.asarray(mask, np.float32))
        else:
            out[key] = _to_torch_layout(value)
        if bn and path[-1] == "var":
            out[key.removesuffix("running_var") + "num_batches_tracked"] = np.array(0, np.int64)
    return out
