"""Phase diagrams of a pruning sweep (paper Figure 2) with regime boundaries.

Uses matplotlib's object API (:class:`matplotlib.figure.Figure`) only -- never pyplot's
global state -- so it is safe in threads and notebooks. When imported in a plain script
(no pyplot imported yet, no ``MPLBACKEND``, no IPython kernel) the Agg backend is selected
so nothing tries to open a window.

Every diagram has density on the x axis (ascending, labelled as percents) and temperature
on the y axis with the **hottest temperature at the top** (for the ``epochs`` knob: the
fewest epochs at the top). Regime boundaries are computed from the data (see
:func:`tr_jax.regimes.classify`, tr_jax's own rule): solid black between Regime I and a
connected cell, dashed black between II-A and II-B. Cells with a NaN metric are grey; cells
with sick members (a ``sick_members`` column > 0) are hatched; a transition table
(:func:`tr_jax.regimes.transition_with_uncertainty`) adds the LMC transition per density with
its seed-to-seed error bar (:func:`draw_transition`).

:func:`three_regimes` / :func:`draw_three_regimes` draw the paper's Figure 1 for the user's own
sweep: the (density x temperature) plane coloured by regime, the boundaries, the favourable-move
arrows (Regime I: raise the temperature; II-A: lower it) and the transition.

Every PNG is written atomically (:func:`save_figure`: a temporary file in the same directory,
then ``os.replace``), so a crash never leaves a half-written figure.
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
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

from .regimes import (KNOB_LABELS, REGIMES, RegimeRule, classify, normalized_test_error,
                      temperatures_hot_to_cold, transition)

__all__ = [
    "PANELS",
    "ALL_PANELS",
    "curves_along_t",
    "METRIC_LABELS",
    "metric_grid",
    "phase_diagram",
    "draw_regime_boundaries",
    "draw_transition",
    "draw_sick_cells",
    "draw_uncertain_cells",
    "UNCERTAIN_BELOW",
    "draw_three_regimes",
    "three_regimes",
    "REGIME_COLORS",
    "save_figure",
    "safe_name",
    "umask",
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
                  hotter_is_smaller: bool | Mapping[str, bool] | None = None,
                  transition: pd.DataFrame | None = None, sick: Any = None):
    """Heat map of ``metric`` for the cells of one knob on ``ax``; returns the AxesImage.

    x: density (categorical, ascending, percent labels); y: temperature (categorical,
    hottest at the top). Test errors are shown in percent. Each cell is annotated with
    its value; NaN cells are grey and blank. ``regimes`` (a column name, an index-aligned
    Series / sequence of labels, or a ready 2-D grid hot->cold x density ascending)
    draws regime boundaries via :func:`draw_regime_boundaries`. ``transition`` (a table
    from :func:`tr_jax.regimes.transition_with_uncertainty` or
    :func:`tr_jax.regimes.transition`) overlays the transition per density column via
    :func:`draw_transition`. ``sick`` (default: the ``sick_members`` column when present;
    ``False`` = off) hatches cells with sick members via :func:`draw_sick_cells`.
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
    if sick is not False:
        draw_sick_cells(ax, cells, sick, hotter_is_smaller=hotter_is_smaller)
    if transition is not None:
        draw_transition(ax, transition, temps, dens, knob=knob)
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


#: fill colours of the regimes in :func:`three_regimes` (missing / sick-only cells are grey)
REGIME_COLORS: dict[str, str] = {"I": "#e08a7e", "II-A": "#f3cf7a", "II-B": "#8cbfe0"}
REGIME_DESCRIPTIONS: dict[str, str] = {
    "I": "I: poorly connected \u2192 raise temperature",
    "II-A": "II-A: connected, dissimilar \u2192 lower temperature",
    "II-B": "II-B: connected, similar \u2192 keep",
}
_SICK_HATCH = "///"


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> pathlib.Path:
    """Save ``fig`` as PNG at ``path`` atomically, through tr_jax's one atomic writer
    (``tr_jax.sweep.store.atomic_write_bytes``: temporary file, fsync, rename; a crash never leaves
    a half-written PNG, a full disk is named)."""
    import io

    from tr_jax.sweep.store import atomic_write_bytes
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def draw_sick_cells(ax, cells: pd.DataFrame, sick: Any = None, *,
                    hotter_is_smaller: bool | Mapping[str, bool] | None = None
                    ) -> list[Rectangle]:
    """Hatch (``///``, dark red, half transparent) every cell with at least one sick member.

    ``sick``: a column name, an index-aligned Series/sequence of counts or flags, or None
    for the ``sick_members`` column (nothing is drawn when it is absent). Cells are
    those of one knob laid out as in :func:`metric_grid`. Returns the patches (gid
    ``"sick_cell"``)."""
    if sick is None:
        if "sick_members" not in cells.columns:
            return []
        sick = "sick_members"
    vals = cells[sick] if isinstance(sick, str) else _align(sick, cells)
    vals = pd.to_numeric(pd.Series(vals, index=cells.index), errors="coerce").fillna(0.0)
    _, _, grid = metric_grid(cells, vals.astype(float), hotter_is_smaller=hotter_is_smaller)
    patches = []
    for r, c in zip(*np.nonzero(np.nan_to_num(grid) > 0)):
        rect = Rectangle((c - 0.46, r - 0.46), 0.92, 0.92, fill=False, hatch=_SICK_HATCH,
                         edgecolor=(0.5, 0.0, 0.0, 0.55), linewidth=1.2, zorder=3.5)
        rect.set_gid("sick_cell")
        ax.add_patch(rect)
        patches.append(rect)
    return patches


#: a cell's regime is marked uncertain below this regime confidence (share of bootstrap
#: resamples giving the same regime, :func:`tr_jax.regimes.cells_from_results`)
UNCERTAIN_BELOW = 0.8


def draw_uncertain_cells(ax, cells: pd.DataFrame, *, threshold: float = UNCERTAIN_BELOW,
                         hotter_is_smaller: bool | Mapping[str, bool] | None = None) -> list:
    """Mark with a "?" (top right of the cell) every cell whose ``regime_confidence`` is below
    ``threshold``: its regime changes in more than ``1 - threshold`` of the bootstrap resamples
    of its dense seeds. Nothing is drawn without the column. Returns the texts (gid
    ``"uncertain_cell"``)."""
    if "regime_confidence" not in cells.columns:
        return []
    conf = pd.to_numeric(cells["regime_confidence"], errors="coerce").astype(float)
    _, _, grid = metric_grid(cells, conf, hotter_is_smaller=hotter_is_smaller)
    marks = []
    with np.errstate(invalid="ignore"):
        low = np.isfinite(grid) & (grid < threshold)
    for r, c in zip(*np.nonzero(low)):
        t = ax.text(c + 0.36, r - 0.3, "?", ha="center", va="center", fontsize=9,
                    fontweight="bold", color="black", zorder=7,
                    path_effects=[patheffects.withStroke(linewidth=2.0, foreground="white")])
        t.set_gid("uncertain_cell")
        marks.append(t)
    return marks


def _uncertain_handle() -> Line2D:
    return Line2D([], [], marker="$?$", color="black", ls="none", ms=7,
                  label=f"regime confidence < {100 * UNCERTAIN_BELOW:.0f}%")


def _temperature_y(temps: Sequence[float], t: Any) -> float:
    """Row coordinate of temperature ``t`` on a categorical axis whose row ``i`` is
    ``temps[i]`` (piecewise linear between rows, clipped to the outer cell edges)."""
    if t is None or pd.isna(t) or not len(temps):
        return float("nan")
    t = float(t)
    xs = np.asarray(temps, dtype=float)
    rows = np.arange(len(xs), dtype=float)
    if len(xs) == 1:
        return 0.0 if t == xs[0] else float("nan")
    if xs[0] > xs[-1]:
        xs, rows = xs[::-1], rows[::-1]
    lo, hi = xs[0], xs[-1]
    if t < lo or t > hi:  # beyond the grid: half a cell past the edge row at most
        step = (xs[1] - xs[0]) if t < lo else (xs[-1] - xs[-2])
        edge_row = rows[0] if t < lo else rows[-1]
        nb_row = rows[1] if t < lo else rows[-2]
        frac = min(abs(t - (lo if t < lo else hi)) / max(abs(step), 1e-12), 0.5)
        return float(edge_row + (edge_row - nb_row) * frac)
    return float(np.interp(t, xs, rows))


def _transition_rows(transition_table: pd.DataFrame, knob: Any) -> pd.DataFrame:
    tt = transition_table
    if "knob" in tt.columns and knob is not None:
        tt = tt[tt["knob"].astype(str) == str(knob)]
    return tt


def draw_transition(ax, transition_table: pd.DataFrame, temps: Sequence[float],
                    dens: Sequence[float], *, knob: Any = None, best: bool = True,
                    sharp_only: bool = False, color: str = "black") -> dict[str, Any]:
    """Overlay the transition per density column on a phase diagram laid out as
    :func:`metric_grid` (``temps`` hot->cold rows, ``dens`` ascending columns).

    ``transition_table`` is either :func:`tr_jax.regimes.transition_with_uncertainty`'s
    table (``lmc_transition`` +- ``lmc_transition_std`` across seeds, drawn as a diamond
    with a vertical error bar; hollow where ``sharp`` is False; ``best_temperature`` +-
    ``best_temperature_std`` as a white star) or :func:`tr_jax.regimes.transition`'s
    (the edge between ``hot_temperature`` and ``cold_temperature``, no error bar).
    Temperatures between grid rows are placed by linear interpolation. Columns whose
    transition is NaN are left out. Returns ``{"transition": ErrorbarContainer | None,
    "best": ErrorbarContainer | None, "x": [...], "y": [...]}``; the marker lines have
    gids ``"transition"`` and ``"best_temperature"``."""
    tt = _transition_rows(transition_table, knob)
    d_pos = {round(float(d), 12): j for j, d in enumerate(dens)}
    xs, ys, lo, hi, filled = [], [], [], [], []
    bx, by, blo, bhi = [], [], [], []
    for _, row in tt.iterrows():
        j = d_pos.get(round(float(row["density"]), 12))
        if j is None:
            continue
        if "lmc_transition" in row.index:
            t = row["lmc_transition"]
            sd = row.get("lmc_transition_std", np.nan)
            sd = 0.0 if pd.isna(sd) else float(sd)
            y = _temperature_y(temps, t)
            if np.isfinite(y):
                sharp = row.get("sharp", True)
                sharp = True if pd.isna(sharp) else bool(sharp)
                if sharp or not sharp_only:
                    y_lo, y_hi = _temperature_y(temps, t - sd), _temperature_y(temps, t + sd)
                    a, b = sorted((y_lo, y_hi))
                    xs.append(j)
                    ys.append(y)
                    lo.append(max(y - a, 0.0))
                    hi.append(max(b - y, 0.0))
                    filled.append(sharp)
        elif "hot_temperature" in row.index and "cold_temperature" in row.index:
            drop = row.get("lmc_drop", np.nan)
            if pd.isna(drop) or float(drop) <= 0:
                continue
            y = 0.5 * (_temperature_y(temps, row["hot_temperature"])
                       + _temperature_y(temps, row["cold_temperature"]))
            if np.isfinite(y):
                xs.append(j)
                ys.append(y)
                lo.append(0.0)
                hi.append(0.0)
                filled.append(True)
        if best and "best_temperature" in row.index:
            yb = _temperature_y(temps, row["best_temperature"])
            if np.isfinite(yb):
                sd = row.get("best_temperature_std", np.nan)
                sd = 0.0 if pd.isna(sd) else float(sd)
                t = float(row["best_temperature"])
                a, b = sorted((_temperature_y(temps, t - sd), _temperature_y(temps, t + sd)))
                bx.append(j - 0.36)
                by.append(yb)
                blo.append(max(yb - a, 0.0))
                bhi.append(max(b - yb, 0.0))
    out: dict[str, Any] = {"transition": None, "best": None, "x": xs, "y": ys}
    effects = [patheffects.withStroke(linewidth=3.2, foreground="white", alpha=0.9)]
    if xs:
        cont = ax.errorbar(xs, ys, yerr=[lo, hi], fmt="D", ms=6.5, color=color, mfc=color,
                           mec="white", mew=1.0, ecolor=color, elinewidth=1.6, capsize=4,
                           capthick=1.6, zorder=6, linestyle="none")
        cont.lines[0].set_gid("transition")
        out["not_sharp"] = sum(1 for f in filled if not f)
        for line in cont.lines[2]:
            line.set_path_effects(effects)
        hollow = [k for k, f in enumerate(filled) if not f]
        if hollow:
            ax.plot([xs[k] for k in hollow], [ys[k] for k in hollow], "D", ms=4.0, color="white",
                    zorder=6.5, gid="transition_not_sharp")
        if len(xs) > 1:
            order = np.argsort(xs)
            ax.plot(np.asarray(xs)[order], np.asarray(ys)[order], ls=":", lw=1.2, color=color,
                    zorder=5.5, gid="transition_line")
        out["transition"] = cont
    if bx:
        cont = ax.errorbar(bx, by, yerr=[blo, bhi], fmt="*", ms=9, color="white", mec="black",
                           mew=0.8, ecolor="white", elinewidth=1.2, capsize=3, zorder=6,
                           linestyle="none")
        cont.lines[0].set_gid("best_temperature")
        out["best"] = cont
    return out


def _transition_handles(result: dict[str, Any]) -> list[Any]:
    handles = []
    if result.get("transition") is not None:
        handles.append(Line2D([], [], marker="D", color="black", mec="white", ls=":", ms=6,
                              label="LMC transition (\u00b1 sd over seeds)"))
        if result.get("not_sharp"):
            handles.append(Line2D([], [], marker="D", color="black", mfc="white", ls="none", ms=6,
                                  label="largest LMC drop, not sharp"))
    if result.get("best") is not None:
        handles.append(Line2D([], [], marker="*", color="white", mec="black", ls="none", ms=9,
                              label="best test error (\u00b1 sd)"))
    return handles


def _sick_handle() -> Patch:
    return Patch(facecolor="white", edgecolor="#7f0000", hatch=_SICK_HATCH,
                 label="cell with sick members")


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components of a boolean grid, each a list of (row, col)."""
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    n, m = mask.shape
    for r0 in range(n):
        for c0 in range(m):
            if not mask[r0, c0] or seen[r0, c0]:
                continue
            stack, comp = [(r0, c0)], []
            seen[r0, c0] = True
            while stack:
                r, c = stack.pop()
                comp.append((r, c))
                for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                    if 0 <= rr < n and 0 <= cc < m and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
            comps.append(sorted(comp))
    return comps


def _arrow_span(comp: list[tuple[int, int]]) -> tuple[int, int, int]:
    """Column and row range (top, bottom) of the longest vertical run of a component;
    ties go to the column nearest the component's centre."""
    cols = sorted({c for _, c in comp})
    centre = float(np.mean([c for _, c in comp]))
    best = None
    for c in cols:
        rows = sorted(r for r, cc in comp if cc == c)
        start = prev = rows[0]
        for r in rows[1:] + [None]:
            if r is not None and r == prev + 1:
                prev = r
                continue
            key = (prev - start + 1, -abs(c - centre))
            if best is None or key > best[0]:
                best = (key, c, start, prev)
            if r is not None:
                start = prev = r
    _, c, top, bottom = best
    return c, top, bottom


def draw_three_regimes(ax, cells: pd.DataFrame, regimes: Any = None, *,
                       rule: RegimeRule | Mapping[str, Any] | None = None,
                       transition_table: pd.DataFrame | None | bool = None,
                       hotter_is_smaller: bool | Mapping[str, bool] | None = None,
                       annotate: bool = True, arrows: bool = True, legend: bool = True,
                       sick: Any = None, title: str | None = None) -> dict[str, Any]:
    """Figure 1 of the paper for the user's own sweep: the (density x temperature) plane of
    one knob coloured by regime (:data:`REGIME_COLORS`; cells without a regime grey),
    hottest temperature at the top, regime boundaries (solid I | II, dashed II-A | II-B),
    one favourable-move arrow inside every connected region of Regime I (up: raise the
    temperature) and of II-A (down: lower it), and the transition per density column.

    ``regimes``: labels aligned with ``cells`` / a column name; default ``cells["regime"]``
    or :func:`tr_jax.regimes.classify` with ``rule``. ``transition_table``: a table for
    :func:`draw_transition`; None computes :func:`tr_jax.regimes.transition` from the
    cells and marks the columns whose largest LMC drop exceeds the rule's
    ``jump_threshold``; False draws none. Cells are annotated with their test error.

    Returns ``{"image", "codes" (grid: 0 = I, 1 = II-A, 2 = II-B, NaN = none),
    "boundaries", "arrows" (list of ``(regime, FancyArrowPatch)``), "transition",
    "sick", "temperatures", "densities"}``.
    """
    knob = _single_knob(cells)
    rule_obj = RegimeRule.from_dict(rule)
    if regimes is None:
        if "regime" in cells.columns:
            regimes = cells["regime"]
        else:
            regimes = classify(cells, rule_obj, hotter_is_smaller=hotter_is_smaller)
    elif isinstance(regimes, str):
        regimes = cells[regimes]
    reg = _align(regimes, cells).astype(object)
    temps, dens, rgrid = metric_grid(cells, reg, hotter_is_smaller=hotter_is_smaller)
    code_of = {r: float(k) for k, r in enumerate(REGIMES)}
    codes = np.full(rgrid.shape, np.nan)
    for (r, c), v in np.ndenumerate(rgrid):
        if v is not None and str(v) in code_of:
            codes[r, c] = code_of[str(v)]
    cmap = ListedColormap([REGIME_COLORS[r] for r in REGIMES]).with_extremes(bad=_NAN_COLOR)
    im = ax.imshow(np.ma.masked_invalid(codes), cmap=cmap, vmin=-0.5, vmax=len(REGIMES) - 0.5,
                   aspect="auto", interpolation="nearest", origin="upper")
    im.set_gid("regime_image")
    ax.set_xticks(range(len(dens)))
    ax.set_xticklabels([_density_label(d) for d in dens])
    ax.set_yticks(range(len(temps)))
    ax.set_yticklabels([_fmt_temperature(t) for t in temps])
    ax.set_xlabel("Density (load: fraction of conv weights kept)")
    ax.set_ylabel(_temperature_label(knob))
    ax.tick_params(length=0)
    ax.set_title(title if title is not None else f"Three regimes of this sweep \u2014 knob: {knob}")
    n = max(len(temps), len(dens))
    size = 8 if n <= 6 else (7 if n <= 9 else 5.5)
    if annotate:
        err = None
        if "test_error" in cells.columns:
            err = metric_grid(cells, cells["test_error"].astype(float) * 100.0,
                              hotter_is_smaller=hotter_is_smaller)[2]
        for (r, c), v in np.ndenumerate(rgrid):
            label = "n/a" if v is None else str(v)
            if err is not None and np.isfinite(err[r, c]):
                label += f"\n{err[r, c]:.1f}%"
            ax.text(c - 0.12, r, label, ha="center", va="center", fontsize=size, zorder=5,
                    color="black")
    bounds = draw_regime_boundaries(ax, rgrid, label_cells=False)
    arrow_patches: list[tuple[str, FancyArrowPatch]] = []
    if arrows:
        for regime, up in (("I", True), ("II-A", False)):
            mask = np.array([[v == regime for v in row] for row in rgrid], dtype=bool)
            for comp in _components(mask):
                c, top, bottom = _arrow_span(comp)
                y_top, y_bottom = top - 0.3, bottom + 0.3
                start, end = ((c + 0.3, y_bottom), (c + 0.3, y_top)) if up else \
                    ((c + 0.3, y_top), (c + 0.3, y_bottom))
                arrow = FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14,
                                        lw=2.0, color="black", zorder=6)
                arrow.set_gid(f"advice_arrow_{regime}")
                ax.add_patch(arrow)
                arrow_patches.append((regime, arrow))
    sick_patches = [] if sick is False else draw_sick_cells(
        ax, cells, sick, hotter_is_smaller=hotter_is_smaller)
    unsure = draw_uncertain_cells(ax, cells, hotter_is_smaller=hotter_is_smaller)
    if transition_table is None:
        tt = transition(cells, hotter_is_smaller=hotter_is_smaller)
        tt = tt[tt["lmc_drop"] > rule_obj.jump_threshold]
        trans = draw_transition(ax, tt, temps, dens, knob=knob, best=False)
    elif transition_table is False:
        trans = {"transition": None, "best": None, "x": [], "y": []}
    else:
        trans = draw_transition(ax, transition_table, temps, dens, knob=knob)
    ax.set_xlim(-0.5, len(dens) - 0.5)
    ax.set_ylim(len(temps) - 0.5, -0.5)
    if legend:
        handles: list[Any] = [Patch(facecolor=REGIME_COLORS[r], edgecolor="none",
                                    label=REGIME_DESCRIPTIONS[r]) for r in REGIMES]
        if np.isnan(codes).any():
            handles.append(Patch(facecolor=_NAN_COLOR, edgecolor="none", label="no regime (NaN)"))
        handles += [Line2D([], [], color="black", lw=2.5, label="Regime I | II"),
                    Line2D([], [], color="black", lw=1.75, ls=(0, (4, 2.5)), label="II-A | II-B")]
        handles += _transition_handles(trans)
        if sick_patches:
            handles.append(_sick_handle())
        if unsure:
            handles.append(_uncertain_handle())
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
                  frameon=False, borderaxespad=0.0)
    return {"image": im, "codes": codes, "boundaries": bounds, "arrows": arrow_patches,
            "transition": trans, "sick": sick_patches, "uncertain": unsure,
            "temperatures": temps, "densities": dens}


def three_regimes(cells: pd.DataFrame, path: str | os.PathLike, regimes: Any = None, *,
                  knob: str | None = None, rule: RegimeRule | Mapping[str, Any] | None = None,
                  transition_table: pd.DataFrame | None | bool = None, dpi: int = 120,
                  hotter_is_smaller: bool | Mapping[str, bool] | None = None,
                  title: str | None = None) -> pathlib.Path:
    """Write the three-regime picture (:func:`draw_three_regimes`) of one knob's cells as a
    PNG at ``path`` (atomically; parent directories created); returns the path. With
    several knobs in ``cells`` pass ``knob``."""
    if "knob" not in cells.columns:
        raise ValueError("three_regimes: cells table lacks a 'knob' column")
    knobs = sorted(set(cells["knob"]), key=str)
    if knob is not None:
        if knob not in knobs:
            raise ValueError(f"three_regimes: knob {knob!r} not in cells (has {knobs})")
        keep = (cells["knob"] == knob).to_numpy()
        if regimes is not None and not isinstance(regimes, str):
            regimes = _align(regimes, cells)[keep]
        cells = cells[keep]
    elif len(knobs) != 1:
        raise ValueError(f"three_regimes: cells hold several knobs {knobs}; pass knob=")
    n_t, n_d = cells["temperature"].nunique(), cells["density"].nunique()
    fig = Figure(figsize=(max(5.0, 0.95 * n_d + 2.6) + 3.2, max(3.6, 0.55 * n_t + 2.2)), dpi=dpi)
    ax = fig.add_subplot()
    draw_three_regimes(ax, cells, regimes, rule=rule, transition_table=transition_table,
                       hotter_is_smaller=hotter_is_smaller, title=title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)


def safe_name(s: Any) -> str:
    """``s`` as a file-name part: runs of characters other than ``[A-Za-z0-9_.-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)) or "knob"


def figure2(cells: pd.DataFrame, out_dir: str | os.PathLike, knob: str | None = None,
            regimes: Any = None, *, rule: RegimeRule | Mapping[str, Any] | None = None,
            dpi: int = 120, panels: Sequence[str] = PANELS,
            hotter_is_smaller: bool | Mapping[str, bool] | None = None,
            transition: pd.DataFrame | None = None) -> list[pathlib.Path]:
    """Write one PNG per panel (default :data:`PANELS`) for each knob (or only ``knob``)
    as ``{out_dir}/{knob}_{metric}.png`` (atomically); creates ``out_dir``; returns the paths.

    Every panel gets the same regime boundaries; NaN cells are grey; cells with
    ``sick_members > 0`` (when that column exists) are hatched; cells whose
    ``regime_confidence`` is below :data:`UNCERTAIN_BELOW` get a "?"; ``transition`` (from
    :func:`tr_jax.regimes.transition_with_uncertainty` or :func:`tr_jax.regimes.transition`)
    overlays the transition per density column with its seed error bar.

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
                          hotter_is_smaller=hotter_is_smaller, sick=False)
            handles: list[Any] = []
            if reg is not None:
                handles += [Line2D([], [], color="black", lw=2.5, label="Regime I | II"),
                            Line2D([], [], color="black", lw=1.75, ls=(0, (4, 2.5)),
                                   label="II-A | II-B")]
            if draw_sick_cells(ax, sub, hotter_is_smaller=hotter_is_smaller):
                handles.append(_sick_handle())
            if draw_uncertain_cells(ax, sub, hotter_is_smaller=hotter_is_smaller):
                handles.append(_uncertain_handle())
            if transition is not None:
                temps = temperatures_hot_to_cold(sub["temperature"], kn, hotter_is_smaller)
                dens = sorted({float(d) for d in sub["density"]})
                handles += _transition_handles(
                    draw_transition(ax, transition, temps, dens, knob=kn))
            if handles:
                ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                          ncol=min(len(handles), 3), fontsize=7, frameon=False)
            fig.tight_layout()
            paths.append(save_figure(fig, out / f"{safe_name(kn)}_{metric}.png", dpi=dpi))
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
    return save_figure(fig, path, dpi=dpi)


_safe_name, _umask = safe_name, umask  # the names before 0.3 (kept for callers)
