"""The training stages of a sweep (dense, prune + retrain) as a mixin of
``tr_jax.sweep.run.Pipeline``: they resume from and commit to the workdir; the bodies are
functions of global arrays in ``tr_jax.sweep.stages``. A grown sweep (see ``Workdir._grow``)
trains only its new members and takes the others from the finished run."""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tr_jax import models, pruning, sharding
from tr_jax.sweep import stages
from tr_jax.sweep.grid import DENSE, member_key
from tr_jax.sweep.store import GROWN_SUFFIX
from tr_jax.training import StepConfig, Trainer, init_state, stack


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not (enabled and sharding.is_primary()),
                leave=True, dynamic_ncols=True)


def padded_idx(idx: np.ndarray, stacked: bool) -> np.ndarray:
    """``idx`` padded (repeating its last entry) to a multiple of the device count."""
    idx = np.asarray(idx)
    if not stacked:
        return idx
    n = sharding.padded(len(idx))
    return np.concatenate([idx, np.repeat(idx[-1:], n - len(idx), axis=0)])


@functools.partial(jax.jit, static_argnames=("momentum", "optimizer"))
def _fresh_state(variables, key, lr, weight_decay, rho, *, momentum, optimizer):
    """A dense member's optimiser state, unmasked (one compiled call, not one per leaf shape)."""
    return init_state(variables, jax.tree.map(jnp.ones_like, variables["params"]), key, lr,
                      weight_decay, momentum, optimizer=optimizer, rho=rho)


def section_step(cfg: ml_collections.ConfigDict, section: ml_collections.ConfigDict,
                 num_train: int, mean, std, batch_size: int | None = None,
                 sam: bool = False) -> tuple[StepConfig, int]:
    """(``StepConfig``, steps per call) of a training section (dense or retrain) of ``cfg`` on a
    training set of ``num_train`` images normalised by ``mean``/``std``: what a run compiles, and
    what ``--dry-run`` looks up in the autotune cache without the data."""
    bs = int(batch_size or section.batch_size)
    chunk, unroll = cfg.run.chunk_steps, True
    if chunk == 0:  # auto: unrolled chunks of 4 on CPU, a whole epoch as one rolled scan elsewhere
        cpu = jax.default_backend() == "cpu"
        chunk, unroll = (4, True) if cpu else (-(-int(num_train) // bs), False)
    step = StepConfig(mean=tuple(mean), std=tuple(std), batch_size=bs,
                      pad=cfg.augment.pad, flip=cfg.augment.flip, momentum=section.momentum,
                      unroll=unroll, optimizer=section.get("optimizer", "sgd"),
                      sam=sam or section.get("sam_rho", 0.0) > 0,
                      precision=cfg.run.get("precision", "float32"))
    return step, chunk


class TrainStages:
    """Dense training and retraining (needs the ``Pipeline`` attributes: cfg, ds, wd, model,
    grid, old_grid, plan, root, strategy, stacked, X, Y, Xt, Yt, say, _restore)."""

    def _step(self, section: ml_collections.ConfigDict, batch_size: int | None = None,
              sam: bool = False) -> tuple[StepConfig, int]:
        """The step settings of a training section (dense or retrain) and its steps per call."""
        return section_step(self.cfg, section, self.ds.num_train, self.ds.mean, self.ds.std,
                            batch_size, sam)

    def _trainer(self, section: ml_collections.ConfigDict, batch_size: int | None = None,
                 sam: bool = False) -> Trainer:
        step, chunk = self._step(section, batch_size, sam)
        iteration = section.schedule == "iteration"
        return Trainer(self.model, step, self.strategy, chunk_steps=chunk,
                       drop_last=bool(section.drop_last), eval_batch_size=self.cfg.run.eval_batch_size,
                       milestones=tuple(section.milestones), gamma=section.gamma,
                       schedule=section.schedule,
                       max_steps=int(section.iterations) if iteration else None)

    def _metrics_log(self):
        """The workdir's ``metrics.jsonl`` writer (``tr_jax.sweep.metrics``), made once."""
        if getattr(self, "_mlog", None) is None:
            from tr_jax.sweep.metrics import MetricsLog
            run = self.cfg.run
            self._mlog = MetricsLog(self.wd.path, run.get("metrics", True),
                                    run.get("tensorboard", False), self.cfg.knob)
        return self._mlog

    def _metrics_chunk(self, stage: str, lo: int, hi: int, n: int, size: int) -> None:
        """After the record of chunk [lo, hi) of ``n`` items (chunks of ``size``) of the chunked
        stage ``stage`` (outputs, lmc, bezier, hessian) is committed: its metrics line (timed from
        the previous line) and, every ~60 s or at the last chunk, a progress line in the log."""
        from tr_jax.sweep.metrics import fmt_duration
        mlog = self._metrics_log()
        now = time.time()
        wall = now - mlog.last_t
        size = max(1, size)
        k, chunks = lo // size + 1, -(-n // size)
        group = {"outputs": "measure", "lmc": "measure"}.get(stage, stage)
        mlog.chunk(group, stage, k, chunks, hi - lo, wall)
        timers = self.__dict__.setdefault("_chunk_timer", {})  # stage -> (start, items, last say)
        t0, done, last_say = timers.setdefault(stage, (now - wall, 0, now))
        done += hi - lo
        rate = done / max(now - t0, 1e-9)
        if hi >= n or now - last_say >= 60:
            self.say(f"{stage}: chunk {k}/{chunks}, {rate:.3g} items/s, "
                     f"ETA stage {fmt_duration((n - hi) / max(rate, 1e-9))}")
            last_say = now
        timers[stage] = (t0, done, last_say)

    def _fit(self, stage: str, trainer: Trainer, state, epochs: int, eval_epochs, desc: str,
             keep_epochs: tuple[int, ...] = (), meta: dict | None = None):
        """``trainer.fit`` that commits a progress checkpoint every ``run.checkpoint_every`` epochs
        (the state, as sharded global arrays, and the test-error history) and resumes from it;
        a kept snapshot (dense variables at ``keep_epochs``) is its own checkpoint, written once.
        Data order and augmentation depend on (member key, epoch, step) only, so a resumed run
        reproduces the uninterrupted one.

        Returns (final stacked state, {epoch: test errors [M]}, {epoch: host variables [M, ...]}).
        """
        name, every = f"{stage}_progress", self.cfg.run.checkpoint_every
        eval_epochs, keep = tuple(eval_epochs), tuple(keep_epochs)
        M = jax.tree.leaves(state)[0].shape[0]
        variables = lambda st: {"params": st.params, "batch_stats": st.batch_stats}  # noqa: E731
        record = {"state": state, "epoch": np.int32(0),
                  "hist": np.full((len(eval_epochs), M), np.nan, np.float64)}
        host_vars = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), variables(state))
        start, hist, snaps = 0, {}, {}
        loaded = self._restore(name, like=record)
        if loaded is not None:
            record = loaded
            state, start = record["state"], int(record["epoch"])
            hist = {e: record["hist"][i] for i, e in enumerate(eval_epochs) if e <= start}
            for e in keep:
                if e <= start:
                    snaps[e] = self.wd.load(f"{stage}_snap{e}", like=host_vars)
            self.say(f"{stage}: resuming from the checkpoint after epoch {start}")
        mlog = self._metrics_log()
        mlog.restart(stage, start)  # lines of a killed run beyond its last commit go
        tick, on_metrics, metric_epochs = self._epoch_metrics(stage, trainer, epochs, start, meta)
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
                    self.wd.save(f"{stage}_snap{epoch}", snaps[epoch], note="(snapshot)")
            if save:
                for i, e in enumerate(eval_epochs):
                    if e in hist:
                        record["hist"][i] = hist[e]
                record.update(state=st, epoch=np.int32(epoch))
                mlog.flush()  # the epochs' lines first: a resume drops those beyond the commit
                self.wd.save(name, record, note=f"after epoch {epoch}")

        with _progress(epochs, desc, self.progress) as bar:
            bar.update(start)
            self._bar = bar
            progress = bar.update if tick is None else (lambda k: (bar.update(k), tick(k)))
            final, hist = trainer.fit(state, self.X, self.Y, epochs, test=(self.Xt, self.Yt),
                                      eval_epochs=eval_epochs, on_epoch=on_epoch,
                                      progress=progress, start_epoch=start, history=hist,
                                      on_metrics=on_metrics, metric_epochs=metric_epochs)
        mlog.flush()
        return final, hist, snaps

    def _epoch_metrics(self, program: str, trainer: Trainer, epochs: int, start: int,
                       meta: dict | None):
        """(tick, on_metrics, metric_epochs) of a program's fit: ``tick(metrics or None)``
        times an epoch, shows member-steps/s and images/s on the bar, logs a progress line with
        the stage's ETA every ~60 s (and at each quarter and the end of the program) and, with
        metrics, buffers the epoch's line; ``on_metrics`` is None when neither metrics.jsonl nor
        TensorBoard is on (no per-epoch host transfer then)."""
        from tr_jax.sweep.metrics import fmt_duration
        meta = dict(meta or {})
        kind = meta.pop("stage", program.split("_")[0])
        run, mlog = self.cfg.run, self._metrics_log()
        n = len(meta.get("member", ())) or 1
        later = 0  # member-steps of the stage's programs after this one
        progs = list(self.plan.stage_programs(kind))
        names = [p.name for p in progs]
        if program in names:
            later = sum(p.steps * len(p.members) for p in progs[names.index(program) + 1:])
        num_train = int(self.X.shape[0])
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
            bar = getattr(self, "_bar", None)
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
                self.say(f"{program}: epoch {epoch}/{epochs}, {ms_s:.0f} member-steps/s, "
                         f"{im_s:.0f} images/s, ETA stage {fmt_duration(left / max(rate, 1e-9))}")
                clock["say"] = now

        # decided from the config, the same in every process: the per-epoch host copies are
        # collectives of sharded arrays, so every process makes them (only process 0 writes)
        if not (run.get("metrics", True) or run.get("tensorboard", False)):
            return tick, None, ()
        k = int(run.get("metrics_test_every", 0))
        return tick, (lambda epoch, m: tick(m)), (range(k, epochs + 1, k) if k else ())

    def _remove_progress(self, stage: str, keep: tuple = ()) -> None:
        self.wd.remove(f"{stage}_progress")
        for e in keep:
            self.wd.remove(f"{stage}_snap{e}")

    # -- stage 1: dense training, checkpoints at the temperature grid ---------------------------
    def _dense_state(self, seed: int, temperature):
        """A fresh dense member: init and data keys from the seed only (every temperature of a
        seed starts from the same weights and data order, as the reference's runs do)."""
        c, knob = self.cfg, self.cfg.knob
        k = member_key(self.root, DENSE, seed)
        v = models.init(self.model, jax.random.fold_in(k, 0), self.ds.image_shape)
        hyper = {"lr": c.dense.lr, "weight_decay": c.dense.weight_decay, "sam_rho": c.dense.sam_rho}
        if knob in hyper:
            hyper[knob] = float(temperature)
        return _fresh_state(v, jax.random.fold_in(k, 1), hyper["lr"], hyper["weight_decay"],
                            hyper["sam_rho"], momentum=float(c.dense.momentum),
                            optimizer=c.dense.optimizer)

    def _dense_keep(self, prog) -> tuple[tuple, tuple]:
        rewind = self._rewind_epoch()
        temps = self.temps if self.cfg.knob == "epochs" else (prog.epochs,)
        return temps, tuple(sorted(set(temps) | ({rewind} if rewind else set())))

    def _dense_program(self, prog) -> dict:
        members = [self.plan.dense_members[i] for i in prog.members]
        n = len(members)
        state = stack([self._dense_state(s, t) for s, t in members])
        init_vars = sharding.tree_to_host({"params": state.params, "batch_stats": state.batch_stats})
        # sharded over the mesh, padded to a multiple of the devices (every strategy: retraining
        # builds its members so too, and the two stages then share their compiled steps)
        state = sharding.shard(jax.tree.map(np.asarray, state))
        trainer = self._trainer(self.cfg.dense, prog.batch_size, sam=self.cfg.knob == "sam_rho")
        rewind = self._rewind_epoch()
        temps, keep = self._dense_keep(prog)
        self.say(f"{prog.name}: {n} dense member(s) x {prog.epochs} epochs "
                 f"({prog.steps} steps, batch {prog.batch_size}, strategy {trainer.strategy})")
        meta = {"stage": "dense", "member": list(prog.members),
                "dense_seed": [s for s, _ in members], "temperature": [t for _, t in members],
                "density": [None] * n, "retrain_seed": [None] * n}
        _, hist, snaps = self._fit(prog.name, trainer, state, prog.epochs, temps,
                                   f"dense {prog.name} (epochs)", keep_epochs=keep, meta=meta)
        trim = lambda x: np.asarray(x)[:n]  # noqa: E731  (drop the padding)
        out = {"variables": jax.tree.map(lambda *xs: np.stack([trim(x) for x in xs], axis=1),
                                         *[snaps[t] for t in temps]),
               "test_error": np.stack([trim(hist[t]) for t in temps], axis=1)}
        if rewind is not None:  # weight rewinding: the dense weights at rewind_epoch [n, ...]
            out["rewind_variables"] = jax.tree.map(trim, snaps[rewind] if rewind else init_vars)
        return out

    def _old(self, stage: str, like=None):
        """The finished ``stage`` of the run this grown sweep extends (see ``Workdir._grow``),
        or None."""
        if self.old_grid is None:
            return None
        name = f"{stage}{GROWN_SUFFIX}"
        return self.wd.load(name, like) if self.wd.has(name) else None

    def _dense_todo(self, old: dict | None) -> np.ndarray | None:
        """Which dense members a grown sweep must (re)train: a new seed, or (epochs knob) a seed
        with a new temperature checkpoint; None: every member (no grown-from run)."""
        if old is None:
            return None
        og = self.old_grid
        if self.cfg.knob == "epochs":
            new_temps = not set(self.temps) <= set(og.temperatures)
            return np.asarray([new_temps or s not in og.dense_seeds
                               for s, _ in self.plan.dense_members])
        return np.asarray([s not in og.dense_seeds or t not in og.temperatures
                           for s, t in self.plan.dense_members])

    def dense(self) -> dict:
        """Dense variables [S, T, ...] and test errors [S, T] at every (seed, temperature): host
        arrays (S x T checkpoints, not M)."""
        progs = self.plan.stage_programs("dense")
        out = self._restore("dense")
        if out is not None:
            self.say("dense: done before, loaded")
            for p in progs:
                self.wd.remove(p.name)
                self._remove_progress(p.name, self._dense_keep(p)[1])
            return out
        t0 = time.time()
        old = self._old("dense")
        todo = self._dense_todo(old)
        if todo is not None:  # a grown sweep: only the programs' members that are new
            progs = [dataclasses.replace(p, members=tuple(m for m in p.members if todo[m]))
                     for p in progs]
            progs = [p for p in progs if p.members]
            self.say(f"dense: {int(todo.sum())} of {len(todo)} dense member(s) to train for the "
                     "grown sweep, the rest from the finished run")
        parts = []
        for prog in progs:
            res = self._restore(prog.name)
            if res is not None:
                self.say(f"{prog.name}: done before, loaded")
            else:
                res = self._dense_program(prog)
                if len(progs) > 1:  # one program: the stage checkpoint is its record
                    self.wd.save(prog.name, res, note="(program done)")
            if len(progs) > 1:
                self._remove_progress(prog.name, self._dense_keep(prog)[1])
            parts.append((prog.members, res))
        out = self._assemble_dense(parts, old)
        self.say(f"dense: done in {time.time() - t0:.1f}s; test accuracy at "
                 + ", ".join(f"{self.cfg.knob} {t}: {100 * (1 - out['test_error'][:, i].mean()):.2f}%"
                             for i, t in enumerate(self.temps)))
        self.wd.save("dense", out, note="(stage done)")
        for prog in progs:
            self.wd.remove(prog.name)
            self._remove_progress(prog.name, self._dense_keep(prog)[1])
        return out

    def _assemble_dense(self, parts: list, old: dict | None) -> dict:
        """The programs' results (and a grown-from run's, whose numbers are kept as they are)
        as arrays [S, T, ...] (``rewind_variables``: [S, ...] for the epochs knob)."""
        S, T = len(self.grid.dense_seeds), len(self.temps)
        epochs = self.cfg.knob == "epochs"
        cells: dict[tuple, dict] = {}  # (seed index, temperature index) -> tree without lead axes
        for members, res in parts:
            for j, m in enumerate(members):
                s, t = self.plan.dense_members[m]
                si = self.grid.dense_seeds.index(s)
                for ti in (range(T) if epochs else [self.temps.index(t)]):
                    tj = ti if epochs else 0
                    cells[(si, ti)] = {
                        k: jax.tree.map(lambda x, j=j, tj=tj, k=k: x[j] if k == "rewind_variables"
                                        else x[j, tj], v) for k, v in res.items()}
        if old is not None:
            og = self.old_grid
            for si, s in enumerate(self.grid.dense_seeds):
                for ti, t in enumerate(self.temps):
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

    def _rewind_epoch(self) -> int | None:
        r = self.cfg.retrain
        return int(r.rewind_epoch) if r.mode == "weight_rewinding" else None

    def _retrain_section(self) -> ml_collections.ConfigDict:
        """The retrain settings as run: fine-tuning is a constant ``finetune_lr`` (SPEC §1.6)."""
        rc = ml_collections.ConfigDict(self.cfg.retrain.to_dict())
        if rc.mode == "finetune":
            rc.lr, rc.milestones = rc.finetune_lr, ()
        return rc

    # -- stage 2+3: prune every checkpoint to every density, retrain with masks ------------------
    def members(self) -> list[tuple[int, Any, float, int]]:
        return self.grid.members()

    def pairs(self) -> list[tuple[int, int]]:
        return self.grid.pairs()

    def _template(self) -> dict:
        """One member's variables as shape structs."""
        return jax.eval_shape(lambda k: models.init(self.model, k, self.ds.image_shape), self.root)

    def _members_like(self, m: int, m_pad: int, last: int) -> dict:
        v = self._template()
        return {"variables": sharding.members_like(v, m_pad),
                "mask": sharding.members_like(v["params"], m_pad),
                "density": np.zeros(m, np.float64), "healthy": np.zeros(m, bool),
                "test_error": np.zeros((m, last), np.float64)}

    def _sources(self, dense: dict) -> tuple[Any, Any, np.ndarray, np.ndarray]:
        """The replicated dense checkpoints [S*T, ...] that are pruned, the variables retraining
        starts from, and each member's row in each."""
        S, T, D, R = self.grid.shape
        ij = self.grid.member_indices()
        flat = lambda x, lead: x.reshape(-1, *x.shape[lead:])  # noqa: E731
        dense_params = sharding.replicate(jax.tree.map(lambda x: flat(x, 2),
                                                       dense["variables"]["params"]))
        row = ij[:, 0] * T + ij[:, 1]
        if self.cfg.retrain.mode == "weight_rewinding":  # masks of the trained checkpoint
            rv = dense["rewind_variables"]
            per_seed = self.cfg.knob == "epochs"
            source = sharding.replicate(jax.tree.map(lambda x: flat(x, 1 if per_seed else 2), rv))
            return dense_params, source, row, (ij[:, 0] if per_seed else row)
        source = sharding.replicate(jax.tree.map(lambda x: flat(x, 2), dense["variables"]))
        return dense_params, source, row, row

    def retrain(self, dense: dict) -> dict:
        c, grid = self.cfg, self.grid
        M, last = grid.num_members, c.measure.test_error_last_epochs
        progs = self.plan.stage_programs("retrain")
        m_pad = sharding.padded(M)
        n_last = min(last, progs[0].epochs)
        out = self._restore("retrain", like=self._members_like(M, m_pad, n_last))
        if out is not None:
            self.say("retrain: done before, loaded")
            for p in progs:
                self.wd.remove(p.name)
                self.wd.remove(f"{p.name}_progress")
            return out
        old, mmap = None, None
        if self.old_grid is not None:
            Mo = self.old_grid.num_members
            old = self._old("retrain", like=self._members_like(Mo, sharding.padded(Mo), n_last))
        if old is not None:  # a grown sweep: programs of the new members only
            mmap = grid.member_map(self.old_grid)
            todo = [int(i) for i in np.flatnonzero(mmap < 0)]
            cap = max(len(p.members) for p in progs)
            progs = [dataclasses.replace(progs[0], name=f"retrain_g{k}",
                                         members=tuple(todo[i:i + cap]))
                     for k, i in enumerate(range(0, len(todo), cap))]
        S, T, D, R = grid.shape
        self.say(f"prune: {S * T} dense checkpoint(s) x {D} densities ({c.prune.scope} magnitude), "
                 "on device")
        dense_params, source, mask_from, source_from = self._sources(dense)
        density = np.asarray(self.densities, np.float32)[grid.member_indices()[:, 2]]
        keys = grid.retrain_keys(self.root)
        rc = self._retrain_section()
        n_todo = sum(len(p.members) for p in progs)
        self.say(f"retrain ({rc.mode}): {n_todo} members ({S} dense seed(s) x {T} temperatures x "
                 f"{D} densities x {R} retrain seeds"
                 f"{'' if old is None else f'; {M - n_todo} from the finished run'}) in "
                 f"{len(progs)} program(s) x {self.plan.stage_programs('retrain')[0].epochs} epochs,"
                 f" strategy {self.strategy}, {sharding.num_shards()} device(s) in "
                 f"{jax.process_count()} process(es)")
        t0 = time.time()
        parts, counts = [], []
        for prog in progs:
            ids = np.asarray(prog.members)
            n = len(ids)
            eval_epochs = range(max(1, prog.epochs - last + 1), prog.epochs + 1)
            res = self._restore(prog.name, like=self._members_like(
                n, sharding.padded(n), len(eval_epochs)))
            if res is not None:
                self.say(f"{prog.name}: done before, loaded")
            else:
                res = self._retrain_program(prog, dense_params, source, mask_from, source_from,
                                            density, keys, rc, eval_epochs)
                if len(progs) > 1:  # one program: the stage checkpoint is its record
                    self.wd.save(prog.name, res, note="(program done)")
                    self.wd.remove(f"{prog.name}_progress")
            parts.append(res)
            counts.append(n)
        order = None
        if old is not None:  # the finished run's members first, then the new ones, reordered
            parts, counts = [old] + parts, [self.old_grid.num_members] + counts
            order = mmap.copy()
            order[mmap < 0] = counts[0] + np.arange(int((mmap < 0).sum()))
        out = {k: self._join([p[k] for p in parts], counts, order) for k in ("variables", "mask")}
        for k in ("density", "healthy", "test_error"):
            host = np.concatenate([np.asarray(p[k])[:n] for p, n in zip(parts, counts)])
            out[k] = host if order is None else host[order]
        self.say(f"retrain: done in {time.time() - t0:.1f}s")
        self.wd.save("retrain", out, note="(stage done)")
        for prog in progs:
            self.wd.remove(prog.name)
            self.wd.remove(f"{prog.name}_progress")
        return out

    def _join(self, parts: list, counts: list[int], order: np.ndarray | None):
        """Programs' stacked trees as one of M members (padded, sharded), in member order."""
        M = self.grid.num_members
        if order is None:
            return stages.concat_members(parts, counts, sharding.padded(M))
        cat = stages.concat_members(parts, counts, sharding.padded(sum(counts)))
        return stages.take_members(cat, padded_idx(order, True))

    def _retrain_program(self, prog, dense_params, source, mask_from, source_from, density, keys,
                         rc, eval_epochs) -> dict:
        ids = np.asarray(prog.members)
        n = len(ids)
        sel = padded_idx(ids, True)  # every strategy: the padding is a no-op on one device
        state = stages.build_members(dense_params, source, mask_from[sel], source_from[sel],
                                     density[sel], keys[sel], lr=rc.lr, weight_decay=rc.weight_decay,
                                     momentum=rc.momentum, scope=self.cfg.prune.scope,
                                     leaves=self.cfg.prune.leaves)
        grid_members = self.grid.members()
        meta = {"stage": "retrain", "member": [int(i) for i in ids],
                **{k: [grid_members[i][j] for i in ids] for j, k in enumerate(
                    ("dense_seed", "temperature", "density", "retrain_seed"))}}
        final, hist, _ = self._fit(prog.name, self._trainer(rc), state, prog.epochs, eval_epochs,
                                   f"retrain {prog.name} (epochs)", meta=meta)
        variables = {"params": final.params, "batch_stats": final.batch_stats}
        healthy = stages.finite(variables)[:n]
        # pruned weights stay 0 (a diverged member's NaN/inf weights are its own business)
        if not stages.pruned_stay_zero(final.params, final.mask)[:n][healthy].all():
            raise AssertionError("a pruned weight moved away from 0 during retraining")
        if not healthy.all():
            self.say(f"{prog.name}: {int((~healthy).sum())} member(s) diverged (non-finite "
                     "weights): reported as sick, the sweep goes on")
        density = pruning.mask_density_stacked(final.mask, self.cfg.prune.leaves)
        return {"variables": variables, "mask": final.mask,
                "density": sharding.to_host(density)[:n].astype(np.float64),
                "healthy": healthy,
                "test_error": np.stack([np.asarray(hist[e])[:n] for e in eval_epochs], axis=1)}

