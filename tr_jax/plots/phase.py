"""Phase diagrams (paper Figure 2): one metric's heat map per knob with its overlays."""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..regimes import RegimeRule, cell_regimes, normalized_test_error, temperatures_hot_to_cold
from ._common import (PANELS, _NAN_COLOR, _PERCENT_METRICS, _align, _metric_values, _regime_grid,
                      _single_knob, label_grid_axes, metric_grid, metric_info, metric_label,
                      safe_name, save_figure)
from .overlays import (_sick_handle, _transition_handles, _uncertain_handle, draw_regime_boundaries,
                       draw_sick_cells, draw_transition, draw_uncertain_cells)


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
    info = metric_info(metric)
    if info is not None and info.log:
        vals = np.log10(vals.where(vals > 0))
    temps, dens, grid = metric_grid(cells, vals, hotter_is_smaller=hotter_is_smaller)

    cmap_obj = matplotlib.colormaps[cmap or (info.cmap if info is not None else "viridis")] \
        if cmap is None or isinstance(cmap, str) else cmap
    cmap_obj = cmap_obj.with_extremes(bad=_NAN_COLOR)
    finite = grid[np.isfinite(grid)]
    vmin = float(finite.min()) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    if info is not None and info.zero_is_top:
        vmax = max(vmax, 0.0)  # 0 (connected) is the light end
    if metric == "normalized_test_error":
        vmin = 0.0
    if vmax <= vmin:
        pad = max(0.1 * abs(vmin), 1e-3)
        vmin, vmax = vmin - pad, vmax + pad
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap_obj, vmin=vmin, vmax=vmax,
                   aspect="auto", interpolation="nearest", origin="upper")

    label_grid_axes(ax, dens, temps, knob, "Density (fraction of conv weights kept)")
    name, cbar_label = metric_label(metric)
    ax.set_title(title if title is not None else f"{name} \u2014 knob: {knob}")

    if annotate:
        n = max(len(temps), len(dens))
        size = 8 if n <= 6 else (7 if n <= 9 else 5.5)
        fmt = info.fmt if info is not None else "{:.3g}"
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
    else:
        reg = cell_regimes(cells, rule, hotter_is_smaller=hotter_is_smaller)
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
