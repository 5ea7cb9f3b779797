"""Shared helpers of the case studies: table checks, density columns, formatting."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from tr_jax.regimes import (RegimeRule, classify,
                            temperature_order)

ACTIONS: tuple[str, ...] = ("raise temperature", "lower temperature", "keep", "unknown")
SELECTORS: tuple[str, ...] = ("lmc_cka", "lmc_error", "most_trained", "best_dense", "random")
_CONNECTED = ("rule", "tolerance", "threshold")
_MATCH = 1e-9

RuleLike = RegimeRule | Mapping[str, Any] | None
HotterLike = bool | Mapping[str, bool] | None


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _check_table(cells: Any, what: str, columns: Iterable[str] = ("knob", "temperature", "density")
                 ) -> None:
    if not isinstance(cells, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(cells).__name__}")
    missing = [c for c in columns if c not in cells.columns]
    if missing:
        raise ValueError(f"{what}: cells table lacks column(s) {missing}; has {list(cells.columns)}")


def _knobs(cells: pd.DataFrame) -> list[str]:
    return sorted({str(k) for k in cells["knob"]})


def _resolve_knob(cells: pd.DataFrame, knob: str | None, what: str) -> str:
    have = _knobs(cells)
    if knob is None:
        if len(have) != 1:
            raise ValueError(f"{what}: the cells table holds {len(have)} knobs {have}; pass knob=")
        return have[0]
    if str(knob) not in have:
        raise ValueError(f"{what}: knob {knob!r} not in the cells table (has {have})")
    return str(knob)


def _fmt_list(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _match(value: Any, available: Sequence[float], name: str, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {name} must be a number, got {value!r}") from None
    for a in available:
        if abs(a - v) <= _MATCH:
            return a
    raise ValueError(f"{what}: {name} {value!r} not in the table; available {name}s: "
                     f"{_fmt_list(available)}")


def _column(cells: pd.DataFrame, density: Any, knob: str | None, rule: RegimeRule,
            hotter_is_smaller: HotterLike, what: str) -> tuple[str, float, pd.DataFrame]:
    """The ``(knob, density)`` column, hot -> cold, with fresh ``regime`` labels, a clean
    0..n-1 index and NaN-filled metric columns where absent."""
    _check_table(cells, what)
    knob = _resolve_knob(cells, knob, what)
    sub = cells[cells["knob"].astype(str) == knob]
    dens = sorted({float(d) for d in sub["density"]})
    d = _match(density, dens, "density", what)
    col = sub[np.abs(sub["density"].astype(float) - d) <= _MATCH].copy()
    for m in ("test_error", "lmc", "cka", "dense_test_error"):
        col[m] = col[m].astype(float) if m in col.columns else np.nan
    col["temperature"] = col["temperature"].astype(float)
    dup = col["temperature"][col["temperature"].duplicated()]
    if len(dup):
        raise ValueError(f"{what}: several rows for knob {knob!r}, density {d:g}, temperature "
                         f"{float(dup.iloc[0]):g}: pass a per-cell table (one row per knob, "
                         f"temperature, density; e.g. regimes.cells_from_results)")
    col = col.sort_values("temperature", ascending=temperature_order(knob, hotter_is_smaller),
                          kind="mergesort").reset_index(drop=True)
    labels = classify(col, rule, hotter_is_smaller=hotter_is_smaller).to_numpy(dtype=object)
    col["regime"] = pd.Series(labels, index=col.index, dtype=object)
    return knob, d, col


def _regime(x: Any) -> str | None:
    """A regime label, with every flavour of missing (None, NaN, pd.NA) as None."""
    return x if isinstance(x, str) else None


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _opt(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _regret(x: float, best: float) -> float:
    return x - best if math.isfinite(x) and math.isfinite(best) else float("nan")


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100.0 * x:.2f}%"


