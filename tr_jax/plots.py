"""Phase diagrams of a pruning sweep (paper Figure 2) with regime boundaries.

Uses matplotlib's object API (:class:`matplotlib.figure.Figure`) only -- never pyplot's
global state -- so it is safe in threads and notebooks. When imported in a plain script
(no pyplot imported yet, no ``MPLBACKEND``, no IPython kernel) the Agg backend is selected
so nothing tries to open a window.

Every diagram has density on the x axis (ascending, labelled as percents) and temperature
on the y axis with the **hottest temperature at the top** (for the ``epochs`` knob: the
fewest epochs at the top). Regime boundaries are computed from the data (see
:func:`tr_jax.regimes.classify`, tr_jax's own rule): solid black between Regime I and a
connected cell, dashed black between II-A and II-B.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
import warnings
from typing import Any, Mapping, Sequence

import matplotlib

if ("matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND")
        and "ipykernel" not in sys.modules):
    matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .regimes import (KNOB_LABELS, RegimeRule, classify, normalized_test_error,
                      temperatures_hot_to_cold)

__all__ = [
    "PANELS",
    "ALL_PANELS",
    "curves_along_t",
    "METRIC_LABELS",
    "metric_grid",
    "phase_diagram",
    "draw_regime_boundaries",
    "figure2",
]

PANELS: tuple[str, str, str, str] = ("test_error", "normalized_test_error", "lmc", "cka")

#: metric -> (title, colorbar label)
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "test_error": ("Test error", "test error (%)"),
    "normalized_test_error": ("Normalized test error",
                              "test error above column best (% points)"),
    "lmc": ("LMC (mode connectivity)", "LMC, train-error fraction (< 0 = barrier)"),
    "cka": ("CKA similarity", "linear CKA of softmax outputs"),
    "cka_logits": ("CKA similarity (logits)", "linear CKA of logits"),
    "loss_barrier": ("Loss barrier (line)", "max over t of loss above the straight line"),
    "bezier_mc": ("Bezier mode connectivity", "mc, train-error fraction (< 0 = barrier)"),
    "hessian_trace": ("Hessian trace", "log10 Hutchinson trace (eval mode, 200 images)"),
    "hessian_top_eigenvalue": ("Hessian top eigenvalue", "log10 top eigenvalue"),
}

#: every metric the sweep can measure, in the order figures are drawn
ALL_PANELS: tuple[str, ...] = PANELS + ("bezier_mc", "loss_barrier", "cka_logits",
                                        "hessian_trace", "hessian_top_eigenvalue")

# lower error -> light; LMC: 0 light, negative (barrier) dark; CKA: high similarity light
_DEFAULT_CMAPS = {"test_error": "magma_r", "normalized_test_error": "magma_r",
                  "lmc": "viridis", "cka": "viridis", "bezier_mc": "viridis",
                  "cka_logits": "viridis", "loss_barrier": "magma_r", "hessian_trace": "magma_r",
                  "hessian_top_eigenvalue": "magma_r"}
_LOG_METRICS = ("hessian_trace", "hessian_top_eigenvalue")
_PERCENT_METRICS = ("test_error", "normalized_test_error")
_FORMATS = {"test_error": "{:.1f}", "normalized_test_error": "{:.1f}", "lmc": "{:.3f}",
            "cka": "{:.3f}", "bezier_mc": "{:.3f}", "cka_logits": "{:.3f}",
            "loss_barrier": "{:.2f}", "hessian_trace": "{:.2f}", "hessian_top_eigenvalue": "{:.2f}"}
_NAN_COLOR = "#d9d9d9"


def _density_label(d: float) -> str:
    p = 100.0 * float(d)
    return f"{p:.0f}%" if abs(p - round(p)) < 1e-6 else f"{p:.3g}%"


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


def phase_diagram(ax, cells_for_one_knob: pd.DataFrame, metric: str, regimes: Any = None,
                  title: str | None = None, cmap: Any = None, *, annotate: bool = True,
                  colorbar: bool = True, label_regimes: bool = True,
                  hotter_is_smaller: bool | Mapping[str, bool] | None = None):
    """Heat map of ``metric`` for the cells of one knob on ``ax``; returns the AxesImage.

    x: density (categorical, ascending, percent labels); y: temperature (categorical,
    hottest at the top). Test errors are shown in percent. Each cell is annotated with
    its value; NaN cells are grey and blank. ``regimes`` (a column name, an index-aligned
    Series / sequence of labels, or a ready 2-D grid hot->cold x density ascending)
    draws regime boundaries via :func:`draw_regime_boundaries`.
    """
    cells = cells_for_one_knob
    knob = _single_knob(cells)
    vals = _metric_values(cells, metric)
    if metric in _PERCENT_METRICS:
        vals = vals * 100.0
    if metric in _LOG_METRICS:
        vals = np.log10(vals.where(vals > 0))
    temps, dens, grid = metric_grid(cells, vals, hotter_is_smaller=hotter_is_smaller)

    cmap_obj = matplotlib.colormaps[cmap or _DEFAULT_CMAPS.get(metric, "viridis")] \
        if cmap is None or isinstance(cmap, str) else cmap
    cmap_obj = cmap_obj.with_extremes(bad=_NAN_COLOR)
    finite = grid[np.isfinite(grid)]
    vmin = float(finite.min()) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    if metric in ("lmc", "bezier_mc"):
        vmax = max(vmax, 0.0)  # 0 (connected) is the light end
    if metric == "normalized_test_error":
        vmin = 0.0
    if vmax <= vmin:
        pad = max(0.1 * abs(vmin), 1e-3)
        vmin, vmax = vmin - pad, vmax + pad
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap_obj, vmin=vmin, vmax=vmax,
                   aspect="auto", interpolation="nearest", origin="upper")

    ax.set_xticks(range(len(dens)))
    ax.set_xticklabels([_density_label(d) for d in dens])
    ax.set_yticks(range(len(temps)))
    ax.set_yticklabels([_fmt_temperature(t) for t in temps])
    ax.set_xlabel("Density (fraction of conv weights kept)")
    ax.set_ylabel(_temperature_label(knob))
    ax.tick_params(length=0)
    name, cbar_label = METRIC_LABELS.get(metric, (metric, metric))
    ax.set_title(title if title is not None else f"{name} \u2014 knob: {knob}")

    if annotate:
        n = max(len(temps), len(dens))
        size = 8 if n <= 6 else (7 if n <= 9 else 5.5)
        fmt = _FORMATS.get(metric, "{:.3g}")
        for i in range(len(temps)):
            for j in range(len(dens)):
                v = grid[i, j]
                if not np.isfinite(v):
                    continue
                r, g, b, _ = cmap_obj(im.norm(v))
                lum = 0.299 * r + 0.587 * g + 0.114 * b
                ax.text(j, i + 0.12, fmt.format(v), ha="center", va="center", fontsize=size,
                        color="black" if lum > 0.5 else "white")
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
        cb.set_label(cbar_label)
    if regimes is not None:
        rgrid = _regime_grid(cells, regimes, hotter_is_smaller)
        if rgrid.shape != grid.shape:
            raise ValueError(f"regime grid shape {rgrid.shape} != metric grid {grid.shape}")
        draw_regime_boundaries(ax, rgrid, label_cells=label_regimes)
    return im


def draw_regime_boundaries(ax, grid_of_regimes, *, label_cells: bool = True,
                           linewidth: float = 2.5, label_fontsize: float = 5.5
                           ) -> dict[str, LineCollection]:
    """Draw regime boundaries on cell edges of an ``imshow`` grid (cell ``(r, c)`` centred
    at ``x=c, y=r``), computed from ``grid_of_regimes`` (2-D, rows hot->cold top->bottom,
    columns density ascending; entries "I", "II-A", "II-B" or None).

    * solid black between a Regime I cell and an adjacent connected (II-A / II-B) cell;
    * dashed black between adjacent II-A and II-B cells;
    * nothing next to cells with no regime.

    Returns ``{"solid": LineCollection, "dashed": LineCollection}`` (both added to ``ax``;
    ``len(coll.get_segments())`` is the number of boundary edges). With ``label_cells``
    the regime is written in small type in each cell's top-left corner.
    """
    g = np.asarray(grid_of_regimes, dtype=object)
    if g.ndim != 2:
        raise ValueError(f"grid_of_regimes must be 2-D, got shape {g.shape}")
    lab = [[None if _missing(v) else str(v) for v in row] for row in g]
    n_rows, n_cols = g.shape
    solid, dashed = [], []

    def classify_edge(a, b, seg):
        if a is None or b is None or a == b:
            return
        if (a == "I") != (b == "I"):
            solid.append(seg)
        elif {a, b} == {"II-A", "II-B"}:
            dashed.append(seg)

    for r in range(n_rows):
        for c in range(n_cols):
            if c + 1 < n_cols:  # vertical edge between (r, c) and (r, c+1)
                classify_edge(lab[r][c], lab[r][c + 1],
                              [(c + 0.5, r - 0.5), (c + 0.5, r + 0.5)])
            if r + 1 < n_rows:  # horizontal edge between (r, c) and (r+1, c)
                classify_edge(lab[r][c], lab[r + 1][c],
                              [(c - 0.5, r + 0.5), (c + 0.5, r + 0.5)])
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    solid_lc = LineCollection(solid, colors="black", linewidths=linewidth, linestyles="solid",
                              capstyle="projecting", zorder=4)
    solid_lc.set_gid("regime_I_boundary")
    dashed_lc = LineCollection(dashed, colors="black", linewidths=linewidth * 0.7,
                               linestyles=(0, (4, 2.5)), capstyle="butt", zorder=4)
    dashed_lc.set_gid("regime_II_boundary")
    # a thin white halo keeps the black lines visible on dark cells
    for lc in (solid_lc, dashed_lc):
        lc.set_path_effects([patheffects.withStroke(linewidth=lc.get_linewidth()[0] + 1.6,
                                                    foreground="white", alpha=0.9)])
    ax.add_collection(solid_lc, autolim=False)
    ax.add_collection(dashed_lc, autolim=False)
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    if label_cells:
        for r in range(n_rows):
            for c in range(n_cols):
                if lab[r][c] is not None:
                    ax.text(c - 0.44, r - 0.40, lab[r][c], ha="left", va="top",
                            fontsize=label_fontsize, color="black", alpha=0.85, zorder=5,
                            bbox=dict(boxstyle="square,pad=0.08", fc="white", ec="none",
                                      alpha=0.55))
    return {"solid": solid_lc, "dashed": dashed_lc}


def _safe_name(s: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)) or "knob"


def figure2(cells: pd.DataFrame, out_dir: str | os.PathLike, knob: str | None = None,
            regimes: Any = None, *, rule: RegimeRule | Mapping[str, Any] | None = None,
            dpi: int = 120, panels: Sequence[str] = PANELS,
            hotter_is_smaller: bool | Mapping[str, bool] | None = None) -> list[pathlib.Path]:
    """Write one PNG per panel (default :data:`PANELS`) for each knob (or only ``knob``)
    as ``{out_dir}/{knob}_{metric}.png``; creates ``out_dir``; returns the paths.

    ``regimes``: labels aligned with ``cells`` (Series/sequence/column name); default
    ``cells["regime"]`` if present, else :func:`tr_jax.regimes.classify` with ``rule``
    when ``lmc`` and ``cka`` exist (pass ``False`` to draw no boundaries). The
    normalized test error is computed when missing. Panels whose metric column is
    missing are skipped with a warning.
    """
    if "knob" not in cells.columns:
        raise ValueError("figure2: cells table lacks a 'knob' column")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = cells.copy()
    if regimes is False:
        reg = None
    elif regimes is not None:
        reg = cells[regimes] if isinstance(regimes, str) else _align(regimes, cells)
    elif "regime" in cells.columns:
        reg = cells["regime"]
    elif "lmc" in cells.columns and "cka" in cells.columns:
        reg = classify(cells, rule, hotter_is_smaller=hotter_is_smaller)
    else:
        reg = None
    if "normalized_test_error" not in cells.columns and "test_error" in cells.columns:
        cells["normalized_test_error"] = normalized_test_error(cells)

    knobs = sorted(set(cells["knob"]), key=str)
    if knob is not None:
        if knob not in knobs:
            raise ValueError(f"figure2: knob {knob!r} not in cells (has {knobs})")
        knobs = [knob]
    paths: list[pathlib.Path] = []
    for kn in knobs:
        sub = cells[cells["knob"] == kn]
        n_t, n_d = sub["temperature"].nunique(), sub["density"].nunique()
        size = (max(5.5, 0.95 * n_d + 3.2), max(3.8, 0.5 * n_t + 2.3))
        for metric in panels:
            if metric not in sub.columns:
                warnings.warn(f"figure2: no {metric!r} column; panel skipped", stacklevel=2)
                continue
            fig = Figure(figsize=size, dpi=dpi)
            ax = fig.add_subplot()
            phase_diagram(ax, sub, metric,
                          regimes=None if reg is None else reg.loc[sub.index],
                          hotter_is_smaller=hotter_is_smaller)
            if reg is not None:
                handles = [Line2D([], [], color="black", lw=2.5, label="Regime I | II"),
                           Line2D([], [], color="black", lw=1.75, ls=(0, (4, 2.5)),
                                  label="II-A | II-B")]
                ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                          ncol=2, fontsize=7, frameon=False)
            fig.tight_layout()
            path = out / f"{_safe_name(kn)}_{metric}.png"
            fig.savefig(path, dpi=dpi)
            paths.append(path)
    return paths


def curves_along_t(curves: Mapping[str, np.ndarray], labels: Sequence[str],
                   path: str | os.PathLike, *, title: str = "", dpi: int = 120,
                   ylabel: str = "train error (%)") -> pathlib.Path:
    """Error along t for chosen cells: ``curves`` maps a path name ('line', 'bezier') to
    ``(ts [T], errors [n, T])``; one line per cell (``labels`` [n]), one panel per path."""
    fig = Figure(figsize=(4.2 * len(curves), 3.4), dpi=dpi)
    for k, (name, (ts, errs)) in enumerate(curves.items()):
        ax = fig.add_subplot(1, len(curves), k + 1)
        for lab, e in zip(labels, np.atleast_2d(errs)):
            ax.plot(ts, 100.0 * np.asarray(e), marker="o", ms=3, label=str(lab))
        ax.set_xlabel("t")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} {name}".strip(), fontsize=9)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
