"""Tests for tr_jax.casestudies on synthetic cell tables whose right answers are known."""

import math

import numpy as np
import pandas as pd
import pytest

from tr_jax.casestudies import (ACTIONS, SELECTORS, Advice, AdviceScore, Selection, advice_accuracy,
                                advise, compare_selectors, select_model, selector_summary,
                                tune_sam_rho)
from tr_jax.regimes import classify

T = [10.0, 20.0, 40.0, 80.0, 160.0]  # epochs, hot -> cold
LOW, HIGH = (0.05, 0.1), (0.2, 0.5)
DENSE_ERR = [0.30, 0.20, 0.12, 0.08, 0.06]  # longer dense training = better dense model


def story(low_err=(0.20, 0.18, 0.16, 0.19, 0.22), high_err=(0.12, 0.11, 0.10, 0.095, 0.09)):
    """A family that obeys the three-regime story.

    Low densities: II-A, II-A, II-B, I, I (hot -> cold), best at 40 epochs, more training
    hurts past the transition (between 40 and 80). High densities: II-A x4 then II-B at 160,
    more training always helps. Test errors carry a density offset."""
    rows = []
    for d in LOW + HIGH:
        low = d in LOW
        lmc = [-0.01, -0.015, -0.02, -0.35, -0.45] if low else [-0.01] * 5
        cka = [0.90, 0.93, 0.96, 0.88, 0.87] if low else [0.90, 0.93, 0.96, 0.98, 0.99]
        err = low_err if low else high_err
        for t, a, b, e, de in zip(T, lmc, cka, err, DENSE_ERR):
            rows.append(dict(knob="epochs", temperature=t, density=d, test_error=e + (0.3 - d) / 10,
                             lmc=a, cka=b, cka_logits=b, dense_test_error=de, regime="stale",
                             sick=False))
    return pd.DataFrame(rows).sample(frac=1.0, random_state=3)  # row order must not matter


def err_at(df, t, d):
    return float(df[(df.temperature == t) & (df.density == d)].test_error.iloc[0])


# ---------------------------------------------------------------------------------------------
# case study 1
# ---------------------------------------------------------------------------------------------

def test_story_regimes_are_as_planted():
    df = story()
    got = {(r.temperature, r.density): lab for r, lab in zip(df.itertuples(), classify(df))}
    for d in LOW:
        assert [got[(t, d)] for t in T] == ["II-A", "II-A", "II-B", "I", "I"]
    for d in HIGH:
        assert [got[(t, d)] for t in T] == ["II-A"] * 4 + ["II-B"]


def test_advise_default_is_the_coldest_and_says_raise():
    df = story()
    a = advise(df, 0.05)
    assert isinstance(a, Advice)
    assert (a.knob, a.density, a.temperature, a.regime) == ("epochs", 0.05, 160.0, "I")
    assert a.action == "raise temperature" and a.suggested_temperature == 80.0
    assert a.test_error_now == pytest.approx(0.22 + 0.025)
    assert a.test_error_after == pytest.approx(0.19 + 0.025)
    assert a.improved is True
    ev = a.evidence
    assert ev["lmc"] == -0.45 and ev["cka"] == 0.87 and ev["lmc_threshold"] == -0.3
    assert ev["jump_fired"] is True
    assert (ev["jump_hot_temperature"], ev["jump_cold_temperature"]) == (40.0, 80.0)
    assert ev["cka_reference"] == pytest.approx(0.96 - 0.005)
    txt = a.text()
    assert "raise temperature" in txt and "80" in txt and "regime I" in txt
    assert len(txt.splitlines()) >= 3
    assert a.to_dict()["action"] == "raise temperature"


def test_advise_other_regimes_and_edges():
    df = story()
    a = advise(df, 0.05, temperature=10)
    assert (a.regime, a.action, a.suggested_temperature) == ("II-A", "lower temperature", 20.0)
    assert a.improved is True
    k = advise(df, 0.05, temperature=40.0)
    assert (k.regime, k.action, k.suggested_temperature, k.improved) == ("II-B", "keep", None, None)
    assert math.isnan(k.test_error_after)
    assert "keep" in k.text()
    assert advise(df, 0.5).action == "keep"
    # rule passed as a mapping: a very loose LMC threshold and no jump -> 160 is connected
    loose = advise(df, 0.05, rule={"lmc_threshold": -0.9, "use_jump": False})
    assert loose.regime in ("II-A", "II-B")
    # hottest cell in Regime I: raise, but nothing hotter
    edge = df.copy()
    edge.loc[(edge.density == 0.05) & (edge.temperature == 10.0), "lmc"] = -0.5
    e = advise(edge, 0.05, temperature=10.0)
    assert (e.regime, e.action, e.suggested_temperature, e.improved) == (
        "I", "raise temperature", None, None)
    assert "edge" in e.text()
    # missing metrics
    nan = df.copy()
    nan.loc[(nan.density == 0.5) & (nan.temperature == 160.0), "lmc"] = np.nan
    u = advise(nan, 0.5)
    assert (u.regime, u.action, u.suggested_temperature) == (None, "unknown", None)
    assert u.evidence["lmc"] is None and "unknown" in u.text()
    assert set(ACTIONS) == {"raise temperature", "lower temperature", "keep", "unknown"}


def test_advise_sam_rho_orientation():
    rho = pd.DataFrame(dict(knob="sam_rho", temperature=[0.0, 0.05, 0.1], density=0.1,
                            test_error=[0.2, 0.15, 0.16], lmc=[-0.4, -0.01, -0.01],
                            cka=[0.9, 0.97, 0.95]))
    a = advise(rho, 0.1)  # default = coldest = rho 0
    assert a.temperature == 0.0 and a.regime == "I" and a.suggested_temperature == 0.05
    assert a.improved is True


def test_advise_errors_name_bad_values():
    df = story()
    with pytest.raises(ValueError, match=r"density 0\.07.*0\.05, 0\.1, 0\.2, 0\.5"):
        advise(df, 0.07)
    with pytest.raises(ValueError, match=r"temperature 33.*10, 20, 40, 80, 160"):
        advise(df, 0.05, temperature=33)
    both = pd.concat([df, df.assign(knob="batch_size")])
    with pytest.raises(ValueError, match=r"\['batch_size', 'epochs'\].*knob="):
        advise(both, 0.05)
    assert advise(both, 0.05, knob="epochs").action == "raise temperature"
    with pytest.raises(ValueError, match="'lr'"):
        advise(both, 0.05, knob="lr")
    with pytest.raises(ValueError, match="temperature 40"):
        advise(pd.concat([df, df[df.temperature == 40.0]]), 0.05)  # duplicated cells
    with pytest.raises(ValueError, match="density"):
        advise(df.drop(columns="density"), 0.05)


def test_advice_accuracy_story_is_perfect():
    score = advice_accuracy(story())
    assert isinstance(score, AdviceScore)
    assert score.fraction_right == 1.0 and score.n == 20 and score.n_right == 20
    assert {r: v["n"] for r, v in score.per_regime.items()} == {"I": 4, "II-A": 12, "II-B": 4}
    assert all(v["fraction_right"] == 1.0 for v in score.per_regime.values())
    assert len(score.table) == 20 and score.table.scored.all()
    assert "20/20" in score.summary()


def test_advice_accuracy_counter_story():
    # low densities: more training always helps -> keep at 40 and both raises are wrong
    score = advice_accuracy(story(low_err=(0.20, 0.19, 0.18, 0.17, 0.16)))
    assert score.n == 20 and score.n_right == 14
    assert score.fraction_right == pytest.approx(0.7)
    assert score.per_regime["I"] == {"n": 4, "n_right": 0, "fraction_right": 0.0}
    assert score.per_regime["II-B"]["n_right"] == 2
    assert score.per_regime["II-A"]["fraction_right"] == 1.0
    row = score.table[(score.table.density == 0.05) & (score.table.temperature == 160.0)].iloc[0]
    assert row.action == "raise temperature" and row.right is False


def test_advice_accuracy_tol_and_unscored():
    df = story()
    # at 0.5 density, 80 vs 160 differ by 0.005: with tol 0.01 the last lower-move is a tie (wrong)
    # and the keep at 160 stays right
    score = advice_accuracy(df, tol=0.01)
    t = score.table
    r = t[(t.density == 0.5) & (t.temperature == 80.0)].iloc[0]
    assert r.scored and r.right is False
    # NaN error and unknown regime are not scored
    nan = df.copy()
    nan.loc[(nan.density == 0.5) & (nan.temperature == 10.0), "lmc"] = np.nan
    nan.loc[(nan.density == 0.2) & (nan.temperature == 10.0), "test_error"] = np.nan
    s2 = advice_accuracy(nan)
    assert s2.n == 18 and s2.fraction_right == 1.0
    with pytest.raises(ValueError, match="tol"):
        advice_accuracy(df, tol=-1)
    empty = advice_accuracy(df.assign(lmc=np.nan))
    assert empty.n == 0 and math.isnan(empty.fraction_right)


# ---------------------------------------------------------------------------------------------
# case study 2
# ---------------------------------------------------------------------------------------------

def test_select_model_lmc_cka_has_zero_regret_most_trained_does_not():
    df = story()
    s = select_model(df, 0.05)
    assert isinstance(s, Selection)
    assert (s.selector, s.chosen, s.oracle) == ("lmc_cka", 40.0, 40.0)
    assert s.regret == 0.0 and s.connected == (10.0, 20.0, 40.0)
    assert s.candidates == tuple(T)
    m = select_model(df, 0.05, by="most_trained")
    assert m.chosen == 160.0 and m.regret == pytest.approx(0.06)
    b = select_model(df, 0.05, by="best_dense")
    assert b.chosen == 160.0 and b.regret == pytest.approx(0.06)
    e = select_model(df, 0.05, by="lmc_error")
    assert e.chosen == 40.0 and e.regret == 0.0
    r = select_model(df, 0.05, by="random")
    assert r.chosen is None and r.regret == pytest.approx(0.19 - 0.16)
    r1 = select_model(df, 0.05, by="random", seed=0)
    assert r1.chosen in T and r1 == select_model(df, 0.05, by="random", seed=0)
    # high density: the most-trained model is also best and II-B
    assert select_model(df, 0.5).chosen == 160.0 and select_model(df, 0.5).regret == 0.0
    # the sanity-check connectivity (LMC > -0.1) agrees here
    assert select_model(df, 0.05, connected="threshold").chosen == 40.0
    assert select_model(df, 0.05, connected="tolerance").chosen == 40.0


def test_select_model_never_peeks_at_the_pruned_error():
    df = story()
    worse = df.copy()
    worse.loc[(worse.density == 0.05) & (worse.temperature == 40.0), "test_error"] = 0.9
    for by in ("lmc_cka", "lmc_error", "most_trained", "best_dense"):
        a, b = select_model(df, 0.05, by=by), select_model(worse, 0.05, by=by)
        assert a.chosen == b.chosen, by
    s = select_model(worse, 0.05)
    assert s.oracle == 20.0 and s.regret == pytest.approx(0.9 - (0.18 + 0.025))


def test_select_model_candidates_and_fallback():
    df = story()
    s = select_model(df, 0.05, candidates=[160, 10.0])
    assert s.candidates == (10.0, 160.0) and s.chosen == 10.0 and s.regret == 0.0
    # only Regime-I candidates: fall back to the best-connected one (LMC tolerance)
    f = select_model(df, 0.05, candidates=[80.0, 160.0])
    assert f.chosen == 80.0 and "tolerance" in f.note and f.connected == (80.0,)
    with pytest.raises(ValueError, match=r"candidate 33\.0.*10, 20, 40, 80, 160"):
        select_model(df, 0.05, candidates=[33])
    with pytest.raises(ValueError, match="'lmc_ckaa'"):
        select_model(df, 0.05, by="lmc_ckaa")
    with pytest.raises(ValueError, match="'tight'"):
        select_model(df, 0.05, connected="tight")
    with pytest.raises(ValueError, match="'model'"):
        select_model(df, 0.05, key="model")
    # a label column as the family key
    lab = df.assign(model=[f"ep{int(t)}" for t in df.temperature])
    s2 = select_model(lab, 0.05, key="model", candidates=["ep20", "ep160"])
    assert s2.chosen == "ep20" and s2.oracle == "ep20"


def test_select_model_missing_metrics():
    df = story()
    no_cka = df.assign(cka=np.nan)
    s = select_model(no_cka, 0.05)
    assert s.chosen is None and math.isnan(s.regret) and "metrics" in s.note
    assert not math.isnan(s.oracle_test_error)
    no_dense = df.drop(columns="dense_test_error")
    assert select_model(no_dense, 0.05, by="best_dense").chosen is None
    assert select_model(no_dense, 0.05, by="most_trained").chosen == 160.0


def test_compare_selectors_and_summary():
    df = story()
    table = compare_selectors(df)
    assert len(table) == 4 * len(SELECTORS)
    assert list(table.columns[:8]) == ["knob", "density", "selector", "chosen", "test_error",
                                       "oracle", "oracle_test_error", "regret"]
    summ = selector_summary(table)
    mean = dict(zip(summ.selector, summ.mean_regret))
    assert mean["lmc_cka"] == 0.0 and mean["lmc_error"] == 0.0
    # most_trained: 0.06 at the two low densities, 0 at the two high ones
    assert mean["most_trained"] == pytest.approx(0.03)
    assert mean["most_trained"] > mean["lmc_cka"]
    assert dict(zip(summ.selector, summ.n_zero_regret))["lmc_cka"] == 4
    sub = compare_selectors(df, densities=[0.5], selectors=("lmc_cka", "most_trained"))
    assert list(sub.selector) == ["lmc_cka", "most_trained"] and (sub.regret == 0).all()
    with pytest.raises(ValueError, match="'oracle'"):
        compare_selectors(df, selectors=("oracle",))
    with pytest.raises(ValueError, match=r"density 0\.3"):
        compare_selectors(df, densities=[0.3])


# ---------------------------------------------------------------------------------------------
# case study 3
# ---------------------------------------------------------------------------------------------

RHO = [0.0, 0.05, 0.1, 0.2, 0.4]


def sam_table():
    rows = []
    spec = {
        # density: (lmc per rho, cka per rho, test error per rho)  (rho ascending = cold -> hot)
        0.05: ([-0.45, -0.4, -0.01, -0.01, -0.02], [0.85, 0.86, 0.97, 0.94, 0.91],
               [0.19, 0.18, 0.15, 0.16, 0.17]),
        0.5: ([-0.01] * 5, [0.99, 0.98, 0.97, 0.95, 0.93], [0.08, 0.081, 0.082, 0.085, 0.09]),
        0.02: ([-0.6, -0.5, -0.45, -0.4, -0.32], [0.8] * 5, [0.30, 0.29, 0.28, 0.27, 0.26]),
    }
    for d, (lmc, cka, err) in spec.items():
        for r, a, b, e in zip(RHO, lmc, cka, err):
            rows.append(dict(knob="sam_rho", temperature=r, density=d, test_error=e, lmc=a, cka=b))
    epochs = story().iloc[:3]  # another knob in the same table is ignored
    return pd.concat([pd.DataFrame(rows), epochs], ignore_index=True)


def test_tune_sam_rho_picks_the_planted_rho():
    out = tune_sam_rho(sam_table())
    assert list(out.density) == [0.02, 0.05, 0.5]
    r = out.set_index("density")
    assert r.loc[0.05, "chosen_rho"] == 0.1 and r.loc[0.05, "chosen_regime"] == "II-B"
    assert r.loc[0.05, "best_rho"] == 0.1 and r.loc[0.05, "regret"] == 0.0
    assert r.loc[0.05, "path"] == (0.0, 0.05, 0.1)
    assert r.loc[0.05, "baseline_rho"] == 0.0
    assert r.loc[0.05, "baseline_regret"] == pytest.approx(0.04)
    assert r.loc[0.5, "chosen_rho"] == 0.0 and r.loc[0.5, "path"] == (0.0,)
    assert r.loc[0.5, "regret"] == 0.0 and r.loc[0.5, "baseline_regret"] == 0.0
    # all Regime I: the walk ends at the largest rho
    assert r.loc[0.02, "chosen_rho"] == 0.4 and r.loc[0.02, "chosen_regime"] == "I"
    assert "largest rho" in r.loc[0.02, "note"]
    assert r.loc[0.02, "path"] == tuple(RHO)
    assert r.loc[0.02, "regret"] == 0.0 and r.loc[0.02, "baseline_regret"] == pytest.approx(0.04)


def test_tune_sam_rho_no_peeking_and_errors():
    tab = sam_table()
    shuffled = tab.copy()
    sam = shuffled.knob == "sam_rho"
    shuffled.loc[sam, "test_error"] = np.random.default_rng(1).permutation(
        shuffled.loc[sam, "test_error"].to_numpy())
    a, b = tune_sam_rho(tab), tune_sam_rho(shuffled)
    assert list(a.chosen_rho) == list(b.chosen_rho)
    with pytest.raises(ValueError, match=r"sam_rho.*\['epochs'\]"):
        tune_sam_rho(story())
    nan = tab.assign(lmc=np.nan)
    out = tune_sam_rho(nan)
    assert out.chosen_rho.isna().all() and out.chosen_regime.isna().all()
    assert not out.best_rho.isna().any()


def test_advice_accuracy_ties():
    # II-A, II-B, II-A (hot -> cold); equal errors at 10 and 20 epochs
    df = pd.DataFrame(dict(knob="epochs", temperature=[10.0, 20.0, 40.0], density=0.3,
                           test_error=[0.1, 0.1, 0.2], lmc=-0.01, cka=[0.9, 0.99, 0.95]))
    t = advice_accuracy(df).table
    assert list(t.regime) == ["II-A", "II-B", "II-A"]
    assert list(t.scored) == [True, True, False]  # 40 epochs: nothing colder to move to
    assert t.right.iloc[0] is False  # a tie is not an improvement
    assert t.right.iloc[1] is True  # a tie keeps a local minimum
    assert t.right.iloc[2] is None


# ---------------------------------------------------------------------------------------------
# against chance: advice vs its own shuffled moves, regret vs baselines, with intervals
# ---------------------------------------------------------------------------------------------

def big_story(n_dens=8):
    """The story repeated over more densities (the 2+2 of story() are too few to beat chance)."""
    base = story()
    frames = []
    for k in range(n_dens // 4):
        for d_old, d_new in zip(LOW + HIGH, [0.01 + 0.001 * k, 0.02 + 0.001 * k,
                                              0.3 + 0.01 * k, 0.6 + 0.01 * k]):
            frames.append(base[base.density == d_old].assign(density=d_new))
    return pd.concat(frames, ignore_index=True)


def test_advice_beats_its_shuffled_moves_on_the_story():
    score = advice_accuracy(big_story(), n_perm=300, seed=1)
    assert score.fraction_right == 1.0 and score.n == 40  # every cell of 8 columns
    lo, hi = score.ci_lo, score.ci_hi  # Wilson, 40/40: lo = n / (n + z^2)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(40 / (40 + 1.959964 ** 2), abs=1e-6)
    assert score.chance < 0.75 and score.chance_hi < 1.0
    assert score.p_value == pytest.approx(1 / 301)  # no shuffle reaches 100 %
    assert "shuffled over the cells" in score.summary()
    d = score.to_dict()
    assert d["n_perm"] == 300 and d["p_value"] == score.p_value
    # deterministic for a seed
    assert advice_accuracy(big_story(), n_perm=300, seed=1).chance == score.chance


def test_advice_on_a_null_table_does_not_beat_chance():
    df = big_story()
    df["test_error"] = np.random.default_rng(0).uniform(0.1, 0.2, len(df))  # errors say nothing
    score = advice_accuracy(df, n_perm=300, seed=0)
    assert score.p_value > 0.05
    assert score.chance_lo <= score.fraction_right <= score.chance_hi
    assert advice_accuracy(df, n_perm=0).n_perm == 0  # skipped: no chance numbers
    assert math.isnan(advice_accuracy(df, n_perm=0).chance)


def test_selector_summary_intervals_and_paired_baselines():
    table = compare_selectors(big_story())
    summ = selector_summary(table, n_boot=500).set_index("selector")
    # lmc_cka: zero regret everywhere; most_trained 6 points at every low density, 0 at high
    assert summ.loc["lmc_cka", "mean_regret"] == 0.0
    assert summ.loc["lmc_cka", "mean_regret_lo"] == summ.loc["lmc_cka", "mean_regret_hi"] == 0.0
    assert summ.loc["most_trained", "mean_regret"] == pytest.approx(0.03)
    assert summ.loc["lmc_cka", "vs_most_trained"] == pytest.approx(-0.03)
    assert summ.loc["lmc_cka", "vs_most_trained_hi"] < 0  # reliably better than most_trained
    assert summ.loc["most_trained", "vs_most_trained"] == 0.0
    assert {"vs_best_dense", "vs_random_lo"} <= set(summ.columns)
    only = selector_summary(table[table.selector.isin(["lmc_cka", "lmc_error"])])
    assert not any(c.startswith("vs_") for c in only.columns)  # no baseline in the table


def test_sam_rho_summary_against_the_smallest_rho():
    from tr_jax.casestudies import sam_rho_summary
    tab = tune_sam_rho(sam_table())
    s = sam_rho_summary(tab, n_boot=300)
    # regrets: walk (0, 0, 0), smallest rho (0.04, 0, 0.04) at densities 0.02, 0.05, 0.5
    assert s["n"] == 3 and s["mean_regret"] == 0.0
    assert s["baseline_regret"] == pytest.approx(0.08 / 3)
    assert s["vs_baseline"] == pytest.approx(-0.08 / 3)
    assert s["vs_baseline_lo"] == pytest.approx(-0.04) and s["vs_baseline_hi"] <= 0.0


def story_results(seeds=(1, 2, 3), jitter=0.0, seed=0):
    """results.csv rows for story(): per dense seed the story's cells, test errors shifted by a
    seed-and-cell draw of sd ``jitter`` (0: every seed is the story itself); two retrain seeds
    and one pair per cell, the dense test error per temperature."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in seeds:
        for c in story().itertuples():
            co = dict(knob=c.knob, temperature=c.temperature, density=c.density, dense_seed=s)
            err = c.test_error + rng.normal(0, jitter)
            for r in (1, 2):
                rows.append(dict(co, stage="retrain", retrain_seed=r, pair="",
                                 metric="test_error", value=err))
            rows += [dict(co, stage="pair", retrain_seed=np.nan, pair="1-2", metric="lmc",
                          value=c.lmc),
                     dict(co, stage="pair", retrain_seed=np.nan, pair="1-2", metric="cka",
                          value=c.cka)]
        for t, de in zip(T, DENSE_ERR):
            rows.append(dict(knob="epochs", temperature=t, density=1.0, dense_seed=s,
                             stage="dense", retrain_seed=np.nan, pair="", metric="test_error",
                             value=de))
    return pd.DataFrame(rows)


def test_selector_summary_resamples_dense_seeds_when_the_runs_are_given():
    from tr_jax.regimes import cells_from_results
    # every dense seed tells the same story: the seed-to-seed noise is 0, so are the intervals,
    # although the regret of most_trained varies over the densities (0.06 low, 0 high)
    same = story_results(jitter=0.0)
    cells = cells_from_results(same, n_boot=20)
    table = compare_selectors(cells)
    by_dens = selector_summary(table, n_boot=300).set_index("selector")
    by_seed = selector_summary(table, n_boot=300, results=same).set_index("selector")
    assert set(by_seed["unit"]) == {"dense_seed"} and set(by_seed["unit_note"]) == {""}
    assert set(by_dens["unit"]) == {"density"} and "no results table" in by_dens["unit_note"].iloc[0]
    pd.testing.assert_series_equal(by_seed["mean_regret"], by_dens["mean_regret"])
    assert by_seed.loc["most_trained", "mean_regret"] == pytest.approx(0.03)
    assert by_dens.loc["most_trained", "mean_regret_hi"] > by_dens.loc["most_trained",
                                                                       "mean_regret_lo"]
    assert by_seed.loc["most_trained", "mean_regret_lo"] == pytest.approx(0.03)
    assert by_seed.loc["most_trained", "mean_regret_hi"] == pytest.approx(0.03)
    assert by_seed.loc["lmc_cka", "vs_most_trained_hi"] == pytest.approx(-0.03)
    # seeds that disagree: the intervals open up around the point values
    noisy = story_results(seeds=(1, 2, 3), jitter=0.01, seed=2)
    table = compare_selectors(cells_from_results(noisy, n_boot=20))
    summ = selector_summary(table, n_boot=200, results=noisy).set_index("selector")
    assert (summ["mean_regret_lo"] <= summ["mean_regret"] + 1e-12).all()
    assert (summ["mean_regret"] <= summ["mean_regret_hi"] + 1e-12).all()
    assert (summ["mean_regret_hi"] > summ["mean_regret_lo"]).any()
    # deterministic for a seed
    again = selector_summary(table, n_boot=200, results=noisy).set_index("selector")
    pd.testing.assert_frame_equal(summ, again)
    # one dense seed: back to the densities, with the reason
    one = story_results(seeds=(1,))
    fall = selector_summary(compare_selectors(cells_from_results(one, n_boot=20)), results=one)
    assert set(fall["unit"]) == {"density"} and "1 dense seed(s)" in fall["unit_note"].iloc[0]
