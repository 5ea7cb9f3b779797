"""Experiment configuration: the schema (every key, with its default) and validation.

A config file (``configs/*.py``) defines ``get_config()`` returning an ``ml_collections.ConfigDict``
built from ``default_config()``. Every key a user sets must exist in the schema: an unknown or
mistyped key is an error that names it and suggests the closest known key.

A config file may also define ``get_model()`` (a Flax model: a Linen module, or
``tj.models.from_nnx(...)``) and/or ``get_dataset()`` (a ``tj.data.Dataset``, e.g. from
``tj.data.from_arrays``) beside ``get_config()``; ``tr-jax run`` then uses them instead of
``model.arch`` / ``dataset`` (``config_functions``). Either may take the validated config as its one
argument. The config hash then covers the file's whole source text (``code_hash``: the functions
and every class or helper they use from that file), so a changed model is a different workdir;
code imported from elsewhere is not covered.
"""
from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import inspect
import json
import pathlib
from typing import Any, Callable, Iterable

import ml_collections

from tr_jax.data.datasets import check_name
from tr_jax.regimes import RegimeRule

#: temperature-like knobs (SPEC §1.4): what the temperature grid of a sweep varies
KNOBS = ("epochs", "batch_size", "sam_rho", "lr", "weight_decay")
RETRAIN_MODES = ("lr_rewinding", "finetune", "weight_rewinding")


def default_config() -> ml_collections.ConfigDict:
    """The full schema with the paper's settings (SPEC §1.3-1.7) as defaults."""
    c = ml_collections.ConfigDict()
    c.name = "default"
    c.seed = 0                      # root PRNG key: every member key is folded in from it
    c.dataset = "cifar10"           # digits | cifar10 | cifar100 | svhn_cropped | npz:PATH | tfds:NAME
    #                                 | arrays:NAME (given by get_dataset() / dataset=, tr_jax.data)
    c.code_hash = ""                # sha256 of a config file defining get_model/get_dataset (set by
    #                                 load_config, so that the config hash covers that code)
    c.data_dir = ""                 # TFDS data_dir ("" = TFDS default, ~/tensorflow_datasets)
    c.model = ml_collections.ConfigDict(dict(arch="preresnet", depth=20, width=1.0))
    c.knob = "epochs"
    # Temperature grid: for the epochs knob, the dense epochs at which checkpoints are pruned.
    c.temperatures = tuple(range(10, 161, 10))
    c.dense = ml_collections.ConfigDict(dict(
        epochs=160, batch_size=64, lr=0.1, momentum=0.9, weight_decay=1e-4,
        milestones=(80, 120), gamma=0.1, seeds=(1, 2, 3), optimizer="sgd", sam_rho=0.0,
        schedule="epoch", iterations=0, drop_last=False))
    # dense.optimizer: sgd | adam (PyTorch semantics, coupled L2); dense.sam_rho > 0 wraps it in
    # SAM (SPEC §1.4: global-norm perturbation, BN running stats frozen on the second pass).
    c.augment = ml_collections.ConfigDict(dict(pad=4, flip=True))
    c.prune = ml_collections.ConfigDict(dict(
        densities=(0.05, 0.06, 0.07, 0.08, 0.10, 0.14, 0.20, 0.40, 0.80), scope="uniform",
        leaves="conv"))
    # prune.leaves (SPEC §1.5): which weights are pruned, by every scope alike: "conv" (every conv
    # kernel, the reference), "conv+dense" (also Dense kernels) or a regex searched in the
    # parameter path, e.g. "Conv_[1-9]/kernel" (tr_jax.models.is_prunable).
    c.retrain = ml_collections.ConfigDict(dict(
        mode="lr_rewinding", epochs=160, batch_size=64, lr=0.1, momentum=0.9, weight_decay=1e-4,
        milestones=(80, 120), gamma=0.1, seeds=(1, 2, 3), finetune_lr=0.001, rewind_epoch=2,
        schedule="epoch", iterations=0, drop_last=False))
    # {dense,retrain}.schedule: 'epoch' (milestones are 0-indexed epochs, `epochs` epochs) or
    # 'iteration' (milestones are optimiser steps; exactly `iterations` steps, the batch-size
    # experiments of SPEC §1.4 item 2, usually with drop_last=True).
    # retrain.mode (SPEC §1.6, §8.3): lr_rewinding (the reference: pruned trained weights, the
    # retrain schedule lr/milestones re-run), finetune (pruned trained weights, constant
    # finetune_lr, no milestones), weight_rewinding (weights and BN of the dense run at
    # rewind_epoch, masked by the mask of the trained checkpoint, then the retrain schedule).
    c.measure = ml_collections.ConfigDict(dict(
        lmc_points=11, bn_batch_size=64, cka_images=6464, test_error_last_epochs=5,
        points_per_call=0,
        # trained quadratic Bezier curve per pair (SPEC §2.3): middle bend trained, masked
        bezier=ml_collections.ConfigDict(dict(
            enabled=True, epochs=50, batch_size=128, lr=0.01, weight_decay=5e-4, momentum=0.9,
            points=5)),
        # Hessian of every retrained member (SPEC §2.5): eval mode, first `images` training images
        hessian=ml_collections.ConfigDict(dict(
            enabled=True, images=200, max_probes=100, tol=1e-3, chunk=10, eig_iters=100,
            restrict_to_mask=True))))
    # measure.points_per_call: parameter points (pairs x t) per compiled LMC/Bezier evaluation;
    # 0 = auto (1 on CPU, 32 on accelerators: see experiments/bench_landscape.py).
    c.regimes = ml_collections.ConfigDict(RegimeRule().to_dict())
    c.run = ml_collections.ConfigDict(dict(
        members_strategy="auto", chunk_steps=0, eval_batch_size=0, checkpoint_every=5,
        max_members=0, memory_budget_gb=0.0, precision="float32"))
    # precision: compute precision of training, "float32" or "bfloat16" (convs and classifier in
    # bf16; params, BN statistics and the loss float32; see tr_jax.training.steps).
    # max_members: members per compiled program (0 = a whole shape group); memory_budget_gb > 0
    # caps it further by the measured footprint of one member (see `tr-jax run --dry-run`).
    # checkpoint_every: epochs between progress checkpoints inside the dense and retrain stages
    # (a killed run resumes from the last one; 0 = only at the end of a stage).
    # eval_batch_size: test images per evaluation call; 0 = auto (128 on CPU, where 500 images of
    # activations leave the caches, 500 elsewhere); error counts do not depend on it.
    # chunk_steps: train steps per jitted call; 0 = auto (4 Python-unrolled steps on CPU, where a
    # rolled loop of conv steps is slow; a whole epoch as one lax.scan on GPU/TPU).
    return c


def _did_you_mean(key: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _check_keys(cfg: Any, schema: Any, prefix: str = "") -> None:
    for key in cfg.keys():
        if key not in schema:
            raise ValueError(f"unknown config key {prefix + key!r}."
                             f"{_did_you_mean(key, schema.keys())} "
                             f"Known keys{' under ' + prefix[:-1] if prefix else ''}: "
                             f"{sorted(schema.keys())}")
        if isinstance(schema[key], ml_collections.ConfigDict):
            if not isinstance(cfg[key], (ml_collections.ConfigDict, dict)):
                raise ValueError(f"config key {prefix + key!r} must be a group of keys "
                                 f"{sorted(schema[key].keys())}, got {cfg[key]!r}")
            _check_keys(cfg[key], schema[key], prefix + key + ".")


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check keys and values; return the config merged over the defaults. Errors name the value."""
    from tr_jax.models import build
    from tr_jax.pruning import SCOPES, check_density
    from tr_jax.members import resolve

    schema = default_config()
    _check_keys(cfg, schema)
    merged = schema
    merged.update(cfg)  # recursive, keys already checked
    check_name(merged.dataset)
    if merged.knob not in KNOBS:
        raise ValueError(f"temperature knob {merged.knob!r} is not supported (known: {KNOBS})")
    m = merged.model
    try:
        build(m.arch, depth=m.depth, width=m.width)
    except ValueError as e:
        raise ValueError(f"model.arch={m.arch!r}, model.depth={m.depth!r}, model.width={m.width!r}: "
                         f"{e}. Set model.depth (or model.arch) to a valid combination.") from e
    for d in merged.prune.densities:
        try:
            check_density(d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"prune.densities={tuple(merged.prune.densities)!r}: {e}. Give the "
                             "fraction of conv weights kept, e.g. 0.05 for 5% (1.0 = unpruned)."
                             ) from e
    if not len(merged.prune.densities):
        raise ValueError("prune.densities is empty: give at least one density in (0, 1]")
    if merged.prune.scope not in SCOPES:
        raise ValueError(f"prune.scope {merged.prune.scope!r} is not one of {SCOPES}")
    from tr_jax.models import check_leaves
    check_leaves(merged.prune.leaves)
    temps = tuple(merged.temperatures)
    if not temps:
        raise ValueError("temperatures is empty: give the knob's values, e.g. (10, 20) dense epochs")
    if len(set(temps)) != len(temps):
        raise ValueError(f"temperatures {temps!r} repeat a value")
    _check_temperatures(merged, temps)
    from tr_jax.training.loop import SCHEDULES
    for name in ("dense", "retrain"):
        sec = merged[name]
        if sec.schedule not in SCHEDULES:
            raise ValueError(f"{name}.schedule {sec.schedule!r} is not one of {SCHEDULES}")
        if sec.schedule == "iteration" and sec.iterations < 1:
            raise ValueError(f"{name}.schedule='iteration' needs {name}.iterations >= 1 "
                             f"(got {sec.iterations})")
        if sec.batch_size < 1:
            raise ValueError(f"{name}.batch_size={sec.batch_size} must be >= 1")
        if sec.schedule == "epoch" and sec.epochs < 1:
            raise ValueError(f"{name}.epochs={sec.epochs} must be >= 1")
    _check_batch_sizes(merged, temps)
    if merged.knob == "epochs" and merged.dense.schedule != "epoch":
        raise ValueError("knob 'epochs' prunes checkpoints of an epoch-scheduled run: set "
                         "dense.schedule='epoch'")
    if merged.run.max_members < 0 or merged.run.memory_budget_gb < 0:
        raise ValueError(f"run.max_members={merged.run.max_members} and run.memory_budget_gb="
                         f"{merged.run.memory_budget_gb} must be >= 0 (0 = no cap)")
    if len(set(merged.retrain.seeds)) < 2:
        raise ValueError(f"retrain.seeds={tuple(merged.retrain.seeds)!r}: LMC and CKA need at "
                         "least 2 distinct retrain seeds, e.g. retrain.seeds=(1, 2)")
    if merged.retrain.mode not in RETRAIN_MODES:
        raise ValueError(f"retrain.mode {merged.retrain.mode!r} is not one of {RETRAIN_MODES}."
                         f"{_did_you_mean(merged.retrain.mode, RETRAIN_MODES)}")
    if merged.retrain.mode == "weight_rewinding":
        rw = merged.retrain.rewind_epoch
        first = min(temps) if merged.knob == "epochs" else merged.dense.epochs
        if int(rw) != rw or not 0 <= rw < first:
            raise ValueError(f"retrain.rewind_epoch={rw!r} must be an integer epoch of the dense "
                             f"run before {first} (the first pruned checkpoint); 0 = initialisation")
    from tr_jax.training.optim import OPTIMIZERS
    if merged.dense.optimizer not in OPTIMIZERS:
        raise ValueError(f"dense.optimizer {merged.dense.optimizer!r} is not one of {OPTIMIZERS}."
                         f"{_did_you_mean(merged.dense.optimizer, OPTIMIZERS)}")
    if merged.dense.sam_rho < 0:
        raise ValueError(f"dense.sam_rho={merged.dense.sam_rho} must be >= 0 (0 = no SAM)")
    if not merged.dense.seeds:
        raise ValueError("dense.seeds is empty")
    if merged.run.eval_batch_size < 0:
        raise ValueError(f"run.eval_batch_size={merged.run.eval_batch_size} must be >= 0 (0 = auto)")
    if merged.run.chunk_steps < 0:
        raise ValueError(f"run.chunk_steps={merged.run.chunk_steps} must be >= 0 (0 = auto)")
    if merged.run.checkpoint_every < 0:
        raise ValueError(f"run.checkpoint_every={merged.run.checkpoint_every} must be >= 0")
    b, h = merged.measure.bezier, merged.measure.hessian
    if b.enabled and (b.epochs < 1 or b.points < 3):
        raise ValueError(f"measure.bezier: epochs={b.epochs} must be >= 1 and points={b.points} "
                         ">= 3 (or set measure.bezier.enabled=False)")
    if h.enabled and not (1 <= h.images and 1 <= h.chunk <= h.max_probes):
        raise ValueError(f"measure.hessian: images={h.images} must be >= 1 and 1 <= chunk="
                         f"{h.chunk} <= max_probes={h.max_probes}")
    if merged.measure.lmc_points < 2:
        raise ValueError(f"measure.lmc_points={merged.measure.lmc_points} must be >= 2")
    RegimeRule.from_dict(merged.regimes.to_dict())
    resolve(merged.run.members_strategy)
    from tr_jax.training.steps import PRECISIONS
    if merged.run.precision not in PRECISIONS:
        raise ValueError(f"run.precision {merged.run.precision!r} is not one of {PRECISIONS}")
    return merged


def _check_batch_sizes(cfg: ml_collections.ConfigDict, temps: tuple) -> None:
    """Training batch sizes must fit in the training set (known per built-in dataset without
    loading it; other datasets are checked when loaded)."""
    from tr_jax.data.datasets import DATASET_SHAPES
    if cfg.dataset not in DATASET_SHAPES:
        return
    n = DATASET_SHAPES[cfg.dataset][0]
    sizes = [("retrain.batch_size", cfg.retrain.batch_size)]
    if cfg.knob == "batch_size":
        sizes += [("temperatures", t) for t in temps]
    else:
        sizes.append(("dense.batch_size", cfg.dense.batch_size))
    if cfg.measure.bezier.enabled:
        sizes.append(("measure.bezier.batch_size", cfg.measure.bezier.batch_size))
    for key, bs in sizes:
        if bs > n:
            what = (f"temperature {bs!r} (a dense batch size)" if key == "temperatures"
                    else f"{key}={bs!r}")
            raise ValueError(f"{what} is larger than the {cfg.dataset} training set ({n} images): "
                             f"use a batch size <= {n} in {key}")


def _check_temperatures(cfg: ml_collections.ConfigDict, temps: tuple) -> None:
    """Each knob's temperatures must be values it can take (SPEC §1.4)."""
    knob = cfg.knob
    for t in temps:
        if knob == "epochs" and (int(t) != t or not 1 <= t <= cfg.dense.epochs):
            raise ValueError(f"temperature {t!r} (a dense epoch to prune at) must be an integer in "
                             f"[1, dense.epochs={cfg.dense.epochs}]")
        if knob == "batch_size" and (int(t) != t or t < 1):
            raise ValueError(f"temperature {t!r} (a dense batch size) must be a positive integer")
        if knob == "lr" and not t > 0:
            raise ValueError(f"temperature {t!r} (a dense learning rate) must be > 0")
        if knob in ("sam_rho", "weight_decay") and not t >= 0:
            raise ValueError(f"temperature {t!r} ({knob}) must be >= 0")


def _module(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"_tr_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_of(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, unvalidated: for config files built on another one
    (``configs/cifar100.py`` starts from ``configs/figure2.py``)."""
    path = pathlib.Path(path)
    module = _module(path)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {str(path)!r} defines no get_config()")
    return module.get_config()


#: what a config file may define beside get_config()
HOOKS = ("get_model", "get_dataset")


def config_functions(path: str | pathlib.Path) -> dict[str, Callable[..., Any]]:
    """The ``get_model`` / ``get_dataset`` a config file defines (absent ones left out)."""
    module = _module(pathlib.Path(path))
    out = {}
    for name in HOOKS:
        fn = getattr(module, name, None)
        if fn is not None and not callable(fn):
            raise ValueError(f"config file {str(path)!r}: {name} must be a function, got {fn!r}")
        if fn is not None:
            out[name] = fn
    return out


def code_hash(path: str | pathlib.Path) -> str:
    """sha256 (16 hex digits) of a config file's source text (``load_config`` records it as
    ``code_hash`` when the file defines ``get_model`` or ``get_dataset``)."""
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:16]


def call_hook(fn: Callable[..., Any], cfg: ml_collections.ConfigDict) -> Any:
    """``fn(cfg)`` if the hook takes an argument, else ``fn()``."""
    takes = [p for p in inspect.signature(fn).parameters.values()
             if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return fn(cfg) if takes else fn()


def load_config(path: str | pathlib.Path, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, with ``key.sub=value`` overrides, validated."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    cfg = config_of(path)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node, parts = cfg, key.split(".")
        schema = default_config()
        for p in parts[:-1]:
            if p not in schema:
                raise ValueError(f"unknown config key {key!r}.{_did_you_mean(p, schema.keys())}")
            schema, node = schema[p], node[p]
        if parts[-1] not in schema:
            raise ValueError(f"unknown config key {key!r}.{_did_you_mean(parts[-1], schema.keys())}")
        try:  # Python literals: 0.1, (1, 2), 'uniform', True; anything else is a string
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = {"true": True, "false": False}.get(raw.lower(), raw)
        if isinstance(value, list):
            value = tuple(value)
        with node.unlocked() if hasattr(node, "unlocked") else _null():
            node[parts[-1]] = value
    hooks = config_functions(path)
    if hooks:
        with cfg.unlocked() if hasattr(cfg, "unlocked") else _null():
            cfg.code_hash = code_hash(path)
    dataset = cfg.get("dataset", "")
    if str(dataset).startswith("arrays:") and "get_dataset" not in hooks:
        raise ValueError(f"dataset={dataset!r} names arrays given in Python, but config file "
                         f"{str(path)!r} defines no get_dataset()")
    return validate(cfg)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


#: keys added after tr_jax 0.2, left out of ``to_json`` (and so of the config hash and a workdir's
#: config.json) while at these defaults, so that earlier workdirs still resume under the same hash
_NEW_KEY_DEFAULTS = {("code_hash",): "", ("prune", "leaves"): "conv"}


def _drop_new_defaults(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    for path, default in _NEW_KEY_DEFAULTS.items():
        node = d
        for p in path[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and node.get(path[-1], default) == default:
            node.pop(path[-1], None)
    return d


def to_json(cfg: ml_collections.ConfigDict) -> str:
    def norm(x):
        if isinstance(x, dict):
            return {k: norm(v) for k, v in sorted(x.items())}
        if isinstance(x, (list, tuple)):
            return [norm(v) for v in x]
        return x
    return json.dumps(norm(_drop_new_defaults(cfg.to_dict())), indent=1, sort_keys=True)


def config_hash(cfg: ml_collections.ConfigDict) -> str:
    return hashlib.sha256(to_json(cfg).encode()).hexdigest()[:12]
