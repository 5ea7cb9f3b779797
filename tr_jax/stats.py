"""Small statistics for the analysis of a sweep: bootstrap resampling of dense seeds, percentile
intervals, Wilson intervals and permutation baselines. Pure numpy (and the standard library).

Why a bootstrap over *dense seeds* (docs/fidelity.md, Figure 2 grid): every cell of Figure 2 is the mean of 9
runs, 3 dense seeds x 3 retrain seeds (or pairs). The retrain runs of one dense seed share its
pruned network, so they are not independent; the dense seed is the independent unit. A
replicate draws the dense seeds with replacement, the same draw for every cell of the sweep
(so whole-column quantities such as a regime or the best temperature can be recomputed per
replicate), and recomputes each cell's pooled mean with the drawn multiplicities.

With a single dense seed there is nothing to resample at that level: the callers then resample
the retrain seeds (and pairs) instead, which measures retraining noise only (see
:func:`tr_jax.regimes.cells_from_results`).

Every function is deterministic for a given ``seed``.
"""
from __future__ import annotations

import warnings
import math
import statistics
from typing import Sequence

import numpy as np

__all__ = [
    "resample_weights",
    "pooled_mean_replicates",
    "percentile_interval",
    "bootstrap_mean",
    "t_interval",
    "wilson_interval",
    "permutation_pvalue",
    "excludes_zero",
]


def _check_ci(ci: float) -> float:
    ci = float(ci)
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95; got {ci!r}")
    return ci


def resample_weights(n_units: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """Multiplicities of ``n_boot`` bootstrap draws of ``n_units`` units, shape
    ``[n_boot, n_units]`` (int; every row sums to ``n_units``).

    Row 0 is **not** special: all rows are random draws (``numpy.random.default_rng(seed)``).
    """
    if int(n_units) < 1:
        raise ValueError(f"resample_weights: n_units must be >= 1, got {n_units!r}")
    if int(n_boot) < 1:
        raise ValueError(f"resample_weights: n_boot must be >= 1, got {n_boot!r}")
    rng = np.random.default_rng(int(seed))
    idx = rng.integers(0, int(n_units), size=(int(n_boot), int(n_units)))
    w = np.zeros((int(n_boot), int(n_units)), dtype=np.int64)
    np.add.at(w, (np.arange(int(n_boot))[:, None], idx), 1)
    return w


def pooled_mean_replicates(sums: np.ndarray, counts: np.ndarray, weights: np.ndarray
                           ) -> np.ndarray:
    """Bootstrap replicates of pooled means.

    ``sums`` and ``counts`` ``[cells, units]``: per cell and unit the sum and the number of the
    finite values (a unit with no value has count 0). ``weights`` ``[n_boot, units]`` from
    :func:`resample_weights`. Returns ``[n_boot, cells]``: ``sum_u w_u s_u / sum_u w_u n_u``,
    NaN where the drawn units hold no value. With all weights 1 this is the plain mean.
    """
    sums = np.asarray(sums, dtype=float)
    counts = np.asarray(counts, dtype=float)
    w = np.asarray(weights, dtype=float)
    num = w @ sums.T
    den = w @ counts.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def percentile_interval(samples: np.ndarray, ci: float = 0.95, axis: int = 0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The ``ci`` percentile interval of bootstrap ``samples`` along ``axis`` (NaN samples are
    ignored; all-NaN gives NaN). Returns ``(lo, hi)``."""
    ci = _check_ci(ci)
    a = np.asarray(samples, dtype=float)
    q = [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0]
    out = np.full((2,) + tuple(np.delete(a.shape, axis)), np.nan)
    ok = np.isfinite(a).any(axis=axis)
    if ok.any():
        with np.errstate(invalid="ignore"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out = np.nanquantile(a, q, axis=axis)
    return out[0], out[1]


def bootstrap_mean(values: Sequence[float], n_boot: int = 1000, seed: int = 0,
                   ci: float = 0.95) -> tuple[float, float, float]:
    """Mean of the finite ``values`` with its bootstrap percentile interval ``(mean, lo, hi)``.

    One value gives ``(value, value, value)`` (no spread to resample); none gives NaNs.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    w = resample_weights(v.size, n_boot, seed)
    reps = (w @ v) / v.size
    lo, hi = percentile_interval(reps, ci)
    return float(v.mean()), float(lo), float(hi)


def t_interval(values: Sequence[float], ci: float = 0.95) -> tuple[float, float, float]:
    """Mean of the finite ``values`` with its Student-t interval ``(mean, lo, hi)``
    (``mean +- t_{n-1} * sd / sqrt(n)``); NaN bounds with fewer than 2 values.

    Why next to the bootstrap: with 3 dense seeds (the design of Zhou et al. 2023, Figure 2) a percentile
    bootstrap interval can never be wider than the range of the 3 seed means, so it covers the
    truth far less often than its nominal level; the t interval (t_2 = 4.30 at 95 %) is the
    honest small-sample answer under normality. The t quantile comes from scipy (a dependency
    of scikit-learn), imported here only.
    """
    ci = _check_ci(ci)
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan, math.nan
    from scipy.stats import t as student_t
    half = float(student_t.ppf((1.0 + ci) / 2.0, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(
        v.size)
    return mean, mean - half, mean + half


def wilson_interval(successes: int, n: int, ci: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (NaNs when ``n == 0``)."""
    ci = _check_ci(ci)
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return math.nan, math.nan
    z = statistics.NormalDist().inv_cdf((1.0 + ci) / 2.0)
    p = successes / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def permutation_pvalue(observed: float, null: np.ndarray, *, larger_is_better: bool = True
                       ) -> float:
    """One-sided permutation p-value ``(1 + #{null at least as good}) / (1 + len(null))``."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or null.size == 0:
        return math.nan
    hits = (null >= observed) if larger_is_better else (null <= observed)
    return float((1 + int(hits.sum())) / (1 + null.size))


def excludes_zero(lo: float, hi: float) -> int:
    """+1 when the interval lies above 0, -1 when below, 0 when it contains 0 or is NaN."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return 0
    return 1 if lo > 0 else (-1 if hi < 0 else 0)
