"""Experiment configuration: the schema (every key, with its default) and validation.

A config file (``configs/*.py``) defines ``get_config()`` returning an ``ml_collections.ConfigDict``
built from ``default_config()``. Every key a user sets must exist in the schema: an unknown or
mistyped key is an error that names it and suggests the closest known key. Every key has a valid
range (:data:`RANGES`: type and bounds, ``tr_jax._checks``); a value out of it, or of the wrong
type, is a ``tr_jax.errors.ConfigError`` naming the key, the value, the range and where the value
came from (``--set``, the config file, ``tj.sweep.run(cfg)``). ``--set`` values are typed by the
schema: ``prune.densities=0.05`` is the tuple ``(0.05,)``, ``retrain.epochs=ten`` an error.

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
from typing import Any, Callable, Iterable, Mapping

import ml_collections

from tr_jax import _checks as ck
from tr_jax import measures
from tr_jax._checks import Range
from tr_jax.data.datasets import DATASET_SHAPES, check_name
from tr_jax.errors import ConfigError, UserError
from tr_jax.regimes import KNOBS, RegimeRule  # KNOBS: what the temperature grid of a sweep varies
RETRAIN_MODES = ("lr_rewinding", "finetune", "weight_rewinding")
#: default of ``run.autotune_budget_s``: 5 % of configs/quick.py's ~6 min on a 2-core CPU
AUTOTUNE_BUDGET_S = 18.0


def default_config() -> ml_collections.ConfigDict:
    """The full schema with the paper's settings as defaults (see docs/fidelity.md)."""
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
    # SAM (docs/fidelity.md, SAM: global-norm perturbation, BN running stats frozen on the second pass).
    c.augment = ml_collections.ConfigDict(dict(pad=4, flip=True))
    c.prune = ml_collections.ConfigDict(dict(
        densities=(0.05, 0.06, 0.07, 0.08, 0.10, 0.14, 0.20, 0.40, 0.80), scope="uniform",
        leaves="conv"))
    # prune.leaves (docs/fidelity.md, Magnitude pruning): which weights are pruned, by every
    # scope alike: "conv" (every conv kernel, the reference), "conv+dense" (also Dense kernels)
    # or a regex searched in the parameter path, e.g. "Conv_[1-9]/kernel" (tr_jax.models.is_prunable).
    c.retrain = ml_collections.ConfigDict(dict(
        mode="lr_rewinding", epochs=160, batch_size=64, lr=0.1, momentum=0.9, weight_decay=1e-4,
        milestones=(80, 120), gamma=0.1, seeds=(1, 2, 3), finetune_lr=0.001, rewind_epoch=2,
        schedule="epoch", iterations=0, drop_last=False))
    # {dense,retrain}.schedule: 'epoch' (milestones are 0-indexed epochs, `epochs` epochs) or
    # 'iteration' (milestones are optimiser steps; exactly `iterations` steps, the batch-size
    # experiments, see docs/fidelity.md, Temperature knobs, usually with drop_last=True).
    # retrain.mode (docs/fidelity.md, Retraining): lr_rewinding (the reference: pruned trained weights, the
    # retrain schedule lr/milestones re-run), finetune (pruned trained weights, constant
    # finetune_lr, no milestones), weight_rewinding (weights and BN of the dense run at
    # rewind_epoch, masked by the mask of the trained checkpoint, then the retrain schedule).
    c.measure = ml_collections.ConfigDict(dict(
        lmc_points=11, bn_batch_size=64, cka_images=6464, test_error_last_epochs=5,
        points_per_call=0))
    # measure.<name>: the settings of each switchable landscape measure, from its entry in the
    # measure registry (tr_jax.measures): bezier, hessian and any measure registered later
    for m in measures.registered():
        if m.settings is not None:
            c.measure[m.name] = ml_collections.ConfigDict(dict(m.settings))
    # measure.points_per_call: parameter points (pairs x t) per compiled LMC/Bezier evaluation;
    # 0 = auto (1 on CPU, 32 on accelerators: see experiments/bench_landscape.py).
    c.regimes = ml_collections.ConfigDict(RegimeRule().to_dict())
    c.run = ml_collections.ConfigDict(dict(
        members_strategy="auto", chunk_steps=0, eval_batch_size=0, checkpoint_every=5,
        max_members=0, memory_budget_gb=0.0, precision="float32", metrics=True,
        metrics_test_every=0, tensorboard=False, autotune=True,
        autotune_budget_s=AUTOTUNE_BUDGET_S))
    # autotune: under members_strategy="auto", time the candidate members layouts on this device
    # before training (tr_jax.autotune; the choice is cached per device, model, shapes and
    # version); False keeps the backend default (tr_jax.members.default_strategy) and times
    # nothing. Results do not depend on it: every layout computes the same numbers.
    # autotune_budget_s: the seconds the autotuner may spend timing candidates for one program
    # shape, compiles included; when the first candidate's compile and first call, times the
    # number of candidates, would exceed it, the backend default is kept (on any backend).
    # metrics: append every epoch's per-member train loss / train error / test error and every
    # measure chunk's timing to metrics.jsonl in the workdir (tj.sweep.metrics reads it);
    # metrics_test_every: k > 0 also evaluates the test error every k-th epoch for it (0 = only
    # the epochs a stage evaluates anyway); tensorboard: also write the cell means as TensorBoard
    # scalars under workdir/tb/ (needs the `tensorboard` extra: tensorboardX).
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


# ------------------------------------------------------------------ valid ranges
# Every key of default_config() has an entry (tests/test_validation.py walks the schema). The
# conventions (tr_jax._checks): floats finite (NaN / inf refused), ints are integers (not 3.0, not
# a bool), bools are True / False (not 0 / 1), tuples without repeats. Cross-key rules (milestones
# within the run, batch sizes within the training set, temperatures per knob, ...) are in
# validate(). The choices of optimizer, schedule, scope and precision are those of
# tr_jax.training.optim.OPTIMIZERS, tr_jax.training.loop.SCHEDULES, tr_jax.pruning.SCOPES and
# tr_jax.training.steps.PRECISIONS (spelled out here to keep this module light; a test compares).

def _training_section(seeds: Range) -> dict[str, Range]:
    return {
        "epochs": ck.POS_INT, "batch_size": ck.POS_INT, "lr": ck.LR, "momentum": ck.MOMENTUM,
        "weight_decay": ck.WEIGHT_DECAY,
        "milestones": Range("tuple", item=ck.NONNEG_INT, increasing=True,
                            note="0-indexed epochs, or optimiser steps when schedule='iteration', "
                                 "each <= the run's length; () = a constant lr"),
        "gamma": Range("float", lo=0, lo_open=True,
                       note="the lr is multiplied by gamma at each milestone"),
        "seeds": seeds, "schedule": Range("str", choices=("epoch", "iteration")),
        "iterations": Range("int", lo=0, note=">= 1 when schedule='iteration'"),
        "drop_last": ck.BOOL}


_SEEDS = Range("tuple", min_len=1, item=ck.SEED)

#: dotted key -> its valid range (type and bounds)
RANGES: dict[str, Range] = {
    "name": ck.STR,
    "seed": ck.SEED,
    "dataset": Range("str", note="a known dataset, 'npz:PATH', 'tfds:NAME' or 'arrays:NAME'"),
    "code_hash": ck.STR,
    "data_dir": ck.STR,
    "model.arch": Range("str", note="one of tr_jax.models.ARCHS"),
    "model.depth": Range("int", lo=1, note="a depth model.arch is built with"),
    "model.width": Range("float", lo=0, lo_open=True),
    "knob": Range("str", choices=KNOBS, hint="temperature knob {value!r} is not supported"),
    "temperatures": Range("tuple", min_len=1, item=ck.FINITE,
                          text="a non-empty tuple of the knob's values without repeats, e.g. "
                               "(10, 20) dense epochs"),
    **{f"dense.{k}": r for k, r in _training_section(_SEEDS).items()},
    "dense.optimizer": Range("str", choices=("sgd", "adam")),
    "dense.sam_rho": ck.SAM_RHO,
    "augment.pad": ck.NONNEG_INT,
    "augment.flip": ck.BOOL,
    "prune.densities": Range("tuple", min_len=1,
                             item=Range("float", lo=0, hi=1, lo_open=True),
                             text="fractions of conv weights kept, each in (0, 1], e.g. 0.05 for "
                                  "5% (1.0 = unpruned), a non-empty tuple without repeats"),
    "prune.scope": Range("str", choices=("uniform", "global", "lamp", "erk")),
    "prune.leaves": Range("str", note="'conv', 'conv+dense' or a regex over parameter paths"),
    "retrain.mode": Range("str", choices=RETRAIN_MODES),
    **{f"retrain.{k}": r for k, r in _training_section(Range(
        "tuple", min_len=2, item=ck.SEED,
        text="at least 2 distinct integers in [0, 4294967295] (LMC and CKA compare pairs of "
             "retrained members), e.g. retrain.seeds=(1, 2)")).items()},
    "retrain.finetune_lr": ck.LR,
    "retrain.rewind_epoch": Range("int", lo=0, note="0 = initialisation"),
    "measure.lmc_points": Range("int", lo=2),
    "measure.bn_batch_size": ck.POS_INT,
    "measure.cka_images": ck.POS_INT,
    "measure.test_error_last_epochs": ck.POS_INT,
    "measure.points_per_call": Range("int", lo=0, note="0 = auto"),
    # RegimeRule's own checks (tr_jax.regimes.rule): thresholds finite, cka_delta >= 0
    "regimes.lmc_threshold": ck.FINITE,
    "regimes.use_jump": ck.BOOL,
    "regimes.jump_threshold": ck.FINITE,
    "regimes.jump_lmc_ceiling": ck.FINITE,
    "regimes.cka_mode": Range("str", choices=("relative", "absolute")),
    "regimes.cka_delta": ck.NONNEG_FLOAT,
    "regimes.cka_threshold": ck.FINITE,
    "run.members_strategy": Range("str", note="see tr_jax.members.STRATEGIES"),
    "run.chunk_steps": Range("int", lo=0, note="0 = auto"),
    "run.eval_batch_size": Range("int", lo=0, note="0 = auto"),
    "run.checkpoint_every": Range("int", lo=0, note="0 = only at the end of a stage"),
    "run.max_members": Range("int", lo=0, note="0 = no cap"),
    "run.memory_budget_gb": Range("float", lo=0, note="0 = no cap"),
    "run.precision": Range("str", choices=("float32", "bfloat16")),
    "run.metrics": ck.BOOL,
    "run.metrics_test_every": Range("int", lo=0, note="0 = only the epochs evaluated anyway"),
    "run.tensorboard": ck.BOOL,
    "run.autotune": ck.BOOL,
    "run.autotune_budget_s": Range("float", lo=0, lo_open=True,
                                   note="seconds of autotuning per program shape"),
}


def ranges() -> dict[str, Range]:
    """Every key's valid range: :data:`RANGES` and the settings of the registered measures
    (``measure.<name>.*``, from :mod:`tr_jax.measures`)."""
    out = dict(RANGES)
    for m in measures.registered():
        if m.settings is not None:
            out[f"measure.{m.name}.enabled"] = ck.BOOL
            out.update({f"measure.{m.name}.{k}": r for k, r in m.ranges.items()})
    return out


def schema_keys(node: Any = None, prefix: str = "") -> list[str]:
    """Every dotted leaf key of ``default_config()`` (the keys :data:`RANGES` must cover)."""
    node = default_config() if node is None else node
    out = []
    for k in node.keys():
        if isinstance(node[k], ml_collections.ConfigDict):
            out += schema_keys(node[k], f"{prefix}{k}.")
        else:
            out.append(prefix + k)
    return out


def _coerce(key: str, value: Any) -> Any:
    """``value`` in the shape the schema expects: a list or a scalar where a tuple is expected
    becomes a tuple (``0.05`` -> ``(0.05,)``). Anything else is left to the checks."""
    rng = ranges().get(key)
    if rng is not None and rng.kind == "tuple":
        if isinstance(value, list):
            return tuple(value)
        if getattr(value, "ndim", 0) == 1 and hasattr(value, "tolist"):  # a numpy vector
            return tuple(value.tolist())
        if not isinstance(value, (tuple, dict, ml_collections.ConfigDict)) and value is not None:
            return (value,)
    return value


def _source_fn(source: str, sources: Mapping[str, str] | None) -> Callable[[str], str]:
    """key -> where its value came from: ``sources`` (a key or a group above it), else
    ``source``."""
    sources = dict(sources or {})

    def of(key: str) -> str:
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in sources:
                return sources[".".join(parts[:i])]
        return source
    return of


def _merge(node: Any, cfg: Any, src: Callable[[str], str], prefix: str = "") -> None:
    """``node.update(cfg)`` (recursive, keys already checked) with the values coerced
    (:func:`_coerce`); a value of the wrong type is a :class:`ConfigError` naming its key."""
    for k in cfg.keys():
        key, value = prefix + k, cfg[k]
        if isinstance(node[k], ml_collections.ConfigDict):
            _merge(node[k], value, src, key + ".")
            continue
        value = _coerce(key, value)
        try:
            node[k] = value
        except TypeError as e:
            rng = ranges().get(key)
            if rng is None:
                raise ConfigError(key, value, f"of type {type(node[k]).__name__}", src(key)) from e
            raise ConfigError(key, value, rng.describe(), src(key)) from e


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


def validate(cfg: ml_collections.ConfigDict, source: str = "config", *,
             sources: Mapping[str, str] | None = None) -> ml_collections.ConfigDict:
    """Check keys and values; return the config merged over the defaults.

    Every value is checked against its range in :data:`RANGES`, then the rules between keys;
    a bad value is a :class:`tr_jax.errors.ConfigError` naming the key, the value, the valid range
    and where the value came from: ``sources[key]`` (e.g. ``"--set"`` for the keys ``load_config``
    overrode), else ``source`` (the config file, ``"tj.sweep.run(cfg)"``, ``"config"``).
    Validating a validated config returns an equal config (the same ``config_hash``).
    """
    from tr_jax.members import STRATEGIES, resolve
    from tr_jax.models import LEAVES, build, check_leaves

    src = _source_fn(source, sources)
    schema = default_config()
    _check_keys(cfg, schema)
    merged = schema
    _merge(merged, cfg, src)  # recursive, keys already checked
    for key, rng in ranges().items():
        rng.check(key, _get(merged, key), src(key))

    def fail(key: str, valid: str, hint: str = "") -> None:
        raise ConfigError(key, _get(merged, key), valid, src(key), hint)

    try:
        check_name(merged.dataset)
    except ValueError as e:
        fail("dataset", "a known dataset, 'npz:PATH', 'tfds:NAME' or 'arrays:NAME'", str(e))
    m = merged.model
    try:
        build(m.arch, depth=m.depth, width=m.width)
    except ValueError as e:
        from tr_jax.models import ARCHS
        if m.arch not in ARCHS:
            fail("model.arch", f"one of {ARCHS}", str(e))
        key = "model.width" if m.width != 1.0 and m.arch != "preresnet" else "model.depth"
        fail(key, f"valid together with model.arch={m.arch!r}, model.depth={m.depth!r}, "
             f"model.width={m.width!r}", f"{str(e).rstrip('.')}. Set model.depth (or model.arch) "
             "to a valid combination.")
    try:
        check_leaves(merged.prune.leaves)
    except ValueError as e:
        fail("prune.leaves", f"one of {LEAVES} or a regex over parameter paths", str(e))
    temps = tuple(merged.temperatures)
    _check_temperatures(merged, temps, src)
    schema_default = default_config()
    for name in ("dense", "retrain"):
        sec = merged[name]
        if sec.schedule == "iteration" and sec.iterations < 1:
            fail(f"{name}.iterations", "an integer >= 1 (the optimiser steps of the run)",
                 f"{name}.schedule='iteration' needs {name}.iterations >= 1")
        if name == "retrain" and sec.mode == "finetune":
            continue  # fine-tuning runs at a constant lr: retrain.milestones are not used
        it = sec.schedule == "iteration"
        length_key = f"{name}.{'iterations' if it else 'epochs'}"
        length = sec.iterations if it else sec.epochs
        late = [x for x in sec.milestones if x > length]
        # Milestones a config sets must lie within the run (one at its very end never fires but
        # lets a run be cut short). The schema's default (80, 120), the paper's 160-epoch
        # schedule, is exempt: a config that shortens the run without setting milestones trains
        # at a constant lr, as before, so that its existing workdirs still resume.
        if late and tuple(sec.milestones) != tuple(schema_default[name].milestones):
            where = f" ({length_key} from {src(length_key)})" if src(length_key) != src(
                f"{name}.milestones") else ""
            fail(f"{name}.milestones", f"strictly increasing integers in [0, {length_key}="
                 f"{length}] (0-indexed {'optimiser steps' if it else 'epochs'})",
                 f"{late[0]!r} is beyond the end of the run{where}, where it would never "
                 f"decay the lr; set {name}.milestones too, e.g. {name}.milestones="
                 f"{tuple(sorted({length // 2, 3 * length // 4} - {0}))!r}")
    _check_batch_sizes(merged, temps, src)
    if merged.knob == "epochs" and merged.dense.schedule != "epoch":
        fail("dense.schedule", "'epoch' with knob='epochs'",
             "knob 'epochs' prunes checkpoints of an epoch-scheduled run: set "
             "dense.schedule='epoch'")
    if merged.retrain.mode == "weight_rewinding":
        rw = merged.retrain.rewind_epoch
        first = min(temps) if merged.knob == "epochs" else merged.dense.epochs
        if not rw < first:
            fail("retrain.rewind_epoch", f"an integer epoch of the dense run before {first} (the "
                 "first pruned checkpoint); 0 = initialisation")
    for m in measures.registered():  # each measure's rules between its own settings
        bad = m.check(merged.measure[m.name]) if m.check and m.settings is not None else None
        if bad:
            fail(f"measure.{m.name}.{bad[0]}", bad[1])
    try:
        RegimeRule.from_dict(merged.regimes.to_dict())
    except ValueError as e:  # not expected after the table's checks: RegimeRule's own rules
        raise ConfigError("regimes", merged.regimes.to_dict(), "a valid RegimeRule",
                          src("regimes"), str(e)) from e
    try:
        resolve(merged.run.members_strategy, backend="cpu")  # a check: no JAX backend started
    except ValueError:
        fail("run.members_strategy", f"one of {STRATEGIES}, k a positive integer",
             _did_you_mean(str(merged.run.members_strategy), STRATEGIES).strip())
    return merged


def _get(cfg: Any, key: str) -> Any:
    for p in key.split("."):
        cfg = cfg[p]
    return cfg


def _check_batch_sizes(cfg: ml_collections.ConfigDict, temps: tuple,
                       src: Callable[[str], str] = lambda key: "config") -> None:
    """Training batch sizes must fit in the training set (known per built-in dataset without
    loading it; other datasets are checked when loaded)."""
    if cfg.dataset not in DATASET_SHAPES:
        return
    n = DATASET_SHAPES[cfg.dataset][0]
    sizes = [("retrain.batch_size", cfg.retrain.batch_size)]
    if cfg.knob == "batch_size":
        sizes += [("temperatures", t) for t in temps]
    else:
        sizes.append(("dense.batch_size", cfg.dense.batch_size))
    for m in measures.registered():  # a measure that trains (Bezier curves) has a batch size
        if m.batch_setting and m.is_enabled(cfg):
            sizes.append((f"measure.{m.name}.{m.batch_setting}",
                          cfg.measure[m.name][m.batch_setting]))
    for key, bs in sizes:
        if bs > n:
            if key == "temperatures":
                raise ConfigError(key, temps, f"dense batch sizes in [1, {n}] (the {cfg.dataset} "
                                  f"training set: {n} images)", src(key),
                                  f"temperature {bs!r} (a dense batch size) is larger than the "
                                  f"training set: use a batch size <= {n} in temperatures")
            raise ConfigError(key, bs, f"an integer in [1, {n}]: a batch must fit in the "
                              f"{cfg.dataset} training set ({n} images)", src(key),
                              f"use a batch size <= {n} in {key}")


def _check_temperatures(cfg: ml_collections.ConfigDict, temps: tuple,
                        src: Callable[[str], str] = lambda key: "config") -> None:
    """Each knob's temperatures must be values it can take (the paper's temperature-like knobs)."""
    knob = cfg.knob
    what, valid = {
        "epochs": ("a dense epoch to prune at",
                   f"integers in [1, dense.epochs={cfg.dense.epochs}] (dense epochs to prune at)"),
        "batch_size": ("a dense batch size", "positive integers (dense batch sizes)"),
        "lr": ("a dense learning rate", "finite numbers > 0 (dense learning rates)"),
        "sam_rho": ("sam_rho", "finite numbers >= 0 (SAM radii)"),
        "weight_decay": ("weight_decay", "finite numbers >= 0 (dense weight decays)"),
    }[knob]
    for t in temps:
        if knob == "epochs":
            bad = not ck.is_int(t) or not 1 <= t <= cfg.dense.epochs
        elif knob == "batch_size":
            bad = not ck.is_int(t) or t < 1
        elif knob == "lr":
            bad = not t > 0
        else:
            bad = not t >= 0
        if bad:
            raise ConfigError("temperatures", temps, valid, src("temperatures"),
                              f"temperature {t!r} ({what}) is out of range")


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
    try:
        return module.get_config()
    except TypeError as e:  # ml_collections: a value of another type than the default's
        if "Could not override field" not in str(e):
            raise
        raise UserError(f"config file {str(path)!r}: {e}") from e


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
    overridden: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        node, parts = cfg, key.split(".")
        schema = default_config()
        for p in parts[:-1]:
            if p not in schema:
                raise ValueError(f"unknown config key {key!r}.{_did_you_mean(p, schema.keys())}")
            schema, node = schema[p], node[p]
        if parts[-1] not in schema:
            raise ValueError(f"unknown config key {key!r}.{_did_you_mean(parts[-1], schema.keys())}")
        value = _parse_override(key, raw)
        try:
            with node.unlocked() if hasattr(node, "unlocked") else _null():
                node[parts[-1]] = value
        except TypeError as e:  # ml_collections refuses a value of another type than the default's
            rng = ranges().get(key)
            raise ConfigError(key, value, rng.describe() if rng else "of the default's type",
                              "--set") from e
        overridden[key] = "--set"
    hooks = config_functions(path)
    if hooks:
        with cfg.unlocked() if hasattr(cfg, "unlocked") else _null():
            cfg.code_hash = code_hash(path)
    dataset = cfg.get("dataset", "")
    if str(dataset).startswith("arrays:") and "get_dataset" not in hooks:
        raise ValueError(f"dataset={dataset!r} names arrays given in Python, but config file "
                         f"{str(path)!r} defines no get_dataset()")
    return validate(cfg, str(path), sources=overridden)


def _parse_override(key: str, raw: str) -> Any:
    """The value of ``--set key=raw``, typed by the schema: a Python literal (``0.1``, ``(1, 2)``,
    ``'uniform'``, ``True``), ``true`` / ``false`` in any case, else the text itself; the text
    as given for a string key (``--set name=2024``); a scalar or a list where the schema has a
    tuple becomes a tuple (``prune.densities=0.05`` is ``(0.05,)``)."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = {"true": True, "false": False}.get(raw.strip().lower(), raw)
    rng = ranges().get(key)
    if rng is not None and rng.kind == "str" and not isinstance(value, str):
        return raw
    if isinstance(value, list):
        value = tuple(value)
    return _coerce(key, value)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


#: keys added after tr_jax 0.2, left out of ``to_json`` (and so of the config hash and a workdir's
#: config.json) while at these defaults, so that earlier workdirs still resume under the same hash
_NEW_KEY_DEFAULTS = {("code_hash",): "", ("prune", "leaves"): "conv", ("run", "metrics"): True,
                     ("run", "metrics_test_every"): 0, ("run", "tensorboard"): False,
                     ("run", "autotune"): True, ("run", "autotune_budget_s"): AUTOTUNE_BUDGET_S}


def _new_key_defaults() -> dict[tuple, Any]:
    """:data:`_NEW_KEY_DEFAULTS` and the settings of every registered measure whose section is
    left out of the hash at its defaults (``Measure.hash_defaults`` False) or that were added to
    a hashed section later (``Measure.new_settings``), as JSON values."""
    out = dict(_NEW_KEY_DEFAULTS)
    for m in measures.registered():
        if m.settings is not None:
            keys = m.new_settings if m.hash_defaults else tuple(m.settings)
            out.update({("measure", m.name, k): m.settings[k] for k in keys})
    return json.loads(json.dumps(list(out.items())))


def _drop_new_defaults(d: dict) -> dict:
    """``d`` without the keys of :func:`_new_key_defaults` that are at their defaults (and
    without a section they leave empty)."""
    d = json.loads(json.dumps(d))
    for path, default in _new_key_defaults():
        nodes = [d]
        for p in path[:-1]:
            nodes.append(nodes[-1].get(p, {}) if isinstance(nodes[-1], dict) else {})
        node = nodes[-1]
        if isinstance(node, dict) and node.get(path[-1], default) == default:
            node.pop(path[-1], None)
            if not node and len(path) > 1 and isinstance(nodes[-2], dict):
                nodes[-2].pop(path[-2], None)
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
