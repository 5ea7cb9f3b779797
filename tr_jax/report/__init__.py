"""A self-contained report of a finished sweep: ``report.html`` and ``report.md``.

    from tr_jax.report import write_report
    paths = write_report("runs/quick")          # -> {"html": ..., "markdown": ..., "figures": [...]}

or ``tr-jax report runs/quick [--out DIR]``. The report reads the workdir's ``cells.csv``,
``results.csv`` (optional: the transition's seed uncertainty) and ``config.json`` (optional:
provenance and the regime rule the sweep used) and writes

* ``report.html``: one file, figures embedded as base64 PNG data URIs, inline CSS, no external
  resource (open it anywhere, mail it);
* ``report.md``: the same text, figures referenced as relative files in ``report_figures/``.

Sections: provenance; the three-regime picture of the sweep (paper Figure 1) and the phase
diagrams of every measured metric with regime boundaries and the transition (Figure 2); the
regime table; the transition per density with its seed-to-seed uncertainty; the dichotomy
(verdict, figure of each density's effect with its bootstrap and t intervals, and how many dense
seeds would decide each density, :func:`tr_jax.regimes.power`); case study 1
(raise or lower the temperature? advice per density at the coldest temperature, and how often
the advice was right in this sweep); case study 2 (which model of the family to prune: the
selectors' regret, intervals over dense seeds when results.csv has >= 2); case study 3 (SAM
rho tuning, when the sweep's knob is ``sam_rho``); and,
when regime labels are supplied, thresholds fitted to them.

The regime rule is tr_jax's own (the reference has none; docs/fidelity.md, Regime rule): the one in the
workdir's ``config.json`` unless ``rule`` is given.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

from .. import plots
from ..regimes import RegimeRule
from ..files import atomic_write_bytes, atomic_write_text
from ._cases import (_case1, _case2, _case3, _dichotomy_section, _fit_section, _panels,
                     accuracy_sentence)
from ._load import (FIGURES_DIR, Sweep, coldest_temperature, load_labels, load_workdir,
                    match_density, match_temperature)
from ._render import _Block, _render_html, _render_md
from ._sections import _provenance, _regime_section, _transition_section, _transition_table
from ._training import partial_banner, training_section

__all__ = ["Sweep", "load_workdir", "match_density", "match_temperature", "write_report",
           "load_labels", "accuracy_sentence", "coldest_temperature", "FIGURES_DIR"]


def _guarded(sw: Sweep, what: str, make, failed: Any = ()):
    """``make()``; on partial results (``sw.partial``) a section that cannot be built from the
    cells measured so far is skipped with a note (returns ``[note]``, or ``(failed, None)``
    with ``failed`` given as None)."""
    if sw.partial is None:
        return make()
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - partial results: skip the section, say why
        if failed is None:
            return None, None
        return [_Block("note", f"{what}: skipped, it needs the finished sweep (partial "
                       f"results: {type(e).__name__}: {e}).")]


def write_report(workdir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                 rule: RegimeRule | Mapping[str, Any] | None = None, density: Any = None,
                 labels: Any = None, dpi: int = 110) -> dict[str, Any]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ ``report_figures/``) for the
    sweep in ``workdir`` into ``out_dir`` (default: the workdir).

    ``rule``: regime rule (default: the one in ``config.json``); ``density``: a density of the
    sweep whose case-study-1 advice is spelled out in full (``ValueError`` listing the
    available densities otherwise); ``labels``: regime labels for the fitted-threshold section
    (see :func:`load_labels`; the section is skipped without labels).

    Returns ``{"html": Path, "markdown": Path, "figures_dir": Path, "figures": [Path, ...],
    "dichotomy": str or None, "partial": str or None}`` (the verdict of
    :func:`tr_jax.regimes.dichotomy`, None without results.csv; the partial-results banner when
    the workdir has no ``cells.csv`` yet but a ``cells.partial.csv``: a sweep still measuring or
    stopped, whose report shows the cells measured so far and skips, with a note, the sections
    they cannot make). A "Training curves" section draws ``metrics.jsonl`` when there is one.
    Raises ``ValueError`` naming the path when the workdir has no ``cells.csv``.
    """
    sw = load_workdir(workdir, rule=rule, partial_ok=True)
    focus = match_density(sw.cells, density) if density is not None else None
    out = pathlib.Path(out_dir) if out_dir is not None else sw.workdir
    out.mkdir(parents=True, exist_ok=True)
    figdir = out / FIGURES_DIR
    figdir.mkdir(parents=True, exist_ok=True)
    tt, tt_source = _guarded(sw, "transition", lambda: _transition_table(sw), None)
    if tt is None:
        tt, tt_source = None, "none (partial results)"

    name = sw.config.get("name") or sw.workdir.name
    title = f"tr_jax report: {name}"
    blocks: list[_Block] = [
        _Block("h1", title),
        _Block("p", "A three-regime analysis of a pruning sweep (Zhou, Yang, Chang, Mahoney, "
               "ICML 2023): dense models at several temperatures, pruned to several densities "
               "and retrained with several seeds; linear mode connectivity (LMC) and CKA of "
               "the retrained pairs place each (temperature, density) cell in Regime I, II-A "
               "or II-B."),
    ]
    if sw.partial is not None:  # cells.partial.csv of a sweep still measuring (or stopped)
        blocks.insert(1, _Block("note", partial_banner(sw)))
    blocks += _provenance(sw)

    figures: list[pathlib.Path] = []
    blocks.append(_Block("h2", "The three regimes of this sweep"))
    for knob in sw.knobs:
        sub = sw.cells[sw.cells["knob"] == knob]
        p = plots.three_regimes(sub, figdir / f"{plots.safe_name(knob)}_three_regimes.png",
                                transition_table=tt, dpi=dpi)
        figures.append(p)
        blocks.append(_Block("img", text=f"Regimes of the (density x temperature) plane, knob "
                             f"{knob}: hottest at the top; arrows = favourable moves; diamonds = "
                             f"LMC transition (+- sd over dense seeds); stars = best test error.",
                             path=p))
    blocks += _regime_section(sw)

    blocks.append(_Block("h2", "Phase diagrams"))
    panels = _panels(sw.cells)
    skipped = [m for m in plots.all_panels() if m not in panels]
    blocks.append(_Block("p", "Figure 2 of the paper for this sweep: density across, temperature "
                         "down (hottest on top). Solid line: Regime I | II; dashed: II-A | II-B; "
                         "grey: missing (NaN) cells; hatched: cells with sick members; diamonds: "
                         "the LMC transition with its seed error bar."))
    diagrams = plots.figure2(sw.cells, figdir, regimes="regime", panels=panels, dpi=dpi,
                             transition=tt)
    for p in diagrams:
        figures.append(p)
        metric = max((m for m in panels if p.stem.endswith("_" + m)), key=len, default=p.stem)
        blocks.append(_Block("img", text=plots.metric_label(metric)[0], path=p))
    if skipped:
        blocks.append(_Block("note", "Not measured in this sweep (no panel): "
                             + ", ".join(skipped) + "."))
    curves = sorted((sw.workdir / "figures").glob("curves_density_*.png"))
    if curves:
        blocks.append(_Block("h3", "Error along the path between retrained pairs"))
        for c in curves:
            dst = figdir / c.name
            if c.resolve() != dst.resolve():
                atomic_write_bytes(dst, c.read_bytes())
            figures.append(dst)
            blocks.append(_Block("img", text=f"Train error along t, {c.stem.split('_')[-1]} "
                                 "density (line = LMC path; Bezier when measured)", path=dst))

    train_blocks, train_figures = training_section(sw, figdir, dpi)
    blocks += train_blocks
    figures += train_figures

    blocks += _guarded(sw, "The transition", lambda: _transition_section(sw, tt, tt_source))
    dich_blocks, dich_text = _guarded(sw, "The dichotomy",
                                      lambda: _dichotomy_section(sw, figdir, dpi), None)
    if dich_blocks is None:
        dich_blocks, dich_text = [], None
    figures += [b.path for b in dich_blocks if b.kind == "img"]
    blocks += dich_blocks
    blocks += _guarded(sw, "Case study 1", lambda: _case1(sw, focus))
    blocks += _guarded(sw, "Case study 2", lambda: _case2(sw))
    blocks += _guarded(sw, "Case study 3", lambda: _case3(sw))
    if labels is not None:
        blocks += _fit_section(sw, labels)

    html_path = out / "report.html"
    md_path = out / "report.md"
    atomic_write_text(html_path, _render_html(blocks, title))
    atomic_write_text(md_path, _render_md(blocks, figdir, out))
    return {"html": html_path, "markdown": md_path, "figures_dir": figdir, "figures": figures,
            "dichotomy": dich_text,
            "partial": partial_banner(sw) if sw.partial is not None else None}

