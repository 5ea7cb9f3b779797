"""Checkpoints brought from outside (the authors' PyTorch files) and the measures of a pair of them.

``import_torch`` converts a reference checkpoint (state_dict, ``.pth.tar``, pruned or not;
docs/fidelity.md, Architectures) into a tr_jax checkpoint directory: an orbax checkpoint of
``{'variables', 'mask'}``
plus ``meta.json`` (arch, depth, num_classes, width, density, source). ``measure_pair`` runs the
measure stages (docs/fidelity.md, LMC, CKA, Hessian trace) on two such checkpoints (two
retrained copies of one pruned network):
LMC with the loss barrier, CKA of softmax outputs and logits, test errors, the Hessian trace and
top eigenvalue, and optionally a trained Bezier curve.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from tr_jax import __version__, landscape, measures, models, pruning
from tr_jax import members as mem
from tr_jax.config import default_config
from tr_jax.errors import UserError
from tr_jax.files import atomic_write_text


def import_torch(source: str | os.PathLike, out_dir: str | os.PathLike, *, arch: str, depth: int,
                 num_classes: int, width: float = 1.0) -> dict:
    """Convert ``source`` into the tr_jax checkpoint ``out_dir``; returns its meta data.

    The architecture is checked against the file: another architecture raises a ValueError
    naming the missing/unexpected keys and what the file looks like."""
    variables, masks = models.from_torch(source, arch=arch, depth=depth, num_classes=num_classes,
                                         width=width, return_masks=True)
    out = pathlib.Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(out / "checkpoint", jax.tree.map(np.asarray, {"variables": variables, "mask": masks}),
              force=True)
    ckpt.wait_until_finished()
    meta = {"arch": arch, "depth": int(depth), "num_classes": int(num_classes),
            "width": float(width), "density": float(pruning.mask_density(masks)),
            "source": str(source), "tr_jax_version": __version__}
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1) + "\n")
    return meta


def require_imported(path: str | os.PathLike) -> pathlib.Path:
    """The absolute path of the checkpoint directory ``path`` written by ``import_torch``; a
    :class:`~tr_jax.errors.UserError` naming it when it is missing, a file, or has no meta.json."""
    path = pathlib.Path(path).absolute()
    make = "make one with: tr-jax import-torch FILE --arch ... --out DIR"
    if not path.exists():
        raise UserError(f"no such directory: {str(path)!r} (an imported checkpoint; {make})")
    if not path.is_dir():
        raise UserError(f"{str(path)!r} is a file, not an imported checkpoint directory; {make}")
    if not (path / "meta.json").is_file():
        raise UserError(f"{str(path)!r} is not a tr_jax imported checkpoint (no meta.json); "
                        f"{make}")
    return path


def load_imported(path: str | os.PathLike) -> tuple[Any, dict, dict, dict]:
    """(model, variables, mask, meta) of a checkpoint written by ``import_torch``."""
    path = require_imported(path)
    meta = json.loads((path / "meta.json").read_text())
    model = models.build(meta["arch"], depth=meta["depth"], num_classes=meta["num_classes"],
                         width=meta["width"])
    tree = ocp.StandardCheckpointer().restore(path / "checkpoint")
    tree = jax.tree.map(jnp.asarray, tree)
    return model, tree["variables"], tree["mask"], meta


def _check_compatible(meta_a: dict, meta_b: dict, mask_a: dict, mask_b: dict, ds) -> None:
    keys = ("arch", "depth", "num_classes", "width")
    if any(meta_a[k] != meta_b[k] for k in keys):
        raise ValueError("the two checkpoints are different models: "
                         + ", ".join(f"{k}: {meta_a[k]!r} vs {meta_b[k]!r}" for k in keys
                                     if meta_a[k] != meta_b[k]))
    if meta_a["num_classes"] != ds.num_classes:
        raise ValueError(f"the checkpoints have {meta_a['num_classes']} classes, dataset "
                         f"{ds.name!r} has {ds.num_classes}")
    same = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(mask_a),
                                                            jax.tree.leaves(mask_b)))
    if not same:
        raise ValueError("the two checkpoints do not share a mask: LMC between retrained copies "
                         "of one pruned network needs the same mask")


class _PairGrid:
    """The grid of one pair of imported members (0 and 1): what a measure reads of a sweep's
    grid. Both members share one PRNG key per measure (a pair with itself measures alike)."""
    retrain_seeds = (0, 1)
    num_members, num_cells, pairs_per_cell = 2, 1, 1

    def __init__(self, seed: int):
        self._key = np.asarray(jax.random.key_data(jax.random.key(seed)), np.uint32)

    def pairs(self):
        return [(0, 1)]

    def pairs_array(self):
        return np.array([[0, 1]])

    def bezier_keys(self, root):
        return self._key[None]

    def hessian_keys(self, root):
        return np.stack([self._key, self._key])

    esd_keys = hessian_keys


def measure_pair(path_a: str | os.PathLike, path_b: str | os.PathLike, ds, *, lmc_points: int = 11,
                 bn_batch_size: int = 64, cka_images: int = 6464, hessian: bool = True,
                 hessian_images: int = 200, hessian_probes: int = 100, bezier_epochs: int = 0,
                 seed: int = 0, eval_batch_size: int = 0) -> dict[str, Any]:
    """Every registered landscape measure (:mod:`tr_jax.measures`) for two imported checkpoints
    on dataset ``ds`` (a ``tr_jax.data.Dataset``), with the settings of a sweep's config except
    those given here. Returns a dict of floats and curves (lists): a pair metric under its name,
    a member metric as ``{name}_a`` / ``{name}_b``, a measure's curve as ``{measure}_t``,
    ``{measure}_train_error`` and ``{measure}_test_error``."""
    model, va, ma, meta_a = load_imported(path_a)
    _, vb, mb, meta_b = load_imported(path_b)
    _check_compatible(meta_a, meta_b, ma, mb, ds)
    X, Y = jnp.asarray(ds.train_images), jnp.asarray(ds.train_labels)
    Xt, Yt = jnp.asarray(ds.test_images), jnp.asarray(ds.test_labels)
    cfg = default_config()
    m = cfg.measure
    m.lmc_points, m.bn_batch_size, m.cka_images = lmc_points, bn_batch_size, cka_images
    m.hessian.update(enabled=hessian, images=hessian_images, max_probes=hessian_probes,
                     chunk=min(10, hessian_probes), eig_iters=hessian_probes)
    m.bezier.update(enabled=bezier_epochs > 0, epochs=max(1, bezier_epochs))
    cfg.run.eval_batch_size = eval_batch_size
    stack = lambda a, b: jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b)  # noqa: E731
    retrained = {"variables": stack(va, vb), "mask": stack(ma, mb)}
    inputs = measures.Inputs(cfg=cfg, grid=_PairGrid(seed), ds=ds, model=model, X=X, Y=Y, Xt=Xt,
                             Yt=Yt, root=None, stacked=False, strategy="loop", take=mem.take,
                             pad=np.asarray)
    out: dict[str, Any] = {
        "meta": meta_a, "dataset": ds.name,
        "test_error_a": float(landscape.evaluate(model, va, Xt, Yt, ds.mean, ds.std)["error"]),
        "test_error_b": float(landscape.evaluate(model, vb, Xt, Yt, ds.mean, ds.std)["error"]),
    }
    for measure in measures.enabled(cfg):
        items = np.arange(1 if measure.unit == "pair" else 2)
        res = dict(measure.compute(inputs, retrained, items))
        if measure.finish is not None:
            res.update(measure.finish(inputs, res))
        names = measure.layer_names(inputs, retrained) if measure.layer_names else ()
        for metric in measure.metrics:
            v = np.asarray(res[metric.key], np.float64)
            if metric.layers:  # {layer: value} per pair or member
                rows = [dict(zip(names, map(float, r))) for r in v]
                if measure.unit == "pair":
                    out[metric.name] = rows[0]
                else:
                    out[f"{metric.name}_a"], out[f"{metric.name}_b"] = rows
            elif measure.unit == "pair":
                out[metric.name] = float(v[0])
            else:
                out[f"{metric.name}_a"], out[f"{metric.name}_b"] = float(v[0]), float(v[1])
        if measure.curve:
            out[f"{measure.name}_t"] = np.asarray(res["ts"]).tolist()
            for k in ("train_error", "test_error"):
                out[f"{measure.name}_{k}"] = np.asarray(res[f"curve_{k}"][0]).tolist()
    return out
