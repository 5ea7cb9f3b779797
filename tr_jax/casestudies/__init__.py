"""The paper's three case studies, as tr_jax runs them on a sweep's cell table.

Zhou et al. (ICML 2023) illustrate the three-regime model with three case studies
(docs/fidelity.md, Case studies):
(1) should a temperature knob be raised or lowered before pruning, (2) which dense model of a
family should be pruned, and (3) tuning SAM's rho for pruning. The paper's exact protocols,
baselines and table values are **UNVERIFIED** (only the abstract and figure captions were
available), so everything below is **tr_jax's own protocol**, documented here and configurable.

Input: a cells table (``cells.csv`` of a sweep, or :func:`tr_jax.regimes.cells_from_results`),
one row per ``(knob, temperature, density)`` with ``test_error`` (pruned + retrained model),
``lmc``, ``cka`` and, for some selectors, ``dense_test_error``. Extra columns are ignored.
Regimes are always recomputed with :func:`tr_jax.regimes.classify` and ``rule`` (``None`` =
the default :class:`~tr_jax.regimes.RegimeRule`); a ``regime`` column already in the table is
*not* used, so pass the sweep's own rule (``config.regimes``) to reproduce it.

Protocols
---------
**1. Direction advice** (:func:`advise`, :func:`advice_accuracy`). At a target density, look at
the regime of the cell at the current temperature (default: the coldest, i.e. the most-trained
dense model, the usual starting point): Regime I -> *raise* the temperature, II-A -> *lower* it,
II-B -> *keep*. The suggestion is the adjacent temperature of the sweep grid in that direction.
:func:`advice_accuracy` scores the advice of every cell against the measured pruned test error:
a move is right when the neighbour in the advised direction has a lower test error (by more
than ``tol``); a *keep* is right when no neighbour (hotter or colder) is better by more than
``tol`` (a local minimum). Cells without a neighbour in the advised direction, ``unknown``
advice, and NaN errors are not scored.

**2. Model selection** (:func:`select_model`, :func:`compare_selectors`). The family is the set
of dense models of a knob (its temperatures; or a user subset ``candidates``, matched in the
column ``key``). Every candidate is pruned to the target density and retrained, and LMC/CKA of
its retrained pairs are measured at that density (the premise of the case study); selectors may
use those and the *dense* test error, but **never the pruned test error** they are judged by.

* ``"lmc_cka"`` (the three-regime selector): among *connected* candidates the one with the
  highest CKA (a sanity check on Figure 2's read-outs, LMC > -0.1 then the maximum CKA, picks a
  model close to the best test error in every density column).
* ``"lmc_error"``: among connected candidates the lowest *dense* test error.
* ``"most_trained"``: the coldest candidate (baseline: prune the fully trained model).
* ``"best_dense"``: the lowest dense test error (baseline).
* ``"random"``: a uniformly random candidate; reported as the *expected* regret (mean over
  candidates), deterministic; with ``seed`` one seeded draw instead.

*Connected* (``connected=``): ``"rule"`` (default) = not Regime I under ``rule`` (Regime I
is judged on the whole density column, as :func:`~tr_jax.regimes.classify` does); if no
candidate is connected, it falls back to ``"tolerance"``. ``"tolerance"`` = ``lmc >= max(lmc of
the candidates) - lmc_tolerance`` (default 0.05 on the train-error fraction). ``"threshold"`` =
``lmc > lmc_threshold`` (default -0.1, the threshold of that sanity check). Ties go to the hotter candidate
(cheaper to train). The judge: the pruned test error of the chosen cell; the *oracle* is the
candidate with the lowest pruned test error in hindsight; ``regret = error(choice) -
error(oracle)`` (>= 0).

**3. SAM rho** (:func:`tune_sam_rho`). Cells of knob ``"sam_rho"`` (rho is the temperature,
larger = hotter). Per density: start at the smallest rho (the coldest; rho = 0 is plain SGD when
swept), walk to the next larger rho while the cell is in Regime I (advice: raise the
temperature). All cells passed on the way are Regime I, so the connected cells all lie at or
beyond the stopping point; choose among them the II-B cell with the highest CKA, else the
connected cell with the highest CKA (ties: the smaller rho). If the walk reaches the largest rho
without finding a connected cell, that largest rho is chosen. Only regime/LMC/CKA are used, never
the test error. Reported with the best rho in hindsight, the regret, and the regret of the
baseline "always the smallest rho".
"""

from __future__ import annotations

from ._advice import Advice, AdviceScore, advice_accuracy, advise
from ._common import ACTIONS, SELECTORS, HotterLike, RuleLike
from ._sam import sam_rho_summary, tune_sam_rho
from ._selection import BASELINES, Selection, compare_selectors, select_model, selector_summary


__all__ = [
    "ACTIONS",
    "SELECTORS",
    "Advice",
    "AdviceScore",
    "Selection",
    "advise",
    "advice_accuracy",
    "select_model",
    "compare_selectors",
    "selector_summary",
    "tune_sam_rho",
    "sam_rho_summary",
    "BASELINES",
    "RuleLike",
    "HotterLike",
]
