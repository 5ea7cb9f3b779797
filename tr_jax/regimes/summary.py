"""Text table of a sweep's regimes (written to ``summary.txt``), with the bootstrap intervals
and regime confidences of :func:`~tr_jax.regimes.cells_from_results` when present."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .rule import (KNOB_LABELS, RegimeRule, cell_regimes, format_density, require_columns,
                   temperatures_hot_to_cold)


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def summary_table(cells: pd.DataFrame, rule: RegimeRule | Mapping[str, Any] | None = None, *,
                  knob: str | None = None,
                  hotter_is_smaller: bool | Mapping[str, bool] | None = None) -> str:
    """Compact text table per knob: rows = temperature (hot at top), columns = density
    (ascending), entries ``"<regime> <test error %>"`` e.g. ``"II-B 8.1%"``.

    Uses ``cells["regime"]`` when present, otherwise :func:`classify` with ``rule``.
    Missing regimes print as ``"-"``, missing test errors as ``"n/a"``.
    """
    require_columns(cells, ("knob", "temperature", "density"), "summary_table")
    if knob is not None:
        cells = cells[cells["knob"] == knob]
        if len(cells) == 0:
            raise ValueError(f"summary_table: no cells for knob {knob!r}")
    regimes = cell_regimes(cells, rule, hotter_is_smaller=hotter_is_smaller)
    if regimes is None:
        regimes = pd.Series([None] * len(cells), index=cells.index, dtype=object)
    with_ci = {"test_error_lo", "test_error_hi", "regime_confidence"} <= set(cells.columns)
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
            if with_ci and pd.notna(cells.at[idx, "regime_confidence"]):
                r += f"({100 * float(cells.at[idx, 'regime_confidence']):.0f}%)"
            elif with_ci and r != "-":  # fewer than two units to resample: see _na_note
                r += "(n/a)"
            e = err.loc[idx]
            e = "n/a" if pd.isna(e) else f"{100.0 * float(e):.1f}%"
            if with_ci and pd.notna(err.loc[idx]):
                e += " " + _interval(cells.at[idx, "test_error_lo"],
                                     cells.at[idx, "test_error_hi"], "{:.1f}", 100.0)
            entry[(float(t), float(d))] = f"{r} {e}"
        label = KNOB_LABELS.get(str(kn), str(kn))
        corner = f"T ({label})"
        header = [corner] + [format_density(d) for d in dens]
        body = [[_fmt_num(t)] + [entry.get((t, d), "") for d in dens] for t in temps]
        widths = [max(len(r[j]) for r in [header] + body) for j in range(len(header))]

        def line(r: list[str], widths: list[int] = widths) -> str:
            return "  ".join(c.rjust(w) if j else c.ljust(w)
                             for j, (c, w) in enumerate(zip(r, widths))).rstrip()

        title = f"knob={kn}: rows hot (top) -> cold, columns density; entry = regime + test error"
        if with_ci:
            title += " [interval]"
        rule_line = "-" * max(len(title), len(line(header)))
        block = [title, line(header), rule_line] + [line(r) for r in body]
        if with_ci:
            block.append(_ci_note(sub))
            block.append(_lmc_block(sub, kn, temps, dens, hotter_is_smaller))
        blocks.append("\n".join(block))
    na = _na_note(cells, regimes) if with_ci else ""
    return "\n\n".join(blocks + ([na] if na else []))


def _interval(lo: Any, hi: Any, fmt: str, scale: float = 1.0) -> str:
    """``[lo,hi]``; ``[n/a]`` when the interval is NaN (it rests on fewer than two units)."""
    if pd.isna(lo) or pd.isna(hi):
        return "[n/a]"
    return f"[{fmt.format(scale * float(lo))},{fmt.format(scale * float(hi))}]"


def _by_dense_seed(cells: pd.DataFrame) -> bool:
    """Whether the sweep's bootstrap draws dense seeds (``ci_unit``; a table without the column
    was written when that was the only unit)."""
    if "ci_unit" not in cells.columns:
        return True
    units = set(cells["ci_unit"].astype(str))
    if units - {"none"}:
        return "dense_seed" in units
    n = pd.to_numeric(cells["n_dense_seeds"], errors="coerce") if (
        "n_dense_seeds" in cells.columns) else pd.Series([np.nan])
    return bool(n.max() >= 2)


def _na_note(cells: pd.DataFrame, regimes: pd.Series) -> str:
    """One line giving the reason for the regime confidences printed ``(n/a)`` (a cell with a
    regime but no confidence: fewer than two units to resample); empty when there is none.
    Written once per summary, whatever the number of knobs."""
    conf = pd.to_numeric(cells["regime_confidence"], errors="coerce")
    has = regimes.notna()
    na = has & conf.isna()
    if not na.any():
        return ""
    every = int(na.sum()) == int(has.sum())
    where, subject = (("", "each cell rests") if every else
                      (f" in {int(na.sum())} of {len(cells)} cells", "they rest"))
    if "ci_unit" not in cells.columns:
        why = f"{subject} on fewer than two independent units"
    elif _by_dense_seed(cells):
        why = f"{subject} on one healthy dense seed"
    else:
        return (f"regime confidence n/a{where}: {subject} on one dense seed and one retrained "
                f"pair; nothing to resample (2+ dense seeds, or 3+ retrain seeds for retraining "
                f"noise alone, give one).")
    return f"regime confidence n/a{where}: {why}; nothing to resample."


def _ci_note(cells: pd.DataFrame) -> str:
    unit = "dense_seed" if _by_dense_seed(cells) else "retrain_seed/pair"
    n = int(cells["n_dense_seeds"].max()) if "n_dense_seeds" in cells.columns else 0
    note = ("(NN%) = regime confidence: the share of bootstrap resamples giving the same regime; "
            "[lo,hi] = bootstrap interval of the test error (%), ")
    if unit == "dense_seed":
        return note + f"resampling the {n} dense seeds."
    return note + ("resampling retrain seeds/pairs of the single dense seed: retraining noise "
                   "only, the spread between dense models is not measured.")


def _lmc_block(cells: pd.DataFrame, kn: Any, temps: list[float], dens: list[float],
               hotter_is_smaller: bool | Mapping[str, bool] | None) -> str:
    """LMC (train-error fraction) with its interval, same layout."""
    if not {"lmc", "lmc_lo", "lmc_hi"} <= set(cells.columns):
        return ""
    entry = {}
    for t, d, v, lo, hi in zip(cells["temperature"], cells["density"], cells["lmc"],
                               cells["lmc_lo"], cells["lmc_hi"]):
        entry[(float(t), float(d))] = ("n/a" if pd.isna(v) else
                                       f"{float(v):+.3f} {_interval(lo, hi, '{:+.3f}')}")
    header = [f"LMC, T ({KNOB_LABELS.get(str(kn), str(kn))})"] + [format_density(d) for d in dens]
    body = [[_fmt_num(t)] + [entry.get((t, d), "") for d in dens] for t in temps]
    widths = [max(len(r[j]) for r in [header] + body) for j in range(len(header))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
             .rstrip() for r in [header] + body]
    return "\n" + "\n".join(lines)

