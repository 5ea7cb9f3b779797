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
import os
import time
from typing import Callable

import jax
import ml_collections
import numpy as np

from tr_jax import __version__, autotune, models, plots, regimes, sharding
from tr_jax.config import config_hash, to_json, validate
from tr_jax.data.arrays import check_dataset, small_test_split_note
from tr_jax.data.datasets import load_dataset
from tr_jax.sweep import partial, tables
from tr_jax.sweep.estimate import dry_run, members_cap  # noqa: F401  (re-exported)
from tr_jax.sweep.grid import Grid, member_key  # noqa: F401  (re-exported)
from tr_jax.sweep.plan import make_plan
from tr_jax.sweep.store import Workdir, atomic_write_csv, atomic_write_text
from tr_jax.sweep.tables import provenance  # noqa: F401  (re-exported)
from tr_jax.sweep.measure import MeasureStages
from tr_jax.sweep.train import TrainStages
from tr_jax import members as mem
from tr_jax import distributed as dist
from tr_jax.training.loop import program_model


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


class Pipeline(TrainStages, MeasureStages):
    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str, progress: bool = True,
                 echo: Callable[[str], None] = print, *, model=None, dataset=None):
        self.cfg, self.progress, self._echo = cfg, progress, echo
        self.hash = config_hash(cfg)
        # the data first: a missing dataset fails before the workdir is created
        # bad data or a model tr_jax cannot drive fail before the workdir is created
        self.ds = (check_dataset(dataset) if dataset is not None
                   else load_dataset(cfg.dataset, cfg.data_dir or None))
        if model is not None:
            models.adapter(model)
        self.wd = Workdir(workdir, to_json(cfg))
        self.say(f"tr_jax {__version__}: config {cfg.name!r} (hash {self.hash}) on "
                 f"{jax.default_backend()} ({jax.device_count()} device(s), "
                 f"{jax.process_count()} process(es)); workdir {self.wd.path}")
        if note := small_test_split_note(self.ds.num_test):  # once, when the sweep starts
            self.say(f"warning: {note}")
        self.model = model if model is not None else models.build(
            cfg.model.arch, depth=cfg.model.depth, num_classes=self.ds.num_classes,
            width=cfg.model.width)
        self.X, self.Y, self.Xt, self.Yt = sharding.replicate(
            (self.ds.train_images, self.ds.train_labels, self.ds.test_images, self.ds.test_labels))
        self.root = jax.random.key(cfg.seed)
        self.grid = Grid.from_config(cfg)
        self.old_grid = Grid.from_dict(self.wd.grown_from) if self.wd.grown_from else None
        self.temps, self.densities = self.grid.temperatures, self.grid.densities
        cap, why = members_cap(cfg, self.model, self.ds.image_shape)
        if why:
            self.say(why)
        self.plan = make_plan(cfg, self.ds.num_train, cap)
        self.strategy = self._choose_strategy()
        self.stacked = not mem.per_member(self.strategy)
        # the measure stages compute with the strategy's model (gemm: im2col + batched matmuls)
        self.mmodel = program_model(self.model, self.strategy) if self.stacked else self.model
        self.timings: dict[str, float] = {}

    def _choose_strategy(self) -> str:
        """``run.members_strategy``; ``auto`` is measured on this device for the retraining's
        program shape (``tr_jax.autotune``, cached per device, model, shapes, M and version),
        timed at the members that fit ``run.memory_budget_gb`` (0: a quarter of the device's
        memory, or of the host's RAM on CPU), except in a multi-process run, where it is ``vmap``
        (the timing would have to agree across processes)."""
        requested = self.cfg.run.members_strategy
        if requested != "auto" or sharding.multi_process():
            return resolve_strategy(requested)
        if os.environ.get(autotune.OFF_ENV, "") == "1":  # e.g. the test suite: no timing noise
            self.say(f"members strategy: {resolve_strategy(requested)} (the backend default; "
                     f"autotuning off by {autotune.OFF_ENV}=1)")
            return resolve_strategy(requested)
        step, chunk = self._step(self.cfg.retrain)
        members = len(self.plan.stage_programs("retrain")[0].members)
        choice = autotune.choose(self.model, step, self.ds.image_shape, members,
                                 autotune.model_candidates(self.model, members),
                                 chunk_steps=min(chunk, 8), echo=self.say,
                                 memory_budget_bytes=self.cfg.run.memory_budget_gb * 2**30 or None)
        self.say(autotune.describe(choice, members))
        return choice.strategy

    def echo(self, text: str) -> None:
        if sharding.is_primary():
            self._echo(text)

    def say(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        self.echo(line)
        self.wd.log(line)

    def _restore(self, name: str, like=None):
        return self.wd.restore(name, like, warn=self.say)

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
        with dist.stage(name):  # a lost peer in a multi-process run: PeerError naming the stage
            out = fn(*args)
        self.timings[name] = time.time() - t
        return out

    def run(self) -> dict:
        t0 = time.time()
        dense = self._timed("dense", self.dense)
        retrained = self._timed("retrain", self.retrain, dense)
        # cells.partial.csv while measuring, written by process 0 (tr_jax.sweep.partial)
        self.partial_tables = partial.PartialTables(self, dense, retrained)
        measured = self._timed("measure", self.measure, retrained)
        bezier = self._timed("bezier", self.bezier, retrained)
        hessian = self._timed("hessian", self.hessian, retrained)
        dist.set_stage("tables")  # in lost-peer messages (translated by run()'s dist.stage)
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
            partial.remove(self.wd.path)  # the final tables replace the partial ones
        self.timings["tables"] = time.time() - t
        sharding.barrier("tr_jax:tables")
        self.wd.finish_growth()
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
        echo: Callable[[str], None] = print, *, model=None, dataset=None,
        distributed: bool = False, coordinator: str | None = None,
        num_processes: int | None = None, process_id: int | None = None,
        start_timeout_s: float = 300) -> dict:
    """Run (or resume) the pipeline of a config in ``workdir`` (validated here: a bad value is a
    ``ConfigError`` naming it, from ``tj.sweep.run(cfg)``; a validated config is unchanged).

    ``model`` / ``dataset`` replace the config's built-in model and dataset. ``distributed``,
    ``coordinator``, ``num_processes``, ``process_id``: as ``tr-jax run``'s flags, start the
    multi-process runtime first (``tr_jax.distributed.initialize``; call this before anything
    else uses JAX; ``start_timeout_s``: how long it waits for every process, ``--start-timeout``).
    The workdir is locked for the run (all processes of one run share the lock). A process lost
    mid-run ends the others with a ``tr_jax.errors.PeerError`` naming it and the stage."""
    from tr_jax.sweep.lock import workdir_lock
    dist.initialize(distributed, coordinator, num_processes, process_id, timeout_s=start_timeout_s)
    cfg = validate(cfg, "tj.sweep.run(cfg)")
    with workdir_lock(workdir), dist.stage("setup"):
        return Pipeline(cfg, workdir, progress, echo, model=model, dataset=dataset).run()
