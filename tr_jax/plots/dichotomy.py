"""The dichotomy as a figure: per density, the hot-minus-cold effect on the pruned test error
with its two intervals (:func:`tr_jax.regimes.dichotomy`; Zhou et al., ICML 2023, Section 4:
a hotter dense model helps at low density and hurts at high density)."""

from __future__ import annotations

import os
import pathlib
import textwrap

import numpy as np
from matplotlib.figure import Figure

from ..regimes import Dichotomy
from ._common import save_figure

#: marker colour per declared direction
DIRECTION_COLORS = {"hotter better": "#1f77b4", "colder better": "#d62728", "unclear": "#7f7f7f"}


def dichotomy(dich, path: str | os.PathLike, *, dpi: int = 120) -> pathlib.Path:
    """Draw a :class:`tr_jax.regimes.Dichotomy`: one small panel per ``(knob, density)`` (a row
    per knob, densities ascending, each panel on its own scale: effects at 1 % and 50 % density
    differ by orders of magnitude), showing the hot-minus-cold effect in points of test error
    (negative = hotter better) as a dot coloured by the declared direction, the bootstrap
    interval as a thick grey bar on the left and the Student-t interval of the per-seed effects
    as a thin capped line on the right, and 0 as a dashed line. The verdict (first line of
    ``dich.text()``) is the title. Returns the PNG's path (written atomically)."""
    if not isinstance(dich, Dichotomy):
        raise TypeError(f"plots.dichotomy: expected a regimes.Dichotomy, got "
                        f"{type(dich).__name__}")
    table = dich.table
    knobs = list(dict.fromkeys(table["knob"])) or [""]
    n_dens = int(table.groupby("knob").size().max()) if len(table) else 1
    fig = Figure(figsize=(max(4.0, 1.9 * n_dens + 0.8), 0.6 + 2.9 * len(knobs)), dpi=dpi)
    level = f"{int(round(100 * dich.ci))}%"
    for k, kn in enumerate(knobs):
        sub = table[table["knob"] == kn].sort_values("density") if len(table) else table
        for j, r in enumerate(sub.itertuples()):
            ax = fig.add_subplot(len(knobs), n_dens, k * n_dens + j + 1)
            eff, blo, bhi, tlo, thi = (100.0 * float(v) for v in (
                r.effect, r.effect_lo, r.effect_hi, r.effect_t_lo, r.effect_t_hi))
            ax.axhline(0.0, color="black", lw=0.8, ls="--", zorder=1)
            ax.vlines(-0.2, blo, bhi, color="#555555", lw=7, alpha=0.45, zorder=2)
            if np.isfinite(tlo) and np.isfinite(thi):
                ax.errorbar([0.2], [eff], yerr=[[eff - tlo], [thi - eff]], fmt="none",
                            ecolor="black", elinewidth=1.0, capsize=5, zorder=3)
            color = DIRECTION_COLORS.get(str(r.direction), "#7f7f7f")
            ax.scatter([-0.2, 0.2], [eff, eff], c=color, s=30, zorder=4, edgecolors="black",
                       linewidths=0.5)
            ax.set_xticks([-0.2, 0.2])
            ax.set_xticklabels(["bootstrap", "t"], fontsize=7)
            ax.set_xlim(-0.7, 0.7)
            ax.tick_params(axis="y", labelsize=7)
            where = f"{100 * r.density:g}%" + (f" ({kn})" if len(knobs) > 1 else "")
            ax.set_title(f"{where}: {r.direction}", fontsize=8, color=color)
            ax.grid(axis="y", alpha=0.3)
            if j == 0:
                ax.set_ylabel("hot minus cold\ntest error (points)", fontsize=8)
    chars = int(fig.get_figwidth() * 14)  # characters of 8-point text per line of this figure
    note = (f"dot: hot-minus-cold effect; grey bar: {level} bootstrap over "
            f"{dich.unit.replace('_', ' ')}s; capped line: {level} t interval of the per-seed "
            f"effects")
    fig.text(0.5, 0.005, textwrap.fill(note, int(chars * 1.3)), ha="center", va="bottom",
             fontsize=6)
    head = dich.text().splitlines()[0].split(" (")[0]
    extra = " (Holm)" if getattr(dich, "correction", "none") == "holm" else ""
    fig.suptitle(textwrap.fill(head + extra, chars), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, path, dpi=dpi)
