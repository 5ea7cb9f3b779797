"""What a config will cost before it runs: a measured one-member train step (FLOPs, memory, time),
members per program under a memory budget, and the dry-run plan (``tr-jax run CONFIG --dry-run``).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tr_jax import models
from tr_jax.config import config_hash
from tr_jax.sweep.plan import make_plan
from tr_jax.training import StepConfig, Trainer, init_state, stack
from tr_jax.members import resolve as mem_strategy


def _step_estimate(model, section, cfg, image_shape, sam: bool, repeats: int = 3) -> dict:
    """FLOPs, memory and measured seconds of one member's train step (synthetic data, this
    machine), from the compiled program's cost and memory analyses."""
    bs = int(section.batch_size if cfg.knob != "batch_size" or section is cfg.retrain
             else max(cfg.temperatures))
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.integers(0, 256, (bs, *image_shape), dtype=np.uint8))
    Y = jnp.asarray(rng.integers(0, 10, (bs,)), jnp.int32)
    step = StepConfig(mean=(0.5,) * image_shape[2], std=(0.25,) * image_shape[2], batch_size=bs,
                      pad=cfg.augment.pad, flip=cfg.augment.flip, momentum=section.momentum,
                      optimizer=section.get("optimizer", "sgd"), sam=sam)
    v = models.init(model, jax.random.key(0), image_shape)
    state = stack([init_state(v, jax.tree.map(jnp.ones_like, v["params"]), jax.random.key(1),
                              0.1, 1e-4, section.momentum, optimizer=step.optimizer)])
    fn = Trainer(model, step, "vmap", chunk_steps=1)._train_fn(1, bs)
    args = (X, Y, jnp.int32(0), jnp.int32(0), jnp.ones((1,), jnp.float32))
    compiled = fn.lower(state, *args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memo = compiled.memory_analysis()
    nbytes = sum(getattr(memo, k, 0) for k in ("temp_size_in_bytes", "argument_size_in_bytes",
                                               "output_size_in_bytes")) if memo else 0
    times = []
    for _ in range(repeats):
        st = jax.tree.map(jnp.copy, state)
        t = time.perf_counter()
        jax.block_until_ready(fn(st, *args))
        times.append(time.perf_counter() - t)
    return {"flops_per_step": float((cost or {}).get("flops", 0.0)), "bytes_per_member": nbytes,
            "seconds_per_step": float(np.median(times)), "device": jax.devices()[0].device_kind}


def device_memory_bytes() -> int | None:
    """The accelerator's memory limit (None on CPU or when the backend does not say)."""
    if jax.default_backend() == "cpu":
        return None
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def members_cap(cfg: ml_collections.ConfigDict, model, image_shape) -> tuple[int, str]:
    """Members per program: ``run.max_members`` (0 = no cap), lowered to what the memory budget
    holds — ``run.memory_budget_gb``, or 80 % of the accelerator's memory when it is 0 — at the
    measured footprint of one member's train step. Returns (cap, explanation)."""
    from tr_jax.sweep.plan import members_for_budget
    cap = int(cfg.run.max_members)
    budget = cfg.run.memory_budget_gb * 2**30 or 0.8 * (device_memory_bytes() or 0)
    if not budget:
        return cap, ""
    per = max(_step_estimate(model, sec, cfg, image_shape, False, repeats=1)["bytes_per_member"]
              for sec in (cfg.dense, cfg.retrain))
    fit = members_for_budget(per, budget)
    cap = min(cap, fit) if cap else fit
    return cap, (f"memory budget {budget / 2**30:.1f} GiB / {per / 2**20:.1f} MiB per member: at "
                 f"most {cap} members per program")


def dry_run(cfg: ml_collections.ConfigDict, measure: bool = True, *, model=None,
            dataset=None) -> str:
    """The plan of a config (members, groups, programs, steps) and, with ``measure``, FLOPs,
    memory and a time estimate from a short measured step on this machine. Writes nothing, and
    reads no dataset of the built-in ones (their shapes are known); ``npz:`` / ``tfds:`` data is
    read for its shapes. ``model`` / ``dataset``: a config file's ``get_model()`` /
    ``get_dataset()``."""
    from tr_jax.data.datasets import DATASET_SHAPES, load_dataset
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
    if measure and cfg.run.members_strategy == "auto":  # what the run would measure and choose
        from tr_jax import autotune
        m = len(plan.stage_programs("retrain")[0].members)
        bs = int(cfg.retrain.batch_size)
        cpu = jax.default_backend() == "cpu"
        chunk = min(8, cfg.run.chunk_steps or (4 if cpu else -(-num_train // bs)))
        step = StepConfig(mean=(0.5,) * shape[2], std=(0.25,) * shape[2], batch_size=bs,
                          pad=cfg.augment.pad, flip=cfg.augment.flip,
                          momentum=cfg.retrain.momentum, unroll=cpu,
                          precision=cfg.run.get("precision", "float32"))
        choice = autotune.choose(model, step, shape, m, autotune.model_candidates(model, m),
                                 chunk_steps=chunk)
        tuned = autotune.describe(choice, m) + "\n"
    return head + "\n" + (why + "\n" if why else "") + tuned + plan.describe(est)
