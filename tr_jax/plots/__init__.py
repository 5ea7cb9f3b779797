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

The package's modules: :mod:`._common` (labels, colour maps, the cell grid, save_figure),
:mod:`.overlays` (boundaries, sick / uncertain cells, transition), :mod:`.phase` (phase_diagram,
figure2), :mod:`.regime_map` (three_regimes), :mod:`.curves` (curves_along_t) and
:mod:`.dichotomy` (the function ``dichotomy``: the hot-minus-cold effect per density with its
bootstrap and t intervals), :mod:`.training` (training_curves: test error against epoch from
``metrics.jsonl``) and :mod:`.depth` (layer_profile: per-layer metrics as (temperature x layer)
heat maps per density; esd_grid: Hessian eigenvalue densities per cell). Every public name is
importable from ``tr_jax.plots`` itself.
"""

from __future__ import annotations

from ._common import (PANELS, all_panels, metric_grid, metric_info, metric_label, safe_name,
                      save_figure)
from .curves import curves_along_t
from .depth import esd_grid, layer_profile
from .dichotomy import DIRECTION_COLORS, dichotomy
from .overlays import (UNCERTAIN_BELOW, draw_regime_boundaries, draw_sick_cells, draw_transition,
                       draw_uncertain_cells)
from .phase import figure2, phase_diagram
from .regime_map import REGIME_COLORS, REGIME_DESCRIPTIONS, draw_three_regimes, three_regimes
from .training import epoch_points, training_curves

__all__ = [
    "PANELS",
    "all_panels",
    "curves_along_t",
    "training_curves",
    "metric_label",
    "metric_info",
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
    "figure2",
    "dichotomy",
    "DIRECTION_COLORS",
    "REGIME_DESCRIPTIONS",
    "epoch_points",
    "layer_profile",
    "esd_grid",
]
