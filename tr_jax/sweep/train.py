"""The training stages of a sweep, dense training (:func:`dense`) and prune + retrain
(:func:`retrain`), as functions of the sweep's :class:`~tr_jax.sweep.context.Context`: they resume
from and commit to the workdir; the bodies are functions of global arrays in
:mod:`tr_jax.sweep.stages`. A grown sweep (:mod:`tr_jax.sweep.growth`) trains only its new
members and takes the others from the finished run."""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tr_jax import hooks, models, pruning, sharding
from tr_jax.sweep import stages
from tr_jax.sweep.context import Context, old_stage, padded_idx, progress_bar, restore
from tr_jax.sweep.plan import section_step
from tr_jax.sweep.grid import DENSE, member_key
from tr_jax.sweep.metrics import fmt_duration
from tr_jax.training import StepConfig, Trainer, init_state, stack


@functools.partial(jax.jit, static_argnames=("momentum", "optimizer"))


def _fresh_state(variables, key, lr, weight_decay, rho, *, momentum, optimizer):
    """A dense member's optimiser state, unmasked (one compiled call, not one per leaf shape)."""
    return init_state(variables, jax.tree.map(jnp.ones_like, variables["params"]), key, lr,
                      weight_decay, momentum, optimizer=optimizer, rho=rho)


def _step(ctx: Context, section: ml_collections.ConfigDict, batch_size: int | None = None,
          sam: bool = False) -> tuple[StepConfig, int]:
    """The step settings of a training section (dense or retrain) and its steps per call."""
    return section_step(ctx.cfg, section, ctx.ds.num_train, ctx.ds.mean, ctx.ds.std,
                        batch_size, sam)


def _trainer(ctx: Context, section: ml_collections.ConfigDict, batch_size: int | None = None,
             sam: bool = False) -> Trainer:
    step, chunk = _step(ctx, section, batch_size, sam)
    iteration = section.schedule == "iteration"
    return Trainer(ctx.model, step, ctx.strategy, chunk_steps=chunk,
                   drop_last=bool(section.drop_last), eval_batch_size=ctx.cfg.run.eval_batch_size,
                   milestones=tuple(section.milestones), gamma=section.gamma,
                   schedule=section.schedule,
                   max_steps=int(section.iterations) if iteration else None)


def _fit(ctx: Context, stage: str, trainer: Trainer, state, epochs: int, eval_epochs, desc: str,
         keep_epochs: tuple[int, ...] = (), meta: dict | None = None):
    """``trainer.fit`` that commits a progress checkpoint every ``run.checkpoint_every`` epochs
    (the state, as sharded global arrays, and the test-error history) and resumes from it;
    a kept snapshot (dense variables at ``keep_epochs``) is its own checkpoint, written once.
    Data order and augmentation depend on (member key, epoch, step) only, so a resumed run
    reproduces the uninterrupted one.

    Returns (final stacked state, {epoch: test errors [M]}, {epoch: host variables [M, ...]}).
    """
    name, every = f"{stage}_progress", ctx.cfg.run.checkpoint_every
    eval_epochs, keep = tuple(eval_epochs), tuple(keep_epochs)
    M = jax.tree.leaves(state)[0].shape[0]
    variables = lambda st: {"params": st.params, "batch_stats": st.batch_stats}  # noqa: E731
    record = {"state": state, "epoch": np.int32(0),
              "hist": np.full((len(eval_epochs), M), np.nan, np.float64)}
    host_vars = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), variables(state))
    start, hist, snaps = 0, {}, {}
    loaded = restore(ctx, name, like=record)
    if loaded is not None:
        record = loaded
        state, start = record["state"], int(record["epoch"])
        hist = {e: record["hist"][i] for i, e in enumerate(eval_epochs) if e <= start}
        for e in keep:
            if e <= start:
                snaps[e] = ctx.wd.load(f"{stage}_snap{e}", like=host_vars)
        ctx.say(f"{stage}: resuming from the checkpoint after epoch {start}")
    mlog = ctx.mlog
    mlog.restart(stage, start)  # lines of a killed run beyond its last commit go
    bar_ref: dict = {}  # the progress bar, once made (tick shows the speed on it)
    tick, on_metrics, metric_epochs = _epoch_metrics(ctx, stage, trainer, epochs, start, meta,
                                                     bar_ref)
    if on_metrics is None:
        tick = (lambda k, t=tick: [t(None) for _ in range(k)])  # noqa: E731
    else:
        tick = None

    def on_epoch(epoch: int, get_state) -> None:
        save = every and epoch % every == 0 and epoch < epochs
        if epoch not in keep and not save:
            return
        st = get_state()
        if epoch in keep:
            snaps[epoch] = sharding.tree_to_host(variables(st))
            if every:  # a resumable run keeps it (written once)
                ctx.wd.save(f"{stage}_snap{epoch}", snaps[epoch], note="(snapshot)")
        if save:
            for i, e in enumerate(eval_epochs):
                if e in hist:
                    record["hist"][i] = hist[e]
            record.update(state=st, epoch=np.int32(epoch))
            mlog.flush()  # the epochs' lines first: a resume drops those beyond the commit
            ctx.wd.save(name, record, note=f"after epoch {epoch}")

    with progress_bar(epochs, desc, ctx.progress) as bar:
        bar.update(start)
        bar_ref["bar"] = bar
        progress = bar.update if tick is None else (lambda k: (bar.update(k), tick(k)))
        final, hist = trainer.fit(state, ctx.X, ctx.Y, epochs, test=(ctx.Xt, ctx.Yt),
                                  eval_epochs=eval_epochs, on_epoch=on_epoch,
                                  progress=progress, start_epoch=start, history=hist,
                                  on_metrics=on_metrics, metric_epochs=metric_epochs)
    mlog.flush()
    return final, hist, snaps


def _epoch_metrics(ctx: Context, program: str, trainer: Trainer, epochs: int, start: int,
                   meta: dict | None, bar_ref: dict):
    """(tick, on_metrics, metric_epochs) of a program's fit: ``tick(metrics or None)``
    times an epoch, shows member-steps/s and images/s on the bar, logs a progress line with
    the stage's ETA every ~60 s (and at each quarter and the end of the program) and, with
    metrics, buffers the epoch's line; ``on_metrics`` is None when neither metrics.jsonl nor
    TensorBoard is on (no per-epoch host transfer then)."""
    meta = dict(meta or {})
    kind = meta.pop("stage", program.split("_")[0])
    run, mlog = ctx.cfg.run, ctx.mlog
    n = len(meta.get("member", ())) or 1
    later = 0  # member-steps of the stage's programs after this one
    progs = list(ctx.plan.stage_programs(kind))
    names = [p.name for p in progs]
    if program in names:
        later = sum(p.steps * len(p.members) for p in progs[names.index(program) + 1:])
    num_train = int(ctx.X.shape[0])
    clock = {"epoch": start, "t": time.time(), "say": time.time(), "steps": 0, "secs": 0.0}

    def tick(m):
        clock["epoch"] += 1
        epoch, now = clock["epoch"], time.time()
        wall, clock["t"] = now - clock["t"], now
        mlog.last_t = now  # the next measure chunk is timed from here
        plan = trainer.epoch_plan(num_train, epoch - 1)
        steps, images = sum(k for _, k, _ in plan), sum(k * b for _, k, b in plan)
        ms_s, im_s = n * steps / max(wall, 1e-9), n * images / max(wall, 1e-9)
        if epoch > start + 1 or epochs - start == 1:  # the first epoch compiles
            clock["steps"] += n * steps
            clock["secs"] += wall
        rate = clock["steps"] / clock["secs"] if clock["secs"] > 0 else ms_s
        bar = bar_ref.get("bar")
        if bar is not None and not bar.disable:
            bar.set_postfix_str(f"{ms_s:.0f} member-steps/s, {im_s:.0f} img/s", refresh=False)
        if m is not None:
            mlog.epoch({"stage": kind, "program": program, "epoch": epoch, "epochs": epochs,
                        "wall_s": round(wall, 4), "member_steps_s": ms_s, "images_s": im_s,
                        "members": {**meta, **{k: ([None] * n if v is None else v[:n])
                                               for k, v in m.items()}}})
        quarter = epochs >= 4 and epoch % (epochs // 4) == 0
        if epoch == epochs or quarter or now - clock["say"] >= 60:
            left = n * steps * (epochs - epoch) + later
            ctx.say(f"{program}: epoch {epoch}/{epochs}, {ms_s:.0f} member-steps/s, "
                     f"{im_s:.0f} images/s, ETA stage {fmt_duration(left / max(rate, 1e-9))}")
            clock["say"] = now

    # decided from the config, the same in every process: the per-epoch host copies are
    # collectives of sharded arrays, so every process makes them (only process 0 writes)
    if not (run.get("metrics", True) or run.get("tensorboard", False)):
        return tick, None, ()
    k = int(run.get("metrics_test_every", 0))
    return tick, (lambda epoch, m: tick(m)), (range(k, epochs + 1, k) if k else ())


def _remove_progress(ctx: Context, stage: str, keep: tuple = ()) -> None:
    ctx.wd.remove(f"{stage}_progress")
    for e in keep:
        ctx.wd.remove(f"{stage}_snap{e}")


# -- stage 1: dense training, checkpoints at the temperature grid ---------------------------


def _dense_state(ctx: Context, seed: int, temperature):
    """A fresh dense member: init and data keys from the seed only (every temperature of a
    seed starts from the same weights and data order, as the reference's runs do)."""
    c, knob = ctx.cfg, ctx.cfg.knob
    k = member_key(ctx.root, DENSE, seed)
    v = models.init(ctx.model, jax.random.fold_in(k, 0), ctx.ds.image_shape)
    hyper = {"lr": c.dense.lr, "weight_decay": c.dense.weight_decay, "sam_rho": c.dense.sam_rho}
    if knob in hyper:
        hyper[knob] = float(temperature)
    return _fresh_state(v, jax.random.fold_in(k, 1), hyper["lr"], hyper["weight_decay"],
                        hyper["sam_rho"], momentum=float(c.dense.momentum),
                        optimizer=c.dense.optimizer)


def _dense_keep(ctx: Context, prog) -> tuple[tuple, tuple]:
    rewind = _rewind_epoch(ctx)
    temps = ctx.temps if ctx.cfg.knob == "epochs" else (prog.epochs,)
    return temps, tuple(sorted(set(temps) | ({rewind} if rewind else set())))


def _dense_program(ctx: Context, prog) -> dict:
    members = [ctx.plan.dense_members[i] for i in prog.members]
    n = len(members)
    state = stack([_dense_state(ctx, s, t) for s, t in members])
    init_vars = sharding.tree_to_host({"params": state.params, "batch_stats": state.batch_stats})
    # sharded over the mesh, padded to a multiple of the devices (every strategy: retraining
    # builds its members so too, and the two stages then share their compiled steps)
    state = sharding.shard(jax.tree.map(np.asarray, state))
    hooks.point("stage:members", stage=prog.name, tree=state)
    trainer = _trainer(ctx, ctx.cfg.dense, prog.batch_size, sam=ctx.cfg.knob == "sam_rho")
    rewind = _rewind_epoch(ctx)
    temps, keep = _dense_keep(ctx, prog)
    ctx.say(f"{prog.name}: {n} dense member(s) x {prog.epochs} epochs "
             f"({prog.steps} steps, batch {prog.batch_size}, strategy {trainer.strategy})")
    meta = {"stage": "dense", "member": list(prog.members),
            "dense_seed": [s for s, _ in members], "temperature": [t for _, t in members],
            "density": [None] * n, "retrain_seed": [None] * n}
    _, hist, snaps = _fit(ctx, prog.name, trainer, state, prog.epochs, temps,
                               f"dense {prog.name} (epochs)", keep_epochs=keep, meta=meta)
    trim = lambda x: np.asarray(x)[:n]  # noqa: E731  (drop the padding)
    out = {"variables": jax.tree.map(lambda *xs: np.stack([trim(x) for x in xs], axis=1),
                                     *[snaps[t] for t in temps]),
           "test_error": np.stack([trim(hist[t]) for t in temps], axis=1)}
    if rewind is not None:  # weight rewinding: the dense weights at rewind_epoch [n, ...]
        out["rewind_variables"] = jax.tree.map(trim, snaps[rewind] if rewind else init_vars)
    return out


def _dense_todo(ctx: Context, old: dict | None) -> np.ndarray | None:
    """Which dense members a grown sweep must (re)train: a new seed, or (epochs knob) a seed
    with a new temperature checkpoint; None: every member (no grown-from run)."""
    if old is None:
        return None
    og = ctx.old_grid
    if ctx.cfg.knob == "epochs":
        new_temps = not set(ctx.temps) <= set(og.temperatures)
        return np.asarray([new_temps or s not in og.dense_seeds
                           for s, _ in ctx.plan.dense_members])
    return np.asarray([s not in og.dense_seeds or t not in og.temperatures
                       for s, t in ctx.plan.dense_members])


def dense(ctx: Context) -> dict:
    """Dense variables [S, T, ...] and test errors [S, T] at every (seed, temperature): host
    arrays (S x T checkpoints, not M)."""
    progs = ctx.plan.stage_programs("dense")
    out = restore(ctx, "dense")
    if out is not None:
        ctx.say("dense: done before, loaded")
        for p in progs:
            ctx.wd.remove(p.name)
            _remove_progress(ctx, p.name, _dense_keep(ctx, p)[1])
        return out
    t0 = time.time()
    old = old_stage(ctx, "dense")
    todo = _dense_todo(ctx, old)
    if todo is not None:  # a grown sweep: only the programs' members that are new
        progs = [dataclasses.replace(p, members=tuple(m for m in p.members if todo[m]))
                 for p in progs]
        progs = [p for p in progs if p.members]
        ctx.say(f"dense: {int(todo.sum())} of {len(todo)} dense member(s) to train for the "
                 "grown sweep, the rest from the finished run")
    parts = []
    for prog in progs:
        res = restore(ctx, prog.name)
        if res is not None:
            ctx.say(f"{prog.name}: done before, loaded")
        else:
            res = _dense_program(ctx, prog)
            if len(progs) > 1:  # one program: the stage checkpoint is its record
                ctx.wd.save(prog.name, res, note="(program done)")
        if len(progs) > 1:
            _remove_progress(ctx, prog.name, _dense_keep(ctx, prog)[1])
        parts.append((prog.members, res))
    out = _assemble_dense(ctx, parts, old)
    ctx.say(f"dense: done in {time.time() - t0:.1f}s; test accuracy at "
             + ", ".join(f"{ctx.cfg.knob} {t}: {100 * (1 - out['test_error'][:, i].mean()):.2f}%"
                         for i, t in enumerate(ctx.temps)))
    ctx.wd.save("dense", out, note="(stage done)")
    for prog in progs:
        ctx.wd.remove(prog.name)
        _remove_progress(ctx, prog.name, _dense_keep(ctx, prog)[1])
    return out


def _assemble_dense(ctx: Context, parts: list, old: dict | None) -> dict:
    """The programs' results (and a grown-from run's, whose numbers are kept as they are)
    as arrays [S, T, ...] (``rewind_variables``: [S, ...] for the epochs knob)."""
    S, T = len(ctx.grid.dense_seeds), len(ctx.temps)
    epochs = ctx.cfg.knob == "epochs"
    cells: dict[tuple, dict] = {}  # (seed index, temperature index) -> tree without lead axes
    for members, res in parts:
        for j, m in enumerate(members):
            s, t = ctx.plan.dense_members[m]
            si = ctx.grid.dense_seeds.index(s)
            for ti in (range(T) if epochs else [ctx.temps.index(t)]):
                tj = ti if epochs else 0
                cells[(si, ti)] = {
                    k: jax.tree.map(lambda x, j=j, tj=tj, k=k: x[j] if k == "rewind_variables"
                                    else x[j, tj], v) for k, v in res.items()}
    if old is not None:
        og = ctx.old_grid
        for si, s in enumerate(ctx.grid.dense_seeds):
            for ti, t in enumerate(ctx.temps):
                if s in og.dense_seeds and t in og.temperatures:
                    a, b = og.dense_seeds.index(s), og.temperatures.index(t)
                    cells[(si, ti)] = {k: jax.tree.map(
                        lambda x, i=(a if k == "rewind_variables" and epochs else (a, b)): x[i],
                        v) for k, v in old.items()}
    order = [cells[(si, ti)] for si in range(S) for ti in range(T)]
    out = {k: jax.tree.map(lambda *xs: np.stack(xs).reshape(S, T, *xs[0].shape), *[o[k] for o in order])
           for k in order[0]}
    if epochs and "rewind_variables" in out:  # one rewound point per seed
        out["rewind_variables"] = jax.tree.map(lambda x: x[:, 0], out["rewind_variables"])
    return out


def _rewind_epoch(ctx: Context) -> int | None:
    r = ctx.cfg.retrain
    return int(r.rewind_epoch) if r.mode == "weight_rewinding" else None


def retrain_section(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The retrain settings as run: fine-tuning is a constant ``finetune_lr`` (Zhou et al. 2023,
    §3; docs/fidelity.md, Retraining)."""
    rc = ml_collections.ConfigDict(cfg.retrain.to_dict())
    if rc.mode == "finetune":
        rc.lr, rc.milestones = rc.finetune_lr, ()
    return rc


# -- stage 2+3: prune every checkpoint to every density, retrain with masks ------------------


def _template(ctx: Context) -> dict:
    """One member's variables as shape structs."""
    return jax.eval_shape(lambda k: models.init(ctx.model, k, ctx.ds.image_shape), ctx.root)


def _members_like(ctx: Context, m: int, m_pad: int, last: int) -> dict:
    v = _template(ctx)
    return {"variables": sharding.members_like(v, m_pad),
            "mask": sharding.members_like(v["params"], m_pad),
            "density": np.zeros(m, np.float64), "healthy": np.zeros(m, bool),
            "test_error": np.zeros((m, last), np.float64)}


def _sources(ctx: Context, dense: dict) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """The replicated dense checkpoints [S*T, ...] that are pruned, the variables retraining
    starts from, and each member's row in each."""
    S, T, D, R = ctx.grid.shape
    ij = ctx.grid.member_indices()
    flat = lambda x, lead: x.reshape(-1, *x.shape[lead:])  # noqa: E731
    dense_params = sharding.replicate(jax.tree.map(lambda x: flat(x, 2),
                                                   dense["variables"]["params"]))
    row = ij[:, 0] * T + ij[:, 1]
    if ctx.cfg.retrain.mode == "weight_rewinding":  # masks of the trained checkpoint
        rv = dense["rewind_variables"]
        per_seed = ctx.cfg.knob == "epochs"
        source = sharding.replicate(jax.tree.map(lambda x: flat(x, 1 if per_seed else 2), rv))
        return dense_params, source, row, (ij[:, 0] if per_seed else row)
    source = sharding.replicate(jax.tree.map(lambda x: flat(x, 2), dense["variables"]))
    return dense_params, source, row, row


def retrain(ctx: Context, dense: dict) -> dict:
    c, grid = ctx.cfg, ctx.grid
    M, last = grid.num_members, c.measure.test_error_last_epochs
    progs = ctx.plan.stage_programs("retrain")
    m_pad = sharding.padded(M)
    n_last = min(last, progs[0].epochs)
    out = restore(ctx, "retrain", like=_members_like(ctx, M, m_pad, n_last))
    if out is not None:
        ctx.say("retrain: done before, loaded")
        for p in progs:
            ctx.wd.remove(p.name)
            ctx.wd.remove(f"{p.name}_progress")
        return out
    old, mmap = None, None
    if ctx.old_grid is not None:
        Mo = ctx.old_grid.num_members
        old = old_stage(ctx, "retrain", like=_members_like(ctx, Mo, sharding.padded(Mo), n_last))
    if old is not None:  # a grown sweep: programs of the new members only
        mmap = grid.member_map(ctx.old_grid)
        todo = [int(i) for i in np.flatnonzero(mmap < 0)]
        cap = max(len(p.members) for p in progs)
        progs = [dataclasses.replace(progs[0], name=f"retrain_g{k}",
                                     members=tuple(todo[i:i + cap]))
                 for k, i in enumerate(range(0, len(todo), cap))]
    S, T, D, R = grid.shape
    ctx.say(f"prune: {S * T} dense checkpoint(s) x {D} densities ({c.prune.scope} magnitude), "
             "on device")
    dense_params, source, mask_from, source_from = _sources(ctx, dense)
    density = np.asarray(ctx.densities, np.float32)[grid.member_indices()[:, 2]]
    keys = grid.retrain_keys(ctx.root)
    rc = retrain_section(ctx.cfg)
    n_todo = sum(len(p.members) for p in progs)
    ctx.say(f"retrain ({rc.mode}): {n_todo} members ({S} dense seed(s) x {T} temperatures x "
             f"{D} densities x {R} retrain seeds"
             f"{'' if old is None else f'; {M - n_todo} from the finished run'}) in "
             f"{len(progs)} program(s) x {ctx.plan.stage_programs('retrain')[0].epochs} epochs,"
             f" strategy {ctx.strategy}, {sharding.num_shards()} device(s) in "
             f"{jax.process_count()} process(es)")
    t0 = time.time()
    parts, counts = [], []
    for prog in progs:
        ids = np.asarray(prog.members)
        n = len(ids)
        eval_epochs = range(max(1, prog.epochs - last + 1), prog.epochs + 1)
        res = restore(ctx, prog.name, like=_members_like(ctx,
            n, sharding.padded(n), len(eval_epochs)))
        if res is not None:
            ctx.say(f"{prog.name}: done before, loaded")
        else:
            res = _retrain_program(ctx, prog, dense_params, source, mask_from, source_from,
                                        density, keys, rc, eval_epochs)
            if len(progs) > 1:  # one program: the stage checkpoint is its record
                ctx.wd.save(prog.name, res, note="(program done)")
                ctx.wd.remove(f"{prog.name}_progress")
        parts.append(res)
        counts.append(n)
    order = None
    if old is not None:  # the finished run's members first, then the new ones, reordered
        parts, counts = [old] + parts, [ctx.old_grid.num_members] + counts
        order = mmap.copy()
        order[mmap < 0] = counts[0] + np.arange(int((mmap < 0).sum()))
    out = {k: _join(ctx, [p[k] for p in parts], counts, order) for k in ("variables", "mask")}
    for k in ("density", "healthy", "test_error"):
        host = np.concatenate([np.asarray(p[k])[:n] for p, n in zip(parts, counts)])
        out[k] = host if order is None else host[order]
    ctx.say(f"retrain: done in {time.time() - t0:.1f}s")
    ctx.wd.save("retrain", out, note="(stage done)")
    for prog in progs:
        ctx.wd.remove(prog.name)
        ctx.wd.remove(f"{prog.name}_progress")
    return out


def _join(ctx: Context, parts: list, counts: list[int], order: np.ndarray | None):
    """Programs' stacked trees as one of M members (padded, sharded), in member order."""
    M = ctx.grid.num_members
    if order is None:
        return stages.concat_members(parts, counts, sharding.padded(M))
    cat = stages.concat_members(parts, counts, sharding.padded(sum(counts)))
    return stages.take_members(cat, padded_idx(order, True))


def _retrain_program(ctx: Context, prog, dense_params, source, mask_from, source_from, density, keys,
                     rc, eval_epochs) -> dict:
    ids = np.asarray(prog.members)
    n = len(ids)
    sel = padded_idx(ids, True)  # every strategy: the padding is a no-op on one device
    state = stages.build_members(dense_params, source, mask_from[sel], source_from[sel],
                                 density[sel], keys[sel], lr=rc.lr, weight_decay=rc.weight_decay,
                                 momentum=rc.momentum, scope=ctx.cfg.prune.scope,
                                 leaves=ctx.cfg.prune.leaves)
    hooks.point("stage:members", stage=prog.name, tree=state)
    grid_members = ctx.grid.members()
    meta = {"stage": "retrain", "member": [int(i) for i in ids],
            **{k: [grid_members[i][j] for i in ids] for j, k in enumerate(
                ("dense_seed", "temperature", "density", "retrain_seed"))}}
    final, hist, _ = _fit(ctx, prog.name, _trainer(ctx, rc), state, prog.epochs, eval_epochs,
                               f"retrain {prog.name} (epochs)", meta=meta)
    variables = {"params": final.params, "batch_stats": final.batch_stats}
    healthy = stages.finite(variables)[:n]
    # pruned weights stay 0 (a diverged member's NaN/inf weights are its own business)
    if not stages.pruned_stay_zero(final.params, final.mask)[:n][healthy].all():
        raise AssertionError("a pruned weight moved away from 0 during retraining")
    if not healthy.all():
        ctx.say(f"{prog.name}: {int((~healthy).sum())} member(s) diverged (non-finite "
                 "weights): reported as sick, the sweep goes on")
    density = pruning.mask_density_stacked(final.mask, ctx.cfg.prune.leaves)
    return {"variables": variables, "mask": final.mask,
            "density": sharding.to_host(density)[:n].astype(np.float64),
            "healthy": healthy,
            "test_error": np.stack([np.asarray(hist[e])[:n] for e in eval_epochs], axis=1)}

