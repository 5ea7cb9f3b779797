"""Overlays drawn on a phase diagram's cells: regime boundaries, hatched sick cells, "?" on
uncertain cells, the LMC transition per density column, and their legend handles.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle


from ._common import _align, _missing, metric_grid


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


_SICK_HATCH = "///"


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
    of its dense seeds. Nothing is drawn without the column, nor on a cell whose confidence is
    NaN ("n/a": it rests on fewer than two units, nothing to resample; ``ci_unit == "none"``).
    Returns the texts (gid ``"uncertain_cell"``)."""
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
