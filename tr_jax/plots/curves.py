"""Error along the interpolation path t (line / Bezier) for chosen cells."""

from __future__ import annotations

import os
import pathlib
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure


from ._common import save_figure


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
