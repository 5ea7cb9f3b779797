"""Regime classification of a pruning sweep (paper Figure 1).

A sweep produces a table of *cells*, one per ``(knob, temperature, density)``, as a
:class:`pandas.DataFrame` with at least the columns

``knob``         str, the temperature knob (``"epochs"``, ``"batch_size"``, ``"sam_rho"``, ...)
``temperature``  float, the knob value (for ``"epochs"`` the dense training epoch count)
``density``      float in (0, 1], fraction of surviving conv weights
``test_error``   float, test-error *fraction*
``lmc``          float, linear mode connectivity ``mean(e_endpoints) - e(t*)`` on the
                 *train-error fraction*; negative = barrier = poorly connected, ~0 = connected
``cka``          float in [0, 1], linear CKA of the softmax outputs; higher = more similar

Regimes (Zhou et al., ICML 2023, Figure 1):

* ``"I"``    poorly connected (a loss barrier between retrained models),
* ``"II-A"`` connected but relatively dissimilar (lower CKA),
* ``"II-B"`` connected and similar (high CKA).

At fixed density the favourable moves are I -> II-A by *raising* the temperature and
II-A -> II-B by *lowering* it (see :func:`advice`).

.. important::
   The reference implementation contains **no** classification code: the regimes in the
   paper are drawn by eye on the phase diagrams. The rule implemented here is **tr_jax's
   own** (docs/fidelity.md, Regime rule), documented in :class:`RegimeRule` and fully configurable.
   All LMC thresholds are expressed on the **train-error fraction** (``0.05`` = 5 points of
   train error), the same scale as the ``lmc`` column.

Analysis helpers: :func:`fit_rule` fits the rule's thresholds to given labels (exact 1-D
search per threshold, coordinate-wise); :func:`cells_from_results` is the one home of cell
aggregation (cells.csv from results.csv, with bootstrap intervals over dense seeds and a
regime confidence); :func:`cells_by_seed` gives per-dense-seed cells; :func:`dichotomy` tests
the paper's dichotomy (hotter better at low density, worse at high density) with bootstrap
intervals (and, with :func:`power` / :func:`power_from_summary`, how many dense seeds a study
needs to decide it; :func:`lmc_change` tests the LMC change between two temperatures); and
:func:`transition_with_uncertainty` estimates the LMC transition and the best temperature per
dense seed with their seed-to-seed spread. :func:`layer_rows` and :func:`layer_profiles` read the
per-layer metrics (``<base>@<layer>`` rows) into depth profiles with bootstrap intervals. The
case studies live in :mod:`tr_jax.casestudies`.

"Hot" and "cold": what "hotter" means depends on the knob. Fewer training epochs, a
smaller batch, a larger SAM radius or a larger learning rate are all *hotter*; see
:data:`HOTTER_IS_SMALLER` and :func:`temperature_order`.

Modules: :mod:`~tr_jax.regimes.rule` (the rule), :mod:`~tr_jax.regimes.aggregate` (cells.csv),
:mod:`~tr_jax.regimes.cells` (per-seed cells, transition uncertainty), :mod:`~tr_jax.regimes.fit`,
:mod:`~tr_jax.regimes.dichotomy`, :mod:`~tr_jax.regimes.power`,
:mod:`~tr_jax.regimes.lmc_change`, :mod:`~tr_jax.regimes.summary`,
:mod:`~tr_jax.regimes.layers` (per-layer depth profiles).
"""
from __future__ import annotations

from .aggregate import (PROVENANCE, cell_metrics, cells_from_results, optional_metrics,
                        prepare_results)
from .cells import cells_by_seed, transition_with_uncertainty
from .dichotomy import CORRECTIONS, Dichotomy, dichotomy, holm, unit_effects
from .fit import FIT_BOUNDS, FitResult, fit_rule
from .rule import (CLASSIFY_COLUMNS, CODE_OF_LABEL, HOTTER_IS_SMALLER, KNOB_LABELS, KNOB_TABLE,
                   KNOBS, LABEL_OF_CODE, REGIMES, Column, RegimeRule, advice, cell_regimes, change_point,
                   classify, coerce_rule, column_codes, column_hot_to_cold, density_columns,
                   format_density, largest_drop,
                   normalized_test_error, require_columns, temperature_order,
                   temperatures_hot_to_cold, transition)
from .layers import layer_profiles, layer_rows
from .lmc_change import lmc_change
from .power import PowerAnalysis, power, power_from_summary, sd_from_t_interval
from .summary import summary_table

__all__ = [
    "REGIMES",
    "HOTTER_IS_SMALLER",
    "KNOB_LABELS",
    "KNOB_TABLE",
    "KNOBS",
    "format_density",
    "RegimeRule",
    "temperature_order",
    "temperatures_hot_to_cold",
    "normalized_test_error",
    "classify",
    "cell_regimes",
    "transition",
    "advice",
    "summary_table",
    "FIT_BOUNDS",
    "FitResult",
    "fit_rule",
    "cells_by_seed",
    "cells_from_results",
    "transition_with_uncertainty",
    "dichotomy",
    "Dichotomy",
    "unit_effects",
    "holm",
    "CORRECTIONS",
    "power",
    "power_from_summary",
    "sd_from_t_interval",
    "PowerAnalysis",
    "lmc_change",
    "layer_rows",
    "layer_profiles",
    # helpers shared with casestudies / plots / report
    "cell_metrics",
    "optional_metrics",
    "PROVENANCE",
    "CLASSIFY_COLUMNS",
    "CODE_OF_LABEL",
    "LABEL_OF_CODE",
    "Column",
    "change_point",
    "coerce_rule",
    "column_codes",
    "column_hot_to_cold",
    "density_columns",
    "largest_drop",
    "prepare_results",
    "require_columns",
]
