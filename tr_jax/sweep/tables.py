"""The sweep's tables: ``results.csv`` (tidy, one row per member or pair and metric) and
``cells.csv`` (one row per cell, from :func:`tr_jax.regimes.cells_from_results`, the one home of
the cell aggregation).

Built from small host arrays only (per-member and per-pair metrics), never from weights.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pandas as pd

from tr_jax import __version__, measures, regimes
from tr_jax.sweep.grid import Grid
from tr_jax.members import resolve as mem_strategy


def provenance(strategy: str) -> dict[str, str]:
    """How a number was made: tr_jax and jax versions, the device kind and the members strategy
    (a column of results.csv and cells.csv each, next to the config hash)."""
    return {"tr_jax_version": __version__, "jax_version": jax.__version__,
            "device_kind": jax.devices()[0].device_kind, "members_strategy": mem_strategy(strategy)}


def sick_members(grid: Grid, dense: dict, retrained: dict) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """Diverged members: (dense [S, T], retrain [M], pair [P]) booleans. A dense checkpoint is
    sick when a weight or BN statistic is NaN/inf; a retrained member when its own are (the
    ``healthy`` flags computed on device after retraining), when a test error of it is not
    finite, or when its dense checkpoint is sick; a pair when either member is."""
    S, T, _, _ = grid.shape
    dense_ok = np.ones((S, T), bool)
    for x in jax.tree.leaves(dense["variables"]):
        x = np.asarray(x)
        dense_ok &= np.isfinite(x.reshape(S, T, -1)).all(axis=-1)
    dense_sick = ~(dense_ok & np.isfinite(np.asarray(dense["test_error"])).reshape(S, T))
    M = grid.num_members
    te = np.asarray(retrained["test_error"]).reshape(M, -1)
    sick = ~(np.asarray(retrained["healthy"], bool)[:M] & np.isfinite(te).all(axis=1))
    sick |= np.repeat(dense_sick.reshape(-1), M // (S * T))  # members are (s, t, d, r)-major
    pairs = grid.pairs_array()
    return dense_sick, sick, sick[pairs[:, 0]] | sick[pairs[:, 1]]


def layers_key(measure: str) -> str:
    """The key under which a measure group's arrays carry a measure's layer names."""
    return f"{measure}.layers"


def _measured_metrics(measured: dict[str, dict], unit: str) -> list[tuple[str, np.ndarray]]:
    """(metric name, values [items]) of every registered metric of ``unit`` whose measure's group
    is in ``measured`` (group -> arrays), in the registry's metric order; a per-layer metric
    (``Metric.layers``) gives one ``{name}@{layer}`` per layer, in network order."""
    out = []
    for m, x in measures.metrics(unit):
        arrays = measured.get(m.group, {})
        if x.key not in arrays:
            continue
        v = np.asarray(arrays[x.key])
        if not x.layers:
            out.append((x.name, v))
            continue
        names = arrays[layers_key(m.name)]
        if v.shape[1:] != (len(names),):
            raise ValueError(f"metric {x.name!r}: values of shape {v.shape} for {len(names)} "
                             "layers")
        out += [(f"{x.name}@{layer}", v[:, j]) for j, layer in enumerate(names)]
    return out


def results_table(grid: Grid, base: dict[str, Any], dense: dict, retrained: dict,
                  measured: dict[str, dict]) -> pd.DataFrame:
    """results.csv: one row per dense checkpoint, retrained member and pair, per metric, with every
    coordinate a column, a ``sick`` flag and ``base`` (config hash, provenance, knob).
    ``measured``: the arrays of each measure group that ran (``{group: {key: array}}``); the
    rows of each registered metric follow the registry (:mod:`tr_jax.measures`)."""
    dense_sick, sick, pair_sick = sick_members(grid, dense, retrained)
    rows = []
    for si, s in enumerate(grid.dense_seeds):
        for ti, t in enumerate(grid.temperatures):
            rows.append({**base, "stage": "dense", "temperature": t, "dense_seed": s,
                         "density": 1.0, "retrain_seed": np.nan, "pair": "",
                         "metric": "test_error", "value": float(dense["test_error"][si, ti]),
                         "sick": bool(dense_sick[si, ti])})
    mem = grid.members()
    per_member = _measured_metrics(measured, "member")
    for i, (s, t, d, r) in enumerate(mem):
        coords = {**base, "stage": "retrain", "temperature": t, "dense_seed": s, "density": d,
                  "retrain_seed": r, "pair": "", "sick": bool(sick[i])}
        rows.append({**coords, "metric": "test_error",
                     "value": float(np.mean(retrained["test_error"][i]))})
        rows.append({**coords, "metric": "measured_density",
                     "value": float(retrained["density"][i])})
        rows += [{**coords, "metric": name, "value": float(v[i])} for name, v in per_member]
    per_pair = _measured_metrics(measured, "pair")
    for p, (a, b) in enumerate(grid.pairs()):
        s, t, d, ra = mem[a]
        rb = mem[b][3]
        coords = {**base, "stage": "pair", "temperature": t, "dense_seed": s, "density": d,
                  "retrain_seed": np.nan, "pair": f"{ra}-{rb}", "sick": bool(pair_sick[p])}
        rows += [{**coords, "metric": name, "value": float(v[p])} for name, v in per_pair]
    return pd.DataFrame(rows)


def cells_table(results: pd.DataFrame, rule: dict | None = None) -> pd.DataFrame:
    """cells.csv from results.csv: :func:`tr_jax.regimes.cells_from_results` (the one home of the
    cell aggregation: means over the healthy members and pairs, bootstrap intervals, regime and
    its confidence, advice, ``sick_members``, provenance)."""
    return regimes.cells_from_results(results, rule)
