"""Cells from ``results.csv`` (docs/fidelity.md, Figure 2 grid: each cell a mean over its runs) and the LMC
transition with its seed-to-seed uncertainty."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd

from .aggregate import cell_metrics, optional_metrics, prepare_results
from .rule import column_hot_to_cold, largest_drop, require_columns

# ---------------------------------------------------------------------------------------------
# Per-seed cells from results.csv, and the transition with its seed-to-seed uncertainty
# ---------------------------------------------------------------------------------------------



def _is_long(table: pd.DataFrame) -> bool:
    return isinstance(table, pd.DataFrame) and {"metric", "value"} <= set(table.columns)


def _wide_from_results(results: pd.DataFrame, keys: list[str], what: str) -> pd.DataFrame:
    res = prepare_results(results, what)
    res.loc[res["sick"], "value"] = np.nan  # diverged members are left out, as the sweep does
    stage = res["stage"]
    sub = res[stage != "dense"]
    if len(sub):
        wide = (sub.groupby(keys + ["metric"], sort=True, dropna=False)["value"].mean()
                .unstack("metric").reset_index())
        wide.columns.name = None
    else:
        wide = pd.DataFrame(columns=keys)
    dense_keys = [k for k in keys if k != "density"]
    dense = res[(stage == "dense") & (res["metric"] == "test_error")]
    dense_err = dense.groupby(dense_keys, sort=True, dropna=False)["value"].mean()
    dense_err = dense_err.rename("dense_test_error").reset_index()
    wide = wide.merge(dense_err, on=dense_keys, how="left") if len(wide) else wide
    for m in cell_metrics() + ("dense_test_error",):
        if m not in wide.columns:
            wide[m] = np.nan
    metrics = [m for m in wide.columns if m not in keys]
    first = (list(cell_metrics()) + ["dense_test_error"]
             + [m for m in optional_metrics() if m in metrics])
    rest = sorted(m for m in metrics if m not in first)
    wide = wide[keys + first + rest]
    return wide.sort_values(keys, kind="mergesort").reset_index(drop=True)


def cells_by_seed(results: pd.DataFrame) -> pd.DataFrame:
    """Per-dense-seed cell table from ``results.csv`` (long format).

    One row per ``(knob, temperature, density, dense_seed)`` with every metric found among the
    ``retrain``/``pair`` rows as a column (mean over retrain seeds resp. pairs; NaN values are
    skipped), ``dense_test_error`` (the seed's dense model at that temperature) and
    ``normalized_test_error`` (test error minus the minimum over temperatures of the same
    ``(knob, density, dense_seed)`` column). Extra columns of ``results`` are ignored.
    """
    keys = ["knob", "temperature", "density", "dense_seed"]
    wide = _wide_from_results(results, keys, "cells_by_seed")
    err = wide["test_error"].astype(float)
    grp = [wide[k] for k in ("knob", "density", "dense_seed")]
    wide["normalized_test_error"] = err - err.groupby(grp, dropna=False, sort=False).transform("min")
    return wide


def _sd(values: list[float]) -> float:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return float(np.std(v, ddof=1)) if v.size >= 2 else float("nan")


def _mean(values: list[float]) -> float:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return float(v.mean()) if v.size else float("nan")


def transition_with_uncertainty(results: pd.DataFrame, *, knob: str | None = None,
                                hotter_is_smaller: bool | Mapping[str, bool] | None = None,
                                k: float = 3.0, min_drop: float = 0.05) -> pd.DataFrame:
    """The LMC transition and the best temperature per ``(knob, density)`` column, estimated
    separately for every dense seed, with their seed-to-seed spread.

    ``results`` is ``results.csv`` (long format; per-seed cells are built with
    :func:`cells_by_seed`) or a cells-like table with a ``dense_seed`` column (without one it is
    treated as a single seed).

    Per dense seed, with the column ordered hot -> cold and LMC the mean over that seed's pairs:

    * **transition** = the adjacent (hot, cold) pair of temperatures with the largest LMC drop
      (as :func:`transition`), located at the *arithmetic* midpoint of the two temperatures
      (also for knobs usually swept on a log grid, e.g. batch size: simple and documented);
      NaN when LMC never decreases (largest drop <= 0) or fewer than two finite LMC values;
    * **best temperature** = where that seed's normalized test error is zero (the column
      minimum; first hot -> cold on ties).

    Result columns: ``knob, density, lmc_transition`` (mean over seeds), ``lmc_transition_std``
    (sample std, ddof=1; NaN with one seed), ``lmc_transition_se`` (std / sqrt(n), no
    bootstrap), ``lmc_transition_seeds`` (tuple of per-seed values, seeds in ascending order),
    ``hot_temperature, cold_temperature`` (the largest drop of the mean-over-seeds LMC),
    ``best_temperature`` (argmin of the mean-over-seeds test error), ``best_temperature_std``
    (std of the per-seed best temperatures), ``best_temperature_seeds``, ``n_seeds``,
    ``lmc_drop`` (mean over seeds of the per-seed largest drop), ``lmc_drop_std``,
    ``lmc_step_std`` and ``sharp``.

    ``sharp`` (tr_jax's rule): pool, over seeds, every adjacent LMC difference of the column
    *except* each seed's largest drop; ``lmc_step_std`` is their sample std (the background
    seed/temperature noise of LMC). The transition is sharp when the mean drop exceeds
    ``k`` (default 3) times ``lmc_step_std`` **and** at least ``min_drop`` (default 0.05 on the
    train-error fraction, so that a perfectly flat background does not make a tiny drop
    "sharp"); False when fewer than two background differences exist.
    """
    if not isinstance(results, pd.DataFrame):
        raise TypeError(f"transition_with_uncertainty: expected a DataFrame, got "
                        f"{type(results).__name__}")
    if _is_long(results):
        cells = cells_by_seed(results)
    else:
        require_columns(results, ("knob", "temperature", "density", "lmc"), "transition_with_uncertainty")
        cells = results.copy()
        if "dense_seed" not in cells.columns:
            cells["dense_seed"] = 0
    if "test_error" not in cells.columns:
        cells["test_error"] = np.nan
    if knob is not None:
        have = sorted({str(x) for x in cells["knob"]})
        if knob not in have:
            raise ValueError(f"transition_with_uncertainty: knob {knob!r} not in the table "
                             f"(has {have})")
        cells = cells[cells["knob"] == knob]
    if not (k >= 0 and math.isfinite(k)):
        raise ValueError(f"transition_with_uncertainty: k must be a finite number >= 0, got {k!r}")
    rows = []
    for (kn, dens), col in cells.groupby(["knob", "density"], sort=True, dropna=False):
        trans, drops, bests, background = [], [], [], []
        seeds = list(col.groupby("dense_seed", sort=True, dropna=False))
        for _, one in seeds:
            one = (one.groupby("temperature", sort=True)[["lmc", "test_error"]].mean().reset_index())
            one = column_hot_to_cold(one, kn, hotter_is_smaller)
            temps = one["temperature"].to_numpy(dtype=float)
            lmc = one["lmc"].to_numpy(dtype=float)
            err = one["test_error"].to_numpy(dtype=float)
            jump = largest_drop(lmc)
            if jump is not None:
                h, c, drop = jump
                trans.append(0.5 * (temps[h] + temps[c]) if drop > 0 else np.nan)
                drops.append(drop)
                pos = np.flatnonzero(np.isfinite(lmc))
                steps = lmc[pos[:-1]] - lmc[pos[1:]]
                background.extend(np.delete(steps, int(np.argmax(steps))).tolist())
            else:
                trans.append(np.nan)
                drops.append(np.nan)
            bests.append(float(temps[int(np.nanargmin(err))]) if np.isfinite(err).any() else np.nan)
        mean = (col.groupby("temperature", sort=True)[["lmc", "test_error"]].mean().reset_index())
        mean = column_hot_to_cold(mean, kn, hotter_is_smaller)
        mtemps = mean["temperature"].to_numpy(dtype=float)
        merr = mean["test_error"].to_numpy(dtype=float)
        mjump = largest_drop(mean["lmc"].to_numpy(dtype=float))
        mjump = mjump if mjump is not None and mjump[2] > 0 else None
        n_ok = int(np.isfinite(trans).sum())
        lmc_drop = _mean(drops)
        step_std = _sd(background)
        sharp = bool(len(background) >= 2 and np.isfinite(lmc_drop) and lmc_drop >= min_drop
                     and lmc_drop > k * step_std)
        tr_std = _sd(trans)
        rows.append(dict(
            knob=kn, density=float(dens), lmc_transition=_mean(trans), lmc_transition_std=tr_std,
            lmc_transition_se=tr_std / math.sqrt(n_ok) if n_ok >= 2 else float("nan"),
            lmc_transition_seeds=tuple(float(x) for x in trans),
            hot_temperature=float(mtemps[mjump[0]]) if mjump else np.nan,
            cold_temperature=float(mtemps[mjump[1]]) if mjump else np.nan,
            best_temperature=(float(mtemps[int(np.nanargmin(merr))]) if np.isfinite(merr).any()
                              else np.nan),
            best_temperature_std=_sd(bests), best_temperature_seeds=tuple(bests),
            n_seeds=len(seeds), lmc_drop=lmc_drop, lmc_drop_std=_sd(drops),
            lmc_step_std=step_std, sharp=sharp))
    columns = ["knob", "density", "lmc_transition", "lmc_transition_std", "lmc_transition_se",
               "lmc_transition_seeds", "hot_temperature", "cold_temperature", "best_temperature",
               "best_temperature_std", "best_temperature_seeds", "n_seeds", "lmc_drop",
               "lmc_drop_std", "lmc_step_std", "sharp"]
    return pd.DataFrame(rows, columns=columns)

