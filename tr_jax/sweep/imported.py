"""Checkpoints brought from outside (the authors' PyTorch files) and the measures of a pair of them.

``import_torch`` converts a reference checkpoint (state_dict, ``.pth.tar``, pruned or not; SPEC
§1.2, §1.5) into a tr_jax checkpoint directory: an orbax checkpoint of ``{'variables', 'mask'}``
plus ``meta.json`` (arch, depth, num_classes, width, density, source). ``measure_pair`` runs the
measure stages of SPEC §2 on two such checkpoints (two retrained copies of one pruned network):
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

from tr_jax import __version__, landscape, models, pruning
from tr_jax.errors import UserError
from tr_jax.sweep import stages
from tr_jax.sweep.store import atomic_write_text


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
                         "of one pruned network needs the same mask (SPEC §1.6)")


def measure_pair(path_a: str | os.PathLike, path_b: str | os.PathLike, ds, *, lmc_points: int = 11,
                 bn_batch_size: int = 64, cka_images: int = 6464, hessian: bool = True,
                 hessian_images: int = 200, hessian_probes: int = 100, bezier_epochs: int = 0,
                 seed: int = 0,
                 eval_batch_size: int = 0) -> dict[str, Any]:
    """Every measure of SPEC §2 for two imported checkpoints on dataset ``ds`` (a
    ``tr_jax.data.Dataset``). Returns a dict of floats and curves (lists)."""
    model, va, ma, meta_a = load_imported(path_a)
    _, vb, mb, meta_b = load_imported(path_b)
    _check_compatible(meta_a, meta_b, ma, mb, ds)
    X, Y = jnp.asarray(ds.train_images), jnp.asarray(ds.train_labels)
    Xt, Yt = jnp.asarray(ds.test_images), jnp.asarray(ds.test_labels)
    add = lambda t: jax.tree.map(lambda x: x[None], t)  # noqa: E731
    ts = np.linspace(0.0, 1.0, lmc_points)
    cur = landscape.pair_curves(model, add(va["params"]), add(vb["params"]), va["batch_stats"], X, Y,
                                mean=ds.mean, std=ds.std, ts=ts, bn_batch_size=bn_batch_size,
                                test=(Xt, Yt), eval_batch_size=eval_batch_size)
    n = min(cka_images, ds.num_train)
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), va, vb)  # the pair as two members
    cka = stages.pair_cka(stages.member_logits(model, both, X[:n], ds.mean, ds.std,
                                               eval_batch_size), np.array([0]), np.array([1]))
    out: dict[str, Any] = {
        "meta": meta_a, "dataset": ds.name,
        "test_error_a": float(landscape.evaluate(model, va, Xt, Yt, ds.mean, ds.std)["error"]),
        "test_error_b": float(landscape.evaluate(model, vb, Xt, Yt, ds.mean, ds.std)["error"]),
        "lmc": float(landscape.lmc(cur["train_error"][0])),
        "loss_barrier": float(landscape.loss_barrier(cur["train_loss"][0])),
        "cka": float(cka["cka_softmax"][0]),
        "cka_logits": float(cka["cka_logits"][0]),
        "lmc_t": ts.tolist(), "lmc_train_error": cur["train_error"][0].tolist(),
        "lmc_test_error": cur["test_error"][0].tolist(),
    }
    key = jax.random.key(seed)
    if hessian:
        m = min(hessian_images, ds.num_train)
        for name, v, mask in (("a", va, ma), ("b", vb, mb)):
            r = landscape.member_hessian(model, v, mask, X[:m], Y[:m], key,
                                         mean=tuple(ds.mean), std=tuple(ds.std),
                                         max_probes=hessian_probes, chunk=min(10, hessian_probes),
                                         max_iters=hessian_probes)
            out[f"hessian_trace_{name}"] = float(r["trace"])
            out[f"hessian_top_eigenvalue_{name}"] = float(r["top_eigenvalue"])
    if bezier_epochs:
        mid, _ = landscape.train_curves(model, add(va["params"]), add(vb["params"]), add(ma),
                                        va["batch_stats"], X, Y, key=key, mean=ds.mean, std=ds.std,
                                        epochs=bezier_epochs, strategy="auto")
        bc = landscape.curve_errors(model, add(va["params"]), mid, add(vb["params"]), X, Y,
                                    mean=ds.mean, std=ds.std, bn_batch_size=bn_batch_size)
        out["bezier_mc"] = float(landscape.mode_connectivity(bc["train_error"][0]))
        out["bezier_train_error"] = bc["train_error"][0].tolist()
    return out
