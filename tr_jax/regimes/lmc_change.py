"""The LMC change between two temperatures, tested per dense seed.

The paper places a sharp LMC transition right after the dense model's first learning-rate decay
(Zhou et al., ICML 2023, Section 4, Figure 2: at low density LMC falls from about 0 to a barrier
between the checkpoints just before and just after the drop). With a hot temperature before the
drop and a cold one after it, the claim is testable with any number of temperatures:

    change = LMC(cold) - LMC(hot)     (per dense seed; LMC = mean over that seed's pairs)

negative = connectivity lost on the way to the colder model. The test is the two-sided one-sample
t test of the per-seed changes (the same test as :func:`tr_jax.regimes.dichotomy`'s), with
Holm-Bonferroni over the densities when ``correction="holm"``.
:func:`tr_jax.regimes.transition_with_uncertainty` locates the *largest* drop and judges its
sharpness against the other steps, which needs at least three temperatures; this function needs
two and answers "did LMC drop between these two", not "is this the largest step".
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import stats
from .dichotomy import CORRECTIONS, healthy_rows, holm, t_test_pvalue

__all__ = ["lmc_change"]


def lmc_change(results: pd.DataFrame, hot: float, cold: float, *, knob: str | None = None,
               ci: float = 0.95, correction: str = "none") -> pd.DataFrame:
    """Per ``(knob, density)``: ``LMC(cold) - LMC(hot)`` per dense seed and its t test.

    ``results``: results.csv (long format; healthy ``pair`` ``lmc`` rows are used, LMC on the
    train-error fraction, negative = barrier). ``hot`` / ``cold``: two temperatures of the
    sweep (e.g. 25 and 35 dense epochs around an LR drop at 30).

    Columns: ``knob, density, hot_temperature, cold_temperature, lmc_hot, lmc_cold`` (means over
    the seeds having both), ``change`` (mean per-seed change), ``change_t_lo, change_t_hi``
    (``ci`` t interval), ``n_seeds``, ``p_value`` (two-sided), ``p_holm`` (Holm over the
    knob's densities with ``correction="holm"``, else equal to ``p_value``) and ``direction``:
    ``"drop"`` / ``"rise"`` when the (adjusted) p < ``1 - ci``, else ``"unclear"``. With one
    dense seed there is no test (NaN p, ``"unclear"``).
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"lmc_change: unknown correction {correction!r}; expected one of "
                         f"{CORRECTIONS}")
    rows = healthy_rows(results, knob, "lmc_change", stage="pair", metric="lmc")
    hot, cold = float(hot), float(cold)
    temps = sorted(set(rows["temperature"]))
    missing = [t for t in (hot, cold) if t not in temps]
    if missing:
        raise ValueError(f"lmc_change: temperature(s) {missing} not in the sweep (has {temps})")
    if hot == cold:
        raise ValueError("lmc_change: hot and cold must be two different temperatures")
    per_seed = (rows[rows["temperature"].isin([hot, cold])]
                .groupby(["knob", "density", "dense_seed", "temperature"], sort=True)["value"]
                .mean().unstack("temperature"))
    out = []
    for (kn, dens), g in per_seed.groupby(level=["knob", "density"], sort=True):
        both = g.dropna(subset=[hot, cold]) if {hot, cold} <= set(g.columns) else g.iloc[:0]
        change = (both[cold] - both[hot]).to_numpy(float) if len(both) else np.array([])
        mean, lo, hi = stats.t_interval(change, ci)
        out.append(dict(knob=kn, density=float(dens), hot_temperature=hot, cold_temperature=cold,
                        lmc_hot=float(both[hot].mean()) if len(both) else math.nan,
                        lmc_cold=float(both[cold].mean()) if len(both) else math.nan,
                        change=mean, change_t_lo=lo, change_t_hi=hi, n_seeds=int(change.size),
                        p_value=t_test_pvalue(change)))
    cols = ["knob", "density", "hot_temperature", "cold_temperature", "lmc_hot", "lmc_cold",
            "change", "change_t_lo", "change_t_hi", "n_seeds", "p_value", "p_holm", "direction"]
    table = pd.DataFrame(out, columns=cols)
    table["p_holm"] = table["p_value"]
    if correction == "holm":
        for _kn, idx in table.groupby("knob", sort=True).groups.items():
            table.loc[idx, "p_holm"] = holm(table.loc[idx, "p_value"].to_numpy(float))
    alpha = 1.0 - float(ci)
    table["direction"] = [("drop" if c < 0 else "rise") if (np.isfinite(p) and p < alpha
                                                            and c != 0) else "unclear"
                          for c, p in zip(table["change"], table["p_holm"])]
    return table
