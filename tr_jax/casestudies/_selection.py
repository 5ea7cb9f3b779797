"""Case study 2 (SPEC §3.4): which dense model of a family to prune; regret against the
baselines with bootstrap intervals."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from tr_jax import stats
from tr_jax.regimes import (coerce_rule)
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
                 hotter_is_smaller: HotterLike = None, seed: int | None = None) -> Selection:
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
    knob, d, col = _column(cells, density, knob, rule, hotter_is_smaller, "select_model")
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
            for s in selectors:
                sel = select_model(sub, d, by=s, knob=kn, **kwargs)
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


def selector_summary(table: pd.DataFrame, *, baselines: Iterable[str] = BASELINES,
                     n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Per ``(knob, selector)`` of a :func:`compare_selectors` table: ``mean_regret``,
    ``max_regret``, ``n`` (densities with a finite regret), ``n_zero_regret`` (regret <= 1e-12),
    in the order the selectors appear; then the intervals.

    ``mean_regret_lo, mean_regret_hi``: bootstrap ``ci`` interval of the mean regret over the
    densities (the densities are the resampled units: a cells table holds means, so the noise
    between dense seeds enters only through them). For every baseline ``b`` present in the table
    (``most_trained``, ``best_dense``, ``random``): ``vs_{b}`` the mean over densities of
    ``regret(selector) - regret(b)`` (paired; negative = the selector beats the baseline) with
    ``vs_{b}_lo, vs_{b}_hi``. A selector beats a baseline when ``vs_{b}_hi < 0``.
    """
    _check_table(table, "selector_summary", ("knob", "selector", "regret"))
    base = [b for b in baselines if b in set(table["selector"])]
    rows = []
    for (kn, s), g in table.groupby(["knob", "selector"], sort=False):
        r = g["regret"].to_numpy(dtype=float)
        r = r[np.isfinite(r)]
        mean, lo, hi = stats.bootstrap_mean(r, n_boot, seed, ci)
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
        rows.append(row)
    cols = ["knob", "selector", "mean_regret", "max_regret", "n", "n_zero_regret",
            "mean_regret_lo", "mean_regret_hi"]
    cols += [f"vs_{b}{x}" for b in base for x in ("", "_lo", "_hi")]
    return pd.DataFrame(rows, columns=cols)


