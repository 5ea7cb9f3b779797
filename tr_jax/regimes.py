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
    out = pd.Series([None] * len(cells), index=cells.index, dtype=object, name="regime")
    if len(cells) == 0:
        return out
    # positional work avoids trouble with duplicate index labels
    frame = cells.reset_index(drop=True)
    labels: list[str | None] = [None] * len(frame)
    for (knob, _density), col in frame.groupby(["knob", "density"], sort=False, dropna=False):
        col = _column_hot_to_cold(col, knob, hotter_is_smaller)
        lmc = col["lmc"].to_numpy(dtype=float)
        cka = col["cka"].to_numpy(dtype=float)
        finite_lmc = np.isfinite(lmc)
        is_one = finite_lmc & (lmc < rule.lmc_threshold)
        if rule.use_jump:
            jump = _largest_drop(lmc)
            if jump is not None and jump[2] > rule.jump_threshold:
                colder = np.zeros(len(lmc), dtype=bool)
                colder[jump[1]:] = True
                is_one |= colder & finite_lmc & (lmc < rule.jump_lmc_ceiling)
        connected = finite_lmc & ~is_one & np.isfinite(cka)
        if rule.cka_mode == "relative":
            ref = (np.max(cka[connected]) - rule.cka_delta) if connected.any() else np.inf
        else:
            ref = rule.cka_threshold
        high = cka >= ref - _TOL
        for i, row_pos in enumerate(col.index):
            if is_one[i]:
                labels[row_pos] = "I"
            elif connected[i]:
                labels[row_pos] = "II-B" if high[i] else "II-A"
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
