"""The driver of one config's sweep: dense -> prune -> retrain -> measures -> regimes -> figures.

The driver is a function of the sweep's :class:`~tr_jax.sweep.context.Context`
(:func:`tr_jax.sweep.context.setup`); the stages are plain functions of it
(:mod:`tr_jax.sweep.train`, :mod:`tr_jax.sweep.measure`: every measure of the registry
:mod:`tr_jax.measures` that the config switches on), whose bodies are functions of global
arrays; this driver runs them in order, then writes the tables and figures. Members and pairs
come from ``tr_jax.sweep.grid`` (their one home), member keys from their coordinate values.
Every process of a multi-process run executes this same code
on the same workdir: the members axis of every stacked tree is one global ``jax.Array`` sharded
over every device of every process (``tr_jax.sharding``), checkpoints are orbax saves of the
sharded arrays (each process writes its shards, one commit), and only process 0 writes tables,
figures and the log.

Reliability: every stage and program is an atomically swapped checkpoint and every chunk of a
measure stage commits its own small record (:mod:`tr_jax.sweep.checkpoints`; each commit is logged), so a run
killed anywhere resumes at its last commit and ends with the uninterrupted run's tables, having
written each record once. A member that diverges (NaN/inf weights or test error) is *sick*:
flagged in results.csv and cells.csv, left out of the cell means; the sweep goes on.
"""
from __future__ import annotations

import json
import time
from typing import Callable

import ml_collections
import numpy as np

from tr_jax import measures, plots, regimes, sharding
from tr_jax import distributed as dist
from tr_jax.config import validate
from tr_jax.files import atomic_write_csv, atomic_write_text
from tr_jax.sweep import partial, tables
from tr_jax.sweep.context import Context, measure_inputs, setup
from tr_jax.sweep.estimate import dry_run, members_cap  # noqa: F401  (re-exported)
from tr_jax.sweep.grid import Grid, member_key  # noqa: F401  (re-exported)
from tr_jax.sweep.lock import workdir_lock
from tr_jax.sweep.measure import run_group
from tr_jax.sweep.tables import provenance  # noqa: F401  (re-exported)
from tr_jax.sweep.train import dense, retrain

__all__ = ["run", "run_stages", "tables_of", "curve_figures", "depth_outputs"]


def tables_of(ctx: Context, dense_out: dict, retrained: dict, measured: dict[str, dict]):
    """(cells, results) DataFrames (see :mod:`tr_jax.sweep.tables`); ``measured``: the arrays
    of each measure group that ran."""
    base = {"config_hash": ctx.hash, **tables.provenance(ctx.strategy), "knob": ctx.cfg.knob}
    results = tables.results_table(ctx.grid, base, dense_out, retrained, measured)
    cells = tables.cells_table(results, ctx.cfg.regimes.to_dict())
    dense_sick, sick, _ = tables.sick_members(ctx.grid, dense_out, retrained)
    if sick.any() or dense_sick.any():
        ctx.say(f"sick (diverged) members: {int(dense_sick.sum())} dense checkpoint(s), "
                f"{int(sick.sum())} retrained member(s); flagged in results.csv (sick) and "
                f"cells.csv (sick_members), left out of the cell means; "
                f"{int(cells.regime.isna().sum())} cell(s) without a healthy pair have no regime")
    return cells, results


def curve_figures(ctx: Context, measured: dict[str, dict]) -> list:
    """Per density: train error along t of every temperature's cell (mean over its pairs and
    dense seeds) for every measure with a curve (the straight line; the trained Bezier curve
    when measured)."""
    ij = ctx.grid.member_indices()[ctx.grid.pairs_array()[:, 0]]
    sources = [(m.curve_label(ctx.cfg), measured[m.group]) for m in measures.enabled(ctx.cfg)
               if m.curve and m.group in measured]
    paths = []
    for di, d in enumerate(ctx.densities):
        curves = {}
        for name, src in sources:
            errs = [src["curve_train_error"][(ij[:, 1] == ti) & (ij[:, 2] == di)].mean(axis=0)
                    for ti in range(len(ctx.temps))]
            curves[name] = (src["ts"], np.stack(errs))
        paths.append(plots.curves_along_t(
            curves, [f"{ctx.cfg.knob} {t}" for t in ctx.temps],
            ctx.wd.path / "figures" / f"curves_density_{d:g}.png",
            title=f"density {100 * d:g}%"))
    return paths


def depth_outputs(ctx: Context, measured: dict[str, dict], results) -> list:
    """``layers.csv`` (the per-cell layer profiles of results.csv's per-layer metrics, with
    intervals: :func:`tr_jax.regimes.layer_profiles`), a layer-profile figure per per-layer metric
    with a ``panel`` (layers across, temperature down, one panel per density), and the figures of
    every measure that draws its own (``Measure.figures``). Process 0 only."""
    fig_dir = ctx.wd.path / "figures"
    paths = []
    on = [m for m in measures.enabled(ctx.cfg) if m.group in measured]
    layered = [(m, x) for m in on for x in m.metrics if x.layers]
    if layered:
        profiles = regimes.layer_profiles(results)
        atomic_write_csv(ctx.wd.path / "layers.csv", profiles)
        for _, x in layered:
            if x.panel is not None and (profiles["metric"] == x.name).any():
                paths.append(plots.layer_profile(
                    profiles, x.name, fig_dir / f"layers_{x.name}.png", title=x.label[0],
                    cbar=x.label[1], log=x.log, cmap=x.cmap))
    for m in on:
        if m.figures is not None:
            paths += m.figures(measure_inputs(ctx, m.name), measured[m.group], results, fig_dir)
    return paths


def _timed(ctx: Context, name: str, fn, *args):
    t = time.time()
    with dist.stage(name):  # a lost peer in a multi-process run: PeerError naming the stage
        out = fn(*args)
    ctx.timings[name] = time.time() - t
    return out


def run_stages(ctx: Context) -> dict:
    """Run (or resume) every stage of the sweep of ``ctx``; write the tables and figures."""
    t0 = time.time()
    dense_out = _timed(ctx, "dense", dense, ctx)
    retrained = _timed(ctx, "retrain", retrain, ctx, dense_out)
    # cells.partial.csv while measuring, written by process 0 (tr_jax.sweep.partial)
    ctx.partial = partial.PartialTables(ctx, dense_out, retrained)
    measured = {group: _timed(ctx, group, run_group, ctx, group, entries, retrained)
                for group, entries in measures.groups(ctx.cfg).items()}
    dist.set_stage("tables")  # in lost-peer messages (translated by run()'s dist.stage)
    t = time.time()
    cells, results = tables_of(ctx, dense_out, retrained, measured)
    summary = regimes.summary_table(cells)
    figures = []
    if sharding.is_primary():  # one writer
        atomic_write_csv(ctx.wd.path / "results.csv", results)
        atomic_write_csv(ctx.wd.path / "cells.csv", cells)
        transition = regimes.transition_with_uncertainty(results)
        figures = plots.figure2(cells, ctx.wd.path / "figures", transition=transition,
                                panels=[m for m in plots.all_panels() if m in cells.columns])
        figures.append(plots.three_regimes(
            cells, ctx.wd.path / "figures" / f"{ctx.cfg.knob}_three_regimes.png",
            rule=ctx.cfg.regimes.to_dict(), transition_table=transition))
        figures += curve_figures(ctx, measured)
        figures += depth_outputs(ctx, measured, results)
        atomic_write_text(ctx.wd.path / "summary.txt", summary + "\n")
        partial.remove(ctx.wd.path)  # the final tables replace the partial ones
    ctx.timings["tables"] = time.time() - t
    sharding.barrier("tr_jax:tables")
    ctx.wd.finish_growth()
    acc = 100 * (1 - dense_out["test_error"][:, -1].mean())
    ctx.say(f"dense model test accuracy at {ctx.cfg.knob}={ctx.temps[-1]}: {acc:.2f}%")
    ctx.echo(summary)
    ctx.timings["total"] = time.time() - t0
    ctx.say(f"wrote cells.csv, results.csv, {len(figures)} figures in {ctx.wd.path}; "
            f"total {time.time() - t0:.1f}s; stage seconds "
            + json.dumps({k: round(v, 2) for k, v in ctx.timings.items()})
            + f"; {ctx.wd.bytes_written} bytes of checkpoints and records written")
    return {"cells": cells, "results": results, "figures": figures, "summary": summary,
            "timings": dict(ctx.timings), "bytes_written": ctx.wd.bytes_written}


def run(cfg: ml_collections.ConfigDict, workdir: str, progress: bool = True,
        echo: Callable[[str], None] = print, *, model=None, dataset=None,
        distributed: bool = False, coordinator: str | None = None,
        num_processes: int | None = None, process_id: int | None = None,
        start_timeout_s: float = 300) -> dict:
    """Run (or resume) the sweep of a config in ``workdir`` (validated here: a bad value is a
    ``ConfigError`` naming it, from ``tj.sweep.run(cfg)``; a validated config is unchanged).

    ``model`` / ``dataset`` replace the config's built-in model and dataset. ``distributed``,
    ``coordinator``, ``num_processes``, ``process_id``: as ``tr-jax run``'s flags, start the
    multi-process runtime first (``tr_jax.distributed.initialize``; call this before anything
    else uses JAX; ``start_timeout_s``: how long it waits for every process, ``--start-timeout``).
    The workdir is locked for the run (all processes of one run share the lock). A process lost
    mid-run ends the others with a ``tr_jax.errors.PeerError`` naming it and the stage."""
    dist.initialize(distributed, coordinator, num_processes, process_id, timeout_s=start_timeout_s)
    cfg = validate(cfg, "tj.sweep.run(cfg)")
    with workdir_lock(workdir), dist.stage("setup"):
        return run_stages(setup(cfg, workdir, progress, echo, model=model, dataset=dataset))
