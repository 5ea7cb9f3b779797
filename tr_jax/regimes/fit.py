"""Fitting the rule's thresholds to given labels (1-D bounded search; docs/fidelity.md, Regime rule)."""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .rule import (CLASSIFY_COLUMNS, CODE_OF_LABEL, REGIMES, Column, RegimeRule, change_point,
                   coerce_rule, column_codes, density_columns, require_columns)

_MERGE = 1e-9  # breakpoints closer than this are one breakpoint

# ---------------------------------------------------------------------------------------------
# Threshold fitting by 1-D bounded search that maximises agreement with labels, as in the same
# group's later MD-tree diagnosis work (docs/fidelity.md, Regime rule)
# ---------------------------------------------------------------------------------------------

#: rule fields :func:`fit_rule` can fit, with their default search bounds.
FIT_BOUNDS: dict[str, tuple[float, float]] = {
    "lmc_threshold": (-0.5, 0.0),
    "cka_delta": (0.0, 0.2),
    "cka_threshold": (0.5, 1.0),
    "jump_threshold": (0.0, 1.0),
    "jump_lmc_ceiling": (-0.5, 0.0),
}


@dataclasses.dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit_rule`.

    ``rule`` the fitted :class:`RegimeRule` (fields not in ``params`` are the starting rule's),
    ``agreement`` / ``agreement_before`` the fraction of labelled cells whose :func:`classify`
    label equals the given label with the fitted / the starting rule, ``n_cells`` the number
    of labelled cells, ``fitted`` the fitted values (param -> value), ``rounds`` the number of
    coordinate-wise rounds run.
    """

    rule: RegimeRule
    agreement: float
    agreement_before: float
    n_cells: int
    fitted: dict[str, float]
    rounds: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.to_dict(), "agreement": float(self.agreement),
                "agreement_before": float(self.agreement_before), "n_cells": int(self.n_cells),
                "fitted": {k: float(v) for k, v in self.fitted.items()}, "rounds": int(self.rounds)}


def _is_missing(x: Any) -> bool:
    if x is None or x is pd.NA:
        return True
    try:
        return bool(isinstance(x, (float, np.floating)) and math.isnan(x))
    except TypeError:  # pragma: no cover - exotic scalars
        return False


def _label_codes(cells: pd.DataFrame, labels: Any) -> np.ndarray:
    """Labels (a column name, a Series aligned on ``cells.index`` or a sequence in row order)
    -> int codes in row order; 0 = unlabelled (None/NaN)."""
    if isinstance(labels, str):
        if labels not in cells.columns:
            raise ValueError(f"fit_rule: labels column {labels!r} not in cells "
                             f"(has {list(cells.columns)})")
        values = list(cells[labels])
    elif isinstance(labels, pd.Series):
        if labels.index.has_duplicates or cells.index.has_duplicates:
            if len(labels) != len(cells):
                raise ValueError(f"fit_rule: {len(labels)} labels for {len(cells)} cells")
            values = list(labels)
        else:
            values = list(labels.reindex(cells.index))
    else:
        values = list(labels)
        if len(values) != len(cells):
            raise ValueError(f"fit_rule: {len(values)} labels for {len(cells)} cells")
    codes = np.zeros(len(values), dtype=np.int8)
    for i, v in enumerate(values):
        if _is_missing(v):
            continue
        if v not in CODE_OF_LABEL:
            raise ValueError(f"fit_rule: unknown regime label {v!r}; expected one of {REGIMES} "
                             f"or None")
        codes[i] = CODE_OF_LABEL[v]
    return codes


def _breakpoints(param: str, columns: list[Column]) -> np.ndarray:
    """Every value at which the agreement can change as ``param`` alone moves."""
    if param in ("lmc_threshold", "jump_lmc_ceiling"):  # lmc < t
        vals = [c.lmc for c in columns]
    elif param == "cka_threshold":  # cka >= t
        vals = [c.cka for c in columns]
    elif param == "jump_threshold":  # change-point shift > t
        vals = [np.asarray([j[1]]) for c in columns if (j := change_point(c.lmc)) is not None]
    else:  # cka_delta: cka >= max(connected cka) - delta -> any within-column difference
        vals = [(c.cka[:, None] - c.cka[None, :]).ravel() for c in columns]
    if not vals:
        return np.zeros(0)
    v = np.unique(np.concatenate(vals))
    v = v[np.isfinite(v)]
    if v.size > 1:  # merge float-noise duplicates (e.g. 0.96 - 0.93 vs 0.99 - 0.96)
        v = v[np.concatenate([[True], np.diff(v) > _MERGE])]
    return v


def _agreements(columns: list[Column], truth: np.ndarray, rule: RegimeRule,
                override: Mapping[str, np.ndarray] | None, k: int) -> np.ndarray:
    hits = np.zeros(k, dtype=np.int64)
    for c in columns:
        want = truth[c.pos]
        keep = want > 0
        if not keep.any():
            continue
        codes = column_codes(c.lmc, c.cka, rule, override)
        hits += (codes[:, keep] == want[keep]).sum(axis=1)
    return hits


def fit_rule(cells: pd.DataFrame, labels: Any, *, rule: RegimeRule | Mapping[str, Any] | None = None,
             params: Iterable[str] = ("lmc_threshold", "cka_delta"),
             bounds: Mapping[str, tuple[float, float]] | None = None,
             hotter_is_smaller: bool | Mapping[str, bool] | None = None,
             rounds: int = 3) -> FitResult:
    """Fit thresholds of a :class:`RegimeRule` to given regime labels.

    Maximises the *agreement*: the fraction of labelled cells (``labels`` None/NaN are
    ignored) whose :func:`classify` label equals the given one. ``labels`` is a column name of
    ``cells``, a Series aligned on ``cells.index``, or a sequence in row order.

    Search, as the authors' MD-tree diagnosis work does it: a bounded 1-D search per
    threshold, coordinate-wise (each parameter in turn with the others fixed), for up to
    ``rounds`` rounds or until nothing changes. Agreement is a step function of each
    threshold, so a golden-section / ``minimize_scalar(bounded)`` search stalls on plateaus;
    instead the 1-D search is **exact**: it collects the *breakpoints* (every value where a
    comparison of the rule can flip: the LMC values for ``lmc_threshold`` and
    ``jump_lmc_ceiling``, the CKA values for ``cka_threshold``, the column's change-point shifts
    for ``jump_threshold``, every within-column CKA difference for ``cka_delta``), and scores
    the two bounds plus the midpoint of every interval between consecutive breakpoints inside
    the bounds (plus the current value); every value a threshold can take agrees exactly as
    one of these candidates does. Midpoints keep a fitted threshold away from the data
    values, i.e. inside the gap between the classes.

    Ties (equal agreement) go to the candidate **closest to the starting rule's value** (the
    default :class:`RegimeRule` when ``rule`` is None), then the smaller one, so results are
    deterministic and a parameter already on the best plateau is left untouched.

    ``bounds`` overrides :data:`FIT_BOUNDS` per parameter. Unknown parameter names raise
    ``ValueError`` with a did-you-mean. numpy only (no scipy).
    """
    start = coerce_rule(rule)
    require_columns(cells, CLASSIFY_COLUMNS, "fit_rule")
    if isinstance(params, str):
        params = (params,)
    params = tuple(params)
    bounds = dict(bounds or {})
    for name in list(params) + list(bounds):
        if name not in FIT_BOUNDS:
            close = difflib.get_close_matches(str(name), list(FIT_BOUNDS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"fit_rule: unknown parameter {name!r}{hint} "
                             f"(fittable: {', '.join(FIT_BOUNDS)})")
    if not params:
        raise ValueError("fit_rule: params is empty")
    if int(rounds) < 1:
        raise ValueError(f"fit_rule: rounds must be >= 1, got {rounds!r}")
    lims = {}
    for name in params:
        lo, hi = bounds.get(name, FIT_BOUNDS[name])
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"fit_rule: bounds for {name!r} must be finite with lo <= hi, "
                             f"got {(lo, hi)!r}")
        if name == "cka_delta" and lo < 0:
            raise ValueError(f"fit_rule: cka_delta bounds must be >= 0, got {(lo, hi)!r}")
        lims[name] = (lo, hi)
    truth = _label_codes(cells, labels)
    n = int((truth > 0).sum())
    if n == 0:
        raise ValueError("fit_rule: no labelled cells (all labels are None/NaN)")
    columns = density_columns(cells, hotter_is_smaller)
    current = start
    before = float(_agreements(columns, truth, start, None, 1)[0]) / n
    done = 0
    for _ in range(int(rounds)):
        done += 1
        changed = False
        for name in params:
            lo, hi = lims[name]
            anchor = float(getattr(start, name))
            now = float(getattr(current, name))
            bp = _breakpoints(name, columns)
            grid = np.unique(np.concatenate([[lo, hi], bp[(bp > lo) & (bp < hi)]]))
            # midpoints rounded for clean values: that moves them by < 1e-10, far from any
            # breakpoint (merged breakpoints are > 1e-9 apart); breakpoints themselves are not
            # candidates (a threshold on a data value sits on the edge of its plateau)
            mids = np.round((grid[:-1] + grid[1:]) / 2.0, 10)
            cand = [[lo, hi], mids[(mids >= lo) & (mids <= hi)]]
            if lo <= now <= hi:
                cand.append([now])
            cand = np.unique(np.concatenate(cand))
            score = _agreements(columns, truth, current, {name: cand}, len(cand))
            best = np.flatnonzero(score == score.max())
            # tie-break: closest to the starting value, then the smaller value
            order = np.lexsort((cand[best], np.abs(cand[best] - anchor)))
            pick = float(cand[best[order[0]]])
            now_score = _agreements(columns, truth, current, None, 1)[0]
            outside = not lo <= now <= hi  # a start outside the bounds is always moved in
            if outside or score.max() > now_score or (score.max() == now_score and pick != now
                                                      and abs(pick - anchor) < abs(now - anchor)):
                current = dataclasses.replace(current, **{name: pick})
                changed = True
        if not changed:
            break
    after = float(_agreements(columns, truth, current, None, 1)[0]) / n
    return FitResult(rule=current, agreement=after, agreement_before=before, n_cells=n,
                     fitted={name: float(getattr(current, name)) for name in params}, rounds=done)

