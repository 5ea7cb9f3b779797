"""Per-layer metrics of a sweep: depth profiles with bootstrap intervals.

A per-layer metric is stored in results.csv with the metric name ``<base>@<layer>``, e.g.
``layer_cka_unbiased@layer1_0/conv1`` or ``layer_trace@fc`` (a layer name may contain ``/`` but
never ``@``; the name is split at the first ``@``). The rows of one base metric are written in
network order of the layers, so the order of first appearance in the table is the depth order.

:func:`layer_rows` picks these rows and splits their names; :func:`layer_profiles` averages them
per ``(knob, temperature, density, base metric, layer)`` with a percentile-bootstrap interval of
the mean, resampling the same units as :func:`tr_jax.regimes.cells_from_results`: the dense seeds
when a cell spans at least two of them (the retrain runs of one dense seed share its pruned
network, so the dense seed is the independent unit), else the rows themselves (pairs or members).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..stats import percentile_interval, pooled_mean_replicates, resample_weights
from .aggregate import prepare_results

__all__ = ["layer_rows", "layer_profiles"]

_KEYS = ["knob", "temperature", "density", "metric", "layer"]
_PROFILE_COLUMNS = ["knob", "temperature", "density", "metric", "layer", "layer_index", "value",
                    "lo", "hi", "n"]


def layer_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The per-layer rows of ``results`` (metric names containing ``@``), as a new frame (index
    reset) with three added columns: ``base`` (the name before the first ``@``), ``layer`` (after
    it) and ``layer_index`` (int: the layer's position among the layers of its base metric, in
    order of first appearance in the table, i.e. network order). Returns an empty frame with the
    same columns when there are none."""
    if "metric" not in results.columns:
        raise ValueError(f"layer_rows: results table lacks a 'metric' column; has "
                         f"{list(results.columns)}")
    names = results["metric"].astype(str)
    rows = results[names.str.contains("@", regex=False)].reset_index(drop=True)
    parts = rows["metric"].astype(str).str.split("@", n=1, expand=True)
    if rows.empty:
        rows = rows.assign(base=pd.Series(dtype=object), layer=pd.Series(dtype=object))
        rows["layer_index"] = pd.Series(dtype=np.int64)
        return rows
    rows = rows.assign(base=parts[0].to_numpy(object), layer=parts[1].to_numpy(object))
    index = rows.groupby("base", sort=False)["layer"].transform(lambda s: pd.factorize(s)[0])
    rows["layer_index"] = index.astype(np.int64)
    return rows


def _unit_index(healthy: pd.DataFrame, gid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per healthy row its unit within its group, and per group whether the units are dense seeds.

    Groups whose rows span >= 2 dense seeds use the dense seed (ranked within the group); the
    others use the row itself (its position within the group)."""
    frame = pd.DataFrame({"gid": gid, "seed": healthy["dense_seed"].to_numpy()})
    by_seed = frame.groupby("gid")["seed"].nunique() >= 2
    seed_rank = frame.groupby("gid")["seed"].rank(method="dense").to_numpy() - 1
    row_pos = frame.groupby("gid").cumcount().to_numpy()
    use_seed = by_seed.reindex(frame["gid"]).to_numpy(bool)
    unit = np.where(use_seed, np.nan_to_num(seed_rank), row_pos).astype(np.int64)
    return unit, use_seed


def layer_profiles(results: pd.DataFrame, *, n_boot: int = 1000, ci: float = 0.95,
                   seed: int = 0) -> pd.DataFrame:
    """Depth profiles of the per-layer metrics of ``results`` (a results.csv table).

    Returns one row per ``(knob, temperature, density, base metric, layer)`` with the columns
    ``knob, temperature, density, metric`` (the base name), ``layer, layer_index`` (see
    :func:`layer_rows`), ``value`` (the mean of the healthy rows, ``sick == False``; a missing
    ``sick`` column means all healthy), ``lo, hi`` (the ``ci`` percentile-bootstrap interval of
    that mean) and ``n`` (the number of resampled units). The units are the dense seeds when the
    cell's healthy rows span >= 2 of them -- a replicate draws seeds with replacement and takes
    the pooled mean of their rows (equal to the mean of the seed means when every seed holds as
    many rows, as in the sweep's design) -- else the rows themselves (pairs or members). With
    fewer than 2 units ``lo`` and ``hi`` are NaN; a cell with no healthy value has NaN ``value``
    and ``n == 0``. Groups with the same number of units share one draw
    (:func:`tr_jax.stats.resample_weights` with ``seed``), so the result is deterministic.
    Sorted by knob, metric, density, temperature, layer_index; empty (same columns) when
    ``results`` holds no per-layer rows.
    """
    rows = layer_rows(results)
    if rows.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("knob", "metric", "layer")
                                          else float) for c in _PROFILE_COLUMNS})
    rows = prepare_results(rows, "layer_profiles")
    rows["metric"] = rows["base"]
    groups = rows.groupby(_KEYS, sort=False, dropna=False)
    index = groups["layer_index"].first()
    n_groups = len(index)
    gid_all = groups.ngroup().to_numpy()

    healthy_mask = (~rows["sick"].to_numpy(bool)) & np.isfinite(rows["value"].to_numpy(float))
    healthy = rows[healthy_mask]
    gid = gid_all[healthy_mask]
    values = healthy["value"].to_numpy(float)

    total = np.bincount(gid, weights=values, minlength=n_groups)
    count = np.bincount(gid, minlength=n_groups).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1.0), np.nan)

    lo = np.full(n_groups, np.nan)
    hi = np.full(n_groups, np.nan)
    n_units = np.zeros(n_groups, dtype=np.int64)
    if len(healthy):
        unit, _ = _unit_index(healthy, gid)
        n_units = np.zeros(n_groups, dtype=np.int64)
        np.maximum.at(n_units, gid, unit + 1)
        for n in sorted(set(n_units[n_units >= 2].tolist())):
            members = np.flatnonzero(n_units == n)
            pos = np.full(n_groups, -1)
            pos[members] = np.arange(len(members))
            take = pos[gid] >= 0
            sums = np.zeros((len(members), n))
            counts = np.zeros((len(members), n))
            np.add.at(sums, (pos[gid[take]], unit[take]), values[take])
            np.add.at(counts, (pos[gid[take]], unit[take]), 1.0)
            reps = pooled_mean_replicates(sums, counts, resample_weights(n, n_boot, seed))
            lo[members], hi[members] = percentile_interval(reps, ci)

    out = index.reset_index()
    out = out[["knob", "temperature", "density", "metric", "layer", "layer_index"]].copy()
    out["layer_index"] = out["layer_index"].astype(np.int64)
    out["value"] = mean
    out["lo"] = lo
    out["hi"] = hi
    out["n"] = n_units
    out = out.sort_values(["knob", "metric", "density", "temperature", "layer_index"],
                          kind="mergesort")
    return out.reset_index(drop=True)[_PROFILE_COLUMNS]
