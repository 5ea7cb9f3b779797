"""The regime rule (docs/fidelity.md, Regimes and Regime rule): temperature order,
:class:`RegimeRule`, :func:`classify`,
:func:`transition` and :func:`advice`. The rule is tr_jax's own (the reference has none)."""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

REGIMES: tuple[str, str, str] = ("I", "II-A", "II-B")

#: The temperature-like knobs, the one list of them: knob -> (human-readable name for axis labels
#: and tables, whether a *smaller* knob value means a *hotter* temperature). ``KNOBS`` (what a
#: config's ``knob`` may be), ``HOTTER_IS_SMALLER`` and ``KNOB_LABELS`` are read from it.
KNOB_TABLE: dict[str, tuple[str, bool]] = {
    "epochs": ("training epochs", True),  # fewer dense training epochs = less converged = hotter
    "batch_size": ("batch size", True),  # smaller batch = more SGD noise = hotter
    "sam_rho": ("SAM \u03c1", False),  # larger SAM radius = hotter
    "lr": ("learning rate", False),  # larger learning rate = hotter
    "weight_decay": ("weight decay", False),  # larger weight decay = hotter
}
KNOBS: tuple[str, ...] = tuple(KNOB_TABLE)
#: knob -> whether a *smaller* knob value means a *hotter* temperature.
HOTTER_IS_SMALLER: dict[str, bool] = {k: hot for k, (_, hot) in KNOB_TABLE.items()}
#: human-readable knob names (used in axis labels / tables).
KNOB_LABELS: dict[str, str] = {k: label for k, (label, _) in KNOB_TABLE.items()}


def format_density(d: float) -> str:
    """A density as a percent for tables, axis ticks and headings: ``0.05`` -> ``"5%"``, whole
    percents without decimals, others with three significant digits (``0.125`` -> ``"12.5%"``)."""
    p = 100.0 * float(d)
    return f"{p:.0f}%" if abs(p - round(p)) < 1e-6 else f"{p:.3g}%"

_CKA_MODES = ("relative", "absolute")
#: columns :func:`classify` needs
CLASSIFY_COLUMNS = ("knob", "temperature", "density", "lmc", "cka")
_TOL = 1e-12


@dataclasses.dataclass(frozen=True)
class RegimeRule:
    """tr_jax's own regime rule (the reference code has none; docs/fidelity.md, Regime rule).

    Cells are grouped into *density columns* ``(knob, density)`` and each column is sorted
    from hot to cold. LMC thresholds are on the train-error fraction.

    1. **Regime I** (poorly connected) if ``lmc < lmc_threshold``; or, when ``use_jump``, if
       the cell lies at or beyond (in the cooler direction) the column's LMC *change point*
       (:func:`change_point`: the hot/cold split with the largest standardised mean shift),
       the shift ``mean(lmc hot side) - mean(lmc cold side)`` exceeds ``jump_threshold``, and
       the cell's own ``lmc < jump_lmc_ceiling``.

       Calibration of the defaults on Figure 2 (Zhou et al. 2023): the hot 5-8 % cells
       (epochs <= 80) have LMC -0.08 ... -0.25 and are drawn II-A, the Regime-I cells beyond
       the first LR drop -0.35 ... -0.68, and the 10 % cells beyond 120 epochs -0.1 ... -0.23
       after ~0 (drawn Regime I); at >= 14 % |LMC| <~ 0.03 everywhere. So the *level*
       ``lmc_threshold = -0.3`` lies below every hot cell and above every deep Regime-I cell,
       and the *jump* (shift > 0.08, own LMC < -0.05) catches the 10 % column's loss of
       connectivity while a +-0.03 scatter at high density never fires. These are tr_jax's
       own choices (the paper has no rule), each a config entry (``regimes.*``).
    2. Otherwise (connected): **II-B** if
       ``cka >= max(cka of the connected cells of the column) - cka_delta``
       (``cka_mode="relative"``) or ``cka >= cka_threshold`` (``cka_mode="absolute"``);
       else **II-A**.

    Cells whose ``lmc`` is NaN, and connected cells whose ``cka`` is NaN, get no regime
    (``None``). A cell whose LMC alone places it in Regime I is labelled ``"I"`` even if
    its CKA is NaN.
    """

    lmc_threshold: float = -0.3
    use_jump: bool = True
    jump_threshold: float = 0.08
    jump_lmc_ceiling: float = -0.05
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


def coerce_rule(rule: RegimeRule | Mapping[str, Any] | None) -> RegimeRule:
    """A :class:`RegimeRule` from a rule, a config mapping or None (the default rule)."""
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


def require_columns(cells: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise (naming ``what`` and the missing columns) unless ``cells`` is a DataFrame holding
    ``columns``."""
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
    ``(knob, density)`` column (every column has a zero; NaN stays NaN).

    Index-aligned with ``cells``; same units as ``test_error`` (a fraction).
    """
    require_columns(cells, ("density", "test_error"), "normalized_test_error")
    err = cells["test_error"].astype(float)
    col_min = err.groupby([cells[k] for k in _column_keys(cells)], dropna=False,
                          sort=False).transform("min")
    out = err - col_min
    out.name = "normalized_test_error"
    return out


def column_hot_to_cold(col: pd.DataFrame, knob: Any,
                       hotter_is_smaller: bool | Mapping[str, bool] | None) -> pd.DataFrame:
    """The rows of one density column sorted hot -> cold (stable)."""
    asc = temperature_order(knob, hotter_is_smaller)
    return col.sort_values("temperature", ascending=asc, kind="mergesort")


def largest_drop(lmc: np.ndarray) -> tuple[int, int, float] | None:
    """Among finite entries (hot -> cold), the adjacent pair with the largest decrease.

    Returns positions ``(hot_pos, cold_pos, drop)`` into ``lmc`` or None if < 2 finite.
    """
    pos = np.flatnonzero(np.isfinite(lmc))
    if pos.size < 2:
        return None
    drops = lmc[pos[:-1]] - lmc[pos[1:]]
    k = int(np.argmax(drops))  # first (hottest) on ties
    return int(pos[k]), int(pos[k + 1]), float(drops[k])


#: regime code (as :func:`column_codes` returns it) -> label; 0 = no regime (missing metrics)
LABEL_OF_CODE: tuple[str | None, ...] = (None, "I", "II-A", "II-B")
CODE_OF_LABEL: dict[str, int] = {"I": 1, "II-A": 2, "II-B": 3}


def change_point(lmc: np.ndarray) -> tuple[int, float] | None:
    """The LMC change point of one column ordered hot -> cold (docs/fidelity.md,
    Regime rule).

    Among the finite entries, the split into a hot segment and a cold segment (each non-empty)
    that maximises ``(mean(hot) - mean(cold)) * sqrt(n_hot * n_cold / n)`` (the standardised
    mean shift of binary segmentation; first split on ties). Returns ``(first_cold_pos, shift)``
    with ``first_cold_pos`` a position into ``lmc`` and ``shift = mean(hot) - mean(cold)`` (> 0
    when connectivity is lost going colder), or None with fewer than 2 finite values.

    Unlike the largest *adjacent* drop, a mean shift is not fooled by one noisy step among the
    hot cells (Figure 2's hot 5-8 % cells scatter between LMC -0.08 and -0.25).
    """
    lmc = np.asarray(lmc, dtype=float)
    pos = np.flatnonzero(np.isfinite(lmc))
    n = pos.size
    if n < 2:
        return None
    v = lmc[pos]
    k = np.arange(1, n)
    csum = np.cumsum(v)
    hot = csum[:-1] / k
    cold = (csum[-1] - csum[:-1]) / (n - k)
    shift = hot - cold
    score = shift * np.sqrt(k * (n - k) / n)
    i = int(np.argmax(score))
    return int(pos[i + 1]), float(shift[i])


def _change_points(lmc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`change_point` of every row of ``lmc`` ``[R, n]``: ``(first_cold_pos [R],
    shift [R])``, position ``n`` and shift ``-inf`` where a row has < 2 finite values."""
    R, n = lmc.shape
    if n >= 2 and np.isfinite(lmc).all():  # the common case, vectorised over rows
        k = np.arange(1, n)
        csum = np.cumsum(lmc, axis=1)
        shift = csum[:, :-1] / k - (csum[:, -1:] - csum[:, :-1]) / (n - k)
        i = np.argmax(shift * np.sqrt(k * (n - k) / n), axis=1)
        return i + 1, shift[np.arange(R), i]
    first = np.full(R, n)
    shift = np.full(R, -np.inf)
    for r in range(R):
        cp = change_point(lmc[r])
        if cp is not None:
            first[r], shift[r] = cp
    return first, shift


def column_codes(lmc: np.ndarray, cka: np.ndarray, rule: RegimeRule,
                 override: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Regime codes (0 = none, 1 = I, 2 = II-A, 3 = II-B) of one density column ordered hot ->
    cold: the single source of truth of :class:`RegimeRule`.

    ``lmc`` and ``cka`` are ``[n]`` or ``[R, n]`` (``R`` versions of the column, e.g. bootstrap
    replicates); ``override`` maps numeric rule fields to arrays of ``K`` candidate values (one
    rule per row), which lets :func:`fit_rule` score thousands of candidate thresholds at once.
    Returns ``[max(R, K), n]`` (``R`` and ``K`` broadcast: one of them must be 1).
    """
    def value(name: str) -> np.ndarray:
        v = override[name] if override is not None and name in override else getattr(rule, name)
        return np.asarray(v, dtype=float).reshape(-1, 1)

    lmc = np.atleast_2d(np.asarray(lmc, dtype=float))
    cka = np.atleast_2d(np.asarray(cka, dtype=float))
    n = lmc.shape[1]
    finite_lmc = np.isfinite(lmc)
    with np.errstate(invalid="ignore"):
        is_one = finite_lmc & (lmc < value("lmc_threshold"))
        if rule.use_jump and n:
            first, shift = _change_points(lmc)
            colder = np.arange(n)[None, :] >= first[:, None]
            fires = shift[:, None] > value("jump_threshold")
            is_one = is_one | (fires & colder & finite_lmc & (lmc < value("jump_lmc_ceiling")))
        connected = finite_lmc & ~is_one & np.isfinite(cka)
        if rule.cka_mode == "relative":
            top = np.where(connected, cka, -np.inf).max(axis=1, keepdims=True) if n else \
                np.full((connected.shape[0], 1), -np.inf)
            ref = np.where(np.isfinite(top), top - value("cka_delta"), np.inf)
        else:
            ref = value("cka_threshold")
        high = cka >= ref - _TOL
    return np.where(is_one, 1, np.where(connected, np.where(high, 3, 2), 0)).astype(np.int8)


@dataclasses.dataclass(frozen=True)
class Column:
    """One ``(knob, density)`` column of a cells table, hot -> cold (see :func:`density_columns`)."""

    knob: Any
    density: float
    pos: np.ndarray  # positions (into cells.reset_index) of the rows, hot -> cold
    temperature: np.ndarray
    lmc: np.ndarray
    cka: np.ndarray


def density_columns(cells: pd.DataFrame, hotter_is_smaller: bool | Mapping[str, bool] | None
                    ) -> list[Column]:
    """The ``(knob, density)`` columns of ``cells``, each ordered hot -> cold."""
    frame = cells.reset_index(drop=True)
    out = []
    for (knob, density), col in frame.groupby(["knob", "density"], sort=False, dropna=False):
        col = column_hot_to_cold(col, knob, hotter_is_smaller)
        out.append(Column(knob, float(density), col.index.to_numpy(),
                          col["temperature"].to_numpy(dtype=float),
                          col["lmc"].to_numpy(dtype=float), col["cka"].to_numpy(dtype=float)))
    return out


def classify(cells: pd.DataFrame, rule: RegimeRule | Mapping[str, Any] | None = None, *,
             hotter_is_smaller: bool | Mapping[str, bool] | None = None) -> pd.Series:
    """Label each cell ``"I"``, ``"II-A"``, ``"II-B"`` or ``None`` (missing metrics).

    Implements :class:`RegimeRule` (tr_jax's own rule; the reference has none;
    LMC thresholds on the train-error fraction). Columns are grouped by
    ``(knob, density)`` and ordered hot -> cold with :func:`temperature_order`.
    Returns an object-dtype Series named ``"regime"``, index-aligned with ``cells``.
    """
    rule = coerce_rule(rule)
    require_columns(cells, CLASSIFY_COLUMNS, "classify")
    labels: list[str | None] = [None] * len(cells)
    # positional work avoids trouble with duplicate index labels
    for col in density_columns(cells, hotter_is_smaller):
        codes = column_codes(col.lmc, col.cka, rule)[0]
        for p, c in zip(col.pos, codes):
            labels[p] = LABEL_OF_CODE[c]
    return pd.Series(labels, index=cells.index, dtype=object, name="regime")


def cell_regimes(cells: pd.DataFrame, rule: RegimeRule | Mapping[str, Any] | None = None, *,
                 hotter_is_smaller: bool | Mapping[str, bool] | None = None,
                 required: bool = False) -> pd.Series | None:
    """Each cell's regime: its ``regime`` column when it has one (a sweep's cells.csv), else
    :func:`classify` of its ``lmc`` and ``cka`` with ``rule``; None when it has neither, or with
    ``required`` the error of :func:`classify` naming the missing columns."""
    if "regime" in cells.columns:
        return cells["regime"]
    if required or {"lmc", "cka"} <= set(cells.columns):
        return classify(cells, rule, hotter_is_smaller=hotter_is_smaller)
    return None


def transition(cells: pd.DataFrame, knob: str | None = None, *,
               hotter_is_smaller: bool | Mapping[str, bool] | None = None) -> pd.DataFrame:
    """Per ``(knob, density)`` column: where LMC drops most and where test error is best.

    Columns of the result: ``knob, density, hot_temperature, cold_temperature, lmc_hot,
    lmc_cold, lmc_drop`` (the adjacent pair, hot side / cold side, with the largest
    *decrease* of LMC going hot -> cold; NaN when fewer than two finite LMC values),
    ``best_temperature`` and ``best_test_error`` (the temperature where the normalized
    test error is 0, i.e. the column minimum; first hot -> cold on ties).
    """
    require_columns(cells, ("knob", "temperature", "density", "lmc"), "transition")
    if knob is not None:
        if knob not in set(cells["knob"]):
            have = sorted(set(cells["knob"]), key=str)
            raise ValueError(f"transition: knob {knob!r} not in cells (has {have})")
        cells = cells[cells["knob"] == knob]
    rows = []
    for (kn, dens), col in cells.groupby(["knob", "density"], sort=True, dropna=False):
        col = column_hot_to_cold(col, kn, hotter_is_smaller)
        temps = col["temperature"].to_numpy(dtype=float)
        lmc = col["lmc"].to_numpy(dtype=float)
        row: dict[str, Any] = dict(knob=kn, density=float(dens), hot_temperature=np.nan,
                                   cold_temperature=np.nan, lmc_hot=np.nan, lmc_cold=np.nan,
                                   lmc_drop=np.nan, best_temperature=np.nan,
                                   best_test_error=np.nan)
        jump = largest_drop(lmc)
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


