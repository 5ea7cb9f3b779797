"""The three-regime picture (paper Figure 1) of a sweep: cells coloured by regime, boundaries,
favourable-move arrows and the transition.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Patch

from ..regimes import REGIMES, RegimeRule, cell_regimes, transition
from ._common import (label_grid_axes, _NAN_COLOR, _align, _single_knob, metric_grid, save_figure)
from .overlays import (_sick_handle, _transition_handles, _uncertain_handle, draw_regime_boundaries,
                       draw_sick_cells, draw_transition, draw_uncertain_cells)


#: fill colours of the regimes in :func:`three_regimes` (missing / sick-only cells are grey)
REGIME_COLORS: dict[str, str] = {"I": "#e08a7e", "II-A": "#f3cf7a", "II-B": "#8cbfe0"}
REGIME_DESCRIPTIONS: dict[str, str] = {
    "I": "I: poorly connected \u2192 raise temperature",
    "II-A": "II-A: connected, dissimilar \u2192 lower temperature",
    "II-B": "II-B: connected, similar \u2192 keep",
}


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
        regimes = cell_regimes(cells, rule_obj, hotter_is_smaller=hotter_is_smaller, required=True)
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
    label_grid_axes(ax, dens, temps, knob, "Density (load: fraction of conv weights kept)")
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
