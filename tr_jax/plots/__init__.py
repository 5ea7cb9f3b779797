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
bootstrap and t intervals) and :mod:`.training` (training_curves: test error against epoch from
``metrics.jsonl``). Every name is importable from ``tr_jax.plots`` itself.
"""

from __future__ import annotations

import sys
import types

from . import _common, curves, overlays, phase, regime_map, training
from . import dichotomy as _dichotomy_module
# every name of the former single module, private ones included, stays importable from here
from ._common import (_DEFAULT_CMAPS, _FORMATS, _LOG_METRICS, _NAN_COLOR, _PERCENT_METRICS,  # noqa: F401
                      ALL_PANELS, METRIC_LABELS, PANELS, _align, _density_label, _fmt_temperature,  # noqa: F401
                      _metric_values, _missing, _regime_grid, _single_knob, _temperature_label,  # noqa: F401
                      metric_grid, safe_name, save_figure, umask)  # noqa: F401
from .curves import curves_along_t  # noqa: F401
from .dichotomy import DIRECTION_COLORS, dichotomy  # noqa: F401
from .overlays import (_SICK_HATCH, UNCERTAIN_BELOW, _sick_handle, _temperature_y,  # noqa: F401
                       _transition_handles, _transition_rows, _uncertain_handle,  # noqa: F401
                       draw_regime_boundaries, draw_sick_cells, draw_transition,  # noqa: F401
                       draw_uncertain_cells)  # noqa: F401
from .phase import figure2, phase_diagram  # noqa: F401
from .training import epoch_points, training_curves  # noqa: F401
from .regime_map import (REGIME_COLORS, REGIME_DESCRIPTIONS, _arrow_span, _components,  # noqa: F401
                         draw_three_regimes, three_regimes)  # noqa: F401

__all__ = [
    "PANELS",
    "ALL_PANELS",
    "curves_along_t",
    "training_curves",
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
    "dichotomy",
    "DIRECTION_COLORS",
]

_safe_name, _umask = safe_name, umask  # the names before 0.3 (kept for callers)

_SUBMODULES = (_common, overlays, phase, regime_map, curves, _dichotomy_module, training)


class _Package(types.ModuleType):
    """Setting a name on ``tr_jax.plots`` (``monkeypatch.setattr(plots, "draw_sick_cells", ...)``,
    ``plots.UNCERTAIN_BELOW = 0.9``) also sets it in every submodule that defines or imports
    it, so the functions that use it see the new value -- as when plots was one module."""

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        for mod in globals().get("_SUBMODULES", ()):
            if name in vars(mod) and not isinstance(vars(mod)[name], types.ModuleType):
                setattr(mod, name, value)


sys.modules[__name__].__class__ = _Package
