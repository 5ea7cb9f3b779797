"""How many dense seeds a study needs to decide the dichotomy: power and sample size of the test
:func:`tr_jax.regimes.dichotomy` makes at every density.

The paper's dichotomy (Zhou et al., ICML 2023, Section 4 and Figure 2: a hotter dense model helps
the pruned one at low density and hurts it at high density) is tested per ``(knob, density)`` on
the per-dense-seed *effects* (hot-minus-cold mean pruned test error of each dense seed,
:func:`tr_jax.regimes.unit_effects`, the one computation shared with ``dichotomy``). The binding
test is the two-sided one-sample Student-t test of those effects (``dichotomy``'s t interval /
``p_value``): with n dense seeds, effect delta and seed-to-seed sd sigma, the statistic follows a
noncentral t with ``n - 1`` degrees of freedom and noncentrality ``delta / sigma * sqrt(n)``, so

    power(n) = P(T > t_{1 - alpha/2, n-1}),  T ~ nct(n - 1, |delta| / sigma * sqrt(n))

is the exact probability of rejecting **in the direction of the effect** (scipy.stats.nct; a
rejection of the wrong sign, at most alpha/2, is not counted: it would declare the wrong
direction). ``n_needed`` is the smallest n >= 2 with ``power(n) >= power``.

What this leaves out, on purpose: ``dichotomy`` also needs its bootstrap interval to exclude 0;
with 10 or more dense seeds that percentile interval is narrower than the t interval, so the t
test binds (with 3 seeds it is not, see :mod:`tr_jax.regimes.dichotomy`). The effect and sd of a
pilot are themselves estimates (sd on n - 1 degrees of freedom, and a pilot effect that caught
the eye tends to be an overestimate), so a plan adds a margin to ``n_needed``. For Holm over m
densities, ``n_tests=m`` sizes every density at ``alpha / m`` (Bonferroni: Holm's first, hardest
step; conservative for the others).

:func:`power` reads a pilot sweep (``results.csv``, a per-dense-seed cells table, per-unit
effects, or a :class:`~tr_jax.regimes.Dichotomy`); :func:`power_from_summary` takes only the
summary numbers (effect, sd, n) of a pilot; :func:`sd_from_t_interval` recovers the sd from a
reported t interval.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .dichotomy import Dichotomy, t_test_pvalue, unit_effects

__all__ = ["PowerAnalysis", "power", "power_from_summary", "sd_from_t_interval", "t_test_power",
           "n_for_power"]

_N_MAX = 100_000


def _check(alpha: float, power: float, n_tests: int) -> None:
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"power: alpha must be in (0, 1), got {alpha!r}")
    if not 0.0 < float(power) < 1.0:
        raise ValueError(f"power: power must be in (0, 1), got {power!r}")
    if int(n_tests) < 1:
        raise ValueError(f"power: n_tests must be >= 1, got {n_tests!r}")


def t_test_power(effect_size: float, n: int | np.ndarray, alpha: float = 0.05) -> float | np.ndarray:
    """Exact power of the two-sided one-sample t test at level ``alpha`` with ``n`` units and
    standardized effect ``effect_size = delta / sigma``: the probability of rejecting in the
    direction of the effect (noncentral t). NaN for ``n < 2``."""
    from scipy.stats import nct, t as student_t
    n_arr = np.asarray(n, dtype=float)
    d = abs(float(effect_size))
    with np.errstate(invalid="ignore"):
        df = np.where(n_arr >= 2, n_arr - 1.0, np.nan)
        crit = student_t.ppf(1.0 - float(alpha) / 2.0, df)
        out = nct.sf(crit, df, d * np.sqrt(n_arr))
    out = np.where(n_arr >= 2, out, np.nan)
    return float(out) if np.ndim(out) == 0 else out


def n_for_power(effect_size: float, alpha: float = 0.05, power: float = 0.8,
                n_max: int = _N_MAX) -> int | None:
    """The smallest ``n >= 2`` whose :func:`t_test_power` reaches ``power``; None when the
    effect is 0 / not finite or more than ``n_max`` units would be needed."""
    d = abs(float(effect_size))
    if not math.isfinite(d) or d == 0.0:
        return None
    if t_test_power(d, 2, alpha) >= power:
        return 2
    hi = 4
    while t_test_power(d, hi, alpha) < power:
        if hi >= n_max:
            return None
        hi = min(2 * hi, int(n_max))
    lo = hi // 2  # power(lo) < power <= power(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if t_test_power(d, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return int(hi)


def sd_from_t_interval(lo: float, hi: float, n: int, ci: float = 0.95) -> float:
    """The sd of ``n`` values whose Student-t ``ci`` interval of the mean is ``[lo, hi]``
    (``half-width * sqrt(n) / t_{(1+ci)/2, n-1}``): how a pilot's reported t interval gives the
    seed-to-seed sd. NaN for ``n < 2`` or a non-finite interval."""
    if int(n) < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return math.nan
    from scipy.stats import t as student_t
    return float((hi - lo) / 2.0 * math.sqrt(n) / student_t.ppf((1.0 + ci) / 2.0, int(n) - 1))


def _row(effect: float, sd: float, n: int, alpha: float, target: float, n_max: int,
         unit: str = "dense_seed") -> dict[str, Any]:
    """One density's numbers; ``note`` says why a number is n/a."""
    effect, sd, n = float(effect), float(sd), int(n)
    row = dict(effect=effect, sd=sd, n_units=n, effect_size=math.nan, alpha=alpha,
               power_now=math.nan, n_needed=None, power_at_needed=math.nan, note="")
    if unit != "dense_seed":
        row["note"] = ("one dense seed: the per-unit effects are over retrain seeds, which "
                       "understate the seed-to-seed spread; sizing needs >= 2 dense seeds")
        return row
    if not math.isfinite(effect):
        row["note"] = "no finite effect"
        return row
    if n < 2 or not math.isfinite(sd):
        row["note"] = f"fewer than 2 dense seeds with an effect (n={n}): no spread to size from"
        return row
    if sd < 0:
        raise ValueError(f"power: sd must be >= 0, got {sd!r}")
    if sd == 0.0:
        row["note"] = "sd 0: no spread between dense seeds (degenerate t test)"
        return row
    if effect == 0.0:
        row["note"] = "effect 0: no number of seeds decides a zero effect"
        return row
    d = effect / sd
    row["effect_size"] = d
    row["power_now"] = t_test_power(d, n, alpha)
    need = n_for_power(d, alpha, target, n_max)
    if need is None:
        row["note"] = f"more than {n_max} dense seeds would be needed"
    else:
        row["n_needed"] = need
        row["power_at_needed"] = t_test_power(d, need, alpha)
    return row


def power_from_summary(effect: float, sd: float, n: int, *, alpha: float = 0.05,
                       power: float = 0.8, n_tests: int = 1,
                       n_max: int = _N_MAX) -> dict[str, Any]:
    """Power and sample size from a pilot's summary numbers only: the mean per-dense-seed
    ``effect`` and its seed-to-seed ``sd`` (same units, e.g. points of test error), over ``n``
    dense seeds. Returns ``effect, sd, n_units, effect_size`` (effect / sd), ``alpha`` (per
    test: ``alpha / n_tests``), ``power_now`` (the pilot's own power at n), ``n_needed`` (None
    when n/a), ``power_at_needed`` and ``note`` (why a number is n/a; "" otherwise)."""
    _check(alpha, power, n_tests)
    return _row(effect, sd, n, float(alpha) / int(n_tests), float(power), int(n_max))


@dataclasses.dataclass(frozen=True)
class PowerAnalysis:
    """Outcome of :func:`power`: ``table`` has one row per ``(knob, density)`` with ``knob,
    density, effect, sd`` (fractions of test error), ``n_units, effect_size, p_value`` (the
    pilot's own t test), ``alpha`` (per test), ``power_now, n_needed`` (nullable int),
    ``power_at_needed, note``; ``power`` is the requested power, ``n_tests`` the Bonferroni
    divisor, ``given_effect`` whether the effects were given rather than observed."""

    table: pd.DataFrame
    alpha: float
    power: float
    n_tests: int
    given_effect: bool

    def lines(self) -> list[str]:
        """One sentence per density."""
        out = []
        for r in self.table.itertuples():
            where = f"{100 * r.density:g}%"
            if len(set(self.table["knob"])) > 1:
                where = f"{r.knob} {where}"
            p = r.p_value
            state = "decided" if np.isfinite(p) and p < self.alpha else "undecided"
            size = ("the given effect" if self.given_effect else "an effect of this size")
            eff = (f"hot-minus-cold {100 * r.effect:+.2f} points, sd {100 * r.sd:.2f} over "
                   f"{r.n_units} dense seeds")
            if pd.isna(r.n_needed):
                out.append(f"{state} at {where} ({eff}): sample size n/a, {r.note}")
                continue
            out.append(f"{state} at {where} ({eff}): about {int(r.n_needed)} dense seeds would "
                       f"decide {size} with {100 * self.power:.0f}% power at alpha "
                       f"{r.alpha:.3g} (power now {100 * r.power_now:.0f}%)")
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        tab = self.table.astype(object).where(self.table.notna(), None)
        return {"alpha": self.alpha, "power": self.power, "n_tests": self.n_tests,
                "given_effect": self.given_effect, "table": tab.to_dict(orient="records")}


def _is_long(df: pd.DataFrame) -> bool:
    return {"metric", "value", "stage"} <= set(df.columns)


def _effects_table(data: Any, knob: str | None, hot: Sequence[float] | None,
                   cold: Sequence[float] | None, hotter_is_smaller: Any) -> pd.DataFrame:
    """Per-unit effects (``knob, density, unit, unit_value, effect``) from any accepted input."""
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"power: expected a results / per-seed cells / unit-effects DataFrame or "
                        f"a Dichotomy, got {type(data).__name__}")
    cols = set(data.columns)
    kw = dict(knob=knob, hot=hot, cold=cold, hotter_is_smaller=hotter_is_smaller)
    if _is_long(data):
        return unit_effects(data, **kw)
    if {"knob", "density", "unit", "unit_value", "effect"} <= cols:
        out = data if knob is None else data[data["knob"] == knob]
        if knob is not None and not len(out):
            raise ValueError(f"power: knob {knob!r} not in the table")
        return out
    if {"knob", "temperature", "density", "dense_seed", "test_error"} <= cols:
        # a per-dense-seed cells table (regimes.cells_by_seed): each row is one seed's cell mean
        long = pd.DataFrame({"knob": data["knob"], "stage": "retrain",
                             "temperature": data["temperature"], "density": data["density"],
                             "dense_seed": data["dense_seed"], "retrain_seed": 0,
                             "metric": "test_error", "value": data["test_error"], "sick": False})
        return unit_effects(long, **kw)
    if {"knob", "temperature", "density", "test_error"} <= cols:
        raise ValueError("power: this cells table has no dense_seed column (means over seeds "
                         "hide the seed-to-seed spread); pass results.csv or "
                         "regimes.cells_by_seed(results)")
    raise ValueError(f"power: cannot read per-dense-seed effects from columns {sorted(cols)}")


def power(results_or_cells: Any, effect: float | Mapping[float, float] | None = None,
          alpha: float = 0.05, power: float = 0.8, *, knob: str | None = None,
          hot: Sequence[float] | None = None, cold: Sequence[float] | None = None,
          hotter_is_smaller: bool | Mapping[str, bool] | None = None, n_tests: int = 1,
          n_max: int = _N_MAX) -> PowerAnalysis:
    """Per ``(knob, density)`` of a pilot sweep: the power the pilot had and the number of dense
    seeds the dichotomy's t test needs to call the effect with probability ``power``.

    ``results_or_cells``: ``results.csv`` (long), a per-dense-seed cells table
    (:func:`tr_jax.regimes.cells_by_seed`), per-unit effects (:func:`tr_jax.regimes.unit_effects`)
    or a :class:`~tr_jax.regimes.Dichotomy` (then the sd is recovered from its t interval).
    ``effect``: None = the observed mean effect per density; a number (a fraction of test error,
    signed like the effects) for every density, or a mapping density -> effect. The sd is always
    the pilot's sample sd of the per-seed effects. ``alpha`` is split over ``n_tests`` tests
    (Bonferroni; ``n_tests`` = the number of densities for a Holm-corrected study).
    ``knob, hot, cold, hotter_is_smaller`` as in :func:`tr_jax.regimes.dichotomy`.
    Densities where a number cannot be computed (one dense seed, n < 2, sd 0 or NaN, effect 0)
    are n/a with the reason in ``note``.
    """
    _check(alpha, power, n_tests)
    a = float(alpha) / int(n_tests)
    rows = []
    if isinstance(results_or_cells, Dichotomy):
        d = results_or_cells
        for r in d.table.itertuples():
            if knob is not None and r.knob != knob:
                continue
            sd = sd_from_t_interval(r.effect_t_lo, r.effect_t_hi, r.n_units, d.ci)
            p = r.p_value if hasattr(r, "p_value") else math.nan
            rows.append((r.knob, float(r.density), float(r.effect), sd, int(r.n_units), p, d.unit))
    else:
        eff = _effects_table(results_or_cells, knob, hot, cold, hotter_is_smaller)
        for (kn, dens), g in eff.groupby(["knob", "density"], sort=True):
            v = g["effect"].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            mean = float(v.mean()) if v.size else math.nan
            sd = float(v.std(ddof=1)) if v.size >= 2 else math.nan
            unit = str(g["unit"].iloc[0]) if "unit" in g.columns else "dense_seed"
            rows.append((kn, float(dens), mean, sd, int(v.size), t_test_pvalue(v), unit))
    out = []
    for kn, dens, mean, sd, n, p, unit in rows:
        if effect is None:
            e = mean
        elif isinstance(effect, Mapping):
            match = [v for k, v in effect.items() if abs(float(k) - dens) <= 1e-9]
            e = float(match[0]) if match else mean
        else:
            e = float(effect)
        row = _row(e, sd, n, a, float(power), int(n_max), unit)
        out.append(dict(knob=kn, density=dens, p_value=p, **row))
    cols = ["knob", "density", "effect", "sd", "n_units", "effect_size", "p_value", "alpha",
            "power_now", "n_needed", "power_at_needed", "note"]
    table = pd.DataFrame(out, columns=cols)
    table["n_needed"] = pd.array([None if v is None or pd.isna(v) else int(v)
                                  for v in table["n_needed"]], dtype="Int64")
    return PowerAnalysis(table=table, alpha=a, power=float(power), n_tests=int(n_tests),
                         given_effect=effect is not None)
