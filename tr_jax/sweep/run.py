"""The whole pipeline for one config: dense -> prune -> retrain -> measure -> regimes -> figures.

Members (DESIGN.md): dense members are the dense seeds (the epochs knob takes its temperatures as
checkpoints of one full-schedule run per seed, SPEC §1.4); retrain members are every
(dense seed, temperature, density, retrain seed), all stacked in one program (one shape group);
pairs of retrain seeds of a cell feed LMC and CKA. Member keys are folded from the root key and the
member's coordinates only, so a member's numbers do not depend on the other members of its program.

Reliability: every stage, program and progress record is an atomically swapped checkpoint (see
``sweep.store``; each commit is logged in log.txt as ``committed NAME ...``), so a run killed
anywhere resumes at its last commit and ends with the uninterrupted run's tables; an unreadable
checkpoint is moved aside with a warning and recomputed. A member that diverges (NaN/inf weights
or test error) is *sick*: flagged in results.csv (``sick``) and cells.csv (``sick_members``), left
out of the cell means (no LMC/CKA/regime for a cell without a healthy pair); the sweep goes on.
Both tables carry the config hash, tr_jax and jax versions, device kind and members strategy.
"""
from __future__ import annotations

import functools
import itertools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from tr_jax import __version__, landscape, models, plots, pruning, regimes
from tr_jax.config import config_hash, to_json
from tr_jax.data.arrays import check_dataset
from tr_jax.data.datasets import load_dataset
from tr_jax.sweep.store import Workdir, atomic_write_csv, atomic_write_text
from tr_jax.sweep.plan import make_plan
from tr_jax.training import StepConfig, Trainer, init_state, stack
from tr_jax.training.members import resolve as mem_strategy

DENSE, RETRAIN, BEZIER, HESSIAN = 0, 1, 2, 3  # first fold of the root key per stage


def _set(a: np.ndarray, i: int, x) -> np.ndarray:
    a = np.array(a)
    a[i] = np.asarray(x)
    return a


def finite_members(tree, lead: int = 1) -> np.ndarray:
    """True where every value of a member (the first ``lead`` axes index members) is finite."""
    ok = None
    for x in jax.tree.leaves(tree):
        x = np.asarray(x)
        f = np.isfinite(x.reshape(*x.shape[:lead], -1)).all(axis=-1)
        ok = f if ok is None else ok & f
    return ok


def provenance(strategy: str) -> dict[str, str]:
    """How a number was made: tr_jax and jax versions, the device kind and the members strategy
    (a column of results.csv and cells.csv each, next to the config hash)."""
    return {"tr_jax_version": __version__, "jax_version": jax.__version__,
            "device_kind": jax.devices()[0].device_kind, "members_strategy": mem_strategy(strategy)}


def _pick(tree, idx: np.ndarray):
    """Rows ``idx`` of every leaf, on the device."""
    return jax.tree.map(lambda x: jnp.asarray(x[idx]), tree)


def member_key(root: jax.Array, *coords: int) -> jax.Array:
    """fold_in(... fold_in(root, c0) ..., cn): the key of the member at these coordinates."""
    k = root
    for c in coords:
        k = jax.random.fold_in(k, int(c))
    return k


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, leave=True, dynamic_ncols=True)


class Pipeline:
    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str, progress: bool = True,
                 echo: Callable[[str], None] = print, *, model=None, dataset=None):
        """``model`` (a Flax model, see ``tr_jax.models.adapters``) and ``dataset`` (a
        ``tr_jax.data.Dataset``) replace ``cfg.model`` / ``cfg.dataset`` when given."""
        self.cfg, self.progress, self.echo = cfg, progress, echo
        self.hash = config_hash(cfg)
        # the data first: a missing dataset or bad data fails before the workdir is created
        self.ds = (check_dataset(dataset) if dataset is not None
                   else load_dataset(cfg.dataset, cfg.data_dir or None))
        if model is not None:
            models.adapter(model)  # not a usable model: fail before any work
        self.wd = Workdir(workdir, to_json(cfg))
        self.model = model if model is not None else models.build(
            cfg.model.arch, depth=cfg.model.depth, num_classes=self.ds.num_classes,
            width=cfg.model.width)
        self.X, self.Y = jnp.asarray(self.ds.train_images), jnp.asarray(self.ds.train_labels)
        self.Xt, self.Yt = jnp.asarray(self.ds.test_images), jnp.asarray(self.ds.test_labels)
        self.root = jax.random.key(cfg.seed)
        self.strategy = cfg.run.members_strategy
        integer = cfg.knob in ("epochs", "batch_size")
        self.temps = tuple(int(t) if integer else float(t) for t in cfg.temperatures)
        self.densities = tuple(float(d) for d in cfg.prune.densities)
        self.plan = make_plan(cfg, self.ds.num_train, self._members_cap())

    def _members_cap(self) -> int:
        cap, why = members_cap(self.cfg, self.model, self.ds.image_shape)
        if why:
            self.say(why)
        return cap

    def say(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        self.echo(line)
        self.wd.log(line)

    def _restore(self, name: str, like=None):
        """Checkpoint ``name``, or None when it is absent or unreadable (then it is moved aside
        with a warning and the caller recomputes it)."""
        return self.wd.restore(name, like, warn=self.say)

    def _trainer(self, section: ml_collections.ConfigDict, batch_size: int | None = None,
                 sam: bool = False) -> Trainer:
        """The Trainer of a training section (dense or retrain) at ``batch_size``."""
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
        and resumes from it: state, test-error history and kept snapshots (variables at
        ``keep_epochs``). Data order and augmentation depend on (member key, epoch, step) only, so a
        resumed run reproduces the uninterrupted one.

        Returns (final stacked state, {epoch: test errors [M]}, {epoch: variables [M, ...]}).
        """
        name, every = f"{stage}_progress", self.cfg.run.checkpoint_every
        eval_epochs, keep = tuple(eval_epochs), tuple(keep_epochs)
        M = jax.tree.leaves(state)[0].shape[0]
        variables = lambda st: {"params": st.params, "batch_stats": st.batch_stats}  # noqa: E731
        # fixed-shape progress record (restorable into a known structure)
        record = {"state": state, "epoch": np.int32(0),
                  "hist": np.full((len(eval_epochs), M), np.nan, np.float64)}
        if keep:
            record["snaps"] = jax.tree.map(lambda x: np.zeros((len(keep), *x.shape), x.dtype),
                                           variables(state))
        start, hist, snaps = 0, {}, {}
        loaded = self._restore(name, like=record)
        if loaded is not None:
            record = loaded
            state, start = jax.tree.map(jnp.asarray, record["state"]), int(record["epoch"])
            hist = {e: record["hist"][i] for i, e in enumerate(eval_epochs) if e <= start}
            snaps = {e: jax.tree.map(lambda x, i=i: x[i], record["snaps"])
                     for i, e in enumerate(keep) if e <= start}
            self.say(f"{stage}: resuming from the checkpoint after epoch {start}")

        def on_epoch(epoch: int, get_state) -> None:
            save = every and epoch % every == 0 and epoch < epochs
            if epoch not in keep and not save:
                return
            st = get_state()
            if epoch in keep:
                snaps[epoch] = jax.tree.map(np.asarray, variables(st))
            if save:
                record.update(state=st, epoch=np.int32(epoch))
                for i, e in enumerate(eval_epochs):
                    if e in hist:
                        record["hist"][i] = hist[e]
                for i, e in enumerate(keep):
                    if e in snaps:
                        record["snaps"] = jax.tree.map(lambda r, x, i=i: _set(r, i, x),
                                                       record["snaps"], snaps[e])
                self.wd.save(name, record, note=f"after epoch {epoch}")

        with _progress(epochs, desc, self.progress) as bar:
            bar.update(start)
            final, hist = trainer.fit(state, self.X, self.Y, epochs, test=(self.Xt, self.Yt),
                                      eval_epochs=eval_epochs, on_epoch=on_epoch,
                                      progress=bar.update, start_epoch=start, history=hist)
        return final, hist, snaps

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

    def _dense_program(self, prog) -> dict:
        c, knob = self.cfg, self.cfg.knob
        members = [self.plan.dense_members[i] for i in prog.members]
        state = stack([self._dense_state(s, t) for s, t in members])
        trainer = self._trainer(c.dense, prog.batch_size, sam=knob == "sam_rho")
        rewind = self._rewind_epoch()
        temps = self.temps if knob == "epochs" else (prog.epochs,)
        keep = tuple(sorted(set(temps) | ({rewind} if rewind else set())))
        init_vars = jax.tree.map(np.asarray, {"params": state.params,  # before buffers are donated
                                              "batch_stats": state.batch_stats})
        self.say(f"{prog.name}: {len(members)} dense member(s) x {prog.epochs} epochs "
                 f"({prog.steps} steps, batch {prog.batch_size}, strategy {trainer.strategy})")
        _, hist, snaps = self._fit(prog.name, trainer, state, prog.epochs, temps,
                                   f"dense {prog.name} (epochs)", keep_epochs=keep)
        # variables [n, T', ...] and test error [n, T'] (T' = the temperatures for epochs, else 1)
        out = {"variables": jax.tree.map(lambda *xs: np.stack(xs, axis=1), *[snaps[t] for t in temps]),
               "test_error": np.stack([hist[t] for t in temps], axis=1)}
        if rewind is not None:  # weight rewinding: the dense weights at rewind_epoch [n, ...]
            out["rewind_variables"] = snaps[rewind] if rewind else init_vars
        return out

    def dense(self) -> dict:
        """Dense variables [S, T, ...] and test errors [S, T] at every (seed, temperature)."""
        out = self._restore("dense")
        if out is not None:
            self.say("dense: done before, loaded")
            self._cleanup("dense", [f"{p.name}{x}" for p in self.plan.stage_programs("dense")
                                    for x in ("", "_progress")])
            return out
        t0 = time.time()
        S, T = len(self.cfg.dense.seeds), len(self.temps)
        parts = []
        for prog in self.plan.stage_programs("dense"):
            res = self._restore(prog.name)
            if res is not None:
                self.say(f"{prog.name}: done before, loaded")
            else:
                res = self._dense_program(prog)
                self.wd.save(prog.name, res, note="(program done)")
            self.wd.remove(f"{prog.name}_progress")
            parts.append((prog.members, res))
        order = np.concatenate([np.asarray(m) for m, _ in parts])
        inv = np.argsort(order)
        cat = lambda *xs: np.concatenate(xs)[inv]  # noqa: E731  (back to member order)
        out = jax.tree.map(cat, *[r for _, r in parts])
        if self.cfg.knob != "epochs":  # members (seed, temperature) -> [S, T]
            for key in out:  # variables/test_error carry a length-1 temperature axis
                lead = 1 if key == "rewind_variables" else 2
                out[key] = jax.tree.map(lambda x, lead=lead: x.reshape(S, T, *x.shape[lead:]),
                                        out[key])
        self.say(f"dense: done in {time.time() - t0:.1f}s; test accuracy at "
                 + ", ".join(f"{self.cfg.knob} {t}: {100 * (1 - out['test_error'][:, i].mean()):.2f}%"
                             for i, t in enumerate(self.temps)))
        sick = ~finite_members(out["variables"], lead=2)
        if sick.any():
            self.say(f"dense: {int(sick.sum())} checkpoint(s) diverged (non-finite weights): "
                     "they and their retrained members are reported as sick, the sweep goes on")
        self.wd.save("dense", out, note="(stage done)")
        for prog in self.plan.stage_programs("dense"):
            self.wd.remove(prog.name)
        return out

    def _cleanup(self, stage: str, names) -> None:
        """Remove what a run killed right after committing ``stage`` left behind."""
        for name in names:
            if self.wd.stage_dir(name).exists():
                self.wd.remove(name)

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
    def members(self) -> list[tuple[int, int, float, int]]:
        c = self.cfg
        return list(itertools.product(c.dense.seeds, self.temps, self.densities, c.retrain.seeds))

    def retrain(self, dense: dict) -> dict:
        out = self._restore("retrain")
        if out is not None:
            self.say("retrain: done before, loaded")
            self._cleanup("retrain", [f"{p.name}{x}" for p in self.plan.stage_programs("retrain")
                                      for x in ("", "_progress")])
            return out
        c = self.cfg
        S, T, D, R = len(c.dense.seeds), len(self.temps), len(self.densities), len(c.retrain.seeds)
        M = S * T * D * R
        self.say(f"prune: {S * T} dense checkpoint(s) x {D} densities ({c.prune.scope} magnitude)")
        dens = jnp.asarray(self.densities, jnp.float32)
        masks_fn = jax.jit(jax.vmap(lambda p, d: pruning.magnitude_masks(p, d, c.prune.scope,
                                                                      c.prune.leaves),
                                    in_axes=(None, 0)))
        masks = []  # [S, T] of [D, ...]
        with _progress(S * T, "prune (checkpoints)", self.progress) as bar:
            for si in range(S):
                for ti in range(T):
                    params = jax.tree.map(lambda x, si=si, ti=ti: x[si, ti], dense["variables"]["params"])
                    masks.append(jax.tree.map(np.asarray, masks_fn(params, dens)))
                    bar.update(1)

        def to_members(x, lead):  # [S(, T(, D)), ...] -> [S, T, D, R, ...] -> [M, ...] (host)
            x = np.asarray(x)
            x = x.reshape(*x.shape[:lead], *(1,) * (4 - lead), *x.shape[lead:])
            return np.broadcast_to(x, (S, T, D, R, *x.shape[4:])).reshape(M, *x.shape[4:])

        if c.retrain.mode == "weight_rewinding":  # masks from the trained checkpoint, weights rewound
            rv = dense["rewind_variables"]
            variables = jax.tree.map(lambda x: to_members(x, 1 if c.knob == "epochs" else 2), rv)
        else:
            variables = jax.tree.map(lambda x: to_members(x, 2), dense["variables"])
        mask_m = jax.tree.map(
            lambda *xs: to_members(np.stack(xs).reshape(S, T, D, *xs[0].shape[1:]), 3), *masks)
        keys = np.stack([np.asarray(jax.random.key_data(member_key(self.root, RETRAIN, s, r)))
                         for s, _, _, r in self.members()])
        rc = self._retrain_section()
        progs = self.plan.stage_programs("retrain")
        self.say(f"retrain ({rc.mode}): {M} members ({S} dense seed(s) x {T} temperatures x {D} "
                 f"densities x {R} retrain seeds) in {len(progs)} program(s) x {progs[0].epochs} "
                 f"epochs ({progs[0].steps} steps), strategy {mem_strategy(self.strategy)}")
        t0 = time.time()
        parts = []
        for prog in progs:
            res = self._restore(prog.name)
            if res is not None:
                self.say(f"{prog.name}: done before, loaded")
                self.wd.remove(f"{prog.name}_progress")
                parts.append(res)
                continue
            idx = np.asarray(prog.members)
            pick = functools.partial(_pick, idx=idx)
            state = jax.vmap(lambda v, m, k: init_state(v, m, k, rc.lr, rc.weight_decay,
                                                        rc.momentum))(
                pick(variables), pick(mask_m), jnp.asarray(keys[idx]))
            last = c.measure.test_error_last_epochs
            eval_epochs = range(max(1, prog.epochs - last + 1), prog.epochs + 1)
            final, hist, _ = self._fit(prog.name, self._trainer(rc), state, prog.epochs,
                                       eval_epochs, f"retrain {prog.name} (epochs)")
            # pruned weights stay 0 (a diverged member's NaN/inf weights are its own business: it
            # is reported as sick, the sweep goes on)
            healthy = finite_members({"p": final.params, "b": final.batch_stats})
            pruned_zero = jax.tree.map(
                lambda p, m, ok=healthy: np.all(np.where(np.asarray(m) == 0, np.asarray(p) == 0,
                                                         True).reshape(len(ok), -1)[ok]),
                final.params, final.mask)
            if not all(bool(x) for x in jax.tree.leaves(pruned_zero)):
                raise AssertionError("a pruned weight moved away from 0 during retraining")
            if not healthy.all():
                self.say(f"{prog.name}: {int((~healthy).sum())} member(s) diverged (non-finite "
                         "weights): reported as sick, the sweep goes on")
            res = {"variables": jax.tree.map(np.asarray, {"params": final.params,
                                                          "batch_stats": final.batch_stats}),
                   "density": np.asarray(pruning.mask_density_stacked(final.mask, c.prune.leaves)),
                   "mask": jax.tree.map(np.asarray, final.mask),
                   "test_error": np.stack([hist[e] for e in eval_epochs], axis=1)}  # [n, last]
            self.wd.save(prog.name, res, note="(program done)")
            self.wd.remove(f"{prog.name}_progress")
            parts.append(res)
        out = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)  # programs are in member order
        self.say(f"retrain: done in {time.time() - t0:.1f}s")
        self.wd.save("retrain", out, note="(stage done)")
        for prog in progs:
            self.wd.remove(prog.name)
        return out

    # -- stage 4: LMC and CKA per pair of retrain seeds ------------------------------------------
    def pairs(self) -> list[tuple[int, int]]:
        """(member index a, member index b) of every pair of retrain seeds of every cell."""
        R = len(self.cfg.retrain.seeds)
        n_cells = len(self.members()) // R
        return [(cell * R + i, cell * R + j) for cell in range(n_cells)
                for i, j in itertools.combinations(range(R), 2)]

    def _chunked_stage(self, name: str, n_items: int, chunk: int, record: dict, compute,
                       desc: str) -> dict:
        """Run ``compute(lo, hi) -> {key: array [hi - lo, ...]}`` over items in chunks, filling the
        fixed-shape arrays of ``record`` and committing ``{name}_progress`` after every chunk, so a
        killed stage resumes at its first unfinished chunk (nothing finished is recomputed)."""
        prog = f"{name}_progress"
        record = {**record, "done": np.int32(0)}
        loaded = self._restore(prog, like=record)
        if loaded is not None:
            record = loaded
            self.say(f"{name}: resuming after {int(record['done'])}/{n_items} items")
        with _progress(n_items, desc, self.progress) as bar:
            bar.update(int(record["done"]))
            for lo in range(int(record["done"]), n_items, chunk):
                hi = min(lo + chunk, n_items)
                for k, v in compute(lo, hi).items():
                    record[k] = _set(record[k], slice(lo, hi), v)
                record["done"] = np.int32(hi)
                if hi < n_items:
                    self.wd.save(prog, record, note=f"after {hi}/{n_items} items")
                bar.update(hi - lo)
        record.pop("done")
        return record

    CURVE_KEYS = ("train_error", "train_loss", "test_error", "test_loss")

    def _curve_stage(self, name: str, n_points: int, curves_of, desc: str) -> dict:
        """Curves of every pair (LMC line or Bezier), a cell's pairs per call, resumable per cell:
        ``curves_of(lo, hi)`` returns metrics [hi - lo, n_points] for pairs lo..hi-1; the record
        holds ``curve_{metric}`` [P, n_points]."""
        P, R = len(self.pairs()), len(self.cfg.retrain.seeds)
        per_cell = max(1, P // max(1, len(self.members()) // R))
        empty = {f"curve_{k}": np.full((P, n_points), np.nan) for k in self.CURVE_KEYS}

        def compute(lo, hi):
            cur = curves_of(lo, hi)
            return {f"curve_{k}": cur[k] for k in self.CURVE_KEYS}

        return self._chunked_stage(name, P, per_cell, empty, compute, desc)

    def measure(self, retrained: dict) -> dict:
        out = self._restore("measure")
        if out is not None:
            self.say("measure: done before, loaded")
            self._cleanup("measure", ("outputs_progress", "lmc_progress"))
            return out
        c = self.cfg
        pairs = np.asarray(self.pairs(), np.int64).reshape(-1, 2)
        ts = np.linspace(0.0, 1.0, c.measure.lmc_points)
        V = retrained["variables"]
        n_cka = min(c.measure.cka_images, self.ds.num_train)
        M, P, T = len(self.members()), len(pairs), len(ts)
        self.say(f"measure: LMC ({T} points, BN recalibrated on {self.ds.num_train} images) "
                 f"and CKA ({n_cka} images) for {P} pairs")
        t0 = time.time()

        def outputs(lo, hi):
            return {"logits": np.stack([np.asarray(landscape.evaluate(
                self.model, _pick(V, i), self.X[:n_cka], self.Y[:n_cka], self.ds.mean, self.ds.std,
                c.run.eval_batch_size, return_logits=True)["logits"]) for i in range(lo, hi)])}

        rec = self._chunked_stage("outputs", M, len(c.retrain.seeds),
                                  {"logits": np.zeros((M, n_cka, self.ds.num_classes), np.float32)},
                                  outputs, "outputs for CKA (members)")
        logits = jnp.asarray(rec["logits"])
        probs = jax.nn.softmax(logits, axis=-1)
        out = {"cka_softmax": np.asarray(landscape.cka(probs[pairs[:, 0]], probs[pairs[:, 1]])),
               "cka_logits": np.asarray(landscape.cka(logits[pairs[:, 0]], logits[pairs[:, 1]]))}

        def curves(lo, hi):  # the pairs lo..hi-1, every t point, in one call
            pa, pb = _pick(V, pairs[lo:hi, 0]), _pick(V, pairs[lo:hi, 1])
            return landscape.pair_curves(
                self.model, pa["params"], pb["params"], jax.tree.map(lambda x: x[0], pa["batch_stats"]),
                self.X, self.Y, mean=self.ds.mean, std=self.ds.std, ts=ts,
                bn_batch_size=c.measure.bn_batch_size, test=(self.Xt, self.Yt),
                eval_batch_size=c.run.eval_batch_size,
                points_per_call=c.measure.points_per_call or None)

        out.update(self._curve_stage("lmc", T, curves, "LMC (pairs)"))
        out["lmc"] = np.asarray(landscape.lmc(out["curve_train_error"]))
        out["loss_barrier"] = landscape.loss_barrier(out["curve_train_loss"])
        out["ts"] = ts
        self.say(f"measure: done in {time.time() - t0:.1f}s")
        self.wd.save("measure", out, note="(stage done)")
        for name in ("outputs_progress", "lmc_progress"):
            self.wd.remove(name)
        return out

    def _pair_coords(self) -> list[tuple[int, ...]]:
        """(dense seed, temperature index, density index, retrain seed a, retrain seed b) per pair:
        the coordinates a pair's key is folded from (independent of chunking and grouping)."""
        mem = self.members()
        ti = {t: i for i, t in enumerate(self.temps)}
        di = {d: i for i, d in enumerate(self.densities)}
        return [(mem[a][0], ti[mem[a][1]], di[mem[a][2]], mem[a][3], mem[b][3])
                for a, b in self.pairs()]

    # -- stage 4b: trained Bezier curves per pair (SPEC §2.3) -------------------------------------
    def bezier(self, retrained: dict) -> dict | None:
        bc = self.cfg.measure.bezier
        if not bc.enabled:
            return None
        out = self._restore("bezier")
        if out is not None:
            self.say("bezier: done before, loaded")
            self._cleanup("bezier", ("bezier_progress",))
            return out
        pairs = np.asarray(self.pairs(), np.int64).reshape(-1, 2)
        coords = self._pair_coords()
        ts = np.linspace(0.0, 1.0, bc.points)
        V, masks = retrained["variables"], retrained["mask"]
        P, T = len(pairs), len(ts)
        self.say(f"bezier: {P} curves x {bc.epochs} epochs (batch {bc.batch_size}), evaluated at "
                 f"{T} points")
        t0 = time.time()
        cpu = jax.default_backend() == "cpu"

        def curves(lo, hi):
            pa, pb = _pick(V, pairs[lo:hi, 0]), _pick(V, pairs[lo:hi, 1])
            mask = _pick(masks, pairs[lo:hi, 0])
            keys = jnp.stack([jax.random.key_data(member_key(self.root, BEZIER, *co))
                              for co in coords[lo:hi]])
            mid, _ = landscape.train_curves(
                self.model, pa["params"], pb["params"], mask,
                jax.tree.map(lambda x: x[0], pa["batch_stats"]), self.X, self.Y, key=keys,
                mean=self.ds.mean, std=self.ds.std, epochs=bc.epochs, batch_size=bc.batch_size,
                lr=bc.lr, weight_decay=bc.weight_decay, momentum=bc.momentum,
                chunk_steps=1 if cpu else None, unroll=cpu, strategy=self.strategy)
            return landscape.curve_errors(
                self.model, pa["params"], mid, pb["params"], self.X, self.Y, mean=self.ds.mean,
                std=self.ds.std, ts=ts, bn_batch_size=self.cfg.measure.bn_batch_size,
                test=(self.Xt, self.Yt), eval_batch_size=self.cfg.run.eval_batch_size,
                points_per_call=self.cfg.measure.points_per_call or None)

        out = self._curve_stage("bezier", T, curves, "Bezier curves (pairs)")
        out["mc"] = np.asarray(landscape.mode_connectivity(out["curve_train_error"]))
        out["ts"] = ts
        self.say(f"bezier: done in {time.time() - t0:.1f}s")
        self.wd.save("bezier", out, note="(stage done)")
        self.wd.remove("bezier_progress")
        return out

    # -- stage 4c: Hessian trace and top eigenvalue per retrained member (SPEC §2.5) ------------
    def hessian(self, retrained: dict) -> dict | None:
        hc = self.cfg.measure.hessian
        if not hc.enabled:
            return None
        res = self._restore("hessian")
        if res is not None:
            self.say("hessian: done before, loaded")
            self._cleanup("hessian", ("hessian_progress",))
            return res
        M = len(self.members())
        n = min(hc.images, self.ds.num_train)
        self.say(f"hessian: trace (<= {hc.max_probes} probes, tol {hc.tol}) and top eigenvalue "
                 f"of {M} members on {n} training images"
                 f"{', probes on unpruned weights' if hc.restrict_to_mask else ''}")
        t0 = time.time()
        V, masks = retrained["variables"], retrained["mask"]
        fn = functools.partial(landscape.member_hessian, self.model, mean=tuple(self.ds.mean),
                               std=tuple(self.ds.std), max_probes=int(hc.max_probes),
                               chunk=int(hc.chunk), max_iters=int(hc.eig_iters))
        mem = self.members()

        def one(i):
            v = jax.tree.map(lambda x: jnp.asarray(x[i]), V)
            m = jax.tree.map(lambda x: jnp.asarray(x[i]), masks) if hc.restrict_to_mask else None
            key = member_key(self.root, HESSIAN, mem[i][0], self.temps.index(mem[i][1]),
                             self.densities.index(mem[i][2]), mem[i][3])
            r = fn(v, m, self.X[:n], self.Y[:n], key, tol=float(hc.tol))
            return np.asarray([r["trace"], r["trace_stderr"], r["trace_probes"],
                               r["top_eigenvalue"]], np.float64)

        def chunk(lo, hi):
            return {"hessian": np.stack([one(i) for i in range(lo, hi)])}

        out = self._chunked_stage("hessian", M, len(self.cfg.retrain.seeds),
                                  {"hessian": np.full((M, 4), np.nan)}, chunk, "Hessian (members)")
        res = {"trace": out["hessian"][:, 0], "trace_stderr": out["hessian"][:, 1],
               "trace_probes": out["hessian"][:, 2], "top_eigenvalue": out["hessian"][:, 3]}
        self.say(f"hessian: done in {time.time() - t0:.1f}s")
        self.wd.save("hessian", res, note="(stage done)")
        self.wd.remove("hessian_progress")
        return res

    # -- stage 5: tables, regimes, figures --------------------------------------------------------
    def sick(self, dense: dict, retrained: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Diverged members: (dense [S, T], retrain [M], pair [P]) booleans. A dense checkpoint is
        sick when a weight or BN statistic is NaN/inf; a retrained member when its own are, when
        a test error of it is not finite, or when its dense checkpoint is sick; a pair when either
        member is."""
        S, T = len(self.cfg.dense.seeds), len(self.temps)
        dense_sick = ~(finite_members(dense["variables"], lead=2)
                       & np.isfinite(np.asarray(dense["test_error"])).reshape(S, T))
        M = len(self.members())
        te = np.asarray(retrained["test_error"]).reshape(M, -1)
        sick = ~(finite_members(retrained["variables"]) & np.isfinite(te).all(axis=1))
        sick |= np.repeat(dense_sick.reshape(-1), M // (S * T))  # members are (s, t, d, r)-major
        pairs = np.asarray(self.pairs(), np.int64).reshape(-1, 2)
        return dense_sick, sick, sick[pairs[:, 0]] | sick[pairs[:, 1]]

    def tables(self, dense: dict, retrained: dict, measured: dict, bezier: dict | None = None,
               hessian: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """results.csv (tidy, one row per member or pair and metric, with a ``sick`` flag) and
        cells.csv (per cell: means over the healthy members and pairs, ``sick_members``; a cell
        whose pairs are all sick has no LMC/CKA and no regime). Both carry the config hash and
        the :func:`provenance` columns."""
        c = self.cfg
        base = {"config_hash": self.hash, **provenance(self.strategy), "knob": c.knob}
        dense_sick, sick, pair_sick = self.sick(dense, retrained)
        rows = []
        for si, s in enumerate(c.dense.seeds):
            for ti, t in enumerate(self.temps):
                rows.append({**base, "stage": "dense", "temperature": t, "dense_seed": s,
                             "density": 1.0, "retrain_seed": np.nan, "pair": "",
                             "metric": "test_error", "value": float(dense["test_error"][si, ti]),
                             "sick": bool(dense_sick[si, ti])})
        mem = self.members()
        for i, (s, t, d, r) in enumerate(mem):
            coords = {**base, "stage": "retrain", "temperature": t, "dense_seed": s, "density": d,
                      "retrain_seed": r, "pair": "", "sick": bool(sick[i])}
            rows.append({**coords, "metric": "test_error",
                         "value": float(np.mean(retrained["test_error"][i]))})
            rows.append({**coords, "metric": "measured_density",
                         "value": float(retrained["density"][i])})
            if hessian is not None:
                for metric in ("trace", "trace_stderr", "trace_probes", "top_eigenvalue"):
                    rows.append({**coords, "metric": f"hessian_{metric}",
                                 "value": float(hessian[metric][i])})
        for p, (a, b) in enumerate(self.pairs()):
            s, t, d, ra = mem[a]
            rb = mem[b][3]
            coords = {**base, "stage": "pair", "temperature": t, "dense_seed": s, "density": d,
                      "retrain_seed": np.nan, "pair": f"{ra}-{rb}", "sick": bool(pair_sick[p])}
            for metric, key in (("lmc", "lmc"), ("cka", "cka_softmax"), ("cka_logits", "cka_logits")):
                rows.append({**coords, "metric": metric, "value": float(measured[key][p])})
            rows.append({**coords, "metric": "loss_barrier",
                         "value": float(measured["loss_barrier"][p])})
            if bezier is not None:
                rows.append({**coords, "metric": "bezier_mc", "value": float(bezier["mc"][p])})
        results = pd.DataFrame(rows)
        keys = ["knob", "temperature", "density"]
        members = results[results.stage != "dense"]
        every_cell = members[keys].drop_duplicates().sort_values(keys).set_index(keys).index
        healthy = members[~members.sick]
        metrics = list(dict.fromkeys(members.metric))
        wide = (healthy.pivot_table(index=keys, columns="metric", values="value", aggfunc="mean")
                .reindex(index=every_cell, columns=metrics))  # NaN where every member is sick
        n_sick = (members[(members.stage == "retrain") & (members.metric == "test_error")]
                  .groupby(keys)["sick"].sum().reindex(every_cell).fillna(0).astype(int))
        wide = wide.reset_index()
        dense_rows = results[(results.stage == "dense") & ~results.sick]
        dense_err = dense_rows.groupby("temperature")["value"].mean()
        cells = pd.DataFrame({
            "knob": wide["knob"], "temperature": wide["temperature"], "density": wide["density"],
            "test_error": wide["test_error"], "lmc": wide["lmc"], "cka": wide["cka"],
            "cka_logits": wide["cka_logits"], "loss_barrier": wide["loss_barrier"],
            "dense_test_error": wide["temperature"].map(dense_err).to_numpy(),
        })
        for metric in ("bezier_mc", "hessian_trace", "hessian_top_eigenvalue"):
            if metric in wide.columns:
                cells[metric] = wide[metric]
        cells["normalized_test_error"] = regimes.normalized_test_error(cells)
        cells["regime"] = regimes.classify(cells, c.regimes.to_dict())
        cells["advice"] = cells["regime"].map(regimes.advice)
        cells["sick_members"] = n_sick.to_numpy()
        for k, v in base.items():
            if k != "knob":
                cells[k] = v
        if sick.any() or dense_sick.any():
            self.say(f"sick (diverged) members: {int(dense_sick.sum())} dense checkpoint(s), "
                     f"{int(sick.sum())} retrained member(s); flagged in results.csv (sick) and "
                     f"cells.csv (sick_members), left out of the cell means; "
                     f"{int(cells.regime.isna().sum())} cell(s) without a healthy pair have no regime")
        return cells, results

    def curve_figures(self, measured: dict, bezier: dict | None) -> list:
        """Per density: train error along t of every temperature's cell (mean over its pairs and
        dense seeds), the straight line and, when measured, the trained Bezier curve."""
        mem = self.members()
        cell_of = np.asarray([(self.temps.index(mem[a][1]), self.densities.index(mem[a][2]))
                              for a, _ in self.pairs()]).reshape(-1, 2)
        paths = []
        for di, d in enumerate(self.densities):
            curves = {}
            for name, src in (("line (LMC)", measured), ("Bezier", bezier)):
                if src is None:
                    continue
                errs = [src["curve_train_error"][(cell_of[:, 0] == ti) & (cell_of[:, 1] == di)]
                        .mean(axis=0) for ti in range(len(self.temps))]
                curves[name] = (src["ts"], np.stack(errs))
            paths.append(plots.curves_along_t(
                curves, [f"{self.cfg.knob} {t}" for t in self.temps],
                self.wd.path / "figures" / f"curves_density_{d:g}.png",
                title=f"density {100 * d:g}%"))
        return paths

    def run(self) -> dict:
        t0 = time.time()
        self.say(f"tr_jax {__version__}: config {self.cfg.name!r} (hash {self.hash}) on "
                 f"{jax.default_backend()} ({jax.device_count()} device(s)); workdir {self.wd.path}")
        dense = self.dense()
        retrained = self.retrain(dense)
        measured = self.measure(retrained)
        bezier = self.bezier(retrained)
        hessian = self.hessian(retrained)
        cells, results = self.tables(dense, retrained, measured, bezier, hessian)
        atomic_write_csv(self.wd.path / "results.csv", results)
        atomic_write_csv(self.wd.path / "cells.csv", cells)
        # plots.save_figure writes every png to a temporary file and renames it: atomic too
        transition = regimes.transition_with_uncertainty(results)
        figures = plots.figure2(cells, self.wd.path / "figures", transition=transition,
                                panels=[m for m in plots.ALL_PANELS if m in cells.columns])
        figures.append(plots.three_regimes(
            cells, self.wd.path / "figures" / f"{self.cfg.knob}_three_regimes.png",
            rule=self.cfg.regimes.to_dict(), transition_table=transition))
        figures += self.curve_figures(measured, bezier)
        summary = regimes.summary_table(cells)
        atomic_write_text(self.wd.path / "summary.txt", summary + "\n")
        acc = 100 * (1 - dense["test_error"][:, -1].mean())
        self.say(f"dense model test accuracy at {self.cfg.knob}={self.temps[-1]}: {acc:.2f}%")
        self.echo(summary)
        self.say(f"wrote cells.csv, results.csv, {len(figures)} figures in {self.wd.path}; "
                 f"total {time.time() - t0:.1f}s")
        return {"cells": cells, "results": results, "figures": figures, "summary": summary}


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


def dry_run(cfg: ml_collections.ConfigDict, measure: bool = True) -> str:
    """The plan of a config (members, groups, programs, steps) and, with ``measure``, FLOPs,
    memory and a time estimate from a short measured step on this machine. Reads no dataset and
    writes nothing."""
    from tr_jax.data.datasets import DATASET_SHAPES
    num_train, shape, classes = DATASET_SHAPES[cfg.dataset]
    model = models.build(cfg.model.arch, depth=cfg.model.depth, num_classes=classes,
                         width=cfg.model.width)
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
    return head + "\n" + (why + "\n" if why else "") + plan.describe(est)


def run(cfg: ml_collections.ConfigDict, workdir: str, progress: bool = True,
        echo: Callable[[str], None] = print, *, model=None, dataset=None) -> dict:
    """Run (or resume) the pipeline of a validated config in ``workdir``; ``model`` / ``dataset``
    (your own Flax model / ``tj.data.Dataset``) replace the config's ``model`` / ``dataset``."""
    return Pipeline(cfg, workdir, progress, echo, model=model, dataset=dataset).run()
