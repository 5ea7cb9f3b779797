"""Case study 2 (docs/fidelity.md, Case studies): which dense model of a family to prune; regret against the
baselines with bootstrap intervals (over dense seeds when the runs are given, as every other
interval of tr_jax; over densities otherwise)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from tr_jax import stats
from tr_jax.regimes import (coerce_rule, prepare_results)
from ._common import (HotterLike, RuleLike, SELECTORS, _CONNECTED, _MATCH, _check_table, _column,
                      _fmt_list, _knobs, _regret, _resolve_knob)

# ---------------------------------------------------------------------------------------------
# Case study 2: which model of the family to prune?
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Selection:
    """Outcome of :func:`select_model` at one density.

    ``chosen`` is the chosen member (its ``key`` value, a temperature by default; None when no
    choice is possible, and for the ``"random"`` selector without a seed), ``test_error`` its
    pruned test error (``"random"`` without a seed: the mean over candidates), ``oracle`` /
    ``oracle_test_error`` the best candidate in hindsight, ``regret = test_error -
    oracle_test_error`` (NaN when undefined), ``candidates`` / ``connected`` the members
    considered / judged connected (hot -> cold), ``note`` any fallback taken.
    """

    knob: str
    density: float
    selector: str
    chosen: Any
    test_error: float
    oracle: Any
    oracle_test_error: float
    regret: float
    candidates: tuple
    connected: tuple
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _member(x: Any) -> Any:
    if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool):
        return float(x)
    return x


def _candidates(col: pd.DataFrame, candidates: Iterable[Any] | None, key: str,
                what: str) -> pd.DataFrame:
    if key not in col.columns:
        raise ValueError(f"{what}: key column {key!r} not in the cells table "
                         f"(has {list(col.columns)})")
    members = [_member(v) for v in col[key]]
    if len(set(members)) != len(members):
        raise ValueError(f"{what}: key column {key!r} is not unique within the density column")
    if candidates is None:
        return col
    wanted = list(candidates)
    if not wanted:
        raise ValueError(f"{what}: candidates is empty")
    pos = []
    for c in wanted:
        c = _member(c)
        hits = [i for i, m in enumerate(members)
                if (m == c) or (isinstance(m, float) and isinstance(c, float) and abs(m - c) <= _MATCH)]
        if not hits:
            shown = _fmt_list(members) if all(isinstance(m, float) for m in members) else members
            raise ValueError(f"{what}: candidate {c!r} not in column {key!r} at this density "
                             f"(available: {shown})")
        pos.append(hits[0])
    return col.iloc[sorted(set(pos))]


def _connected(cand: pd.DataFrame, connected: str, lmc_tolerance: float,
               lmc_threshold: float) -> tuple[np.ndarray, str]:
    lmc = cand["lmc"].to_numpy(dtype=float)
    fin = np.isfinite(lmc)

    def by_tolerance() -> np.ndarray:
        return fin & (lmc >= np.max(lmc[fin]) - lmc_tolerance) if fin.any() else fin

    if connected == "rule":
        mask = np.asarray([r in ("II-A", "II-B") for r in cand["regime"]], dtype=bool)
        if not mask.any() and fin.any():
            return by_tolerance(), "no candidate connected by the rule: used the LMC tolerance"
        return mask, ""
    if connected == "tolerance":
        return by_tolerance(), ""
    with np.errstate(invalid="ignore"):
        return fin & (lmc > lmc_threshold), ""


def _argbest(values: np.ndarray, mask: np.ndarray, largest: bool) -> int | None:
    """Position of the best finite value under ``mask``; first (hottest) on ties."""
    ok = mask & np.isfinite(values)
    if not ok.any():
        return None
    v = np.where(ok, values if largest else -values, -np.inf)
    return int(np.argmax(v))


def select_model(cells: pd.DataFrame, density: float, *, by: str = "lmc_cka",
                 candidates: Iterable[Any] | None = None, connected: str = "rule",
                 lmc_tolerance: float = 0.05, lmc_threshold: float = -0.1, rule: RuleLike = None,
                 knob: str | None = None, key: str = "temperature",
                 hotter_is_smaller: HotterLike = None, seed: int | None = None,
                 _prepared: tuple | None = None) -> Selection:
    """Case study 2: choose the dense model of a family to prune to ``density``.

    ``by`` is one of :data:`SELECTORS`; the selectors, the meaning of ``connected`` and the
    regret are described in the module docstring. ``candidates``: a subset of the values of
    column ``key`` (default: temperatures) at this density; unknown values raise
    ``ValueError``. No selector reads the pruned ``test_error``; it is only the judge.
    """
    if by not in SELECTORS:
        raise ValueError(f"select_model: unknown selector {by!r}; expected one of {SELECTORS}")
    if connected not in _CONNECTED:
        raise ValueError(f"select_model: unknown connected={connected!r}; expected one of "
                         f"{_CONNECTED}")
    for name, v in (("lmc_tolerance", lmc_tolerance), ("lmc_threshold", lmc_threshold)):
        if not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise ValueError(f"select_model: {name} must be a finite number, got {v!r}")
    rule = coerce_rule(rule)
    # _prepared: the column as _column returns it, when the caller (compare_selectors) already
    # built it for this (knob, density) with the same rule and orientation
    knob, d, col = _prepared or _column(cells, density, knob, rule, hotter_is_smaller,
                                        "select_model")
    cand = _candidates(col, candidates, key, "select_model")
    members = tuple(_member(v) for v in cand[key])
    err = cand["test_error"].to_numpy(dtype=float)
    o = _argbest(err, np.ones(len(cand), bool), largest=False)
    oracle = members[o] if o is not None else None
    oracle_err = float(err[o]) if o is not None else float("nan")
    mask, note = _connected(cand, connected, lmc_tolerance, lmc_threshold)
    conn = tuple(m for m, k in zip(members, mask) if k)
    pick: int | None = None
    chosen_err = float("nan")
    chosen: Any = None
    if by == "lmc_cka":
        pick = _argbest(cand["cka"].to_numpy(dtype=float), mask, largest=True)
    elif by == "lmc_error":
        pick = _argbest(cand["dense_test_error"].to_numpy(dtype=float), mask, largest=False)
    elif by == "most_trained":
        pick = len(cand) - 1 if len(cand) else None
    elif by == "best_dense":
        pick = _argbest(cand["dense_test_error"].to_numpy(dtype=float), np.ones(len(cand), bool),
                        largest=False)
    elif seed is not None:  # random, one seeded draw
        pick = int(np.random.default_rng(seed).integers(len(cand))) if len(cand) else None
    else:  # random, expected over a uniform draw (candidates with a finite judge)
        fin = np.isfinite(err)
        chosen_err = float(err[fin].mean()) if fin.any() else float("nan")
        note = (note + "; " if note else "") + "expected over a uniform draw"
    if pick is not None:
        chosen = members[pick]
        chosen_err = float(err[pick])
    elif by != "random":
        note = (note + "; " if note else "") + "no candidate has the metrics this selector needs"
    regret = _regret(chosen_err, oracle_err)
    return Selection(knob=knob, density=d, selector=by, chosen=chosen, test_error=chosen_err,
                     oracle=oracle, oracle_test_error=oracle_err, regret=regret,
                     candidates=members, connected=conn, note=note)


def compare_selectors(cells: pd.DataFrame, densities: Iterable[float] | None = None,
                      selectors: Iterable[str] = SELECTORS, *, knob: str | None = None,
                      **kwargs: Any) -> pd.DataFrame:
    """Run :func:`select_model` for every ``(knob, density, selector)``.

    ``densities`` default: every density of the knob; ``knob=None``: every knob of the table
    (``densities`` must then exist for each). ``kwargs`` go to :func:`select_model`. Rows:
    ``knob, density, selector, chosen, test_error, oracle, oracle_test_error, regret,
    n_candidates, n_connected, note``. Per-selector means: :func:`selector_summary`.
    """
    _check_table(cells, "compare_selectors")
    selectors = tuple(selectors)
    for s in selectors:
        if s not in SELECTORS:
            raise ValueError(f"compare_selectors: unknown selector {s!r}; expected one of {SELECTORS}")
    if "by" in kwargs:
        raise ValueError("compare_selectors: pass selectors=, not by=")
    knobs = [_resolve_knob(cells, knob, "compare_selectors")] if knob is not None else _knobs(cells)
    rows = []
    for kn in knobs:
        sub = cells[cells["knob"].astype(str) == kn]
        dens = sorted({float(x) for x in sub["density"]}) if densities is None else list(densities)
        for d in dens:
            # the column (and its regimes) once per density, shared by the selectors
            prepared = _column(sub, d, kn, coerce_rule(kwargs.get("rule")),
                               kwargs.get("hotter_is_smaller"), "select_model")
            for s in selectors:
                sel = select_model(sub, d, by=s, knob=kn, _prepared=prepared, **kwargs)
                rows.append(dict(knob=kn, density=sel.density, selector=s, chosen=sel.chosen,
                                 test_error=sel.test_error, oracle=sel.oracle,
                                 oracle_test_error=sel.oracle_test_error, regret=sel.regret,
                                 n_candidates=len(sel.candidates), n_connected=len(sel.connected),
                                 note=sel.note))
    columns = ["knob", "density", "selector", "chosen", "test_error", "oracle",
               "oracle_test_error", "regret", "n_candidates", "n_connected", "note"]
    return pd.DataFrame(rows, columns=columns)


#: the naive choices a selector must beat (case study 2)
BASELINES: tuple[str, ...] = ("most_trained", "best_dense", "random")


def _seed_cells(results: pd.DataFrame) -> tuple[pd.DataFrame, dict, dict, list]:
    """Per cell ``(knob, temperature, density)`` and dense seed, the sum and count of the healthy
    values of the metrics the selectors and the judge read (``test_error`` of the retrained
    members, ``lmc``/``cka`` of the pairs, the seed's ``dense_test_error`` at that
    temperature): ``(keys, sums, counts, seeds)``, ``sums[m]`` of shape ``[cells, seeds]``."""
    res = prepare_results(results, "selector_summary")
    res = res[~res["sick"] & np.isfinite(res["value"])]
    seeds = sorted(pd.unique(res["dense_seed"].dropna()), key=str)
    cell_rows = res[res["stage"] != "dense"]
    keys = (cell_rows[["knob", "temperature", "density"]].drop_duplicates()
            .sort_values(["knob", "temperature", "density"], kind="mergesort")
            .reset_index(drop=True))
    seed_index = pd.Index(seeds)
    sums, counts = {}, {}

    def add(rows: pd.DataFrame, cell: np.ndarray, m: str) -> None:
        u = seed_index.get_indexer(rows["dense_seed"])
        ok = (cell >= 0) & (u >= 0)
        sums[m] = np.zeros((len(keys), len(seeds)))
        counts[m] = np.zeros((len(keys), len(seeds)))
        np.add.at(sums[m], (cell[ok], u[ok]), rows["value"].to_numpy(float)[ok])
        np.add.at(counts[m], (cell[ok], u[ok]), 1.0)

    index = pd.MultiIndex.from_frame(keys)
    for m, stage in (("test_error", "retrain"), ("lmc", "pair"), ("cka", "pair")):
        rows = cell_rows[(cell_rows["stage"] == stage) & (cell_rows["metric"] == m)]
        add(rows, index.get_indexer(pd.MultiIndex.from_frame(
            rows[["knob", "temperature", "density"]])), m)
    dense = res[(res["stage"] == "dense") & (res["metric"] == "test_error")]
    # a dense row belongs to every density cell of its (knob, temperature)
    kt = pd.MultiIndex.from_frame(keys[["knob", "temperature"]])
    rows, cells = [], []
    for i, key in enumerate(kt):
        hit = dense[(dense["knob"] == key[0]) & (dense["temperature"] == key[1])]
        rows.append(hit)
        cells.append(np.full(len(hit), i))
    if rows:
        add(pd.concat(rows), np.concatenate(cells).astype(int), "dense_test_error")
    return keys, sums, counts, seeds


def _seed_replicates(table: pd.DataFrame, results: pd.DataFrame, baselines: list[str],
                     n_boot: int, seed: int, rule: RuleLike, options: dict) -> dict:
    """Bootstrap over dense seeds: every replicate redraws the seeds (the same draw for every
    cell), rebuilds the pooled cell means, reruns the selectors and the judge on them, and
    averages the regrets over the table's densities. Returns ``{(knob, selector): {"mean":
    [n_boot], "vs_b": [n_boot], ...}}``. Draws with the same multiplicities share one rerun."""
    keys, sums, counts, seeds = _seed_cells(results)
    weights = stats.resample_weights(len(seeds), n_boot, seed)
    selectors = list(dict.fromkeys(table["selector"]))
    dens_of = {kn: sorted({float(d) for d in g["density"]})
               for kn, g in table.groupby("knob", sort=False)}
    out: dict = {(kn, s): {} for kn, s in table[["knob", "selector"]].drop_duplicates()
                 .itertuples(index=False)}
    memo: dict = {}
    for w in weights:
        key = tuple(int(x) for x in w)
        if key not in memo:
            cells = keys.copy()
            for m in sums:
                den = counts[m] @ w
                with np.errstate(invalid="ignore", divide="ignore"):
                    cells[m] = np.where(den > 0, (sums[m] @ w) / np.where(den > 0, den, 1), np.nan)
            got = {}
            for kn, dens in dens_of.items():
                sub = cells[cells["knob"].astype(str) == str(kn)]
                cmp_ = compare_selectors(sub, dens, selectors, knob=str(kn), rule=rule, **options)
                got[kn] = (cmp_.set_index(["density", "selector"])["regret"].astype(float)
                           .unstack("selector").reindex(columns=selectors))
            memo[key] = got
        for (kn, s), acc in out.items():
            wide = memo[key][kn]
            mine = wide[s].to_numpy(float)
            with np.errstate(invalid="ignore"):
                acc.setdefault("mean", []).append(np.nanmean(mine) if np.isfinite(mine).any()
                                                  else np.nan)
                for bl in baselines:
                    diff = mine - wide[bl].to_numpy(float)
                    acc.setdefault(f"vs_{bl}", []).append(
                        np.nanmean(diff) if np.isfinite(diff).any() else np.nan)
    return out


def _interval_unit(table: pd.DataFrame, results: pd.DataFrame | None) -> tuple[str, str]:
    """``("dense_seed", "")`` when the runs allow a bootstrap over dense seeds, else
    ``("density", reason)``."""
    if results is None:
        return "density", ("no results table given: the densities are resampled (a cells table "
                           "holds means over dense seeds)")
    if "dense_seed" not in results.columns:
        return "density", "the results table has no dense_seed column: the densities are resampled"
    n = len(pd.unique(results["dense_seed"].dropna()))
    if n < 2:
        return "density", (f"{n} dense seed(s) in the results: nothing to resample at that level, "
                           f"the densities are resampled")
    missing = sorted({str(k) for k in table["knob"]} - {str(k) for k in results["knob"]})
    if missing:
        return "density", (f"knob(s) {missing} not in the results table: the densities are "
                           f"resampled")
    return "dense_seed", ""


def selector_summary(table: pd.DataFrame, *, baselines: Iterable[str] = BASELINES,
                     n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                     results: pd.DataFrame | None = None, rule: RuleLike = None,
                     select_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Per ``(knob, selector)`` of a :func:`compare_selectors` table: ``mean_regret``,
    ``max_regret``, ``n`` (densities with a finite regret), ``n_zero_regret`` (regret <= 1e-12),
    in the order the selectors appear; then the intervals.

    ``mean_regret_lo, mean_regret_hi``: bootstrap ``ci`` interval of the mean regret over the
    densities. For every baseline ``b`` present in the table (``most_trained``, ``best_dense``,
    ``random``): ``vs_{b}`` the mean over densities of ``regret(selector) - regret(b)``
    (paired; negative = the selector beats the baseline) with ``vs_{b}_lo, vs_{b}_hi``. A
    selector beats a baseline when ``vs_{b}_hi < 0``.

    What the bootstrap resamples (``unit``; ``unit_note`` says why when it falls back):

    * ``"dense_seed"`` when ``results`` (results.csv of the sweep, long format) holds >= 2
      dense seeds: every replicate draws the dense seeds with replacement, rebuilds the cells'
      pooled means (test error, LMC, CKA, dense test error), reruns the selectors and the judge
      and averages over the densities -- the same unit as every other interval of tr_jax
      (:mod:`tr_jax.stats`). ``rule`` and ``select_options`` (keyword arguments of
      :func:`select_model`, e.g. ``connected``) must be those ``table`` was made with. The
      point values stay those of ``table``. Cost: one :func:`compare_selectors` per distinct
      draw (3 seeds have 10, 10 seeds about ``n_boot``).
    * ``"density"`` otherwise (no results, one dense seed): the densities are resampled, which
      treats them as independent and leaves the seed-to-seed noise out.
    """
    _check_table(table, "selector_summary", ("knob", "selector", "regret"))
    base = [b for b in baselines if b in set(table["selector"])]
    unit, note = _interval_unit(table, results)
    reps = (_seed_replicates(table, results, base, int(n_boot), seed, rule,
                             dict(select_options or {})) if unit == "dense_seed" else None)
    rows = []
    for (kn, s), g in table.groupby(["knob", "selector"], sort=False):
        r = g["regret"].to_numpy(dtype=float)
        r = r[np.isfinite(r)]
        mean, lo, hi = stats.bootstrap_mean(r, n_boot, seed, ci)
        if reps is not None:
            lo, hi = (float(x) for x in stats.percentile_interval(
                np.asarray(reps[(kn, s)]["mean"], float), ci))
        row = dict(knob=kn, selector=s, mean_regret=mean,
                   max_regret=float(r.max()) if r.size else np.nan, n=int(r.size),
                   n_zero_regret=int((r <= 1e-12).sum()), mean_regret_lo=lo, mean_regret_hi=hi)
        mine = g.set_index("density")["regret"].astype(float)
        for b in base:
            theirs = table[(table["knob"] == kn) & (table["selector"] == b)]
            theirs = theirs.set_index("density")["regret"].astype(float)
            diff = (mine - theirs.reindex(mine.index)).to_numpy()
            row[f"vs_{b}"], row[f"vs_{b}_lo"], row[f"vs_{b}_hi"] = stats.bootstrap_mean(
                diff, n_boot, seed, ci)
            if reps is not None:
                row[f"vs_{b}_lo"], row[f"vs_{b}_hi"] = (float(x) for x in stats.percentile_interval(
                    np.asarray(reps[(kn, s)][f"vs_{b}"], float), ci))
        row["unit"], row["unit_note"] = unit, note
        rows.append(row)
    cols = ["knob", "selector", "mean_regret", "max_regret", "n", "n_zero_regret",
            "mean_regret_lo", "mean_regret_hi"]
    cols += [f"vs_{b}{x}" for b in base for x in ("", "_lo", "_hi")]
    return pd.DataFrame(rows, columns=cols + ["unit", "unit_note"])


