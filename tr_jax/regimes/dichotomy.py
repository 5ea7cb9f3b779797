"""The paper's dichotomy as a test (Zhou et al. 2023, abstract and Figure 2): raising the temperature of the
dense model helps the pruned model at low density and hurts it at high density.

Per ``(knob, density)`` column the *temperature effect* is

    effect = mean(test error over the hot half of the temperatures)
             - mean(test error over the cold half)

(a fraction; with an odd number of temperatures the middle one is left out; ``hot``/``cold``
choose the sets explicitly). Negative = hotter is better. On Figure 2 it is about
-2 points at 5-8 % density (best at 60-80 epochs vs 14-17 % error after 160) and positive at
40-80 % (more training helps). A mean over halves, unlike the minimum over temperatures, is not
biased towards "some temperature beats the coldest" by noise alone.

The interval is a bootstrap over dense seeds (:mod:`tr_jax.stats`; the retrain seeds when the
sweep has one dense seed, which understates the uncertainty). With 3 seeds a percentile
bootstrap is too narrow (it cannot be wider than the range of the seed means: planted null
tables were flagged at a third of densities, 5 of 15), so a direction is declared only when the Student-t
interval of the per-unit effects (``effect_t_lo, effect_t_hi``) excludes 0 on the same side
too. The claim **holds** when some density is "hotter better" and a *higher* density
"colder better". By default no correction for testing several densities is made (the verdict
names the densities so a reader can judge); ``correction="holm"`` applies Holm-Bonferroni to the
densities' t-test p-values (``p_value``: two-sided one-sample t test of the per-unit effects,
the test of the t interval) and declares a direction only when the Holm-adjusted p is below
``1 - ci`` and the bootstrap interval excludes 0 on the same side.

:func:`unit_effects` gives the per-unit effects themselves (the one computation shared with
:func:`tr_jax.regimes.power`, which sizes a study from them).
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

__all__ = ["CORRECTIONS", "Dichotomy", "dichotomy", "holm", "t_test_pvalue", "unit_effects"]

#: the multiple-testing corrections :func:`dichotomy` knows
CORRECTIONS = ("none", "holm")


@dataclasses.dataclass(frozen=True)
class Dichotomy:
    """Outcome of :func:`dichotomy`.

    ``table``: one row per ``(knob, density)`` with ``effect, effect_lo, effect_hi`` (fractions;
    the bootstrap interval), ``effect_t_lo, effect_t_hi`` (the t interval of the per-unit
    effects), ``n_units``, ``direction`` (``"hotter better"``, ``"colder better"`` or
    ``"unclear"``: one of the two intervals contains 0), ``hot_temperatures,
    cold_temperatures``, ``best_temperature`` (argmin of the mean test error) and
    ``best_share`` (the fraction of replicates with the same argmin), ``p_value`` (two-sided
    one-sample t test of the per-unit effects; < 1 - ci exactly when the t interval excludes 0).
    With ``correction="holm"`` also ``p_holm`` (Holm-adjusted over the knob's densities) and
    ``direction_unadjusted``; ``direction`` is then the Holm-decided one.
    ``holds``: the verdict; ``low`` / ``high``: the densities that make it hold (else None);
    ``unit``, ``n_units``, ``ci``, ``n_boot``: what the intervals resample; ``correction``.
    """

    table: pd.DataFrame
    holds: bool
    low: float | None
    high: float | None
    unit: str
    n_units: int
    ci: float
    n_boot: int
    correction: str = "none"

    def text(self) -> str:
        """The verdict and the per-density effects, in points of test error."""
        lines = []
        for r in self.table.itertuples():
            lines.append(f"  {r.knob} density {100 * r.density:g}%: hot-minus-cold "
                         f"{_pts(r.effect)} [{_pts(r.effect_lo)}, {_pts(r.effect_hi)}] points "
                         f"(t: [{_pts(r.effect_t_lo)}, {_pts(r.effect_t_hi)}]) "
                         f"-> {r.direction}; best {r.knob} {r.best_temperature:g} "
                         f"({100 * r.best_share:.0f}% of resamples)")
            if self.correction == "holm":
                lines[-1] += f"; t-test p {r.p_value:.3g}, Holm p {r.p_holm:.3g}"
        what = (f"{int(100 * self.ci)}% bootstrap intervals over {self.n_units} "
                f"{self.unit.replace('_', ' ')}(s), {self.n_boot} resamples, and t intervals")
        if self.correction == "holm":
            what += (f"; Holm-corrected over the densities: a direction needs Holm p < "
                     f"{1 - self.ci:.2g}")
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
                "correction": self.correction, "table": self.table.to_dict(orient="records")}


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


def healthy_rows(results: pd.DataFrame, knob: str | None, what: str, *, stage: str = "retrain",
                 metric: str = "test_error") -> pd.DataFrame:
    """The healthy, finite ``stage`` / ``metric`` rows of ``results`` (of ``knob``); ``what``
    names the caller in errors."""
    res = prepare_results(results, what)
    rows = res[(res["stage"] == stage) & (res["metric"] == metric) & ~res["sick"]
               & np.isfinite(res["value"])]
    if knob is not None:
        if knob not in set(rows["knob"]):
            raise ValueError(f"{what}: knob {knob!r} not in results (has "
                             f"{sorted(set(rows['knob']), key=str)})")
        rows = rows[rows["knob"] == knob]
    if not len(rows):
        raise ValueError(f"{what}: no healthy {stage} {metric} rows in results")
    return rows


def _unit_of(rows: pd.DataFrame) -> tuple[str, list]:
    """The resampled unit (dense seeds; retrain seeds with one dense seed) and its values."""
    seeds = sorted(pd.unique(rows["dense_seed"].dropna()))
    unit = "dense_seed" if len(seeds) >= 2 else "retrain_seed"
    return unit, sorted(pd.unique(rows[unit].dropna()))


@dataclasses.dataclass(frozen=True)
class _Column:
    """One ``(knob, density)`` column: temperatures hot -> cold, the hot / cold sets and their
    positions, and per temperature and unit the sum and count of the test errors."""

    knob: Any
    density: float
    temps: list
    hot: list
    cold: list
    hot_idx: list
    cold_idx: list
    sums: np.ndarray  # [temps, units]
    counts: np.ndarray

    def unit_effects(self) -> np.ndarray:
        """Per unit: mean test error over the hot temperatures minus over the cold ones (NaN
        where a unit lacks one side)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_unit = self.sums / np.where(self.counts > 0, self.counts, np.nan)
            return (np.nanmean(per_unit[self.hot_idx], 0)
                    - np.nanmean(per_unit[self.cold_idx], 0))


def _columns(rows: pd.DataFrame, unit: str, units: list, hot: Sequence[float] | None,
             cold: Sequence[float] | None, hotter_is_smaller: bool | Mapping[str, bool] | None):
    """Every ``(knob, density)`` column with at least two temperatures, as :class:`_Column`."""
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
        yield _Column(knob=kn, density=float(dens), temps=temps, hot=hot_t, cold=cold_t,
                      hot_idx=[temps.index(t) for t in hot_t],
                      cold_idx=[temps.index(t) for t in cold_t], sums=sums, counts=counts)


def unit_effects(results: pd.DataFrame, *, knob: str | None = None,
                 hot: Sequence[float] | None = None, cold: Sequence[float] | None = None,
                 hotter_is_smaller: bool | Mapping[str, bool] | None = None) -> pd.DataFrame:
    """The per-unit temperature effects :func:`dichotomy` tests, one row per ``(knob, density,
    unit)``: ``knob, density, unit`` (``"dense_seed"``, or ``"retrain_seed"`` when the sweep
    has one dense seed), ``unit_value`` (the seed), ``effect`` (hot-minus-cold mean test error
    of that unit, a fraction; NaN where it lacks one side), ``hot_temperatures,
    cold_temperatures``. Same arguments and definitions as :func:`dichotomy`."""
    rows = healthy_rows(results, knob, "unit_effects")
    unit, units = _unit_of(rows)
    out = []
    for c in _columns(rows, unit, units, hot, cold, hotter_is_smaller):
        for value, eff in zip(units, c.unit_effects()):
            out.append(dict(knob=c.knob, density=c.density, unit=unit, unit_value=value,
                            effect=float(eff), hot_temperatures=tuple(c.hot),
                            cold_temperatures=tuple(c.cold)))
    return pd.DataFrame(out, columns=["knob", "density", "unit", "unit_value", "effect",
                                      "hot_temperatures", "cold_temperatures"])


def t_test_pvalue(values: Sequence[float]) -> float:
    """Two-sided one-sample Student-t p-value of ``mean(values) = 0`` over the finite values,
    the test whose 95 % interval is :func:`tr_jax.stats.t_interval` (p < 0.05 exactly when that
    interval excludes 0). NaN with fewer than 2 values; with zero spread 0.0 (a nonzero mean)
    or 1.0 (a zero mean), as the degenerate interval does."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size < 2:
        return math.nan
    mean, sd = float(v.mean()), float(v.std(ddof=1))
    if sd == 0.0:
        return 0.0 if mean != 0.0 else 1.0
    from scipy.stats import t as student_t
    return float(2.0 * student_t.sf(abs(mean) / (sd / math.sqrt(v.size)), v.size - 1))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down; NaN entries are left out of the family
    and stay NaN): the i-th smallest of m is ``max_{j<=i} min(1, (m - j + 1) p_(j))``."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size:
        order = ok[np.argsort(p[ok], kind="mergesort")]
        m = order.size
        adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
        out[order] = np.maximum.accumulate(adj)
    return out


def dichotomy(results: pd.DataFrame, *, knob: str | None = None,
              hot: Sequence[float] | None = None, cold: Sequence[float] | None = None,
              n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
              hotter_is_smaller: bool | Mapping[str, bool] | None = None,
              correction: str = "none") -> Dichotomy:
    """Test the dichotomy on ``results`` (results.csv, long format; healthy ``retrain``
    ``test_error`` rows are used). See the module docstring for the definitions.

    ``correction``: ``"none"`` (default) or ``"holm"`` (Holm-Bonferroni over the densities of
    each knob; the directions then need a Holm-adjusted p below ``1 - ci``).
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"dichotomy: unknown correction {correction!r}; expected one of "
                         f"{CORRECTIONS}")
    rows = healthy_rows(results, knob, "dichotomy")
    if int(n_boot) < 1:
        raise ValueError(f"dichotomy: n_boot must be >= 1, got {n_boot!r}")
    unit, units = _unit_of(rows)
    weights = stats.resample_weights(len(units), n_boot, seed)
    out = []
    for c in _columns(rows, unit, units, hot, cold, hotter_is_smaller):
        kn, dens, temps, hot_t, cold_t = c.knob, c.density, c.temps, c.hot, c.cold
        sums, counts, hi_idx, co_idx = c.sums, c.counts, c.hot_idx, c.cold_idx
        point = sums.sum(1) / np.where(counts.sum(1) > 0, counts.sum(1), np.nan)
        reps = stats.pooled_mean_replicates(sums, counts, weights)  # [B, temps]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            effect = float(np.nanmean(point[hi_idx]) - np.nanmean(point[co_idx]))
            rep_eff = np.nanmean(reps[:, hi_idx], 1) - np.nanmean(reps[:, co_idx], 1)
        lo, hi_ = stats.percentile_interval(rep_eff, ci)
        unit_eff = c.unit_effects()
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
            best_share=float((rep_best == best).mean()) if best >= 0 else math.nan,
            p_value=t_test_pvalue(unit_eff), _boot_sign=boot_sign,
            _t_sign=int(np.sign(np.nanmean(unit_eff))) if np.isfinite(unit_eff).any() else 0))
    cols = ["knob", "density", "effect", "effect_lo", "effect_hi", "effect_t_lo", "effect_t_hi",
            "n_units", "direction",
            "hot_temperatures", "cold_temperatures", "best_temperature", "best_share",
            "p_value"]
    table = pd.DataFrame(out, columns=cols + ["_boot_sign", "_t_sign"])
    if correction == "holm":
        table = _holm_directions(table, alpha=1.0 - float(ci))
        cols += ["p_holm", "direction_unadjusted"]
    table = table[cols]
    low = high = None
    for _kn, sub in table.groupby("knob", sort=True):
        better = sub[sub["direction"] == "hotter better"]["density"]
        worse = sub[sub["direction"] == "colder better"]["density"]
        if len(better) and len(worse) and better.min() < worse.max():
            low = float(better.min())
            high = float(worse[worse > low].min())
            break
    return Dichotomy(table=table, holds=low is not None, low=low, high=high, unit=unit,
                     n_units=len(units), ci=float(ci), n_boot=int(n_boot),
                     correction=correction)


def _holm_directions(table: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """``p_holm`` per knob over its densities, and the direction it decides: Holm-adjusted
    p < ``alpha`` and the bootstrap interval excluding 0 on the side of the mean per-unit
    effect; the unadjusted direction is kept as ``direction_unadjusted``."""
    table = table.copy()
    table["direction_unadjusted"] = table["direction"]
    table["p_holm"] = np.nan
    for _kn, idx in table.groupby("knob", sort=True).groups.items():
        table.loc[idx, "p_holm"] = holm(table.loc[idx, "p_value"].to_numpy(float))
    sig = (table["p_holm"] < alpha) & (table["_boot_sign"] == table["_t_sign"])
    sign = np.where(sig, table["_boot_sign"], 0)
    table["direction"] = [{-1: "hotter better", 1: "colder better", 0: "unclear"}[int(x)]
                          for x in sign]
    return table
