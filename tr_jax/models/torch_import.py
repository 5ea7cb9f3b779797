"""Reference (PyTorch) state_dicts <-> tr_jax variables for PreResNet (SPEC §1.2, §7).

Keys follow the reference's ``state_dict`` (a ``module.`` prefix from DataParallel is stripped):
``conv1.weight``, ``layer{s}.{b}.{bn1,conv1,bn2,conv2}.*``, ``layer{s}.0.downsample.0.weight``,
``bn.*``, ``fc.weight``, ``fc.bias``. Conv kernels OIHW <-> HWIO, Linear [out, in] <-> [in, out].
torch is never imported: tensors are converted with ``.detach().cpu().numpy()`` when they have it.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _path(key: str) -> tuple[str, tuple[str, ...]]:
    """Reference key -> (collection, flax path)."""
    parts = key.split(".")
    if parts[0].startswith("layer"):
        parts = [f"{parts[0]}_{parts[1]}"] + parts[2:]
    if parts[-2:-1] == ["0"] and "downsample" in parts:  # layerX_0.downsample.0.weight
        parts = parts[:-2] + ["weight"]
    leaf = parts[-1]
    mods = parts[:-1]
    if mods[-1].startswith("bn") or mods[-1] == "bn":
        coll, name = _BN[leaf]
        return coll, (*mods, name)
    return "params", (*mods, "kernel" if leaf == "weight" else "bias")


def from_torch(state_dict: Mapping[str, Any], arch: str = "preresnet") -> dict:
    """Variables ``{'params', 'batch_stats'}`` from a reference PreResNet state_dict."""
    if arch != "preresnet":
        raise NotImplementedError(f"from_torch supports arch='preresnet' so far, got {arch!r}")
    out: dict = {"params": {}, "batch_stats": {}}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.endswith("num_batches_tracked"):
            continue
        coll, path = _path(key)
        arr = _np(value)
        if arr.ndim == 4:
            arr = arr.transpose(2, 3, 1, 0)
        elif arr.ndim == 2:
            arr = arr.T
        node = out[coll]
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = arr
    return out
