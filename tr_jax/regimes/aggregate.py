"""cells.csv from results.csv: the one home of cell aggregation (Zhou et al. 2023, Figure 2:
every cell is a mean over 3 dense seeds x 3 retrain seeds or pairs; docs/fidelity.md, Figure 2
grid), with bootstrap intervals.

:func:`cells_from_results` takes the tidy results table as :func:`tr_jax.sweep.run.tables_of`
builds it (one row per member or pair and metric, ``stage`` in dense / retrain / pair, a
``sick`` flag) and returns cells.csv: the point columns (means over the healthy members, sick
members counted in ``sick_members``), the regime and advice, the provenance, then the
uncertainty columns. Which metrics are columns comes from the measure registry
(:mod:`tr_jax.measures`: ``Metric.cell``).
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import measures, stats
from .rule import (CODE_OF_LABEL, RegimeRule, advice, classify, coerce_rule, column_codes,
                   density_columns, normalized_test_error, require_columns)

__all__ = ["cell_metrics", "optional_metrics", "NO_UNIT", "PROVENANCE", "prepare_results",
           "cells_from_results"]


def cell_metrics() -> tuple[str, ...]:
    """The metrics of every cell, in cells.csv order (``dense_test_error`` follows them): the
    test error and every registered metric aggregated always (:mod:`tr_jax.measures`)."""
    return ("test_error",) + measures.cell_metrics("always")


def optional_metrics() -> tuple[str, ...]:
    """The metrics written only when measured (Bezier, Hessian, measures registered later)."""
    return measures.cell_metrics("measured")


#: provenance columns copied from results.csv (constant within a run)
PROVENANCE = ("config_hash", "tr_jax_version", "jax_version", "device_kind", "members_strategy")
_REQUIRED = ("knob", "stage", "temperature", "density", "dense_seed", "metric", "value")
_KEYS = ["knob", "temperature", "density"]
_STAGES = ("dense", "retrain", "pair")
#: ``ci_unit`` of a cell whose regime confidence (and LMC/CKA intervals) rest on fewer than two
#: independent units: nothing to resample, so they are NaN ("n/a") rather than 100 % / zero width
NO_UNIT = "none"


def _truthy(col: pd.Series) -> pd.Series:
    if col.dtype == bool:
        return col
    return col.astype(str).str.lower().isin(("true", "1", "1.0"))


def prepare_results(results: pd.DataFrame, what: str) -> pd.DataFrame:
    """A checked copy of results.csv: numeric ``value``, float ``temperature``/``density``, a
    boolean ``sick`` column (False when absent; read back from CSV as text it is parsed).
    Raises ``ValueError`` naming missing columns or unknown stages."""
    require_columns(results, _REQUIRED, what)
    res = results.copy()
    res["value"] = pd.to_numeric(res["value"], errors="coerce").astype(float)
    res["sick"] = _truthy(res["sick"]) if "sick" in res.columns else False
    for k in ("temperature", "density"):
        res[k] = res[k].astype(float)
    res["stage"] = res["stage"].astype(str)
    bad = sorted(set(res["stage"]) - set(_STAGES))
    if bad:
        raise ValueError(f"{what}: unknown stage value(s) {bad}; expected 'dense', 'retrain', "
                         f"'pair'")
    return res


def _sums_counts(rows: pd.DataFrame, cell_of: np.ndarray, n_cells: int, unit: str,
                 units: list) -> tuple[np.ndarray, np.ndarray]:
    """Per cell and unit the sum and count of the finite values: ``[n_cells, len(units)]``."""
    sums = np.zeros((n_cells, len(units)))
    counts = np.zeros((n_cells, len(units)))
    v = rows["value"].to_numpy(float)
    u = pd.Index(units).get_indexer(rows[unit])
    ok = np.isfinite(v) & (cell_of >= 0) & (u >= 0)
    np.add.at(sums, (cell_of[ok], u[ok]), v[ok])
    np.add.at(counts, (cell_of[ok], u[ok]), 1.0)
    return sums, counts


def _units(rows: pd.DataFrame, unit: str) -> list:
    return sorted(pd.unique(rows[unit].dropna()), key=str)


def _replicates(rows: pd.DataFrame, cell_of: np.ndarray, n_cells: int, unit: str, n_boot: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap replicates ``[n_boot, n_cells]`` of the pooled cell means of ``rows``, and per
    cell the number of resampled units holding a finite value (``[n_cells]``, int): with fewer
    than two every replicate repeats the point, so the interval is not a measurement."""
    units = _units(rows, unit)
    if not units:
        return np.full((n_boot, n_cells), np.nan), np.zeros(n_cells, dtype=int)
    sums, counts = _sums_counts(rows, cell_of, n_cells, unit, units)
    return (stats.pooled_mean_replicates(sums, counts, stats.resample_weights(len(units), n_boot,
                                                                            seed)),
            (counts > 0).sum(axis=1).astype(int))


def _regime_confidence(cells: pd.DataFrame, lmc: np.ndarray, cka: np.ndarray,
                       rule: RegimeRule) -> np.ndarray:
    """Per cell, the fraction of bootstrap replicates (rows of ``lmc``/``cka``, ``[B, cells]``)
    whose regime equals the cell's own; NaN where the cell has no regime."""
    point = np.asarray([CODE_OF_LABEL.get(r, 0) if isinstance(r, str) else 0
                        for r in cells["regime"]])
    same = np.zeros(len(cells))
    for col in density_columns(cells, None):
        codes = column_codes(lmc[:, col.pos], cka[:, col.pos], rule)  # [B, n]
        same[col.pos] = (codes == point[col.pos]).mean(axis=0)
    return np.where(point > 0, same, np.nan)


def cells_from_results(results: pd.DataFrame, rule: RegimeRule | Mapping[str, Any] | None = None,
                       *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """cells.csv from the tidy results table (the single home of cell aggregation).

    Point columns, in this order: ``knob, temperature, density, test_error, lmc, cka,
    cka_logits, loss_barrier, dense_test_error`` [``bezier_mc, hessian_trace,
    hessian_top_eigenvalue`` when measured], ``normalized_test_error, regime, advice,
    sick_members`` and the provenance columns found in ``results`` (``config_hash,
    tr_jax_version, jax_version, device_kind, members_strategy``). A metric is the mean of the
    cell's healthy ``retrain`` rows (``test_error``, Hessian) or ``pair`` rows (LMC, CKA, loss
    barrier, Bezier) over dense seeds and retrain seeds/pairs together; ``dense_test_error`` the
    mean of the healthy ``dense`` rows at the temperature; ``sick_members`` the number of sick
    retrained members; a cell whose pairs are all sick has no LMC/CKA and no regime.

    Uncertainty columns after them: ``{metric}_lo, {metric}_hi`` for every metric above and
    ``normalized_test_error`` (the ``ci`` percentile interval of ``n_boot`` bootstrap
    replicates), ``regime_confidence`` (the fraction of replicates whose regime, reclassified
    with ``rule``, equals the cell's), ``n_dense_seeds`` (healthy dense seeds in the cell) and
    ``ci_unit``:

    * ``"dense_seed"`` (two or more dense seeds): a replicate draws the dense seeds with
      replacement, the same draw for the whole sweep (see :mod:`tr_jax.stats`);
    * ``"retrain_seed/pair"`` (one dense seed): the retrain seeds (for per-member metrics) and
      the pairs (for per-pair metrics) are drawn instead. This measures retraining noise only,
      not the spread between dense models, so it understates the uncertainty (the pairs of one
      dense seed share members: 3 retrain seeds give 3 pairs, not 3 independent ones);
    * ``"none"`` (:data:`NO_UNIT`): the cell's LMC or CKA rests on fewer than two of the units
      above (one dense seed and one healthy pair, as in a quick config with 2 retrain seeds; or
      one healthy dense seed left in a multi-seed sweep): ``regime_confidence`` is NaN.

    Independent units, per metric and cell: an interval needs at least two resampled units
    holding a finite value in the cell, else its ``_lo``/``_hi`` are NaN (a bootstrap of one
    unit only repeats the point). The units are the dense seeds with two or more dense seeds
    in the sweep; with one, the retrain seeds for ``test_error`` and the Hessian, the pairs for
    ``lmc, cka, cka_logits, loss_barrier, bezier_mc``. ``dense_test_error`` always rests on the
    dense seeds at its temperature, ``normalized_test_error`` on the units of ``test_error``,
    ``regime_confidence`` on the fewer of ``lmc``'s and ``cka``'s. A sweep whose every cell has
    two or more healthy dense seeds is unaffected by this rule.

    Deterministic for a given ``seed`` (a resumed run writes identical tables).
    """
    rule = coerce_rule(rule)
    if int(n_boot) < 1:
        raise ValueError(f"cells_from_results: n_boot must be >= 1, got {n_boot!r}")
    res = prepare_results(results, "cells_from_results")
    members = res[res["stage"] != "dense"]
    if not len(members):
        raise ValueError("cells_from_results: results hold no 'retrain' or 'pair' rows")
    every_cell = members[_KEYS].drop_duplicates().sort_values(_KEYS).set_index(_KEYS).index
    healthy = members[~members["sick"]]
    metrics = list(dict.fromkeys(members["metric"]))
    wide = (healthy.groupby(_KEYS + ["metric"])["value"].mean().unstack("metric")
            .reindex(index=every_cell, columns=metrics))
    is_te = (members["stage"] == "retrain") & (members["metric"] == "test_error")
    n_sick = (members[is_te].groupby(_KEYS)["sick"].sum().reindex(every_cell).fillna(0)
              .astype(int))
    wide = wide.reset_index()
    wide.columns.name = None
    dense = res[(res["stage"] == "dense") & ~res["sick"] & (res["metric"] == "test_error")]
    dense_err = dense.groupby(["knob", "temperature"])["value"].mean()
    cells = wide[_KEYS].copy()
    CELL_METRICS, CELL_OPTIONAL = cell_metrics(), optional_metrics()
    for m in CELL_METRICS:
        cells[m] = wide[m] if m in wide.columns else np.nan
    cells["dense_test_error"] = dense_err.reindex(
        pd.MultiIndex.from_frame(wide[["knob", "temperature"]])).to_numpy()
    optional = [m for m in CELL_OPTIONAL if m in wide.columns]
    for m in optional:
        cells[m] = wide[m]
    cells["normalized_test_error"] = normalized_test_error(cells)
    cells["regime"] = classify(cells, rule)
    cells["advice"] = cells["regime"].map(advice)
    cells["sick_members"] = n_sick.to_numpy()
    for k in PROVENANCE:
        if k in res.columns:
            cells[k] = members.groupby(_KEYS)[k].first().reindex(every_cell).to_numpy()

    # ---- uncertainty: bootstrap replicates of every metric ----
    n_cells = len(cells)
    seeds = _units(healthy[is_te.loc[healthy.index]], "dense_seed")
    by_seed = len(seeds) >= 2
    cell_of = every_cell.get_indexer(pd.MultiIndex.from_frame(healthy[_KEYS]))
    reps: dict[str, np.ndarray] = {}
    n_units: dict[str, np.ndarray] = {}  # per metric and cell: the units its interval rests on
    for m in list(CELL_METRICS) + optional:
        rows = healthy[healthy["metric"] == m]
        idx = cell_of[(healthy["metric"] == m).to_numpy()]
        unit = "dense_seed" if by_seed else ("pair" if (rows["stage"] == "pair").any()
                                             else "retrain_seed")
        reps[m], n_units[m] = _replicates(rows, idx, n_cells, unit, n_boot, seed)
    cell_t = pd.MultiIndex.from_frame(cells[["knob", "temperature"]])
    temps = cell_t.unique()
    d_t = temps.get_indexer(pd.MultiIndex.from_frame(dense[["knob", "temperature"]]))
    reps_t, n_t = _replicates(dense, d_t, len(temps), "dense_seed", n_boot, seed)  # [B, temps]
    reps["dense_test_error"] = reps_t[:, temps.get_indexer(cell_t)]
    n_units["dense_test_error"] = n_t[temps.get_indexer(cell_t)]
    n_units["normalized_test_error"] = n_units["test_error"]
    te = reps["test_error"]
    col_min = np.full_like(te, np.nan)
    for col in density_columns(cells, None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            col_min[:, col.pos] = np.nanmin(te[:, col.pos], axis=1, keepdims=True)
    reps["normalized_test_error"] = te - col_min
    order = list(CELL_METRICS) + ["dense_test_error"] + optional + ["normalized_test_error"]
    for m in order:
        lo, hi = stats.percentile_interval(reps[m], ci)
        one = n_units[m] < 2  # nothing to resample: no interval rather than a zero-width one
        cells[f"{m}_lo"], cells[f"{m}_hi"] = np.where(one, np.nan, lo), np.where(one, np.nan, hi)
    sure = np.minimum(n_units["lmc"], n_units["cka"]) >= 2
    cells["regime_confidence"] = np.where(
        sure, _regime_confidence(cells, reps["lmc"], reps["cka"], rule), np.nan)
    n_dense = (healthy[is_te.loc[healthy.index] & np.isfinite(healthy["value"])]
               .groupby(_KEYS)["dense_seed"].nunique().reindex(every_cell).fillna(0).astype(int))
    cells["n_dense_seeds"] = n_dense.to_numpy()
    cells["ci_unit"] = np.where(sure, "dense_seed" if by_seed else "retrain_seed/pair",
                                NO_UNIT).astype(object)
    return cells
