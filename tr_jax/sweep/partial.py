"""Partial tables of a sweep still measuring: ``cells.partial.csv`` and ``summary.partial.txt``.

While the LMC + CKA stage commits its chunk records, process 0 refreshes these two files with the
cells measured so far (a cell counts once every pair of it has its LMC and its CKA, its members'
retraining being done before any measuring starts). They are built by the sweep's own table code
(:func:`tr_jax.sweep.tables.results_table` on what is measured, then
:func:`tr_jax.sweep.tables.cells_table`, the one cell aggregation), with a ``partial`` column
(True) added, so a cell's measured values are the values the finished run writes for it. Cell
statistics that look at a whole density column (``normalized_test_error``, and with it the regime
of rules that use it) may change as more of the column is measured.

Cost: a refresh is at most every :data:`REFRESH_S` seconds (every chunk when chunks are slower);
both files are written atomically. A finished run removes them (:func:`remove`): its
``cells.csv`` and ``summary.txt`` take over, written as before.

Bezier and Hessian values are not part of the partial tables.
"""
from __future__ import annotations

import math
import pathlib
import time

import numpy as np

from tr_jax import landscape, regimes, sharding
from tr_jax.sweep import tables
from tr_jax.sweep.store import atomic_write_csv, atomic_write_text

__all__ = ["CELLS", "SUMMARY", "REFRESH_S", "PartialTables", "committed", "remove",
           "headline", "STILL_GOING"]

#: the partial tables' file names, in the workdir
CELLS = "cells.partial.csv"
SUMMARY = "summary.partial.txt"
#: seconds between two refreshes at least (a refresh happens on a chunk's commit)
REFRESH_S = 30.0
#: the measure stages whose chunk records make the partial tables, and their keys
_STAGES = {"outputs": ("cka_softmax", "cka_logits"),
           "lmc": ("curve_train_error", "curve_train_loss")}
STILL_GOING = "the run is still going or was stopped"


def headline(n: int, m: int) -> str:
    """The first line of ``summary.partial.txt``."""
    return f"PARTIAL: {n} of {m} cells measured; {STILL_GOING}"


class PartialTables:
    """The measured pairs of a running sweep and the partial tables built from them.

    ``pipe``: the :class:`~tr_jax.sweep.run.Pipeline`; ``dense`` / ``retrained``: its finished
    dense and retraining stages (the inputs of the results table). Made by every process (a
    grown sweep loads the finished run's measure checkpoint, a collective read); only process 0
    refreshes and writes (:func:`committed`)."""

    def __init__(self, pipe, dense: dict, retrained: dict):
        self.pipe, self.dense, self.retrained = pipe, dense, retrained
        grid = pipe.grid
        P = len(grid.pairs())
        ij = grid.member_indices()[grid.pairs_array()[:, 0]]
        T, D = len(grid.temperatures), len(grid.densities)
        self.cell_of_pair = ij[:, 1] * D + ij[:, 2]   # (temperature, density) of every pair
        self.num_cells = T * D
        self.have = {s: np.zeros(P, bool) for s in _STAGES}
        self.values: dict[str, np.ndarray] = {}
        self.loaded: set[str] = set()
        self.last = -math.inf
        self._fill_grown()

    def _fill_grown(self) -> None:
        """A grown sweep measures its new pairs only: the old pairs' values are the finished
        run's."""
        pipe = self.pipe
        if getattr(pipe, "old_grid", None) is None:
            return
        old = pipe._old("measure")
        if old is None:
            return
        where = pipe.grid.pair_map(pipe.old_grid)
        kept = where >= 0
        for stage, keys in _STAGES.items():
            for k in keys:
                if k in old:
                    self._array(k, np.asarray(old[k]))[kept] = np.asarray(old[k])[where[kept]]
            self.have[stage][kept] = True

    def _array(self, key: str, like: np.ndarray) -> np.ndarray:
        if key not in self.values:
            P = len(self.have["lmc"])
            self.values[key] = np.full((P, *like.shape[1:]), np.nan, np.float64)
        return self.values[key]

    def add(self, stage: str, items: np.ndarray, done: dict) -> None:
        """Record the chunk records ``done`` (``{(lo, hi): arrays}`` of items ``items[lo:hi]``)
        of ``stage``."""
        for (lo, hi), arrays in done.items():
            idx = np.asarray(items)[lo:hi]
            for k in _STAGES[stage]:
                if k in arrays:
                    self._array(k, np.asarray(arrays[k]))[idx] = np.asarray(arrays[k])
            self.have[stage][idx] = True
        self.loaded.add(stage)

    def complete_cells(self) -> np.ndarray:
        """Per cell (temperature-major, then density), whether all its pairs are measured."""
        ok = self.have["outputs"] & self.have["lmc"]
        bad = np.zeros(self.num_cells, bool)
        np.logical_or.at(bad, self.cell_of_pair, ~ok)
        return ~bad

    def tables(self):
        """``(cells, n_complete)``: the partial cells table (None when no cell is complete)."""
        complete = self.complete_cells()
        if not complete.any():
            return None, 0
        pipe, grid = self.pipe, self.pipe.grid
        P = len(self.have["lmc"])
        pair_ok = complete[self.cell_of_pair]
        measured = {"lmc": np.full(P, np.nan), "loss_barrier": np.full(P, np.nan),
                    "cka_softmax": self.values["cka_softmax"],
                    "cka_logits": self.values["cka_logits"]}
        measured["lmc"][pair_ok] = np.asarray(landscape.lmc(
            self.values["curve_train_error"][pair_ok], n=pipe.ds.num_train))
        measured["loss_barrier"][pair_ok] = landscape.loss_barrier(
            self.values["curve_train_loss"][pair_ok])
        base = {"config_hash": pipe.hash, **tables.provenance(pipe.strategy),
                "knob": pipe.cfg.knob}
        results = tables.results_table(grid, base, self.dense, self.retrained, measured,
                                       None, None)
        D = len(grid.densities)
        keep = {(float(grid.temperatures[c // D]), float(grid.densities[c % D]))
                for c in np.flatnonzero(complete)}
        cell = list(zip(results["temperature"].astype(float), results["density"].astype(float)))
        rows = (results["stage"] == "dense").to_numpy() | np.asarray([c in keep for c in cell])
        cells = tables.cells_table(results[rows].reset_index(drop=True),
                                   pipe.cfg.regimes.to_dict())
        cells["partial"] = True
        return cells, int(complete.sum())

    def write(self) -> bool:
        """Write the partial tables; False (nothing written) while no cell is complete."""
        cells, n = self.tables()
        if cells is None:
            return False
        wd = pathlib.Path(self.pipe.wd.path)
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
        if stage not in _STAGES:
            return
        self.add(stage, items, done)
        for other in _STAGES:  # a resumed run: the other stage's records committed before
            if other not in self.loaded:
                self.add(other, items, {(lo, hi): a for lo, hi, a in
                                        self.pipe.wd.load_chunks(other)})
        now = time.monotonic()
        if not force and now - self.last < REFRESH_S:
            return
        if self.write():
            self.last = time.monotonic()


def committed(pipe, stage: str, items: np.ndarray, done: dict) -> None:
    """The hook of ``MeasureStages._chunked`` after each committed chunk: refresh the partial
    tables on process 0 (a no-op without a :class:`PartialTables` on ``pipe``). A failure here
    never stops the sweep: it is logged and the partial tables stay as they were."""
    pt = getattr(pipe, "partial_tables", None)
    if pt is None or not sharding.is_primary():
        return
    try:
        pt.refresh(stage, items, done)
    except Exception as e:  # noqa: BLE001 - the partial tables are a convenience
        pipe.say(f"warning: partial tables not refreshed ({type(e).__name__}: {e})")


def remove(workdir) -> None:
    """Remove the partial tables of ``workdir`` (a finished run; process 0)."""
    if not sharding.is_primary():
        return
    for name in (CELLS, SUMMARY):
        try:
            (pathlib.Path(workdir) / name).unlink()
        except FileNotFoundError:
            pass
