"""The report's partial-results banner and its training-curves section (from ``metrics.jsonl``)."""
from __future__ import annotations

import pathlib
from typing import Any

from .. import plots
from ._load import Sweep
from ._render import _Block

METRICS_FILE = "metrics.jsonl"


def partial_banner(sw: Sweep) -> str:
    """The banner of a report on partial results (``sw.partial`` set)."""
    n, m = sw.partial
    return (f"Partial results: {n} of {m} cells; the run is still going or was stopped — rerun "
            f"`tr-jax run CONFIG --workdir {sw.workdir}` to finish it.")


def _read_metrics(path: pathlib.Path):
    """``metrics.jsonl`` through :func:`tr_jax.sweep.metrics.read_metrics` (a table)."""
    from ..sweep.metrics import read_metrics
    return read_metrics(path)


def training_section(sw: Sweep, figdir: pathlib.Path, dpi: int = 110
                     ) -> tuple[list[_Block], list[pathlib.Path]]:
    """"Training curves": test error against epoch per temperature (and density), dense
    training and retraining; skipped with a note without ``metrics.jsonl``."""
    blocks = [_Block("h2", "Training curves")]
    path = sw.workdir / METRICS_FILE
    if not path.is_file():
        blocks.append(_Block("note", f"No {METRICS_FILE} in the workdir (it is written while "
                             "the sweep trains): no training curves."))
        return blocks, []
    try:
        data: Any = _read_metrics(path)
    except Exception as e:  # noqa: BLE001 - a damaged log only loses this section
        blocks.append(_Block("note", f"{METRICS_FILE} could not be read ({type(e).__name__}: "
                             f"{e}): no training curves."))
        return blocks, []
    knob = str(sw.config.get("knob") or "temperature")
    figures = []
    for stage, text in (
            ("dense", "Dense training: test error against epoch, one line per temperature and "
                      "dense seed."),
            ("retrain", "Retraining: test error against epoch, one panel per density, one line "
                        "per temperature (mean over its retrained members).")):
        p = plots.training_curves(data, figdir / f"training_{stage}.png", stage=stage,
                                  knob=knob, dpi=dpi)
        if p is not None:
            figures.append(p)
            blocks.append(_Block("img", text=text, path=p))
    if not figures:
        blocks.append(_Block("note", f"{METRICS_FILE} holds no test errors yet: no training "
                             "curves."))
    return blocks, figures
