"""What a config will cost before it runs: a measured one-member train step (FLOPs, memory, time),
members per program under a memory budget, and the dry-run plan (``tr-jax run CONFIG --dry-run``).
"""
from __future__ import annotations

import jax
import ml_collections

from tr_jax import autotune, models, sharding
from tr_jax.config import config_hash
from tr_jax.data.datasets import DATASET_SHAPES, load_dataset
from tr_jax.members import resolve as mem_strategy
from tr_jax.sweep.plan import make_plan, members_for_budget, section_step


def _step_estimate(model, section, cfg, image_shape, sam: bool, repeats: int = 3) -> dict:
    """FLOPs, memory and measured seconds of one member's train step of ``section`` (the run's
    step settings, synthetic data, this machine), from the compiled program's cost and memory
    analyses (``autotune.one_member_step``: compiled once per process per shape)."""
    bs = int(section.batch_size if cfg.knob != "batch_size" or section is cfg.retrain
             else max(cfg.temperatures))
    # one step per call: the epoch length (num_train) only sets the chunk, not this program
    step, _ = section_step(cfg, section, bs, (0.5,) * image_shape[2], (0.25,) * image_shape[2],
                           bs, sam)
    return autotune.one_member_step(model, step, image_shape, repeats)


def members_cap(cfg: ml_collections.ConfigDict, model, image_shape) -> tuple[int, str]:
    """Members per program: ``run.max_members`` (0 = no cap), lowered to what the memory budget
    holds — ``run.memory_budget_gb``, or 80 % of the accelerator's memory when it is 0 — at the
    measured footprint of one member's train step. Returns (cap, explanation)."""
    cap = int(cfg.run.max_members)
    budget = cfg.run.memory_budget_gb * 2**30 or 0.8 * (autotune.device_memory_bytes() or 0)
    if not budget:
        return cap, ""
    per = max(_step_estimate(model, sec, cfg, image_shape, False, repeats=0)["bytes_per_member"]
              for sec in (cfg.dense, cfg.retrain))
    fit = members_for_budget(per, budget)
    cap = min(cap, fit) if cap else fit
    return cap, (f"memory budget {budget / 2**30:.1f} GiB / {per / 2**20:.1f} MiB per member: at "
                 f"most {cap} members per program")


def dry_run(cfg: ml_collections.ConfigDict, measure: bool = True, *, model=None,
            dataset=None) -> str:
    """The plan of a config (members, groups, programs, steps) and, with ``measure``, FLOPs,
    memory and a time estimate from a short measured step on this machine (one member: the
    sweep is never allocated), and the members strategy the run would use — under ``auto`` the
    autotuner's cached choice, else when and at how many members it will be timed; the dry run
    times no strategy. Writes nothing, and reads no dataset of the built-in ones (their shapes
    are known); ``npz:`` / ``tfds:`` data is read for its shapes. ``model`` / ``dataset``: a
    config file's ``get_model()`` / ``get_dataset()``."""
    if dataset is None and cfg.dataset in DATASET_SHAPES:
        num_train, shape, classes = DATASET_SHAPES[cfg.dataset]
    else:
        ds = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir or None)
        num_train, shape, classes = ds.num_train, tuple(ds.image_shape), ds.num_classes
    model = model if model is not None else models.build(
        cfg.model.arch, depth=cfg.model.depth, num_classes=classes, width=cfg.model.width)
    cap, why = members_cap(cfg, model, shape) if measure else (int(cfg.run.max_members), "")
    plan = make_plan(cfg, num_train, cap)
    est = None
    if measure:
        est = {"dense": _step_estimate(model, cfg.dense, cfg, shape,
                                       cfg.knob == "sam_rho" or cfg.dense.sam_rho > 0),
               "retrain": _step_estimate(model, cfg.retrain, cfg, shape, False)}
    head = (f"config {cfg.name!r} (hash {config_hash(cfg)}): {cfg.dataset} ({num_train} train "
            f"images {shape}), {cfg.model.arch}-{cfg.model.depth} width {cfg.model.width}, "
            f"strategy {mem_strategy(cfg.run.members_strategy)} on {jax.default_backend()} "
            f"({jax.device_count()} device(s))")
    tuned = ""
    if cfg.run.members_strategy == "auto":  # what the run would choose; nothing is timed here
        tuned = _strategy_line(cfg, model, shape, num_train, plan, measure) + "\n"
    return head + "\n" + (why + "\n" if why else "") + tuned + plan.describe(est)


def _strategy_line(cfg: ml_collections.ConfigDict, model, shape, num_train: int, plan,
                   measure: bool) -> str:
    """The members strategy a run of ``cfg`` would use under ``auto``, timing nothing: the
    autotuner's cached choice for the retraining's program shape, else when and for about how
    long it will be measured (``autotune.planned``, for ``run.autotune_budget_s``); the backend
    default when ``run.autotune`` is off."""
    m = len(plan.stage_programs("retrain")[0].members)
    default = mem_strategy("auto")
    if sharding.multi_process():
        return f"members strategy M={m}: vmap (a multi-process run is not autotuned)"
    if not cfg.run.autotune:
        return (f"members strategy M={m}: {default} (the backend default; autotuning off by "
                f"run.autotune=False)")
    # the run's own step settings (as tr_jax.sweep.context picks the strategy); the
    # normalisation constants are not part of the autotune cache key, so the data need not be
    # read for them
    step, chunk = section_step(cfg, cfg.retrain, num_train, (0.5,) * shape[2],
                               (0.25,) * shape[2])
    cands = autotune.model_candidates(model, m)
    budget = cfg.run.memory_budget_gb * 2**30 or None
    if not measure:
        return (f"members strategy M={m}: auto, measured at the start of the run, "
                f"~{cfg.run.autotune_budget_s:.0f} s (run.autotune_budget_s; candidates "
                f"{', '.join(cands)}); the backend default is {default!r}")
    return autotune.planned(model, step, shape, m, cands, chunk_steps=min(chunk, 8),
                            budget_s=cfg.run.autotune_budget_s, memory_budget_bytes=budget)
