"""Shared pieces of the figures: metric labels and colour maps, the (temperature x density)
grid of a knob's cells, axis labels, and the atomic PNG writer (:func:`save_figure`).

Imported first by every plotting module: in a plain script (no pyplot imported yet, no
``MPLBACKEND``, no IPython kernel) it selects the Agg backend.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
from typing import Any, Mapping

import matplotlib

if ("matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND")
        and "ipykernel" not in sys.modules):
    matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import measures
from ..files import atomic_write_bytes
from ..regimes import KNOB_LABELS, format_density, normalized_test_error, temperatures_hot_to_cold


PANELS: tuple[str, str, str, str] = ("test_error", "normalized_test_error", "lmc", "cka")

#: the sweep's own metrics (not landscape measures): the test error and its normalized form
_OWN_METRICS: dict[str, measures.Metric] = {
    "test_error": measures.Metric("test_error", "test_error", ("Test error", "test error (%)"),
                                  cell="always", order=0, panel=1, cmap="magma_r",
                                  fmt="{:.1f}"),
    "normalized_test_error": measures.Metric(
        "normalized_test_error", "normalized_test_error",
        ("Normalized test error", "test error above column best (% points)"), cell="always",
        order=0, panel=2, cmap="magma_r", fmt="{:.1f}"),
}
_PERCENT_METRICS = ("test_error", "normalized_test_error")


def metric_info(metric: str) -> measures.Metric | None:
    """How a metric is labelled and drawn: the sweep's own (test errors) or a registered
    measure's (:mod:`tr_jax.measures`); None for a metric neither knows."""
    return _OWN_METRICS.get(metric) or measures.metric(metric)


def metric_label(metric: str) -> tuple[str, str]:
    """(title, colour-bar label) of a metric (its name twice when unknown)."""
    info = metric_info(metric)
    return info.label if info is not None else (metric, metric)


def all_panels() -> tuple[str, ...]:
    """Every metric with a phase-diagram figure, in the order figures are drawn: the test
    errors, then the registered measures' metrics by ``Metric.panel`` (a per-layer metric's
    panel is its layer-profile figure, not a phase diagram)."""
    own = [m for m in _OWN_METRICS.values()]
    reg = [x for _, x in measures.metrics() if x.panel is not None and not x.layers]
    return tuple(m.name for m in sorted(own + reg, key=lambda m: m.panel))


_NAN_COLOR = "#d9d9d9"


def _single_knob(cells: pd.DataFrame) -> str:
    if "knob" not in cells.columns:
        raise ValueError("cells table lacks a 'knob' column")
    knobs = sorted(set(cells["knob"]), key=str)
    if len(knobs) != 1:
        raise ValueError(f"phase_diagram needs the cells of exactly one knob, got {knobs}")
    return knobs[0]


def metric_grid(cells: pd.DataFrame, values: pd.Series | str, *,
                hotter_is_smaller: bool | Mapping[str, bool] | None = None,
                ) -> tuple[list[float], list[float], np.ndarray]:
    """Arrange per-cell ``values`` (a column name or an index-aligned Series) of one knob
    into a grid. Returns ``(temperatures hot->cold, densities ascending, grid)`` with
    ``grid[row, col]``; row 0 is the hottest temperature. Numeric grids are float with
    NaN for missing cells (duplicates are averaged); non-numeric grids are object arrays
    with ``None`` for missing cells."""
    knob = _single_knob(cells)
    vals = cells[values] if isinstance(values, str) else _align(values, cells)
    temps = temperatures_hot_to_cold(cells["temperature"], knob, hotter_is_smaller)
    dens = sorted({float(d) for d in cells["density"]})
    t_pos = {t: i for i, t in enumerate(temps)}
    d_pos = {d: j for j, d in enumerate(dens)}
    numeric = pd.api.types.is_numeric_dtype(vals.dtype) and not pd.api.types.is_bool_dtype(
        vals.dtype)
    if numeric:
        total = np.zeros((len(temps), len(dens)))
        count = np.zeros((len(temps), len(dens)))
        for t, d, v in zip(cells["temperature"], cells["density"], vals):
            if pd.isna(t) or pd.isna(v):
                continue
            i, j = t_pos[float(t)], d_pos[float(d)]
            total[i, j] += float(v)
            count[i, j] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            grid = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return temps, dens, grid
    grid = np.full((len(temps), len(dens)), None, dtype=object)
    for t, d, v in zip(cells["temperature"], cells["density"], vals):
        if pd.isna(t):
            continue
        grid[t_pos[float(t)], d_pos[float(d)]] = None if _missing(v) else v
    return temps, dens, grid


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _align(values: Any, cells: pd.DataFrame) -> pd.Series:
    """Index-aligned Series of per-cell values (Series by index, else positional)."""
    if isinstance(values, pd.Series):
        if values.index.equals(cells.index):
            return values
        missing = cells.index.difference(values.index)
        if len(missing):
            raise ValueError(f"values Series lacks {len(missing)} of the cells' index labels")
        return values.loc[cells.index]
    arr = list(values)
    if len(arr) != len(cells):
        raise ValueError(f"got {len(arr)} values for {len(cells)} cells")
    return pd.Series(arr, index=cells.index, dtype=object)


def _metric_values(cells: pd.DataFrame, metric: str) -> pd.Series:
    if metric in cells.columns:
        return cells[metric].astype(float)
    if metric == "normalized_test_error" and "test_error" in cells.columns:
        return normalized_test_error(cells)
    raise ValueError(f"cells table has no {metric!r} column; has {list(cells.columns)}")


def _regime_grid(cells: pd.DataFrame, regimes: Any,
                 hotter_is_smaller: bool | Mapping[str, bool] | None) -> np.ndarray:
    if isinstance(regimes, str):
        regimes = cells[regimes]
    if isinstance(regimes, np.ndarray) and regimes.ndim == 2:
        return regimes
    series = _align(regimes, cells).astype(object)
    return metric_grid(cells, series, hotter_is_smaller=hotter_is_smaller)[2]


def _temperature_label(knob: str) -> str:
    return f"Temperature ({KNOB_LABELS.get(str(knob), str(knob))})  \u2191 hotter"


def _fmt_temperature(t: float) -> str:
    return f"{t:g}"


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> pathlib.Path:
    """Save ``fig`` as PNG at ``path`` atomically, through tr_jax's one atomic writer
    (``tr_jax.files.atomic_write_bytes``: temporary file, fsync, rename; a crash never leaves
    a half-written PNG, a full disk is named)."""
    import io

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def safe_name(s: Any) -> str:
    """``s`` as a file-name part: runs of characters other than ``[A-Za-z0-9_.-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)) or "knob"


def label_grid_axes(ax, dens, temps, knob: str, xlabel: str) -> None:
    """Ticks and labels of a (density across, temperature down) cell grid."""
    ax.set_xticks(range(len(dens)))
    ax.set_xticklabels([format_density(d) for d in dens])
    ax.set_yticks(range(len(temps)))
    ax.set_yticklabels([_fmt_temperature(t) for t in temps])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_temperature_label(knob))
    ax.tick_params(length=0)
