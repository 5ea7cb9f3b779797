"""The driver of one config's pipeline: dense -> prune -> retrain -> measure -> regimes -> figures.

The stage bodies are functions of global arrays (``tr_jax.sweep.stages``); this driver resumes,
commits and writes. Members and pairs come from ``tr_jax.sweep.grid`` (their one home), member
keys from their coordinate values. Every process of a multi-process run executes this same code
on the same workdir: the members axis of every stacked tree is one global ``jax.Array`` sharded
over every device of every process (``tr_jax.sharding``), checkpoints are orbax saves of the
sharded arrays (each process writes its shards, one commit), and only process 0 writes tables,
figures and the log.

Reliability: every stage and program is an atomically swapped checkpoint and every chunk of a
measure stage commits its own small record (``sweep.store``; each commit is logged), so a run
killed anywhere resumes at its last commit and ends with the uninterrupted run's tables, having
written each record once. A member that diverges (NaN/inf weights or test error) is *sick*:
flagged in results.csv and cells.csv, left out of the cell means; the sweep goes on.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tr_jax import __version__, landscape, models, plots, pruning, regimes, sharding
from tr_jax.config import config_hash, to_json
from tr_jax.data.datasets import load_dataset
from tr_jax.sweep import stages, tables
from tr_jax.sweep.estimate import dry_run, members_cap  # noqa: F401  (re-exported)
from tr_jax.sweep.grid import DENSE, Grid, member_key
from tr_jax.sweep.plan import make_plan
from tr_jax.sweep.store import Workdir, atomic_write_csv, atomic_write_text
from tr_jax.sweep.tables import provenance  # noqa: F401  (re-exported)
from tr_jax.training import StepConfig, Trainer, init_state, stack
from tr_jax.training import members as mem

CURVE_KEYS = ("train_error", "train_loss", "test_error", "test_loss")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not (enabled and sharding.is_primary()),
                leave=True, dynamic_ncols=True)


def _padded_idx(idx: np.ndarray, stacked: bool) -> np.ndarray:
    """``idx`` padded (repeating its last entry) to a multiple of the device count."""
    idx = np.asarray(idx)
    if not stacked:
        return idx
    n = sharding.padded(len(idx))
    return np.concatenate([idx, np.repeat(idx[-1:], n - len(idx))])


def resolve_strategy(strategy: str) -> str:
    """The members strategy of this run: ``auto`` is the backend's default, and a multi-process
    run needs a stacked strategy (its members axis spans processes)."""
    s = mem.resolve(strategy)
    if sharding.multi_process() and mem.per_member(s):
        if strategy != "auto":
            raise ValueError(f"run.members_strategy={strategy!r} advances members one by one in "
                             "one process; a multi-process run needs a stacked strategy "
                             "('vmap', 'map', 'map_chunked:k')")
        s = "vmap"
    return s


class Pipeline:
    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str, progress: bool = True,
                 echo: Callable[[str], None] = print, *, model=None, dataset=None):
        self.cfg, self.progress, self._echo = cfg, progress, echo
        self.hash = config_hash(cfg)
        # the data first: a missing dataset fails before the workdir is created
        self.ds = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir or None)
        self.wd = Workdir(workdir, to_json(cfg))
        self.model = model if model is not None else models.build(
            cfg.model.arch, depth=cfg.model.depth, num_classes=self.ds.num_classes,
            width=cfg.model.width)
        self.X, self.Y, self.Xt, self.Yt = sharding.replicate(
            (self.ds.train_images, self.ds.train_labels, self.ds.test_images, self.ds.test_labels))
        self.root = jax.random.key(cfg.seed)
        self.strategy = resolve_strategy(cfg.run.members_strategy)
        self.stacked = not mem.per_member(self.strategy)
        self.grid = Grid.from_config(cfg)
        self.temps, self.densities = self.grid.temperatures, self.grid.densities
        cap, why = members_cap(cfg, self.model, self.ds.image_shape)
        if why:
            self.say(why)
        self.plan = make_plan(cfg, self.ds.num_train, cap)
        self.timings: dict[str, float] = {}

    def echo(self, text: str) -> None:
        if sharding.is_primary():
            self._echo(text)

    def say(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        self.echo(line)
        self.wd.log(line)

    def _restore(self, name: str, like=None):
        return self.wd.restore(name, like, warn=self.say)

    def _trainer(self, section: ml_collections.ConfigDict, batch_size: int | None = None,
                 sam: bool = False) -> Trainer:
        c = self.cfg
        bs = int(batch_size or section.batch_size)
        chunk, unroll = c.run.chunk_steps, True
        if chunk == 0:  # auto: unrolled chunks of 4 on CPU, a whole epoch as one rolled scan elsewhere
            cpu = jax.default_backend() == "cpu"
            chunk, unroll = (4, True) if cpu else (-(-self.ds.num_train // bs), False)
        step = StepConfig(mean=tuple(self.ds.mean), std=tuple(self.ds.std), batch_size=bs,
                          pad=c.augment.pad, flip=c.augment.flip, momentum=section.momentum,
                          unroll=unroll, optimizer=section.get("optimizer", "sgd"),
                          sam=sam or section.get("sam_rho", 0.0) > 0,
                          precision=c.run.get("precision", "float32"))
        iteration = section.schedule == "iteration"
        return Trainer(self.model, step, self.strategy, chunk_steps=chunk,
                       drop_last=bool(section.drop_last), eval_batch_size=c.run.eval_batch_size,
                       milestones=tuple(section.milestones), gamma=section.gamma,
                       schedule=section.schedule,
                       max_steps=int(section.iterations) if iteration else None)

    def _fit(self, stage: str, trainer: Trainer, state, epochs: int, eval_epochs, desc: str,
             keep_epochs: tuple[int, ...] = ()):
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
                self.wd.save(name, record, note=f"after epoch {epoch}")

        with _progress(epochs, desc, self.progress) as bar:
            bar.update(start)
            final, hist = trainer.fit(state, self.X, self.Y, epochs, test=(self.Xt, self.Yt),
                                      eval_epochs=eval_epochs, on_epoch=on_epoch,
                                      progress=bar.update, start_epoch=start, history=hist)
        return final, hist, snaps

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
        return init_state(v, jax.tree.map(jnp.ones_like, v["params"]), jax.random.fold_in(k, 1),
                          hyper["lr"], hyper["weight_decay"], c.dense.momentum,
                          optimizer=c.dense.optimizer, rho=hyper["sam_rho"])

    def _dense_keep(self, prog) -> tuple[tuple, tuple]:
        rewind = self._rewind_epoch()
        temps = self.temps if self.cfg.knob == "epochs" else (prog.epochs,)
        return temps, tuple(sorted(set(temps) | ({rewind} if rewind else set())))

    def _dense_program(self, prog) -> dict:
        members = [self.plan.dense_members[i] for i in prog.members]
        n = len(members)
        state = stack([self._dense_state(s, t) for s, t in members])
        init_vars = sharding.tree_to_host({"params": state.params, "batch_stats": state.batch_stats})
        if self.stacked:  # sharded over the mesh, padded to a multiple of the devices
            state = sharding.shard(jax.tree.map(np.asarray, state))
        trainer = self._trainer(self.cfg.dense, prog.batch_size, sam=self.cfg.knob == "sam_rho")
        rewind = self._rewind_epoch()
        temps, keep = self._dense_keep(prog)
        self.say(f"{prog.name}: {n} dense member(s) x {prog.epochs} epochs "
                 f"({prog.steps} steps, batch {prog.batch_size}, strategy {trainer.strategy})")
        _, hist, snaps = self._fit(prog.name, trainer, state, prog.epochs, temps,
                                   f"dense {prog.name} (epochs)", keep_epochs=keep)
        trim = lambda x: np.asarray(x)[:n]  # noqa: E731  (drop the padding)
        out = {"variables": jax.tree.map(lambda *xs: np.stack([trim(x) for x in xs], axis=1),
                                         *[snaps[t] for t in temps]),
               "test_error": np.stack([trim(hist[t]) for t in temps], axis=1)}
        if rewind is not None:  # weight rewinding: the dense weights at rewind_epoch [n, ...]
            out["rewind_variables"] = jax.tree.map(trim, snaps[rewind] if rewind else init_vars)
        return out

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
        S, T = len(self.grid.dense_seeds), len(self.temps)
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
        inv = np.argsort(np.concatenate([np.asarray(m) for m, _ in parts]))
        out = jax.tree.map(lambda *xs: np.concatenate(xs)[inv], *[r for _, r in parts])
        if self.cfg.knob != "epochs":  # members (seed, temperature) -> [S, T]
            for key in out:  # variables/test_error carry a length-1 temperature axis
                lead = 1 if key == "rewind_variables" else 2
                out[key] = jax.tree.map(lambda x, lead=lead: x.reshape(S, T, *x.shape[lead:]),
                                        out[key])
        self.say(f"dense: done in {time.time() - t0:.1f}s; test accuracy at "
                 + ", ".join(f"{self.cfg.knob} {t}: {100 * (1 - out['test_error'][:, i].mean()):.2f}%"
                             for i, t in enumerate(self.temps)))
        self.wd.save("dense", out, note="(stage done)")
        for prog in progs:
            self.wd.remove(prog.name)
            self._remove_progress(prog.name, self._dense_keep(prog)[1])
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
        out = self._restore("retrain", like=self._members_like(M, m_pad, min(last, progs[0].epochs)))
        if out is not None:
            self.say("retrain: done before, loaded")
            for p in progs:
                self.wd.remove(p.name)
                self.wd.remove(f"{p.name}_progress")
            return out
        S, T, D, R = grid.shape
        self.say(f"prune: {S * T} dense checkpoint(s) x {D} densities ({c.prune.scope} magnitude), "
                 "on device")
        dense_params, source, mask_from, source_from = self._sources(dense)
        density = np.asarray(self.densities, np.float32)[grid.member_indices()[:, 2]]
        keys = grid.retrain_keys(self.root)
        rc = self._retrain_section()
        self.say(f"retrain ({rc.mode}): {M} members ({S} dense seed(s) x {T} temperatures x {D} "
                 f"densities x {R} retrain seeds) in {len(progs)} program(s) x {progs[0].epochs} "
                 f"epochs ({progs[0].steps} steps), strategy {self.strategy}, "
                 f"{sharding.num_shards()} device(s) in {jax.process_count()} process(es)")
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
        out = {"variables": stages.concat_members([p["variables"] for p in parts], counts, m_pad),
               "mask": stages.concat_members([p["mask"] for p in parts], counts, m_pad)}
        for k in ("density", "healthy", "test_error"):
            out[k] = np.concatenate([p[k] for p in parts])
        self.say(f"retrain: done in {time.time() - t0:.1f}s")
        self.wd.save("retrain", out, note="(stage done)")
        for prog in progs:
            self.wd.remove(prog.name)
            self.wd.remove(f"{prog.name}_progress")
        return out

    def _retrain_program(self, prog, dense_params, source, mask_from, source_from, density, keys,
                         rc, eval_epochs) -> dict:
        ids = np.asarray(prog.members)
        n = len(ids)
        sel = _padded_idx(ids, True)  # every strategy: the padding is a no-op on one device
        state = stages.build_members(dense_params, source, mask_from[sel], source_from[sel],
                                     density[sel], keys[sel], lr=rc.lr, weight_decay=rc.weight_decay,
                                     momentum=rc.momentum, scope=self.cfg.prune.scope)
        final, hist, _ = self._fit(prog.name, self._trainer(rc), state, prog.epochs, eval_epochs,
                                   f"retrain {prog.name} (epochs)")
        variables = {"params": final.params, "batch_stats": final.batch_stats}
        healthy = stages.finite(variables)[:n]
        # pruned weights stay 0 (a diverged member's NaN/inf weights are its own business)
        if not stages.pruned_stay_zero(final.params, final.mask)[:n][healthy].all():
            raise AssertionError("a pruned weight moved away from 0 during retraining")
        if not healthy.all():
            self.say(f"{prog.name}: {int((~healthy).sum())} member(s) diverged (non-finite "
                     "weights): reported as sick, the sweep goes on")
        return {"variables": variables, "mask": final.mask,
                "density": sharding.to_host(pruning.mask_density_stacked(final.mask))[:n]
                .astype(np.float64),
                "healthy": healthy,
                "test_error": np.stack([np.asarray(hist[e])[:n] for e in eval_epochs], axis=1)}

    # -- stage 4: per-chunk measure stages ------------------------------------------------------
    def _chunked(self, stage: str, n_items: int, chunk: int, compute, desc: str) -> dict:
        """``compute(lo, hi) -> {key: array}`` over items (cells) in chunks, each chunk committed
        as its own record (written once); a resumed stage reads the records that are done and
        computes the rest. Returns the chunks' arrays concatenated in item order."""
        done = {(lo, hi): arrays for lo, hi, arrays in self.wd.load_chunks(stage)}
        spans = [(lo, min(lo + chunk, n_items)) for lo in range(0, n_items, chunk)]
        have = sum(hi - lo for lo, hi in spans if (lo, hi) in done)
        if have:
            self.say(f"{stage}: resuming after {have}/{n_items} cells")
        results = []
        with _progress(n_items, desc, self.progress) as bar:
            bar.update(have)
            for lo, hi in spans:
                if (lo, hi) not in done:
                    done[(lo, hi)] = {k: np.asarray(v) for k, v in compute(lo, hi).items()}
                    self.wd.save_chunk(stage, lo, hi, done[(lo, hi)])
                    bar.update(hi - lo)
                results.append(done[(lo, hi)])
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}

    def _cells_per_chunk(self, per_cell: int, per_call: int = 1) -> int:
        """Cells per chunk: with a stacked strategy, enough that a chunk's items (``per_cell``
        each) fill whole compiled calls of ``per_call`` items spread over every device."""
        if not self.stacked:
            return 1
        unit = int(np.lcm(max(1, per_call), sharding.num_shards()))
        return min(self.grid.num_cells, int(unit // np.gcd(unit, per_cell)))

    def _take(self, tree, idx: np.ndarray):
        """Members ``idx`` of a stacked tree: sharded and padded with a stacked strategy, else
        one device array per leaf."""
        if self.stacked:
            return stages.take_members(tree, _padded_idx(idx, True))
        return jax.tree.map(lambda x: x[jnp.asarray(idx)], tree)

    def measure(self, retrained: dict) -> dict:
        out = self._restore("measure")
        if out is not None:
            self.say("measure: done before, loaded")
            self.wd.remove_chunks("outputs")
            self.wd.remove_chunks("lmc")
            return out
        c, grid = self.cfg, self.grid
        R, ppc = len(grid.retrain_seeds), grid.pairs_per_cell
        pairs = grid.pairs_array()
        ts = np.linspace(0.0, 1.0, c.measure.lmc_points)
        V = retrained["variables"]
        n_cka = min(c.measure.cka_images, self.ds.num_train)
        P, T = len(pairs), len(ts)
        self.say(f"measure: LMC ({T} points, BN recalibrated on {self.ds.num_train} images) "
                 f"and CKA ({n_cka} images) for {P} pairs")
        t0 = time.time()
        Xc = self.X[:n_cka]

        def outputs(lo, hi):  # CKA of the pairs of cells lo..hi-1
            idx = np.arange(lo * R, hi * R)
            if self.stacked:
                logits = stages.member_logits(self.model, self._take(V, idx), Xc, self.ds.mean,
                                              self.ds.std, c.run.eval_batch_size)
            else:
                logits = jnp.stack([landscape.evaluate(
                    self.model, jax.tree.map(lambda x, i=i: x[i], V), Xc, self.Y[:n_cka],
                    self.ds.mean, self.ds.std, c.run.eval_batch_size,
                    return_logits=True)["logits"] for i in idx])
            local = pairs[lo * ppc:hi * ppc] - lo * R
            return stages.pair_cka(logits, local[:, 0], local[:, 1])

        out = self._chunked("outputs", grid.num_cells, self._cells_per_chunk(R), outputs,
                            "outputs for CKA (cells)")
        points = landscape.resolve_points_per_call(c.measure.points_per_call)
        out.update(self._curve_stage("lmc", T, self._line_curves(V, ts), points,
                                     "LMC (cells)"))
        out["lmc"] = landscape.lmc(out["curve_train_error"])
        out["loss_barrier"] = landscape.loss_barrier(out["curve_train_loss"])
        out["ts"] = ts
        self.say(f"measure: done in {time.time() - t0:.1f}s")
        self.wd.save("measure", out, note="(stage done)")
        self.wd.remove_chunks("outputs")
        self.wd.remove_chunks("lmc")
        return out

    def _line_curves(self, V, ts):
        c, pairs = self.cfg, self.grid.pairs_array()

        def curves(p0, p1):
            pa, pb = self._take(V, pairs[p0:p1, 0]), self._take(V, pairs[p0:p1, 1])
            res = landscape.pair_curves(
                self.model, pa["params"], pb["params"],
                jax.tree.map(lambda x: x[0], pa["batch_stats"]), self.X, self.Y,
                mean=self.ds.mean, std=self.ds.std, ts=ts, bn_batch_size=c.measure.bn_batch_size,
                test=(self.Xt, self.Yt), eval_batch_size=c.run.eval_batch_size,
                points_per_call=c.measure.points_per_call or None)
            return {k: v[:p1 - p0] for k, v in res.items() if k in CURVE_KEYS}
        return curves

    def _curve_stage(self, stage: str, n_points: int, curves_of, per_call: int, desc: str) -> dict:
        """Curves of every pair, resumable per chunk of cells: ``curves_of(p0, p1)`` returns
        metrics [p1 - p0, n_points] for pairs p0..p1-1; the result holds ``curve_{metric}``."""
        ppc = self.grid.pairs_per_cell
        chunk = self._cells_per_chunk(ppc * n_points, per_call)

        def compute(lo, hi):
            cur = curves_of(lo * ppc, hi * ppc)
            return {f"curve_{k}": cur[k] for k in CURVE_KEYS}

        return self._chunked(stage, self.grid.num_cells, chunk, compute, desc)

    # -- stage 4b: trained Bezier curves per pair (SPEC §2.3) -------------------------------------
    def bezier(self, retrained: dict) -> dict | None:
        bc = self.cfg.measure.bezier
        if not bc.enabled:
            return None
        out = self._restore("bezier")
        if out is not None:
            self.say("bezier: done before, loaded")
            self.wd.remove_chunks("bezier")
            return out
        pairs, keys = self.grid.pairs_array(), self.grid.bezier_keys(self.root)
        ts = np.linspace(0.0, 1.0, bc.points)
        V, masks = retrained["variables"], retrained["mask"]
        self.say(f"bezier: {len(pairs)} curves x {bc.epochs} epochs (batch {bc.batch_size}), "
                 f"evaluated at {len(ts)} points")
        t0 = time.time()
        cpu = jax.default_backend() == "cpu"
        m = self.cfg.measure

        def curves(p0, p1):
            pa, pb = self._take(V, pairs[p0:p1, 0]), self._take(V, pairs[p0:p1, 1])
            mask = self._take(masks, pairs[p0:p1, 0])
            mid, _ = landscape.train_curves(
                self.model, pa["params"], pb["params"], mask,
                jax.tree.map(lambda x: x[0], pa["batch_stats"]), self.X, self.Y,
                key=jnp.asarray(_padded_idx(keys[p0:p1], self.stacked)), mean=self.ds.mean,
                std=self.ds.std, epochs=bc.epochs, batch_size=bc.batch_size, lr=bc.lr,
                weight_decay=bc.weight_decay, momentum=bc.momentum,
                chunk_steps=1 if cpu else None, unroll=cpu, strategy=self.strategy)
            res = landscape.curve_errors(
                self.model, pa["params"], mid, pb["params"], self.X, self.Y, mean=self.ds.mean,
                std=self.ds.std, ts=ts, bn_batch_size=m.bn_batch_size, test=(self.Xt, self.Yt),
                eval_batch_size=self.cfg.run.eval_batch_size,
                points_per_call=m.points_per_call or None)
            return {k: v[:p1 - p0] for k, v in res.items() if k in CURVE_KEYS}

        per_call = landscape.resolve_points_per_call(m.points_per_call)
        out = self._curve_stage("bezier", len(ts), curves, per_call, "Bezier curves (cells)")
        out["mc"] = np.asarray(landscape.mode_connectivity(out["curve_train_error"]))
        out["ts"] = ts
        self.say(f"bezier: done in {time.time() - t0:.1f}s")
        self.wd.save("bezier", out, note="(stage done)")
        self.wd.remove_chunks("bezier")
        return out

    # -- stage 4c: Hessian trace and top eigenvalue per retrained member (SPEC §2.5) ------------
    def hessian(self, retrained: dict) -> dict | None:
        hc = self.cfg.measure.hessian
        if not hc.enabled:
            return None
        res = self._restore("hessian")
        if res is not None:
            self.say("hessian: done before, loaded")
            self.wd.remove_chunks("hessian")
            return res
        R = len(self.grid.retrain_seeds)
        n = min(hc.images, self.ds.num_train)
        self.say(f"hessian: trace (<= {hc.max_probes} probes, tol {hc.tol}) and top eigenvalue "
                 f"of {self.grid.num_members} members on {n} training images"
                 f"{', probes on unpruned weights' if hc.restrict_to_mask else ''}")
        t0 = time.time()
        V, masks, keys = retrained["variables"], retrained["mask"], self.grid.hessian_keys(self.root)
        X, Y = self.X[:n], self.Y[:n]
        opts = dict(mean=tuple(self.ds.mean), std=tuple(self.ds.std), max_probes=int(hc.max_probes),
                    chunk=int(hc.chunk), max_iters=int(hc.eig_iters), tol=float(hc.tol))

        def one(i):  # one member, the host loop (what pays on CPU)
            v = jax.tree.map(lambda x: x[i], V)
            m = jax.tree.map(lambda x: x[i], masks) if hc.restrict_to_mask else None
            r = landscape.member_hessian(self.model, v, m, X, Y, jax.random.wrap_key_data(
                jnp.asarray(keys[i])), **opts)
            return np.asarray([r["trace"], r["trace_stderr"], r["trace_probes"],
                               r["top_eigenvalue"]], np.float64)

        def chunk(lo, hi):
            idx = np.arange(lo * R, hi * R)
            if self.stacked:
                h = stages.hessian_members(self.model, self._take(V, idx), self._take(masks, idx),
                                           X, Y, _padded_idx(keys[idx], True),
                                           restrict_to_mask=bool(hc.restrict_to_mask), **opts)
                return {"hessian": np.asarray(h, np.float64)[:len(idx)]}
            return {"hessian": np.stack([one(i) for i in idx])}

        out = self._chunked("hessian", self.grid.num_cells, self._cells_per_chunk(R), chunk,
                            "Hessian (cells)")
        res = {"trace": out["hessian"][:, 0], "trace_stderr": out["hessian"][:, 1],
               "trace_probes": out["hessian"][:, 2], "top_eigenvalue": out["hessian"][:, 3]}
        self.say(f"hessian: done in {time.time() - t0:.1f}s")
        self.wd.save("hessian", res, note="(stage done)")
        self.wd.remove_chunks("hessian")
        return res

    # -- stage 5: tables, regimes, figures --------------------------------------------------------
    def tables(self, dense, retrained, measured, bezier=None, hessian=None):
        """(cells, results) DataFrames (see ``tr_jax.sweep.tables``)."""
        base = {"config_hash": self.hash, **tables.provenance(self.strategy), "knob": self.cfg.knob}
        results = tables.results_table(self.grid, base, dense, retrained, measured, bezier, hessian)
        cells = tables.cells_table(results, self.cfg.regimes.to_dict())
        dense_sick, sick, _ = tables.sick_members(self.grid, dense, retrained)
        if sick.any() or dense_sick.any():
            self.say(f"sick (diverged) members: {int(dense_sick.sum())} dense checkpoint(s), "
                     f"{int(sick.sum())} retrained member(s); flagged in results.csv (sick) and "
                     f"cells.csv (sick_members), left out of the cell means; "
                     f"{int(cells.regime.isna().sum())} cell(s) without a healthy pair have no regime")
        return cells, results

    def curve_figures(self, measured: dict, bezier: dict | None) -> list:
        """Per density: train error along t of every temperature's cell (mean over its pairs and
        dense seeds), the straight line and, when measured, the trained Bezier curve."""
        ij = self.grid.member_indices()[self.grid.pairs_array()[:, 0]]
        paths = []
        for di, d in enumerate(self.densities):
            curves = {}
            for name, src in (("line (LMC)", measured), ("Bezier", bezier)):
                if src is None:
                    continue
                errs = [src["curve_train_error"][(ij[:, 1] == ti) & (ij[:, 2] == di)].mean(axis=0)
                        for ti in range(len(self.temps))]
                curves[name] = (src["ts"], np.stack(errs))
            paths.append(plots.curves_along_t(
                curves, [f"{self.cfg.knob} {t}" for t in self.temps],
                self.wd.path / "figures" / f"curves_density_{d:g}.png",
                title=f"density {100 * d:g}%"))
        return paths

    def _timed(self, name: str, fn, *args):
        t = time.time()
        out = fn(*args)
        self.timings[name] = time.time() - t
        return out

    def run(self) -> dict:
        t0 = time.time()
        self.say(f"tr_jax {__version__}: config {self.cfg.name!r} (hash {self.hash}) on "
                 f"{jax.default_backend()} ({jax.device_count()} device(s), "
                 f"{jax.process_count()} process(es)); workdir {self.wd.path}")
        dense = self._timed("dense", self.dense)
        retrained = self._timed("retrain", self.retrain, dense)
        measured = self._timed("measure", self.measure, retrained)
        bezier = self._timed("bezier", self.bezier, retrained)
        hessian = self._timed("hessian", self.hessian, retrained)
        t = time.time()
        cells, results = self.tables(dense, retrained, measured, bezier, hessian)
        summary = regimes.summary_table(cells)
        figures = []
        if sharding.is_primary():  # one writer
            atomic_write_csv(self.wd.path / "results.csv", results)
            atomic_write_csv(self.wd.path / "cells.csv", cells)
            transition = regimes.transition_with_uncertainty(results)
            figures = plots.figure2(cells, self.wd.path / "figures", transition=transition,
                                    panels=[m for m in plots.ALL_PANELS if m in cells.columns])
            figures.append(plots.three_regimes(
                cells, self.wd.path / "figures" / f"{self.cfg.knob}_three_regimes.png",
                rule=self.cfg.regimes.to_dict(), transition_table=transition))
            figures += self.curve_figures(measured, bezier)
            atomic_write_text(self.wd.path / "summary.txt", summary + "\n")
        self.timings["tables"] = time.time() - t
        sharding.barrier("tr_jax:tables")
        acc = 100 * (1 - dense["test_error"][:, -1].mean())
        self.say(f"dense model test accuracy at {self.cfg.knob}={self.temps[-1]}: {acc:.2f}%")
        self.echo(summary)
        self.timings["total"] = time.time() - t0
        self.say(f"wrote cells.csv, results.csv, {len(figures)} figures in {self.wd.path}; "
                 f"total {time.time() - t0:.1f}s; stage seconds "
                 + json.dumps({k: round(v, 2) for k, v in self.timings.items()})
                 + f"; {self.wd.bytes_written} bytes of checkpoints and records written")
        return {"cells": cells, "results": results, "figures": figures, "summary": summary,
                "timings": dict(self.timings), "bytes_written": self.wd.bytes_written}


def run(cfg: ml_collections.ConfigDict, workdir: str, progress: bool = True,
        echo: Callable[[str], None] = print, *, model=None, dataset=None) -> dict:
    """Run (or resume) the pipeline of a validated config in ``workdir``; ``model`` / ``dataset``
    replace the config's built-in model and dataset."""
    return Pipeline(cfg, workdir, progress, echo, model=model, dataset=dataset).run()
