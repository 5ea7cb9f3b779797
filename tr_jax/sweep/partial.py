"""Partial tables of a sweep still measuring: ``cells.partial.csv`` and ``summary.partial.txt``.

While the measures marked ``partial`` in the registry (:mod:`tr_jax.measures`: LMC and CKA)
commit their chunk records, process 0 refreshes these two files with the cells measured so far (a
cell counts once every item of it has each of those measures, its members' retraining being done
before any measuring starts). They are built by the sweep's own table code
(:func:`tr_jax.sweep.tables.results_table` on what is measured, then
:func:`tr_jax.sweep.tables.cells_table`, the one cell aggregation), with a ``partial`` column
(True) added, so a cell's measured values are the values the finished run writes for it. Cell
statistics that look at a whole density column (``normalized_test_error``, and with it the regime
of rules that use it) may change as more of the column is measured.

Cost: a refresh is at most every :data:`REFRESH_S` seconds (every chunk when chunks are slower);
both files are written atomically. A finished run removes them (:func:`remove`): its
``cells.csv`` and ``summary.txt`` take over, written as before.

The other measures (Bezier, Hessian) are not part of the partial tables.
"""
from __future__ import annotations

import math
import pathlib
import time

import numpy as np

from tr_jax import measures, regimes, sharding
from tr_jax.files import atomic_write_csv, atomic_write_text
from tr_jax.sweep import tables
from tr_jax.sweep.context import measure_inputs, old_stage

__all__ = ["CELLS", "SUMMARY", "REFRESH_S", "PartialTables", "committed", "remove",
           "headline", "STILL_GOING"]

#: the partial tables' file names, in the workdir
CELLS = "cells.partial.csv"
SUMMARY = "summary.partial.txt"
#: seconds between two refreshes at least (a refresh happens on a chunk's commit)
REFRESH_S = 30.0
STILL_GOING = "the run is still going or was stopped"


def headline(n: int, m: int) -> str:
    """The first line of ``summary.partial.txt``."""
    return f"PARTIAL: {n} of {m} cells measured; {STILL_GOING}"


class PartialTables:
    """The measured pairs of a running sweep and the partial tables built from them.

    ``ctx``: the sweep's :class:`~tr_jax.sweep.context.Context`; ``dense`` / ``retrained``: its
    finished dense and retraining stages (the inputs of the results table). Made by every
    process (a grown sweep loads the finished run's measure checkpoint, a collective read); only
    process 0 refreshes and writes (:func:`committed`)."""

    def __init__(self, ctx, dense: dict, retrained: dict):
        self.ctx, self.dense, self.retrained = ctx, dense, retrained
        grid = ctx.grid
        self.entries = {m.name: m for m in measures.enabled(ctx.cfg)
                        if m.partial and m.unit == "pair"}
        P = len(grid.pairs())
        ij = grid.member_indices()[grid.pairs_array()[:, 0]]
        T, D = len(grid.temperatures), len(grid.densities)
        self.cell_of_pair = ij[:, 1] * D + ij[:, 2]   # (temperature, density) of every pair
        self.num_cells = T * D
        self.have = {s: np.zeros(P, bool) for s in self.entries}
        self.values: dict[str, np.ndarray] = {}
        self.loaded: set[str] = set()
        self.last = -math.inf
        self._fill_grown()

    def _fill_grown(self) -> None:
        """A grown sweep measures its new pairs only: the old pairs' values are the finished
        run's."""
        ctx = self.ctx
        if ctx.old_grid is None:
            return
        where = ctx.grid.pair_map(ctx.old_grid)
        kept = where >= 0
        for stage, entry in self.entries.items():
            old = old_stage(ctx, entry.group)
            if old is None:
                continue
            for k in entry.keys:
                if k in old:
                    self._array(k, np.asarray(old[k]))[kept] = np.asarray(old[k])[where[kept]]
            self.have[stage][kept] = True

    def _array(self, key: str, like: np.ndarray) -> np.ndarray:
        if key not in self.values:
            P = len(self.cell_of_pair)
            self.values[key] = np.full((P, *like.shape[1:]), np.nan, np.float64)
        return self.values[key]

    def add(self, stage: str, items: np.ndarray, done: dict) -> None:
        """Record the chunk records ``done`` (``{(lo, hi): arrays}`` of items ``items[lo:hi]``)
        of ``stage``."""
        for (lo, hi), arrays in done.items():
            idx = np.asarray(items)[lo:hi]
            for k in self.entries[stage].keys:
                if k in arrays:
                    self._array(k, np.asarray(arrays[k]))[idx] = np.asarray(arrays[k])
            self.have[stage][idx] = True
        self.loaded.add(stage)

    def complete_cells(self) -> np.ndarray:
        """Per cell (temperature-major, then density), whether all its pairs are measured."""
        ok = np.logical_and.reduce([h for h in self.have.values()]) if self.have else (
            np.zeros(len(self.cell_of_pair), bool))
        bad = np.zeros(self.num_cells, bool)
        np.logical_or.at(bad, self.cell_of_pair, ~ok)
        return ~bad

    def tables(self):
        """``(cells, n_complete)``: the partial cells table (None when no cell is complete)."""
        complete = self.complete_cells()
        if not complete.any():
            return None, 0
        ctx, grid = self.ctx, self.ctx.grid
        P = len(self.cell_of_pair)
        pair_ok = complete[self.cell_of_pair]
        measured: dict[str, dict] = {}
        for name, entry in self.entries.items():
            arrays = {k: self.values[k] for k in entry.keys}
            if entry.finish is not None:  # derived values of the complete pairs only
                done = entry.finish(measure_inputs(ctx, name),
                                    {k: v[pair_ok] for k, v in arrays.items()})
                for k, v in done.items():
                    v = np.asarray(v)
                    if v.ndim and len(v) == int(pair_ok.sum()):
                        full = np.full((P, *v.shape[1:]), np.nan)
                        full[pair_ok] = v
                        arrays[k] = full
            measured.setdefault(entry.group, {}).update(arrays)
        base = {"config_hash": ctx.hash, **tables.provenance(ctx.strategy),
                "knob": ctx.cfg.knob}
        results = tables.results_table(grid, base, self.dense, self.retrained, measured)
        D = len(grid.densities)
        keep = {(float(grid.temperatures[c // D]), float(grid.densities[c % D]))
                for c in np.flatnonzero(complete)}
        cell = list(zip(results["temperature"].astype(float), results["density"].astype(float)))
        rows = (results["stage"] == "dense").to_numpy() | np.asarray([c in keep for c in cell])
        cells = tables.cells_table(results[rows].reset_index(drop=True),
                                   ctx.cfg.regimes.to_dict())
        cells["partial"] = True
        return cells, int(complete.sum())

    def write(self) -> bool:
        """Write the partial tables; False (nothing written) while no cell is complete."""
        cells, n = self.tables()
        if cells is None:
            return False
        wd = pathlib.Path(self.ctx.wd.path)
        atomic_write_csv(wd / CELLS, cells)
        try:
            body = regimes.summary_table(cells)
        except (ValueError, KeyError) as e:
            body = f"(no summary table: {e})"
        atomic_write_text(wd / SUMMARY, headline(n, self.num_cells) + "\n" + body + "\n")
        return True

    def refresh(self, stage: str, items: np.ndarray, done: dict, force: bool = False) -> None:
        """After a chunk of ``stage`` committed: record it and, when :data:`REFRESH_S` have
        passed since the last refresh (or ``force``), rewrite the partial tables."""
        if stage not in self.entries:
            return
        self.add(stage, items, done)
        for other in self.entries:  # a resumed run: the other stages' records committed before
            if other not in self.loaded:
                self.add(other, items, {(lo, hi): a for lo, hi, a in
                                        self.ctx.wd.load_chunks(other)})
        now = time.monotonic()
        if not force and now - self.last < REFRESH_S:
            return
        if self.write():
            self.last = time.monotonic()


def committed(ctx, stage: str, items: np.ndarray, done: dict) -> None:
    """Called by :func:`tr_jax.sweep.measure.chunked` after each committed chunk: refresh the
    partial tables on process 0 (a no-op without a :class:`PartialTables` in ``ctx.partial``).
    A failure here never stops the sweep: it is logged and the partial tables stay as they
    were."""
    pt = ctx.partial
    if pt is None or not sharding.is_primary():
        return
    try:
        pt.refresh(stage, items, done)
    except Exception as e:  # noqa: BLE001 - the partial tables are a convenience
        ctx.say(f"warning: partial tables not refreshed ({type(e).__name__}: {e})")


def remove(workdir) -> None:
    """Remove the partial tables of ``workdir`` (a finished run; process 0)."""
    if not sharding.is_primary():
        return
    for name in (CELLS, SUMMARY):
        try:
            (pathlib.Path(workdir) / name).unlink()
        except FileNotFoundError:
            pass
