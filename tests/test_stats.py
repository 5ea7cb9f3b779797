"""tr_jax.stats and the dichotomy test (tr_jax.regimes.dichotomy): known answers, a planted
effect found, a null table not."""
import numpy as np
import pandas as pd
import pytest

from tr_jax import stats
from tr_jax.regimes import dichotomy


def test_resample_weights_rows_and_determinism():
    w = stats.resample_weights(3, 500, seed=7)
    assert w.shape == (500, 3) and (w.sum(axis=1) == 3).all() and (w >= 0).all()
    np.testing.assert_array_equal(w, stats.resample_weights(3, 500, seed=7))
    assert not np.array_equal(w, stats.resample_weights(3, 500, seed=8))
    # every unit is drawn with probability 1/3 per draw: mean multiplicity 1
    np.testing.assert_allclose(w.mean(axis=0), 1.0, atol=0.1)
    with pytest.raises(ValueError, match="n_units"):
        stats.resample_weights(0, 10)


def test_pooled_mean_replicates_known_answers():
    sums = np.array([[2.0, 9.0], [1.0, 0.0]])  # cell 0: unit 0 has 2 values summing 2, unit 1: 3 -> 9
    counts = np.array([[2.0, 3.0], [1.0, 0.0]])
    w = np.array([[1, 1], [2, 0], [0, 2]])
    got = stats.pooled_mean_replicates(sums, counts, w)
    np.testing.assert_allclose(got[0], [11 / 5, 1.0])
    np.testing.assert_allclose(got[1], [1.0, 1.0])
    assert got[2, 0] == 3.0 and np.isnan(got[2, 1])  # cell 1 has no value in unit 1


def test_percentile_and_bootstrap_mean():
    lo, hi = stats.percentile_interval(np.arange(101.0), 0.9)
    assert (lo, hi) == (pytest.approx(5.0), pytest.approx(95.0))
    lo, hi = stats.percentile_interval(np.full((10, 2), np.nan), 0.9)
    assert np.isnan(lo).all() and np.isnan(hi).all()
    assert stats.bootstrap_mean([0.3]) == (0.3, 0.3, 0.3)
    m, lo, hi = stats.bootstrap_mean([1.0, 2.0, 3.0, np.nan], n_boot=2000)
    assert m == 2.0 and 1.0 <= lo < 2.0 < hi <= 3.0
    with pytest.raises(ValueError, match="ci"):
        stats.percentile_interval([1.0], ci=95)


def test_wilson_and_permutation_known_answers():
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert np.isnan(stats.wilson_interval(0, 0)).all()
    m, lo, hi = stats.t_interval([1.0, 2.0, 3.0])  # sd 1, t_2 = 4.3027
    assert m == 2.0 and hi - m == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)
    assert np.isnan(stats.t_interval([1.0])[1])
    with pytest.raises(ValueError, match="11/10"):
        stats.wilson_interval(11, 10)
    assert stats.permutation_pvalue(0.9, np.array([0.5, 0.6, 0.95])) == pytest.approx(2 / 4)
    assert stats.permutation_pvalue(0.1, np.array([0.5, 0.6]), larger_is_better=False) == 1 / 3
    assert stats.excludes_zero(0.1, 0.2) == 1 and stats.excludes_zero(-0.2, -0.1) == -1
    assert stats.excludes_zero(-0.1, 0.1) == 0 and stats.excludes_zero(np.nan, 1) == 0


# ---------------------------------------------------------------------------------------------
# dichotomy: planted effect found, null not
# ---------------------------------------------------------------------------------------------

TEMPS = [10.0, 20.0, 40.0, 80.0, 160.0]  # epochs: 10 is the hottest


def results(effect_by_density, seeds=(1, 2, 3), retrain=(1, 2, 3), noise=0.003, seed_sd=0.003,
            rng_seed=0):
    """results.csv rows: test error = 0.1 + effect(d) * hotness (+1 at the hottest, -1 at the
    coldest) + a dense-seed offset + retrain noise."""
    rng = np.random.default_rng(rng_seed)
    hotness = np.linspace(1, -1, len(TEMPS))
    rows = []
    for s in seeds:
        offset = rng.normal(0, seed_sd)
        for t, h in zip(TEMPS, hotness):
            for d, eff in effect_by_density.items():
                for r in retrain:
                    rows.append(dict(knob="epochs", stage="retrain", temperature=t, dense_seed=s,
                                     density=d, retrain_seed=r, pair="", metric="test_error",
                                     value=0.1 + eff * h + offset + rng.normal(0, noise),
                                     sick=False))
    return pd.DataFrame(rows)


def test_dichotomy_planted_is_found():
    # hotter better at 5 %, no effect at 20 %, worse at 50 %
    res = results({0.05: -0.01, 0.2: 0.0, 0.5: 0.005})
    out = dichotomy(res, n_boot=500)
    t = out.table.set_index("density")
    assert list(t.direction) == ["hotter better", "unclear", "colder better"]
    # planted: hot half (10, 20) minus cold half (80, 160) = effect * (1 + 0.5 + 0.5 + 1) / 2 * 2
    # planted: effect * (mean hotness of (10, 20) - of (80, 160)) = effect * (0.75 + 0.75)
    assert t.loc[0.05, "effect"] == pytest.approx(-0.015, abs=0.003)
    assert t.loc[0.5, "effect"] == pytest.approx(0.0075, abs=0.003)
    assert t.loc[0.05, "hot_temperatures"] == (10.0, 20.0)
    assert t.loc[0.05, "cold_temperatures"] == (80.0, 160.0)
    assert t.loc[0.05, "best_temperature"] == 10.0  # 1.5 points ahead of 20 epochs
    assert t.loc[0.5, "best_temperature"] in (80.0, 160.0)  # 0.25 points apart, noise 0.3
    assert out.holds and (out.low, out.high) == (0.05, 0.5)
    assert out.unit == "dense_seed" and out.n_units == 3
    assert "Dichotomy HOLDS" in out.text() and "density 5%" in out.text()


def test_dichotomy_null_and_one_sided_tables_do_not_hold():
    null = dichotomy(results({0.05: 0.0, 0.2: 0.0, 0.5: 0.0}, noise=0.01), n_boot=500)
    assert not null.holds and "NOT shown" in null.text()
    # hotter better everywhere (as on the embedded digits with noisy labels): no dichotomy
    same_sign = dichotomy(results({0.05: -0.01, 0.5: -0.01}), n_boot=300)
    assert set(same_sign.table.direction) == {"hotter better"} and not same_sign.holds
    # the wrong way round (hotter better only at HIGH density) is not the paper's claim
    reversed_ = dichotomy(results({0.05: 0.01, 0.5: -0.01}), n_boot=300)
    assert not reversed_.holds


def test_dichotomy_options_and_errors():
    res = results({0.05: -0.01, 0.5: 0.005}, seeds=(1,))
    one = dichotomy(res, n_boot=200)
    assert one.unit == "retrain_seed" and "understate" in one.text()
    expl = dichotomy(res, hot=[10.0], cold=[160.0], n_boot=50)
    assert expl.table.set_index("density").loc[0.05, "effect"] == pytest.approx(-0.02, abs=0.01)
    with pytest.raises(ValueError, match="both"):
        dichotomy(res, hot=[10.0])
    with pytest.raises(ValueError, match=r"\[15.0\]"):
        dichotomy(res, hot=[15.0], cold=[160.0])
    with pytest.raises(ValueError, match="'lr'"):
        dichotomy(res, knob="lr")
    sick = res.assign(sick=True)
    with pytest.raises(ValueError, match="no healthy"):
        dichotomy(sick)
