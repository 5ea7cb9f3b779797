"""The paper's dichotomy as a test (SPEC §3.1, §4): raising the temperature of the dense model
helps the pruned model at low density and hurts it at high density.

Per ``(knob, density)`` column the *temperature effect* is

    effect = mean(test error over the hot half of the temperatures)
             - mean(test error over the cold half)

(a fraction; with an odd number of temperatures the middle one is left out; ``hot``/``cold``
choose the sets explicitly). Negative = hotter is better. On Figure 2 (SPEC §4) it is about
-2 points at 5-8 % density (best at 60-80 epochs vs 14-17 % error after 160) and positive at
40-80 % (more training helps). A mean over halves, unlike the minimum over temperatures, is not
biased towards "some temperature beats the coldest" by noise alone.

The interval is a bootstrap over dense seeds (:mod:`tr_jax.stats`; the retrain seeds when the
sweep has one dense seed, which understates the uncertainty). With 3 seeds a percentile
bootstrap is too narrow (it cannot be wider than the range of the seed means: planted null
tables were flagged at a third of densities, 5 of 15), so a direction is declared only when the Student-t
interval of the per-unit effects (``effect_t_lo, effect_t_hi``) excludes 0 on the same side
too. The claim **holds** when some density is "hotter better" and a *higher* density
"colder better". No correction for testing several
densities is made: the verdict names the densities so a reader can judge.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import stats
from .aggregate import prepare_results
from .rule import temperatures_hot_to_cold

__all__ = ["Dichotomy", "dichotomy"]


@dataclasses.dataclass(frozen=True)
class Dichotomy:
    """Outcome of :func:`dichotomy`.

    ``table``: one row per ``(knob, density)`` with ``effect, effect_lo, effect_hi`` (fractions;
    the bootstrap interval), ``effect_t_lo, effect_t_hi`` (the t interval of the per-unit
    effects), ``n_units``, ``direction`` (``"hotter better"``, ``"colder better"`` or
    ``"unclear"``: one of the two intervals contains 0), ``hot_temperatures,
    cold_temperatures``, ``best_temperature`` (argmin of the mean test error) and
    ``best_share`` (the fraction of replicates with the same argmin).
    ``holds``: the verdict; ``low`` / ``high``: the densities that make it hold (else None);
    ``unit``, ``n_units``, ``ci``, ``n_boot``: what the intervals resample.
    """

    table: pd.DataFrame
    holds: bool
    low: float | None
    high: float | None
    unit: str
    n_units: int
    ci: float
    n_boot: int

    def text(self) -> str:
        """The verdict and the per-density effects, in points of test error."""
        lines = []
        for r in self.table.itertuples():
            lines.append(f"  {r.knob} density {100 * r.density:g}%: hot-minus-cold "
                         f"{_pts(r.effect)} [{_pts(r.effect_lo)}, {_pts(r.effect_hi)}] points "
                         f"(t: [{_pts(r.effect_t_lo)}, {_pts(r.effect_t_hi)}]) "
                         f"-> {r.direction}; best {r.knob} {r.best_temperature:g} "
                         f"({100 * r.best_share:.0f}% of resamples)")
        what = (f"{int(100 * self.ci)}% bootstrap intervals over {self.n_units} "
                f"{self.unit.replace('_', ' ')}(s), {self.n_boot} resamples, and t intervals")
        if self.holds:
            head = (f"Dichotomy HOLDS: hotter is better at {100 * self.low:g}% density and "
                    f"worse at {100 * self.high:g}% ({what}).")
        else:
            head = ("Dichotomy NOT shown: no density where hotter is significantly better below "
                    f"one where it is significantly worse ({what}).")
        if self.unit != "dense_seed":
            head += (" With one dense seed the intervals resample retrain seeds only and "
                     "understate the uncertainty.")
        return "\n".join([head] + lines)

    def to_dict(self) -> dict[str, Any]:
        return {"holds": self.holds, "low": self.low, "high": self.high, "unit": self.unit,
                "n_units": self.n_units, "ci": self.ci, "n_boot": self.n_boot,
                "table": self.table.to_dict(orient="records")}


def _pts(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{100 * x:+.2f}"


def _halves(temps: list[float], hot: Sequence[float] | None, cold: Sequence[float] | None
            ) -> tuple[list[float], list[float]]:
    if hot is None and cold is None:
        h = len(temps) // 2
        return temps[:h], temps[len(temps) - h:]
    if hot is None or cold is None:
        raise ValueError("dichotomy: give both hot and cold temperature sets, or neither")
    hot_l, cold_l = [float(t) for t in hot], [float(t) for t in cold]
    unknown = sorted(set(hot_l + cold_l) - set(temps))
    if unknown:
        raise ValueError(f"dichotomy: temperature(s) {unknown} not in the sweep (has {temps})")
    return hot_l, cold_l


def dichotomy(results: pd.DataFrame, *, knob: str | None = None,
              hot: Sequence[float] | None = None, cold: Sequence[float] | None = None,
              n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
              hotter_is_smaller: bool | Mapping[str, bool] | None = None) -> Dichotomy:
    """Test the dichotomy on ``results`` (results.csv, long format; healthy ``retrain``
    ``test_error`` rows are used). See the module docstring for the definitions."""
    res = prepare_results(results, "dichotomy")
    rows = res[(res["stage"] == "retrain") & (res["metric"] == "test_error") & ~res["sick"]
               & np.isfinite(res["value"])]
    if knob is not None:
        if knob not in set(rows["knob"]):
            raise ValueError(f"dichotomy: knob {knob!r} not in results (has "
                             f"{sorted(set(rows['knob']), key=str)})")
        rows = rows[rows["knob"] == knob]
    if not len(rows):
        raise ValueError("dichotomy: no healthy retrain test_error rows in results")
    if int(n_boot) < 1:
        raise ValueError(f"dichotomy: n_boot must be >= 1, got {n_boot!r}")
    seeds = sorted(pd.unique(rows["dense_seed"].dropna()))
    unit = "dense_seed" if len(seeds) >= 2 else "retrain_seed"
    units = sorted(pd.unique(rows[unit].dropna()))
    weights = stats.resample_weights(len(units), n_boot, seed)
    out = []
    for (kn, dens), col in rows.groupby(["knob", "density"], sort=True):
        temps = temperatures_hot_to_cold(col["temperature"], kn, hotter_is_smaller)
        if len(temps) < 2:
            continue
        hot_t, cold_t = _halves(temps, hot, cold)
        cell = pd.Index(temps).get_indexer(col["temperature"])
        u = pd.Index(units).get_indexer(col[unit])
        sums = np.zeros((len(temps), len(units)))
        counts = np.zeros_like(sums)
        np.add.at(sums, (cell, u), col["value"].to_numpy(float))
        np.add.at(counts, (cell, u), 1.0)
        point = sums.sum(1) / np.where(counts.sum(1) > 0, counts.sum(1), np.nan)
        reps = stats.pooled_mean_replicates(sums, counts, weights)  # [B, temps]
        hi_idx = [temps.index(t) for t in hot_t]
        co_idx = [temps.index(t) for t in cold_t]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            effect = float(np.nanmean(point[hi_idx]) - np.nanmean(point[co_idx]))
            rep_eff = np.nanmean(reps[:, hi_idx], 1) - np.nanmean(reps[:, co_idx], 1)
        lo, hi_ = stats.percentile_interval(rep_eff, ci)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_unit = sums / np.where(counts > 0, counts, np.nan)  # [temps, units]
            unit_eff = (np.nanmean(per_unit[hi_idx], 0) - np.nanmean(per_unit[co_idx], 0))
        _, t_lo, t_hi = stats.t_interval(unit_eff, ci)
        boot_sign = stats.excludes_zero(float(lo), float(hi_))
        sign = boot_sign if boot_sign == stats.excludes_zero(t_lo, t_hi) else 0
        best = int(np.nanargmin(point)) if np.isfinite(point).any() else -1
        ok = np.isfinite(reps).any(axis=1)
        rep_best = np.where(ok, np.argmin(np.where(np.isfinite(reps), reps, np.inf), axis=1), -2)
        out.append(dict(
            knob=kn, density=float(dens), effect=effect, effect_lo=float(lo),
            effect_hi=float(hi_), effect_t_lo=t_lo, effect_t_hi=t_hi,
            n_units=int(np.isfinite(unit_eff).sum()),
            direction={-1: "hotter better", 1: "colder better", 0: "unclear"}[sign],
            hot_temperatures=tuple(hot_t), cold_temperatures=tuple(cold_t),
            best_temperature=float(temps[best]) if best >= 0 else math.nan,
            best_share=float((rep_best == best).mean()) if best >= 0 else math.nan))
    cols = ["knob", "density", "effect", "effect_lo", "effect_hi", "effect_t_lo", "effect_t_hi",
            "n_units", "direction",
            "hot_temperatures", "cold_temperatures", "best_temperature", "best_share"]
    table = pd.DataFrame(out, columns=cols)
    low = high = None
    for _kn, sub in table.groupby("knob", sort=True):
        better = sub[sub["direction"] == "hotter better"]["density"]
        worse = sub[sub["direction"] == "colder better"]["density"]
        if len(better) and len(worse) and better.min() < worse.max():
            low = float(better.min())
            high = float(worse[worse > low].min())
            break
    return Dichotomy(table=table, holds=low is not None, low=low, high=high, unit=unit,
                     n_units=len(units), ci=float(ci), n_boot=int(n_boot))
