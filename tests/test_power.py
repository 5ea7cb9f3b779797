"""tr_jax.regimes.power (sample size of the dichotomy's test), checked by simulation; the Holm
option of the dichotomy; two-temperature sweeps (dichotomy, transition, lmc_change); the
dichotomy figure."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tr_jax import plots, regimes
from tr_jax import stats as tj_stats
from tr_jax.regimes import (dichotomy, holm, lmc_change, power, power_from_summary,
                            sd_from_t_interval, unit_effects)

# the digits pilot (3 dense seeds): hot-minus-cold effect and per-seed sd, points of test error
PILOT = {0.01: (-4.96, 5.15), 0.02: (-0.85, 1.035), 0.05: (-0.85, 0.626), 0.5: (0.11, 0.0765)}


def simulated_rate(effect, sd, n, alpha, n_studies=2000, seed=0):
    """Fraction of simulated studies (n normal per-seed effects) whose two-sided one-sample t
    test rejects at alpha with the sign of the effect."""
    rng = np.random.default_rng(seed)
    x = rng.normal(effect, sd, size=(n_studies, n))
    t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
    crit = sps.t.ppf(1 - alpha / 2, n - 1)
    return float(((np.sign(t) == np.sign(effect)) & (np.abs(t) > crit)).mean())


# ---------------------------------------------------------------------------------------------
# the sample size power names delivers the requested power (simulation)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("effect, sd, target, n_tests", [
    (-0.85, 1.035, 0.8, 1),   # the pilot's 2 %
    (-4.96, 5.15, 0.8, 1),    # the pilot's 1 %
    (0.11, 0.0765, 0.8, 1),   # the pilot's 50 %
    (-0.85, 0.626, 0.8, 2),   # the pilot's 5 %, Holm over two densities
    (-0.5, 1.0, 0.9, 1),
])
def test_sample_size_gives_the_requested_power(effect, sd, target, n_tests):
    r = power_from_summary(effect, sd, 3, power=target, n_tests=n_tests)
    n, alpha = r["n_needed"], 0.05 / n_tests
    assert r["alpha"] == pytest.approx(alpha)
    # the smallest n: n reaches the target, n - 1 does not
    assert r["power_at_needed"] >= target
    assert regimes.power_from_summary(effect, sd, n - 1, power=target,
                                      n_tests=n_tests)["power_now"] < target
    rate = simulated_rate(effect, sd, n, alpha)
    assert abs(rate - r["power_at_needed"]) <= 0.03
    assert abs(rate - target) <= 0.04


def test_pilot_power_at_three_seeds_matches_simulation():
    for d, (effect, sd) in PILOT.items():
        r = power_from_summary(effect, sd, 3)
        assert r["n_units"] == 3 and r["effect_size"] == pytest.approx(effect / sd)
        # 3 dense seeds had little chance to decide any of these effects
        assert 0.1 < r["power_now"] < 0.35, d
        assert abs(simulated_rate(effect, sd, 3, 0.05, n_studies=4000, seed=1)
                   - r["power_now"]) <= 0.03
    # the sd behind a reported t interval: the pilot's 5 % and 50 %
    assert sd_from_t_interval(-2.40, 0.71, 3) == pytest.approx(0.626, abs=1e-3)
    assert sd_from_t_interval(-0.08, 0.30, 3) == pytest.approx(0.0765, abs=1e-4)
    assert math.isnan(sd_from_t_interval(-1.0, 1.0, 1))


def test_power_from_summary_edge_cases():
    assert power_from_summary(-0.5, 0.0, 5)["note"].startswith("sd 0")
    for r in (power_from_summary(-0.5, float("nan"), 5), power_from_summary(-0.5, 1.0, 1)):
        assert r["n_needed"] is None and math.isnan(r["power_now"]) and "fewer than 2" in r["note"]
    zero = power_from_summary(0.0, 1.0, 5)
    assert zero["n_needed"] is None and "effect 0" in zero["note"]
    tiny = power_from_summary(1e-4, 1.0, 5, n_max=1000)
    assert tiny["n_needed"] is None and "more than 1000" in tiny["note"]
    assert power_from_summary(50.0, 1.0, 3)["n_needed"] == 2  # n >= 2 always
    # the sign does not matter, only |effect| / sd
    assert (power_from_summary(-0.3, 1.0, 4)["power_now"]
            == pytest.approx(power_from_summary(0.3, 1.0, 4)["power_now"]))
    with pytest.raises(ValueError, match="alpha"):
        power_from_summary(0.5, 1.0, 3, alpha=5)
    with pytest.raises(ValueError, match="power"):
        power_from_summary(0.5, 1.0, 3, power=80)


# ---------------------------------------------------------------------------------------------
# planted results tables
# ---------------------------------------------------------------------------------------------

def planted(effects, n_seeds, temps=(15.0, 25.0, 35.0, 60.0), lmc_drop=None, seed=0,
            base=0.1, retrain=(1, 2)):
    """results.csv rows whose per-dense-seed hot-minus-cold effect (hot half of ``temps``
    minus cold half) is exactly the drawn ``effects[d] = (mean, sd)`` value of that seed.
    Retrain noise is antisymmetric over the retrain seeds (it cancels in every seed mean).
    ``lmc_drop[d] = (mean, sd)`` plants pair LMC: 0 at the hot half, minus the seed's drop at the
    cold half."""
    rng = np.random.default_rng(seed)
    temps = sorted(temps)
    h = len(temps) // 2
    hotness = {t: (0.5 if i < h else (-0.5 if i >= len(temps) - h else 0.0))
               for i, t in enumerate(temps)}
    rows = []
    draws = {}
    for s in range(1, n_seeds + 1):
        offset = rng.normal(0, 0.01)
        for d, (mean, sd) in effects.items():
            eff = rng.normal(mean, sd)
            drop = rng.normal(*lmc_drop[d]) if lmc_drop and d in lmc_drop else 0.0
            draws[(s, d)] = eff
            for t in temps:
                u = 0.004 * (1 + rng.random())
                for k, r in enumerate(retrain):
                    noise = (k - (len(retrain) - 1) / 2) * u  # sums to 0 over retrain seeds
                    rows.append(dict(knob="epochs", stage="retrain", temperature=t,
                                     dense_seed=s, density=d, retrain_seed=r, pair="",
                                     metric="test_error",
                                     value=base + offset + eff * hotness[t] + noise, sick=False))
                lmc = (-drop if hotness[t] < 0 else 0.0) + rng.normal(0, 1e-4)
                rows.append(dict(knob="epochs", stage="pair", temperature=t, dense_seed=s,
                                 density=d, retrain_seed=np.nan, pair="1-2", metric="lmc",
                                 value=lmc, sick=False))
    return pd.DataFrame(rows), draws


def test_power_end_to_end_on_a_results_table():
    effects = {0.02: (-0.0085, 0.01035), 0.05: (-0.0085, 0.00626), 0.5: (0.0011, 0.000765)}
    res, draws = planted(effects, 3)
    out = power(res)
    t = out.table.set_index("density")
    assert list(t.index) == [0.02, 0.05, 0.5]
    for d in effects:
        v = np.array([draws[(s, d)] for s in (1, 2, 3)])
        assert t.loc[d, "effect"] == pytest.approx(v.mean(), abs=1e-9)
        assert t.loc[d, "sd"] == pytest.approx(v.std(ddof=1), abs=1e-9)
        ref = power_from_summary(v.mean(), v.std(ddof=1), 3)
        assert t.loc[d, "n_units"] == 3 and t.loc[d, "n_needed"] == ref["n_needed"]
        assert t.loc[d, "power_now"] == pytest.approx(ref["power_now"])
    # the per-unit effects are dichotomy's: same t intervals, same p-values
    dich = dichotomy(res, n_boot=200).table.set_index("density")
    np.testing.assert_allclose(t["p_value"], dich["p_value"])
    units = unit_effects(res)
    for d in effects:
        _, lo, hi = tj_stats.t_interval(units[units["density"] == d]["effect"])
        assert (lo, hi) == (pytest.approx(dich.loc[d, "effect_t_lo"]),
                            pytest.approx(dich.loc[d, "effect_t_hi"]))
    # the same numbers from a per-seed cells table, from unit effects, and from a Dichotomy
    by_seed = power(regimes.cells_by_seed(res)).table.set_index("density")
    np.testing.assert_allclose(by_seed["sd"], t["sd"], rtol=1e-9)
    from_units = power(unit_effects(res)).table.set_index("density")
    np.testing.assert_allclose(from_units["sd"], t["sd"], rtol=1e-12)
    from_dich = power(dichotomy(res, n_boot=50)).table.set_index("density")
    np.testing.assert_allclose(from_dich["sd"], t["sd"], rtol=1e-9)
    assert list(from_dich["n_needed"]) == list(t["n_needed"])
    # the text: one line per density
    lines = out.lines()
    assert len(lines) == 3
    assert lines[0].startswith("undecided at 2%") or lines[0].startswith("decided at 2%")
    assert f"about {int(t.loc[0.02, 'n_needed'])} dense seeds would decide an effect" in lines[0]
    assert "(power now" in lines[0] and "points, sd" in lines[0]
    # a given effect (fraction of test error) for every density, or per density
    given = power(res, effect=-0.01, n_tests=3)
    assert given.given_effect and "the given effect" in given.text()
    np.testing.assert_allclose(given.table["alpha"], 0.05 / 3)
    per = power(res, effect={0.05: -0.02}).table.set_index("density")
    assert per.loc[0.05, "effect"] == -0.02 and per.loc[0.5, "effect"] == t.loc[0.5, "effect"]
    assert out.to_dict()["table"][0]["density"] == 0.02


def test_power_n_a_cases_and_bad_input():
    res, _ = planted({0.05: (-0.01, 0.005)}, 1)
    one = power(res).table.iloc[0]
    assert pd.isna(one["n_needed"]) and "one dense seed" in one["note"]
    assert "sample size n/a, one dense seed" in power(res).text()
    flat, _ = planted({0.05: (-0.01, 0.0)}, 3)
    row = power(flat).table.iloc[0]
    assert pd.isna(row["n_needed"]) and row["note"].startswith("sd 0")
    with pytest.raises(ValueError, match="no dense_seed column"):
        power(pd.DataFrame({"knob": ["epochs"], "temperature": [1.0], "density": [0.1],
                            "test_error": [0.1]}))
    with pytest.raises(TypeError, match="DataFrame"):
        power([1, 2, 3])


def test_dichotomy_detection_rate_at_the_named_sample_size():
    """Whole studies: planted tables at the n power names for 80 %, run through dichotomy
    itself (bootstrap and t test): it calls "hotter better" about 80 % of the time."""
    effect, sd = -0.0085, 0.00626  # the pilot's 5 %, as fractions
    n = power_from_summary(effect, sd, 3)["n_needed"]
    hits = 0
    n_studies = 250
    for k in range(n_studies):
        res, _ = planted({0.05: (effect, sd)}, n, temps=(25.0, 35.0), seed=100 + k)
        hits += dichotomy(res, n_boot=200).table["direction"].iloc[0] == "hotter better"
    exact = power_from_summary(effect, sd, n)["power_at_needed"]
    assert abs(hits / n_studies - exact) <= 0.08  # 250 studies: sd of the rate ~0.024


# ---------------------------------------------------------------------------------------------
# Holm over the densities
# ---------------------------------------------------------------------------------------------

def test_holm_known_answers():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    got = holm([0.02, np.nan, 0.5])
    assert got[0] == pytest.approx(0.04) and np.isnan(got[1]) and got[2] == 0.5
    assert holm([0.9, 0.8]).tolist() == [1.0, 1.0] and holm([]).size == 0


def test_dichotomy_p_value_and_holm():
    effects = {0.02: (-0.01, 0.004), 0.05: (-0.01, 0.004), 0.5: (0.002, 0.0008)}
    res, _ = planted(effects, 6, seed=3)
    none = dichotomy(res, n_boot=300)
    assert none.correction == "none" and "p_holm" not in none.table.columns
    t = none.table
    # p < 0.05 exactly when the t interval excludes 0
    excl = (t["effect_t_lo"] > 0) | (t["effect_t_hi"] < 0)
    assert ((t["p_value"] < 0.05) == excl).all()
    hol = dichotomy(res, n_boot=300, correction="holm")
    h = hol.table
    np.testing.assert_allclose(h["p_holm"], holm(h["p_value"]))
    assert list(h["direction_unadjusted"]) == list(t["direction"])
    assert list(h.columns[:len(t.columns)]) == list(t.columns)
    assert hol.holds and "Holm" in hol.text() and hol.to_dict()["correction"] == "holm"
    # a density significant alone but not after Holm turns unclear
    weak = res.copy()
    m = (weak["density"] == 0.5) & (weak["metric"] == "test_error")
    rng = np.random.default_rng(0)
    shift = {s: rng.normal(0, 0.0012) for s in range(1, 7)}
    weak.loc[m, "value"] += [shift[s] * (1 if temp <= 25 else -1)
                             for s, temp in zip(weak.loc[m, "dense_seed"], weak.loc[m, "temperature"])]
    w0 = dichotomy(weak, n_boot=300).table.set_index("density")
    wh = dichotomy(weak, n_boot=300, correction="holm").table.set_index("density")
    for d in w0.index:
        if wh.loc[d, "p_holm"] >= 0.05:
            assert wh.loc[d, "direction"] == "unclear"
        if wh.loc[d, "direction"] != "unclear":
            assert wh.loc[d, "direction"] == w0.loc[d, "direction"]
    with pytest.raises(ValueError, match="correction"):
        dichotomy(res, correction="bonferroni")


# ---------------------------------------------------------------------------------------------
# two temperatures (one hot, one cold)
# ---------------------------------------------------------------------------------------------

def test_two_temperatures_dichotomy_transition_and_lmc_change():
    effects = {0.02: (-0.01, 0.003), 0.05: (-0.01, 0.003), 0.5: (0.003, 0.001)}
    drops = {0.02: (0.1, 0.02), 0.05: (0.05, 0.01), 0.5: (0.0, 0.0)}
    res, _ = planted(effects, 8, temps=(25.0, 35.0), lmc_drop=drops, seed=5)
    d = dichotomy(res, n_boot=300, correction="holm")
    t = d.table.set_index("density")
    assert all(t["hot_temperatures"] == (25.0,)) and all(t["cold_temperatures"] == (35.0,))
    assert list(t["direction"]) == ["hotter better", "hotter better", "colder better"]
    assert d.holds and (d.low, d.high) == (0.02, 0.5)
    assert all(t["n_units"] == 8)
    # the transition code runs with two temperatures: the one step is the largest drop; with no
    # other step there is no background, so it is never "sharp"
    tt = regimes.transition_with_uncertainty(res).set_index("density")
    assert tt.loc[0.02, "hot_temperature"] == 25.0 and tt.loc[0.02, "cold_temperature"] == 35.0
    assert tt.loc[0.02, "lmc_transition"] == 30.0 and not tt["sharp"].any()
    assert tt.loc[0.02, "lmc_drop"] == pytest.approx(0.1, abs=0.03)
    # H2 with two temperatures: LMC(cold) - LMC(hot) per dense seed, t test
    ch = lmc_change(res, hot=25, cold=35, correction="holm").set_index("density")
    assert list(ch["direction"]) == ["drop", "drop", "unclear"]
    assert ch.loc[0.02, "change"] == pytest.approx(-0.1, abs=0.03)
    assert ch.loc[0.02, "change_t_hi"] < 0 and ch.loc[0.5, "n_seeds"] == 8
    assert ch.loc[0.05, "lmc_hot"] == pytest.approx(0.0, abs=1e-3)
    np.testing.assert_allclose(ch["p_holm"], holm(ch["p_value"]))
    # the power analysis reads the same two-temperature table
    pw = power(res, n_tests=3).table
    assert (pw["n_units"] == 8).all() and pw["n_needed"].notna().all()
    with pytest.raises(ValueError, match=r"\[40.0\]"):
        lmc_change(res, hot=25, cold=40)
    with pytest.raises(ValueError, match="different"):
        lmc_change(res, hot=25, cold=25)
    one, _ = planted({0.05: (-0.01, 0.003)}, 1, temps=(25.0, 35.0), lmc_drop={0.05: (0.05, 0.0)})
    single = lmc_change(one, 25, 35)
    assert single["n_seeds"].iloc[0] == 1 and single["direction"].iloc[0] == "unclear"


# ---------------------------------------------------------------------------------------------
# the dichotomy figure
# ---------------------------------------------------------------------------------------------

def test_dichotomy_figure(tmp_path):
    effects = {0.02: (-0.01, 0.003), 0.05: (-0.01, 0.003), 0.5: (0.003, 0.001)}
    res, _ = planted(effects, 5, seed=7)
    d = dichotomy(res, n_boot=200)
    p = plots.dichotomy(d, tmp_path / "sub" / "dichotomy.png", dpi=40)
    assert p == tmp_path / "sub" / "dichotomy.png"
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one dense seed (no t interval) and the Holm variant draw too
    one, _ = planted(effects, 1)
    assert plots.dichotomy(dichotomy(one, n_boot=50), tmp_path / "one.png", dpi=40).is_file()
    assert plots.dichotomy(dichotomy(res, n_boot=50, correction="holm"), tmp_path / "h.png",
                           dpi=40).is_file()
    with pytest.raises(TypeError, match="Dichotomy"):
        plots.dichotomy(d.table, tmp_path / "x.png")
