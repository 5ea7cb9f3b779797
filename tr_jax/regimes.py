"""Regime classification of a pruning sweep (paper Figure 1).

A sweep produces a table of *cells*, one per ``(knob, temperature, density)``, as a
:class:`pandas.DataFrame` with at least the columns

``knob``         str, the temperature knob (``"epochs"``, ``"batch_size"``, ``"sam_rho"``, ...)
``temperature``  float, the knob value (for ``"epochs"`` the dense training epoch count)
``density``      float in (0, 1], fraction of surviving conv weights
``test_error``   float, test-error *fraction*
``lmc``          float, linear mode connectivity ``mean(e_endpoints) - e(t*)`` on the
                 *train-error fraction*; negative = barrier = poorly connected, ~0 = connected
``cka``          float in [0, 1], linear CKA of the softmax outputs; higher = more similar

Regimes (Zhou et al., ICML 2023, Figure 1):

* ``"I"``    poorly connected (a loss barrier between retrained models),
* ``"II-A"`` connected but relatively dissimilar (lower CKA),
* ``"II-B"`` connected and similar (high CKA).

At fixed density the favourable moves are I -> II-A by *raising* the temperature and
II-A -> II-B by *lowering* it (see :func:`advice`).

.. important::
   The reference implementation contains **no** classification code: the regimes in the
   paper are drawn by eye on the phase diagrams. The rule implemented here is **tr_jax's
   own** (SPEC section 3.3), documented in :class:`RegimeRule` and fully configurable.
   All LMC thresholds are expressed on the **train-error fraction** (``0.05`` = 5 points of
   train error), the same scale as the ``lmc`` column.

Analysis helpers: :func:`fit_rule` fits the rule's thresholds to given labels (exact 1-D
search per threshold, coordinate-wise); :func:`cells_by_seed` / :func:`cells_from_results`
rebuild per-dense-seed / mean cell tables from ``results.csv``; and
:func:`transition_with_uncertainty` estimates the LMC transition and the best temperature per
dense seed with their seed-to-seed spread. The case studies live in :mod:`tr_jax.casestudies`.

"Hot" and "cold": what "hotter" means depends on the knob. Fewer training epochs, a
smaller batch, a larger SAM radius or a larger learning rate are all *hotter*; see
:data:`HOTTER_IS_SMALLER` and :func:`temperature_order`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

__all__ = [
    "REGIMES",
    "HOTTER_IS_SMALLER",
    "KNOB_LABELS",
    "RegimeRule",
    "temperature_order",
    "temperatures_hot_to_cold",
    "normalized_test_error",
    "classify",
    "transition",
    "advice",
    "summary_table",
    "FIT_BOUNDS",
    "FitResult",
    "fit_rule",
    "cells_by_seed",
    "cells_from_results",
    "transition_with_uncertainty",
]

REGIMES: tuple[str, str, str] = ("I", "II-A", "II-B")

#: knob -> whether a *smaller* knob value means a *hotter* temperature.
HOTTER_IS_SMALLER: dict[str, bool] = {
    "epochs": True,  # fewer dense training epochs = less converged = hotter
    "batch_size": True,  # smaller batch = more SGD noise = hotter
    "sam_rho": False,  # larger SAM radius = hotter
    "lr": False,  # larger learning rate = hotter
    "weight_decay": False,  # larger weight decay = hotter
}

#: human-readable knob names (used in axis labels / tables).
KNOB_LABELS: dict[str, str] = {
    "epochs": "training epochs",
    "batch_size": "batch size",
    "sam_rho": "SAM \u03c1",
    "lr": "learning rate",
    "weight_decay": "weight decay",
}

_CKA_MODES = ("relative", "absolute")
_REQUIRED_CLASSIFY = ("knob", "temperature", "density", "lmc", "cka")
_TOL = 1e-12
_MERGE = 1e-9  # fit_rule: breakpoints closer than this are one breakpoint


@dataclasses.dataclass(frozen=True)
class RegimeRule:
    """tr_jax's own regime rule (the reference code has none; SPEC section 3.3).

    Cells are grouped into *density columns* ``(knob, density)`` and each column is sorted
    from hot to cold. LMC thresholds are on the train-error fraction.

    1. **Regime I** (poorly connected) if ``lmc < lmc_threshold``; or, when ``use_jump``,
       if the cell lies at or beyond (in the cooler direction) the largest adjacent drop
       of LMC in its column, that drop exceeds ``jump_threshold``, and the cell's own
       ``lmc < jump_lmc_ceiling``. The jump test catches a sharp loss of connectivity
       whose absolute level is still above ``lmc_threshold``.
    2. Otherwise (connected): **II-B** if
       ``cka >= max(cka of the connected cells of the column) - cka_delta``
       (``cka_mode="relative"``) or ``cka >= cka_threshold`` (``cka_mode="absolute"``);
       else **II-A**.

    Cells whose ``lmc`` is NaN, and connected cells whose ``cka`` is NaN, get no regime
    (``None``). A cell whose LMC alone places it in Regime I is labelled ``"I"`` even if
    its CKA is NaN.
    """

    lmc_threshold: float = -0.05
    use_jump: bool = True
    jump_threshold: float = 0.1
    jump_lmc_ceiling: float = -0.02
    cka_mode: str = "relative"
    cka_delta: float = 0.005
    cka_threshold: float = 0.95

    def __post_init__(self) -> None:
        if self.cka_mode not in _CKA_MODES:
            raise ValueError(
                f"RegimeRule: unknown cka_mode {self.cka_mode!r}; expected one of {_CKA_MODES}"
            )
        for name in ("lmc_threshold", "jump_threshold", "jump_lmc_ceiling", "cka_delta",
                     "cka_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating,
                                                                 np.integer)):
                raise ValueError(f"RegimeRule: {name} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ValueError(f"RegimeRule: {name} must be finite, got {value!r}")
        if self.cka_delta < 0:
            raise ValueError(f"RegimeRule: cka_delta must be >= 0, got {self.cka_delta!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "RegimeRule":
        """Build a rule from a (config) mapping; unknown keys raise ``ValueError``."""
        if d is None:
            return cls()
        if isinstance(d, RegimeRule):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(f"RegimeRule.from_dict expects a mapping, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"RegimeRule: unknown key {key!r}{hint} (valid keys: {', '.join(names)})"
                )
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce_rule(rule: RegimeRule | Mapping[str, Any] | None) -> RegimeRule:
    if rule is None:
        return RegimeRule()
    if isinstance(rule, RegimeRule):
        return rule
    return RegimeRule.from_dict(rule)


def temperature_order(knob: str, hotter_is_smaller: bool | Mapping[str, bool] | None = None
                      ) -> bool:
    """Return ``ascending`` such that ``sort_values("temperature", ascending=ascending)``
    lists a column from **hot to cold**.

    ``hotter_is_smaller`` overrides :data:`HOTTER_IS_SMALLER`: a bool applies to this
    knob, a mapping is consulted first. An unknown knob without an explicit override
    raises ``ValueError`` naming it.
    """
    if isinstance(hotter_is_smaller, (bool, np.bool_)):
        return bool(hotter_is_smaller)
    if isinstance(hotter_is_smaller, Mapping) and knob in hotter_is_smaller:
        return bool(hotter_is_smaller[knob])
    if hotter_is_smaller is not None and not isinstance(hotter_is_smaller, Mapping):
        raise ValueError(
            f"hotter_is_smaller must be a bool or a mapping, got {type(hotter_is_smaller).__name__}"
        )
    if knob in HOTTER_IS_SMALLER:
        return HOTTER_IS_SMALLER[knob]
    raise ValueError(
        f"unknown temperature knob {knob!r}: don't know whether smaller or larger is hotter; "
        f"known knobs: {sorted(HOTTER_IS_SMALLER)}; pass hotter_is_smaller={{{knob!r}: ...}}"
    )


def temperatures_hot_to_cold(values: Iterable[float], knob: str,
                             hotter_is_smaller: bool | Mapping[str, bool] | None = None
                             ) -> list[float]:
    """Distinct temperature values of ``knob`` sorted from hottest to coldest."""
    uniq = sorted({float(v) for v in values if v is not None and not pd.isna(v)})
    return uniq if temperature_order(knob, hotter_is_smaller) else uniq[::-1]


def _require(cells: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    if not isinstance(cells, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(cells).__name__}")
    missing = [c for c in columns if c not in cells.columns]
    if missing:
        raise ValueError(
            f"{what}: cells table lacks column(s) {missing}; has {list(cells.columns)}")


def _column_keys(cells: pd.DataFrame) -> list[str]:
    return ["knob", "density"] if "knob" in cells.columns else ["density"]


def normalized_test_error(cells: pd.DataFrame) -> pd.Series:
    """``test_error`` minus the minimum ``test_error`` over temperatures of the same
    ``(knob, density)`` column (SPEC: every column has a zero; NaN stays NaN).

    Index-aligned with ``cells``; same units as ``test_error`` (a fraction).
    """
    _require(cells, ("density", "test_error"), "normalized_test_error")
    err = cells["test_error"].astype(float)
    col_min = err.groupby([cells[k] for k in _column_keys(cells)], dropna=False,
                          sort=False).transform("min")
    out = err - col_min
    out.name = "normalized_test_error"
    return out


def _column_hot_to_cold(col: pd.DataFrame, knob: Any,
                        hotter_is_smaller: bool | Mapping[str, bool] | None) -> pd.DataFrame:
    asc = temperature_order(knob, hotter_is_smaller)
    return col.sort_values("temperature", ascending=asc, kind="mergesort")


def _largest_drop(lmc: np.ndarray) -> tuple[int, int, float] | None:
    """Among finite entries (hot -> cold), the adjacent pair with the largest decrease.

    Returns positions ``(hot_pos, cold_pos, drop)`` into ``lmc`` or None if < 2 finite.
    """
    pos = np.flatnonzero(np.isfinite(lmc))
    if pos.size < 2:
        return None
    drops = lmc[pos[:-1]] - lmc[pos[1:]]
    k = int(np.argmax(drops))  # first (hottest) on ties
    return int(pos[k]), int(pos[k + 1]), float(drops[k])


_LABEL_OF_CODE: tuple[str | None, ...] = (None, "I", "II-A", "II-B")
_CODE_OF_LABEL: dict[str, int] = {"I": 1, "II-A": 2, "II-B": 3}


def _column_codes(lmc: np.ndarray, cka: np.ndarray, rule: RegimeRule,
                  override: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Regime codes (0 = none, 1 = I, 2 = II-A, 3 = II-B) of one density column ordered hot ->
    cold, shape ``(K, n)``: the single source of truth of :class:`RegimeRule`.

    ``override`` maps numeric rule fields to arrays of ``K`` candidate values (one rule per
    row); this lets :func:`fit_rule` score thousands of candidate thresholds at once.
    """
    def value(name: str) -> np.ndarray:
        v = override[name] if override is not None and name in override else getattr(rule, name)
        return np.asarray(v, dtype=float).reshape(-1, 1)

    lmc = np.asarray(lmc, dtype=float)
    cka = np.asarray(cka, dtype=float)
    finite_lmc = np.isfinite(lmc)
    with np.errstate(invalid="ignore"):
        is_one = finite_lmc & (lmc < value("lmc_threshold"))
        if rule.use_jump:
            jump = _largest_drop(lmc)
            if jump is not None:
                colder = np.zeros(len(lmc), dtype=bool)
                colder[jump[1]:] = True
                fires = jump[2] > value("jump_threshold")
                is_one = is_one | (fires & colder & finite_lmc & (lmc < value("jump_lmc_ceiling")))
        connected = finite_lmc & ~is_one & np.isfinite(cka)
        if rule.cka_mode == "relative":
            top = np.where(connected, cka, -np.inf).max(axis=1, keepdims=True) if len(lmc) else \
                np.full((connected.shape[0], 1), -np.inf)
            ref = np.where(np.isfinite(top), top - value("cka_delta"), np.inf)
        else:
            ref = value("cka_threshold")
        high = cka >= ref - _TOL
    return np.where(is_one, 1, np.where(connected, np.where(high, 3, 2), 0)).astype(np.int8)


@dataclasses.dataclass(frozen=True)
class _Column:
    knob: Any
    density: float
    pos: np.ndarray  # positions (into cells.reset_index) of the rows, hot -> cold
    temperature: np.ndarray
    lmc: np.ndarray
    cka: np.ndarray


def _density_columns(cells: pd.DataFrame, hotter_is_smaller: bool | Mapping[str, bool] | None
                     ) -> list[_Column]:
    frame = cells.reset_index(drop=True)
    out = []
    for (knob, density), col in frame.groupby(["knob", "density"], sort=False, dropna=False):
        col = _column_hot_to_cold(col, knob, hotter_is_smaller)
        out.append(_Column(knob, float(density), col.index.to_numpy(),
                           col["temperature"].to_numpy(dtype=float),
                           col["lmc"].to_numpy(dtype=float), col["cka"].to_numpy(dtype=float)))
    return out


def classify(cells: pd.DataFrame, rule: RegimeRule | Mapping[str, Any] | None = None, *,
             hotter_is_smaller: bool | Mapping[str, bool] | None = None) -> pd.Series:
    """Label each cell ``"I"``, ``"II-A"``, ``"II-B"`` or ``None`` (missing metrics).

    Implements :class:`RegimeRule` (tr_jax's own rule; the reference has none, SPEC
    section 3.3; LMC thresholds on the train-error fraction). Columns are grouped by
    ``(knob, density)`` and ordered hot -> cold with :func:`temperature_order`.
    Returns an object-dtype Series named ``"regime"``, index-aligned with ``cells``.
    """
    rule = _coerce_rule(rule)
    _require(cells, _REQUIRED_CLASSIFY, "classify")
    labels: list[str | None] = [None] * len(cells)
    # positional work avoids trouble with duplicate index labels
    for col in _density_columns(cells, hotter_is_smaller):
        codes = _column_codes(col.lmc, col.cka, rule)[0]
        for p, c in zip(col.pos, codes):
            labels[p] = _LABEL_OF_CODE[c]
    return pd.Series(labels, index=cells.index, dtype=object, name="regime")


def transition(cells: pd.DataFrame, knob: str | None = None, *,
               hotter_is_smaller: bool | Mapping[str, bool] | None = None) -> pd.DataFrame:
    """Per ``(knob, density)`` column: where LMC drops most and where test error is best.

    Columns of the result: ``knob, density, hot_temperature, cold_temperature, lmc_hot,
    lmc_cold, lmc_drop`` (the adjacent pair, hot side / cold side, with the largest
    *decrease* of LMC going hot -> cold; NaN when fewer than two finite LMC values),
    ``best_temperature`` and ``best_test_error`` (the temperature where the normalized
    test error is 0, i.e. the column minimum; first hot -> cold on ties).
    """
    _require(cells, ("knob", "temperature", "density", "lmc"), "transition")
    if knob is not None:
        if knob not in set(cells["knob"]):
            have = sorted(set(cells["knob"]), key=str)
            raise ValueError(f"transition: knob {knob!r} not in cells (has {have})")
        cells = cells[cells["knob"] == knob]
    rows = []
    for (kn, dens), col in cells.groupby(["knob", "density"], sort=True, dropna=False):
        col = _column_hot_to_cold(col, kn, hotter_is_smaller)
        temps = col["temperature"].to_numpy(dtype=float)
        lmc = col["lmc"].to_numpy(dtype=float)
        row: dict[str, Any] = dict(knob=kn, density=float(dens), hot_temperature=np.nan,
                                   cold_temperature=np.nan, lmc_hot=np.nan, lmc_cold=np.nan,
                                   lmc_drop=np.nan, best_temperature=np.nan,
                                   best_test_error=np.nan)
        jump = _largest_drop(lmc)
        if jump is not None:
            h, c, drop = jump
            row.update(hot_temperature=temps[h], cold_temperature=temps[c], lmc_hot=lmc[h],
                       lmc_cold=lmc[c], lmc_drop=drop)
        if "test_error" in col.columns:
            err = col["test_error"].to_numpy(dtype=float)
            if np.isfinite(err).any():
                b = int(np.nanargmin(err))
                row.update(best_temperature=temps[b], best_test_error=err[b])
        rows.append(row)
    columns = ["knob", "density", "hot_temperature", "cold_temperature", "lmc_hot",
               "lmc_cold", "lmc_drop", "best_temperature", "best_test_error"]
    return pd.DataFrame(rows, columns=columns)


_ADVICE = {"I": "raise temperature", "II-A": "lower temperature", "II-B": "keep"}


def advice(regime: str | None) -> str:
    """Favourable move at fixed density: I -> raise temperature, II-A -> lower temperature,
    II-B -> keep. ``None``/NaN (missing metrics) -> ``"unknown"``; other strings raise."""
    if regime is None or (isinstance(regime, float) and math.isnan(regime)):
        return "unknown"
    try:
        return _ADVICE[regime]
    except KeyError:
        raise ValueError(f"advice: unknown regime {regime!r}; expected one of {REGIMES}") from None


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def _fmt_density(d: float) -> str:
    p = 100.0 * float(d)
    return f"{p:.0f}%" if abs(p - round(p)) < 1e-6 else f"{p:.3g}%"


def summary_table(cells: pd.DataFrame, rule: RegimeRule | Mapping[str, Any] | None = None, *,
                  knob: str | None = None,
                  hotter_is_smaller: bool | Mapping[str, bool] | None = None) -> str:
    """Compact text table per knob: rows = temperature (hot at top), columns = density
    (ascending), entries ``"<regime> <test error %>"`` e.g. ``"II-B 8.1%"``.

    Uses ``cells["regime"]`` when present, otherwise :func:`classify` with ``rule``.
    Missing regimes print as ``"-"``, missing test errors as ``"n/a"``.
    """
    _require(cells, ("knob", "temperature", "density"), "summary_table")
    if knob is not None:
        cells = cells[cells["knob"] == knob]
        if len(cells) == 0:
            raise ValueError(f"summary_table: no cells for knob {knob!r}")
    if "regime" in cells.columns:
        regimes = cells["regime"]
    elif "lmc" in cells.columns and "cka" in cells.columns:
        regimes = classify(cells, rule, hotter_is_smaller=hotter_is_smaller)
    else:
        regimes = pd.Series([None] * len(cells), index=cells.index, dtype=object)
    err = cells["test_error"] if "test_error" in cells.columns else pd.Series(
        np.nan, index=cells.index)
    blocks = []
    for kn in sorted(set(cells["knob"]), key=str):
        sub = cells[cells["knob"] == kn]
        temps = temperatures_hot_to_cold(sub["temperature"], kn, hotter_is_smaller)
        dens = sorted({float(d) for d in sub["density"]})
        entry: dict[tuple[float, float], str] = {}
        for idx, t, d in zip(sub.index, sub["temperature"], sub["density"]):
            r = regimes.loc[idx]
            r = "-" if r is None or (isinstance(r, float) and math.isnan(r)) else str(r)
            e = err.loc[idx]
            e = "n/a" if pd.isna(e) else f"{100.0 * float(e):.1f}%"
            entry[(float(t), float(d))] = f"{r} {e}"
        label = KNOB_LABELS.get(str(kn), str(kn))
        corner = f"T ({label})"
        header = [corner] + [_fmt_density(d) for d in dens]
        body = [[_fmt_num(t)] + [entry.get((t, d), "") for d in dens] for t in temps]
        widths = [max(len(r[j]) for r in [header] + body) for j in range(len(header))]

        def line(r: list[str], widths: list[int] = widths) -> str:
            return "  ".join(c.rjust(w) if j else c.ljust(w)
                             for j, (c, w) in enumerate(zip(r, widths))).rstrip()

        title = f"knob={kn}: rows hot (top) -> cold, columns density; entry = regime + test error"
        rule_line = "-" * max(len(title), len(line(header)))
        blocks.append("\n".join([title, line(header), rule_line] + [line(r) for r in body]))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------
# Threshold fitting (SPEC 3.3: "threshold fitting by 1-D bounded search that maximises agreement
# with labels", as in the same group's later MD-tree diagnosis work)
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
        if v not in _CODE_OF_LABEL:
            raise ValueError(f"fit_rule: unknown regime label {v!r}; expected one of {REGIMES} "
                             f"or None")
        codes[i] = _CODE_OF_LABEL[v]
    return codes


def _breakpoints(param: str, columns: list[_Column]) -> np.ndarray:
    """Every value at which the agreement can change as ``param`` alone moves."""
    if param in ("lmc_threshold", "jump_lmc_ceiling"):  # lmc < t
        vals = [c.lmc for c in columns]
    elif param == "cka_threshold":  # cka >= t
        vals = [c.cka for c in columns]
    elif param == "jump_threshold":  # largest drop > t
        vals = [np.asarray([j[2]]) for c in columns if (j := _largest_drop(c.lmc)) is not None]
    else:  # cka_delta: cka >= max(connected cka) - delta -> any within-column difference
        vals = [(c.cka[:, None] - c.cka[None, :]).ravel() for c in columns]
    if not vals:
        return np.zeros(0)
    v = np.unique(np.concatenate(vals))
    v = v[np.isfinite(v)]
    if v.size > 1:  # merge float-noise duplicates (e.g. 0.96 - 0.93 vs 0.99 - 0.96)
        v = v[np.concatenate([[True], np.diff(v) > _MERGE])]
    return v


def _agreements(columns: list[_Column], truth: np.ndarray, rule: RegimeRule,
                override: Mapping[str, np.ndarray] | None, k: int) -> np.ndarray:
    hits = np.zeros(k, dtype=np.int64)
    for c in columns:
        want = truth[c.pos]
        keep = want > 0
        if not keep.any():
            continue
        codes = _column_codes(c.lmc, c.cka, rule, override)
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
    ``jump_lmc_ceiling``, the CKA values for ``cka_threshold``, the column's largest LMC drops
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
    start = _coerce_rule(rule)
    _require(cells, _REQUIRED_CLASSIFY, "fit_rule")
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
    columns = _density_columns(cells, hotter_is_smaller)
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


# ---------------------------------------------------------------------------------------------
# Per-seed cells from results.csv, and the transition with its seed-to-seed uncertainty
# ---------------------------------------------------------------------------------------------

_CELL_METRICS = ("test_error", "lmc", "cka", "cka_logits", "loss_barrier")
_CELL_OPTIONAL = ("bezier_mc", "hessian_trace", "hessian_top_eigenvalue")
_RESULTS_REQUIRED = ("knob", "stage", "temperature", "density", "dense_seed", "metric", "value")


def _is_long(table: pd.DataFrame) -> bool:
    return isinstance(table, pd.DataFrame) and {"metric", "value"} <= set(table.columns)


def _wide_from_results(results: pd.DataFrame, keys: list[str], what: str) -> pd.DataFrame:
    _require(results, _RESULTS_REQUIRED, what)
    res = results.copy()
    res["value"] = pd.to_numeric(res["value"], errors="coerce")
    if "sick" in res.columns:  # diverged members are left out of the means, as the sweep does
        sick = res["sick"].astype(str).str.lower().isin(("true", "1", "1.0"))
        res.loc[sick, "value"] = np.nan
    for k in ("temperature", "density"):
        res[k] = res[k].astype(float)
    stage = res["stage"].astype(str)
    bad = sorted(set(stage) - {"dense", "retrain", "pair"})
    if bad:
        raise ValueError(f"{what}: unknown stage value(s) {bad}; expected 'dense', 'retrain', 'pair'")
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
    for m in _CELL_METRICS + ("dense_test_error",):
        if m not in wide.columns:
            wide[m] = np.nan
    metrics = [m for m in wide.columns if m not in keys]
    first = list(_CELL_METRICS) + ["dense_test_error"] + [m for m in _CELL_OPTIONAL if m in metrics]
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


def cells_from_results(results: pd.DataFrame) -> pd.DataFrame:
    """The numeric columns of ``cells.csv`` rebuilt from ``results.csv``.

    Same aggregation as the sweep: per ``(knob, temperature, density)`` the mean of every
    ``retrain``/``pair`` row of a metric (over dense seeds and retrain seeds/pairs together),
    ``dense_test_error`` the mean of the ``dense`` rows at that temperature, and
    ``normalized_test_error``. Columns: ``knob, temperature, density, test_error, lmc, cka,
    cka_logits, loss_barrier, dense_test_error``, the optional ``bezier_mc, hessian_trace,
    hessian_top_eigenvalue`` when measured, then any other metric (e.g. ``measured_density``)
    and ``normalized_test_error``. No ``regime``/``advice`` columns: apply :func:`classify`.
    Rows flagged ``sick`` (diverged members) are left out of the means, as in the sweep.
    """
    keys = ["knob", "temperature", "density"]
    wide = _wide_from_results(results, keys, "cells_from_results")
    wide["normalized_test_error"] = normalized_test_error(wide)
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
        _require(results, ("knob", "temperature", "density", "lmc"), "transition_with_uncertainty")
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
            one = _column_hot_to_cold(one, kn, hotter_is_smaller)
            temps = one["temperature"].to_numpy(dtype=float)
            lmc = one["lmc"].to_numpy(dtype=float)
            err = one["test_error"].to_numpy(dtype=float)
            jump = _largest_drop(lmc)
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
        mean = _column_hot_to_cold(mean, kn, hotter_is_smaller)
        mtemps = mean["temperature"].to_numpy(dtype=float)
        merr = mean["test_error"].to_numpy(dtype=float)
        mjump = _largest_drop(mean["lmc"].to_numpy(dtype=float))
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
