"""Tests for tr_jax.regimes: planted regime tables whose answers are known."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from tr_jax.regimes import (HOTTER_IS_SMALLER, REGIMES, RegimeRule, advice, classify,
                            normalized_test_error, summary_table, temperature_order,
                            temperatures_hot_to_cold, transition)

EPOCHS = [10.0, 20.0, 40.0, 80.0]  # hot -> cold (fewer epochs = hotter)
DENS = [0.05, 0.1, 0.2, 0.5]
CKA_BY_T = {10.0: 0.90, 20.0: 0.93, 40.0: 0.96, 80.0: 0.99}  # cooler = more similar


def planted(shuffle=True):
    rows = []
    for t in EPOCHS:
        for d in DENS:
            bad = d <= 0.1 and t >= 40.0  # low density + cold = Regime I
            rows.append(dict(knob="epochs", temperature=t, density=d,
                             test_error=0.05 + 0.1 * (1 - d) + (0.02 if bad else 0.0)
                             + 0.001 * abs(math.log(t / 20.0)),
                             lmc=-0.4 if bad else -0.01, cka=CKA_BY_T[t]))
    df = pd.DataFrame(rows)
    if shuffle:  # index labels must follow their rows
        df = df.sample(frac=1.0, random_state=0)
    return df


def as_grid(df, labels):
    return {(r.temperature, r.density): labels.loc[i] for i, r in df.iterrows()}


EXPECTED_RELATIVE = {
    10.0: ["II-A", "II-A", "II-A", "II-A"],
    20.0: ["II-B", "II-B", "II-A", "II-A"],
    40.0: ["I", "I", "II-A", "II-A"],
    80.0: ["I", "I", "II-B", "II-B"],
}
EXPECTED_ABSOLUTE = {
    10.0: ["II-A"] * 4,
    20.0: ["II-A"] * 4,
    40.0: ["I", "I", "II-B", "II-B"],
    80.0: ["I", "I", "II-B", "II-B"],
}


@pytest.mark.parametrize("rule,expected", [
    (None, EXPECTED_RELATIVE),
    ({"cka_mode": "absolute", "cka_threshold": 0.95}, EXPECTED_ABSOLUTE),
    (RegimeRule(cka_mode="absolute", cka_threshold=0.95), EXPECTED_ABSOLUTE),
])
def test_planted_regimes_exact(rule, expected):
    df = planted()
    labels = classify(df, rule)
    assert labels.index.equals(df.index)
    assert labels.name == "regime"
    got = as_grid(df, labels)
    for t, row in expected.items():
        for d, want in zip(DENS, row):
            assert got[(t, d)] == want, (t, d, got[(t, d)], want)
    assert set(labels) <= set(REGIMES)


def test_relative_cka_delta_widens_II_B():
    df = planted()
    # delta 0.04 puts 0.96 within reach of 0.99 in the dense columns
    labels = as_grid(df, classify(df, {"cka_delta": 0.04}))
    assert labels[(40.0, 0.5)] == "II-B" and labels[(20.0, 0.5)] == "II-A"
    assert labels[(10.0, 0.05)] == "II-B"  # 0.90 >= 0.93 - 0.04 among connected cells


def column(lmcs, knob="epochs", density=0.1, cka=None):
    temps = [10.0 * 2 ** i for i in range(len(lmcs))]  # hot -> cold for epochs
    cka = cka if cka is not None else [0.97] * len(lmcs)
    return pd.DataFrame(dict(knob=knob, temperature=temps, density=density,
                             test_error=0.1, lmc=lmcs, cka=cka))


def test_gradual_decline_is_not_regime_I():
    labels = classify(column([-0.01, -0.02, -0.04, -0.045]))
    assert "I" not in list(labels)
    assert labels.notna().all()


def test_jump_marks_regime_I_from_the_drop_on():
    labels = classify(column([-0.01, -0.15, -0.2]))
    assert list(labels) == ["II-B", "I", "I"]


def test_jump_rule_alone_catches_shallow_barrier():
    # change point after the first cell: shift 0 - mean(-0.14, -0.15, -0.02) = 0.103 > 0.08;
    # the colder cells are all above lmc_threshold (-0.3)
    lmcs = [0.0, -0.14, -0.15, -0.02]
    labels = classify(column(lmcs))
    # last cell recovers above jump_lmc_ceiling (-0.05) -> connected
    assert list(labels) == ["II-B", "I", "I", "II-B"]
    no_jump = classify(column(lmcs), {"use_jump": False})
    assert "I" not in list(no_jump)
    small_drop = classify(column(lmcs), {"jump_threshold": 0.2})
    assert "I" not in list(small_drop)


def test_jump_respects_temperature_orientation():
    # sam_rho: larger = hotter. Hot -> cold is 0.2, 0.1, 0.05, 0.0
    df = pd.DataFrame(dict(knob="sam_rho", temperature=[0.0, 0.05, 0.1, 0.2], density=0.2,
                           test_error=0.1, lmc=[-0.09, -0.08, 0.09, 0.1], cka=0.97))
    labels = classify(df)
    # change point between rho 0.1 (hot) and 0.05 (cold), shift 0.18: colder cells are I
    assert list(labels) == ["I", "I", "II-B", "II-B"]


def test_temperature_order_and_unknown_knob():
    assert temperature_order("epochs") is True
    assert temperature_order("batch_size") is True
    assert temperature_order("sam_rho") is False
    assert temperature_order("lr") is False
    assert temperatures_hot_to_cold([80, 10, 40, 10], "epochs") == [10.0, 40.0, 80.0]
    assert temperatures_hot_to_cold([0.0, 0.2, 0.1], "sam_rho") == [0.2, 0.1, 0.0]
    with pytest.raises(ValueError, match="label_noise"):
        temperature_order("label_noise")
    assert temperature_order("label_noise", {"label_noise": False}) is False
    assert temperature_order("label_noise", True) is True
    df = column([0.08, -0.06], knob="label_noise")  # temperatures 10, 20
    with pytest.raises(ValueError, match="label_noise"):
        classify(df)
    # smaller = hotter: hot -> cold is 0.08 -> -0.06, a 0.14 shift -> jump rule fires
    assert list(classify(df, hotter_is_smaller={"label_noise": True})) == ["II-B", "I"]
    # larger = hotter: hot -> cold is -0.06 -> 0.08, no drop, both connected
    assert "I" not in list(classify(df, hotter_is_smaller={"label_noise": False}))
    assert HOTTER_IS_SMALLER["epochs"] and not HOTTER_IS_SMALLER["sam_rho"]


def test_transition_orientation_epochs_vs_sam_rho():
    # same physics: LMC collapses when going from the 2nd to the 3rd hottest temperature;
    # best test error at the 2nd hottest.
    lmc_hot_to_cold = [-0.01, -0.02, -0.3, -0.35]
    err_hot_to_cold = [0.12, 0.08, 0.09, 0.11]
    ep = pd.DataFrame(dict(knob="epochs", temperature=[10.0, 20.0, 40.0, 80.0], density=0.1,
                           test_error=err_hot_to_cold, lmc=lmc_hot_to_cold, cka=0.9))
    rho = pd.DataFrame(dict(knob="sam_rho", temperature=[0.2, 0.1, 0.05, 0.0], density=0.1,
                            test_error=err_hot_to_cold, lmc=lmc_hot_to_cold, cka=0.9))
    both = pd.concat([ep.iloc[::-1], rho.iloc[[2, 0, 3, 1]]], ignore_index=True)
    tr = transition(both)
    assert list(tr.columns)[:7] == ["knob", "density", "hot_temperature", "cold_temperature",
                                    "lmc_hot", "lmc_cold", "lmc_drop"]
    e = tr[tr.knob == "epochs"].iloc[0]
    assert (e.hot_temperature, e.cold_temperature) == (20.0, 40.0)
    assert e.lmc_drop == pytest.approx(0.28)
    assert e.best_temperature == 20.0 and e.best_test_error == pytest.approx(0.08)
    r = tr[tr.knob == "sam_rho"].iloc[0]
    assert (r.hot_temperature, r.cold_temperature) == (0.1, 0.05)
    assert r.best_temperature == 0.1
    only = transition(both, knob="sam_rho")
    assert list(only.knob) == ["sam_rho"]
    with pytest.raises(ValueError, match="nope"):
        transition(both, knob="nope")


def test_transition_per_density_columns():
    tr = transition(planted())
    assert len(tr) == 4 and list(tr.density) == DENS
    low = tr[tr.density == 0.05].iloc[0]
    assert (low.hot_temperature, low.cold_temperature) == (20.0, 40.0)
    assert low.lmc_drop == pytest.approx(0.39)


def test_normalized_test_error():
    rng = np.random.default_rng(0)
    df = pd.concat([planted(), column([-0.01, -0.02, -0.3], knob="sam_rho")],
                   ignore_index=True)
    df["test_error"] = rng.uniform(0.05, 0.3, len(df))
    df.loc[3, "test_error"] = np.nan
    nte = normalized_test_error(df)
    assert nte.index.equals(df.index)
    assert np.isnan(nte.loc[3])
    assert (nte.dropna() >= 0).all()
    mins = nte.groupby([df.knob, df.density]).min()
    np.testing.assert_allclose(mins.to_numpy(), 0.0, atol=0)
    # value check: difference to the column minimum
    col = df[(df.knob == "epochs") & (df.density == 0.5)]
    np.testing.assert_allclose(nte.loc[col.index], col.test_error - col.test_error.min())


def test_rule_from_dict_validation():
    assert RegimeRule.from_dict({}) == RegimeRule()
    assert RegimeRule.from_dict(None) == RegimeRule()
    r = RegimeRule.from_dict({"lmc_threshold": -0.1, "cka_mode": "absolute"})
    assert r.lmc_threshold == -0.1 and r.cka_mode == "absolute"
    with pytest.raises(ValueError, match="lmc_threshold") as ei:
        RegimeRule.from_dict({"lmc_treshold": -0.1})
    assert "lmc_treshold" in str(ei.value)
    with pytest.raises(ValueError, match="cka_mode"):
        RegimeRule(cka_mode="relativ")
    with pytest.raises(ValueError, match="relativ"):
        RegimeRule.from_dict({"cka_mode": "relativ"})
    with pytest.raises(ValueError, match="lmc_threshold"):
        classify(planted(), {"lmc_treshold": -0.1})


def test_nan_metrics_give_none_not_crash():
    df = planted(shuffle=False)
    lmc_nan = df.index[(df.temperature == 10.0) & (df.density == 0.2)][0]
    cka_nan_conn = df.index[(df.temperature == 80.0) & (df.density == 0.5)][0]
    cka_nan_bad = df.index[(df.temperature == 80.0) & (df.density == 0.05)][0]
    df.loc[lmc_nan, "lmc"] = np.nan
    df.loc[[cka_nan_conn, cka_nan_bad], "cka"] = np.nan
    labels = classify(df)
    assert labels.loc[lmc_nan] is None
    assert labels.loc[cka_nan_conn] is None
    assert labels.loc[cka_nan_bad] == "I"  # LMC alone says barrier
    # relative CKA in the 50% column now references the 40-epoch cell (0.96)
    assert labels.loc[df.index[(df.temperature == 40.0) & (df.density == 0.5)][0]] == "II-B"
    assert advice(labels.loc[lmc_nan]) == "unknown"
    all_nan = df.assign(lmc=np.nan, cka=np.nan)
    assert classify(all_nan).isna().all()
    txt = summary_table(df.assign(test_error=np.where(df.index == lmc_nan, np.nan,
                                                      df.test_error)))
    assert "- n/a" in txt


def test_advice():
    assert advice("I") == "raise temperature"
    assert advice("II-A") == "lower temperature"
    assert advice("II-B") == "keep"
    with pytest.raises(ValueError):
        advice("III")


def test_summary_table_layout():
    df = planted()
    txt = summary_table(df)
    lines = txt.splitlines()
    assert "epochs" in lines[0]
    header = lines[1].split()
    assert header[-4:] == ["5%", "10%", "20%", "50%"]
    body = [ln for ln in lines[3:] if ln.strip()]
    assert [ln.split()[0] for ln in body] == ["10", "20", "40", "80"]  # hot at top
    # 80 epochs, 50% density: II-B and its test error in percent
    row80 = body[3]
    te = df[(df.temperature == 80.0) & (df.density == 0.5)].test_error.iloc[0]
    assert row80.rstrip().endswith(f"II-B {100 * te:.1f}%")
    assert row80.split()[1] == "I"
    # sam_rho: larger = hotter -> first row is the largest rho
    rho = column([-0.01, -0.02, -0.03], knob="sam_rho").assign(
        temperature=[0.0, 0.05, 0.1])
    body = summary_table(rho).splitlines()[3:]
    assert [ln.split()[0] for ln in body] == ["0.1", "0.05", "0"]
    # a precomputed regime column is used verbatim
    txt2 = summary_table(df.assign(regime="II-A"))
    assert "II-B" not in txt2 and "I " not in txt2.replace("II-A", "")


# ---------------------------------------------------------------------------------------------
# fit_rule
# ---------------------------------------------------------------------------------------------

from tr_jax.regimes import (FitResult, cells_by_seed, cells_from_results, fit_rule,  # noqa: E402
                            transition_with_uncertainty)

FIT_T = [10.0, 20.0, 40.0, 80.0, 160.0]  # hot -> cold


def planted_for_fit():
    """Low densities: II-A, II-A, II-B, I, I (hot -> cold); high densities: II-A x4, II-B.
    Gaps: I cells have lmc <= -0.3, connected cells lmc >= -0.03 (lmc_threshold gap
    (-0.3, -0.03)); II-B cells sit at the column's top CKA, II-A cells >= 0.04 below it, so
    cka_delta in [0, 0.04) reproduces the labels."""
    rows, labels = [], []
    for d in (0.05, 0.1, 0.3, 0.6):
        low = d <= 0.1
        lmc = [-0.01, -0.02, -0.03, -0.3, -0.4] if low else [-0.01, -0.02, -0.01, -0.03, -0.02]
        cka = [0.90, 0.94, 0.98, 0.86, 0.85] if low else [0.82, 0.86, 0.90, 0.94, 0.98]
        lab = ["II-A", "II-A", "II-B", "I", "I"] if low else ["II-A", "II-A", "II-A", "II-A", "II-B"]
        for t, a, b, lb in zip(FIT_T, lmc, cka, lab):
            rows.append(dict(knob="epochs", temperature=t, density=d, test_error=0.1, lmc=a, cka=b))
            labels.append(lb)
    df = pd.DataFrame(rows)
    return df, pd.Series(labels, index=df.index)


def agreement(df, labels, rule):
    got = classify(df, rule)
    ok = labels.notna()
    return float((got[ok] == labels[ok]).mean())


def test_fit_rule_recovers_planted_gap_from_bad_start():
    df, labels = planted_for_fit()
    df = df.sample(frac=1.0, random_state=1)  # index labels follow their rows
    labels = labels.loc[df.index]
    bad = RegimeRule(lmc_threshold=-0.45, cka_delta=0.15, use_jump=False)
    fr = fit_rule(df, labels, rule=bad)
    assert isinstance(fr, FitResult)
    assert fr.agreement_before == pytest.approx(agreement(df, labels, bad))
    assert fr.agreement_before < 0.7
    assert fr.agreement == 1.0 and fr.n_cells == 20
    assert fr.agreement == pytest.approx(agreement(df, labels, fr.rule))
    lt, cd = fr.fitted["lmc_threshold"], fr.fitted["cka_delta"]
    assert -0.3 < lt < -0.03 and 0.0 <= cd < 0.04
    # exact: the midpoint of the gap nearest the start (ties -> closest to the start value)
    assert lt == pytest.approx(-0.165, abs=1e-12)
    # cka_delta breakpoints below 0.04: 0 and 0.01 (0.86 - 0.85) -> midpoint 0.025
    assert cd == pytest.approx(0.025, abs=1e-12)
    assert fr.rule.use_jump is False and fr.rule.lmc_threshold == lt
    d = fr.to_dict()
    assert d["agreement"] == 1.0 and d["rule"]["cka_delta"] == cd and d["fitted"] == fr.fitted
    # deterministic
    assert fit_rule(df, labels, rule=bad) == fr
    # from above the gap: still the gap's midpoint, never the data value -0.03 on its edge
    above = fit_rule(df, labels, rule=dataclasses.replace(bad, lmc_threshold=-0.01))
    assert above.agreement == 1.0 and above.fitted["lmc_threshold"] == pytest.approx(-0.165, abs=1e-12)


def test_fit_rule_keeps_a_rule_that_already_agrees():
    df, labels = planted_for_fit()
    good = RegimeRule(lmc_threshold=-0.1, cka_delta=0.01, use_jump=False)
    assert agreement(df, labels, good) == 1.0
    fr = fit_rule(df, labels, rule=good)
    assert fr.rule == good and fr.agreement == fr.agreement_before == 1.0


def test_fit_rule_jump_threshold_and_label_forms():
    df, labels = planted_for_fit()
    # only the jump can find Regime I: lmc_threshold below every LMC
    start = RegimeRule(lmc_threshold=-0.5, jump_threshold=0.9, jump_lmc_ceiling=-0.1, cka_delta=0.01)
    fr = fit_rule(df, labels, rule=start, params=["jump_threshold"])
    assert fr.agreement_before < 1.0 and fr.agreement == 1.0
    # planted change-point shifts: -0.02 - (-0.35) = 0.33 (low densities, after 3 cells) and
    # -0.04/3 - (-0.025) = 0.011667 (high, after 3 cells): gap (0.011667, 0.33), midpoint fitted
    assert 0.0116 < fr.fitted["jump_threshold"] < 0.33
    assert fr.fitted["jump_threshold"] == pytest.approx((0.035 / 3 + 0.33) / 2, abs=1e-9)
    # labels as a column name / list; None labels are ignored
    df2 = df.assign(truth=list(labels))
    df2.loc[df2.index[:3], "truth"] = None
    fr2 = fit_rule(df2, "truth", rule=start, params=("jump_threshold",))
    assert fr2.n_cells == 17 and fr2.agreement == 1.0
    fr3 = fit_rule(df, list(labels), rule=start, params="jump_threshold")
    assert fr3.fitted == fr.fitted
    # absolute CKA threshold: II-B = cka >= t; the planted II-B cells have 0.98, II-A <= 0.94
    fr4 = fit_rule(df, labels, rule={"cka_mode": "absolute", "cka_threshold": 0.6},
                   params=("cka_threshold",))
    assert fr4.agreement == 1.0 and fr4.fitted["cka_threshold"] == pytest.approx(0.96, abs=1e-12)


def test_fit_rule_errors_name_bad_values():
    df, labels = planted_for_fit()
    with pytest.raises(ValueError, match="'lmc_treshold'.*did you mean 'lmc_threshold'"):
        fit_rule(df, labels, params=("lmc_treshold",))
    with pytest.raises(ValueError, match="'III'"):
        fit_rule(df, ["III"] + list(labels)[1:])
    with pytest.raises(ValueError, match="no labelled cells"):
        fit_rule(df, [None] * len(df))
    with pytest.raises(ValueError, match="cka_delta"):
        fit_rule(df, labels, bounds={"cka_delta": (-0.1, 0.2)})
    with pytest.raises(ValueError, match="3 labels for 20 cells"):
        fit_rule(df, ["I", "I", "I"])
    with pytest.raises(ValueError, match="'nope'"):
        fit_rule(df, "nope")


def test_fit_rule_bounds_limit_the_search():
    df, labels = planted_for_fit()
    bad = RegimeRule(lmc_threshold=-0.45, cka_delta=0.15, use_jump=False)
    fr = fit_rule(df, labels, rule=bad, params=("lmc_threshold",), bounds={"lmc_threshold": (-0.5, -0.35)})
    assert -0.5 <= fr.fitted["lmc_threshold"] <= -0.35
    assert fr.agreement < 1.0
    # a start outside the bounds ends inside them (here the start itself agrees perfectly)
    good = RegimeRule(lmc_threshold=-0.1, cka_delta=0.01, use_jump=False)
    fr2 = fit_rule(df, labels, rule=good, params=("lmc_threshold",),
                   bounds={"lmc_threshold": (-0.5, -0.35)})
    assert fr2.agreement_before == 1.0 and -0.5 <= fr2.fitted["lmc_threshold"] <= -0.35


# ---------------------------------------------------------------------------------------------
# cells_by_seed / cells_from_results
# ---------------------------------------------------------------------------------------------

HAND_CELLS = pd.DataFrame([
    # knob, T, density, test_error, lmc, cka, cka_logits, loss_barrier, dense_test_error
    ("epochs", 10.0, 0.1, 0.20, -0.02, 0.95, 0.97, 0.1, 0.30),
    ("epochs", 10.0, 0.5, 0.12, -0.01, 0.98, 0.99, 0.0, 0.30),
    ("epochs", 20.0, 0.1, 0.25, -0.30, 0.90, 0.92, 0.8, 0.10),
    ("epochs", 20.0, 0.5, 0.10, -0.01, 0.99, 0.995, 0.05, 0.10),
], columns=["knob", "temperature", "density", "test_error", "lmc", "cka", "cka_logits",
            "loss_barrier", "dense_test_error"])


def results_from_cells(cells, seeds=(0, 1), retrain=(0, 1, 2), extra=True):
    """Long results whose per-cell means are exactly the cells' values: per dense seed s a
    shift +/-delta_s (symmetric over seeds), per retrain seed / pair a symmetric spread."""
    shifts = dict(zip(seeds, np.linspace(-1, 1, len(seeds)) * 0.01))
    spread = np.linspace(-1, 1, len(retrain)) * 0.004
    pairs = [f"{a}-{b}" for i, a in enumerate(retrain) for b in retrain[i + 1:]]
    pspread = np.linspace(-1, 1, len(pairs)) * 0.002
    base = dict(config_hash="abc", tr_jax_version="0.1.0")
    rows = []
    for s in seeds:
        for t, g in cells.groupby("temperature"):
            rows.append(dict(base, knob="epochs", stage="dense", temperature=t, dense_seed=s,
                             density=1.0, retrain_seed=np.nan, pair="", metric="test_error",
                             value=g.dense_test_error.iloc[0] + shifts[s]))
        for c in cells.itertuples():
            for r, sp in zip(retrain, spread):
                co = dict(base, knob=c.knob, stage="retrain", temperature=c.temperature,
                          dense_seed=s, density=c.density, retrain_seed=r, pair="")
                rows.append(dict(co, metric="test_error", value=c.test_error + shifts[s] + sp))
                rows.append(dict(co, metric="measured_density", value=c.density))
            for p, sp in zip(pairs, pspread):
                co = dict(base, knob=c.knob, stage="pair", temperature=c.temperature,
                          dense_seed=s, density=c.density, retrain_seed=np.nan, pair=p)
                for m in ("lmc", "cka", "cka_logits", "loss_barrier"):
                    rows.append(dict(co, metric=m, value=getattr(c, m) + shifts[s] + sp))
    res = pd.DataFrame(rows)
    if extra:  # columns another engineer may add
        res["sick"] = False
        res["provenance"] = "synthetic"
    return res


NUMERIC = ["test_error", "lmc", "cka", "cka_logits", "loss_barrier", "dense_test_error"]


def test_cells_from_results_reproduces_hand_cells(tmp_path):
    res = results_from_cells(HAND_CELLS)
    path = tmp_path / "results.csv"
    res.to_csv(path, index=False)
    back = pd.read_csv(path)  # "" pairs come back as NaN, seeds as floats
    for table in (res, back):
        cells = cells_from_results(table)
        assert list(cells.columns[:9]) == ["knob", "temperature", "density"] + NUMERIC
        # cells.csv columns only: per-member extras such as measured_density stay in results
        assert "normalized_test_error" in cells.columns and "measured_density" not in cells.columns
        assert len(cells) == 4
        got = cells.sort_values(["temperature", "density"]).reset_index(drop=True)
        want = HAND_CELLS.sort_values(["temperature", "density"]).reset_index(drop=True)
        for m in NUMERIC:
            np.testing.assert_allclose(got[m], want[m], atol=1e-12, err_msg=m)
        np.testing.assert_allclose(got.normalized_test_error, [0.0, 0.02, 0.05, 0.0], atol=1e-12)
    # same numbers as the sweep's own aggregation (tr_jax.sweep.run: pivot_table mean)
    keys = ["knob", "temperature", "density"]
    wide = (res[res.stage != "dense"].pivot_table(index=keys, columns="metric", values="value",
                                                  aggfunc="mean").reset_index())
    mine = cells_from_results(res)
    for m in ("test_error", "lmc", "cka", "cka_logits", "loss_barrier"):
        np.testing.assert_allclose(mine[m].to_numpy(), wide[m].to_numpy(), atol=1e-12)


def test_cells_by_seed_values():
    res = results_from_cells(HAND_CELLS, seeds=(3, 7))
    by = cells_by_seed(res)
    assert len(by) == 8 and set(by.dense_seed) == {3, 7}
    row = by[(by.temperature == 20.0) & (by.density == 0.1) & (by.dense_seed == 7)].iloc[0]
    assert row.test_error == pytest.approx(0.25 + 0.01)  # retrain spread cancels
    assert row.lmc == pytest.approx(-0.30 + 0.01)
    assert row.dense_test_error == pytest.approx(0.10 + 0.01)
    assert row.normalized_test_error == pytest.approx(0.05)
    with pytest.raises(ValueError, match="stage"):
        cells_by_seed(res.drop(columns="stage"))
    with pytest.raises(ValueError, match="'finetune'"):
        cells_by_seed(res.assign(stage=np.where(res.stage == "pair", "finetune", res.stage)))


# ---------------------------------------------------------------------------------------------
# transition_with_uncertainty: a planted per-seed transition
# ---------------------------------------------------------------------------------------------

TR_T = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]  # epochs, hot -> cold
# per dense seed: index (into TR_T) of the first cold (Regime-I) temperature at low density
TR_FIRST_BAD = {0: 3, 1: 3, 2: 4}


def planted_transition_results(seeds=(0, 1, 2), noise=0.004):
    rng = np.random.default_rng(0)
    rows = []
    base = dict(config_hash="h", tr_jax_version="0.1.0", knob="epochs")
    for s in seeds:
        for i, t in enumerate(TR_T):
            rows.append(dict(base, stage="dense", temperature=t, dense_seed=s, density=1.0,
                             retrain_seed=np.nan, pair="", metric="test_error", value=0.1))
            for d in (0.05, 0.1, 0.5):
                low = d < 0.2
                fb = TR_FIRST_BAD[s]
                best = fb - 1 if low else len(TR_T) - 1
                for r in range(3):
                    err = 0.1 + 0.01 * abs(i - best) + rng.uniform(-1, 1) * 0.001
                    rows.append(dict(base, stage="retrain", temperature=t, dense_seed=s, density=d,
                                     retrain_seed=r, pair="", metric="test_error", value=err))
                for p in ("0-1", "0-2", "1-2"):
                    lmc = (-0.4 if (low and i >= fb) else -0.01) + rng.uniform(-1, 1) * noise
                    for m, v in (("lmc", lmc), ("cka", 0.95)):
                        rows.append(dict(base, stage="pair", temperature=t, dense_seed=s, density=d,
                                         retrain_seed=np.nan, pair=p, metric=m, value=v))
    return pd.DataFrame(rows)


def test_transition_with_uncertainty_planted():
    res = planted_transition_results()
    tr = transition_with_uncertainty(res)
    assert list(tr.density) == [0.05, 0.1, 0.5] and (tr.n_seeds == 3).all()
    for d in (0.05, 0.1):
        row = tr[tr.density == d].iloc[0]
        # seeds 0, 1: drop between 30 and 40 (midpoint 35); seed 2: between 40 and 50 (45)
        assert row.lmc_transition_seeds == (35.0, 35.0, 45.0)
        assert row.lmc_transition == pytest.approx(115.0 / 3)
        assert row.lmc_transition_std == pytest.approx(np.std([35, 35, 45], ddof=1))
        assert row.lmc_transition_se == pytest.approx(np.std([35, 35, 45], ddof=1) / math.sqrt(3))
        assert not math.isnan(row.lmc_transition_std)
        assert row.lmc_drop == pytest.approx(0.39, abs=0.01)
        assert bool(row.sharp) is True
        # mean over seeds: -0.01 at 30, -0.27 at 40 (2 of 3 seeds bad), -0.4 at 50: 30 -> 40
        assert (row.hot_temperature, row.cold_temperature) == (30.0, 40.0)
        assert row.best_temperature_seeds == (30.0, 30.0, 40.0)
        assert row.best_temperature == 30.0
        assert row.best_temperature_std == pytest.approx(np.std([30, 30, 40], ddof=1))
    high = tr[tr.density == 0.5].iloc[0]
    assert bool(high.sharp) is False and high.lmc_drop < 0.02
    assert high.best_temperature == 60.0 and high.best_temperature_std == 0.0
    # stricter k: nothing is sharp
    assert not transition_with_uncertainty(res, k=1000).sharp.any()
    # the per-seed cell table gives the same answer
    by = cells_by_seed(res)
    tr2 = transition_with_uncertainty(by)
    pd.testing.assert_frame_equal(tr, tr2)


def test_transition_with_uncertainty_one_seed_and_errors():
    res = planted_transition_results(seeds=(0,))
    tr = transition_with_uncertainty(res, knob="epochs")
    row = tr[tr.density == 0.05].iloc[0]
    assert row.n_seeds == 1 and row.lmc_transition == 35.0
    assert math.isnan(row.lmc_transition_std) and math.isnan(row.lmc_transition_se)
    assert math.isnan(row.best_temperature_std)
    # a plain cells table (no dense_seed) is one seed
    cells = cells_from_results(res)
    tr_cells = transition_with_uncertainty(cells)
    assert tr_cells.lmc_transition.iloc[0] == 35.0 and tr_cells.n_seeds.iloc[0] == 1
    with pytest.raises(ValueError, match="'batch_size'"):
        transition_with_uncertainty(res, knob="batch_size")
    # LMC that never decreases has no transition
    flat = column([-0.05, -0.04, -0.03]).assign(dense_seed=0)
    assert math.isnan(transition_with_uncertainty(flat).lmc_transition.iloc[0])


# ---------------------------------------------------------------------------------------------
# cells_from_results: the one home of cell aggregation (cells.csv), with bootstrap intervals
# ---------------------------------------------------------------------------------------------

PROV = dict(config_hash="c0ffee", tr_jax_version="0.2.0", jax_version="0.10.2",
            device_kind="cpu", members_strategy="threads")


def pipeline_like_results(seeds=(1, 2, 3), temps=(10.0, 20.0, 40.0), dens=(0.05, 0.5),
                          retrain=(1, 2, 3), sick_member=None, sick_dense=None, hessian=False,
                          rng_seed=0):
    """A results table shaped exactly as ``tr_jax.sweep.run.tables_of`` builds it (same columns, order,
    stages, metrics), with random values and optional sick rows."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    base = {"config_hash": PROV["config_hash"], "tr_jax_version": PROV["tr_jax_version"],
            "jax_version": PROV["jax_version"], "device_kind": PROV["device_kind"],
            "members_strategy": PROV["members_strategy"], "knob": "epochs"}
    for s in seeds:
        for t in temps:
            rows.append({**base, "stage": "dense", "temperature": t, "dense_seed": s,
                         "density": 1.0, "retrain_seed": np.nan, "pair": "",
                         "metric": "test_error", "value": rng.uniform(0.05, 0.2),
                         "sick": (s, t) == sick_dense})
    for s in seeds:
        for t in temps:
            for d in dens:
                for r in retrain:
                    sick = (s, t, d, r) == sick_member or (s, t) == sick_dense
                    co = {**base, "stage": "retrain", "temperature": t, "dense_seed": s,
                          "density": d, "retrain_seed": r, "pair": "", "sick": sick}
                    rows.append({**co, "metric": "test_error",
                                 "value": np.nan if sick else rng.uniform(0.05, 0.3)})
                    rows.append({**co, "metric": "measured_density", "value": d})
                    if hessian:
                        for m in ("trace", "trace_stderr", "trace_probes", "top_eigenvalue"):
                            rows.append({**co, "metric": f"hessian_{m}",
                                         "value": rng.uniform(1, 100)})
    for s in seeds:
        for t in temps:
            for d in dens:
                for i, ra in enumerate(retrain):
                    for rb in retrain[i + 1:]:
                        sick = ((s, t, d, ra) == sick_member or (s, t, d, rb) == sick_member
                                or (s, t) == sick_dense)
                        co = {**base, "stage": "pair", "temperature": t, "dense_seed": s,
                              "density": d, "retrain_seed": np.nan, "pair": f"{ra}-{rb}",
                              "sick": sick}
                        for m, v in (("lmc", rng.uniform(-0.5, 0.0)), ("cka", rng.uniform(0.8, 1)),
                                     ("cka_logits", rng.uniform(0.8, 1)),
                                     ("loss_barrier", rng.uniform(0, 1))):
                            rows.append({**co, "metric": m, "value": v})
    return pd.DataFrame(rows)


def pipeline_cells(results, rule=None):
    """The cell half of ``tr_jax.sweep.run.tables_of`` as it was before this aggregation moved here
    (tr_jax/sweep/run.py), kept verbatim as the reference."""
    keys = ["knob", "temperature", "density"]
    members = results[results.stage != "dense"]
    every_cell = members[keys].drop_duplicates().sort_values(keys).set_index(keys).index
    healthy = members[~members.sick]
    metrics = list(dict.fromkeys(members.metric))
    wide = (healthy.pivot_table(index=keys, columns="metric", values="value", aggfunc="mean")
            .reindex(index=every_cell, columns=metrics))
    n_sick = (members[(members.stage == "retrain") & (members.metric == "test_error")]
              .groupby(keys)["sick"].sum().reindex(every_cell).fillna(0).astype(int))
    wide = wide.reset_index()
    dense_rows = results[(results.stage == "dense") & ~results.sick]
    dense_err = dense_rows.groupby("temperature")["value"].mean()
    cells = pd.DataFrame({
        "knob": wide["knob"], "temperature": wide["temperature"], "density": wide["density"],
        "test_error": wide["test_error"], "lmc": wide["lmc"], "cka": wide["cka"],
        "cka_logits": wide["cka_logits"], "loss_barrier": wide["loss_barrier"],
        "dense_test_error": wide["temperature"].map(dense_err).to_numpy(),
    })
    for metric in ("bezier_mc", "hessian_trace", "hessian_top_eigenvalue"):
        if metric in wide.columns:
            cells[metric] = wide[metric]
    cells["normalized_test_error"] = normalized_test_error(cells)
    cells["regime"] = classify(cells, rule)
    cells["advice"] = cells["regime"].map(advice)
    cells["sick_members"] = n_sick.to_numpy()
    for k, v in PROV.items():
        cells[k] = v
    return cells


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(sick_member=(2, 20.0, 0.05, 3), hessian=True),
    dict(sick_dense=(1, 40.0)),
])
def test_cells_from_results_is_the_pipeline_aggregation(kwargs):
    res = pipeline_like_results(**kwargs)
    want = pipeline_cells(res)
    got = cells_from_results(res, n_boot=50)
    assert list(got.columns[:len(want.columns)]) == list(want.columns)
    pd.testing.assert_frame_equal(got[list(want.columns)], want, check_exact=True)
    extra = list(got.columns[len(want.columns):])
    assert extra[:2] == ["test_error_lo", "test_error_hi"]
    assert extra[-3:] == ["regime_confidence", "n_dense_seeds", "ci_unit"]
    assert set(got.ci_unit) == {"dense_seed"}


def test_cells_from_results_sick_rows_and_means_by_hand():
    res = pipeline_like_results(sick_member=(2, 20.0, 0.05, 3), sick_dense=(1, 40.0))
    cells = cells_from_results(res, n_boot=20).set_index(["temperature", "density"])
    healthy = res[~res.sick]
    # 20 epochs, 5 %: 8 healthy members (seed 2's retrain seed 3 is sick), 7 healthy pairs
    sel = healthy[(healthy.temperature == 20.0) & (healthy.density == 0.05)]
    te = sel[(sel.metric == "test_error") & (sel.stage == "retrain")].value
    lmc = sel[sel.metric == "lmc"].value
    assert len(te) == 8 and len(lmc) == 7
    row = cells.loc[(20.0, 0.05)]
    assert row.test_error == pytest.approx(te.mean(), abs=1e-15)
    assert row.lmc == pytest.approx(lmc.mean(), abs=1e-15)
    assert row.sick_members == 1 and row.n_dense_seeds == 3
    # 40 epochs: dense seed 1 is sick -> its 3 members per density sick, 2 dense seeds left
    row40 = cells.loc[(40.0, 0.5)]
    assert row40.sick_members == 3 and row40.n_dense_seeds == 2
    dense40 = healthy[(healthy.stage == "dense") & (healthy.temperature == 40.0)].value
    assert row40.dense_test_error == pytest.approx(dense40.mean(), abs=1e-15)
    # every interval contains its point (a percentile interval of pooled means)
    for m in NUMERIC + ["normalized_test_error"]:
        assert (cells[f"{m}_lo"] <= cells[m] + 1e-12).all(), m
        assert (cells[f"{m}_hi"] >= cells[m] - 1e-12).all(), m


def test_cells_from_results_bootstrap_is_over_dense_seeds():
    """Planted: retrain seeds agree exactly, dense seeds differ by +-0.02 -> the test-error
    interval spans the seed means' range; zero spread between dense seeds -> zero width."""
    res = pipeline_like_results(seeds=(1, 2, 3), temps=(10.0, 20.0), dens=(0.5,))
    te = (res.stage == "retrain") & (res.metric == "test_error")
    res.loc[te, "value"] = 0.10 + (res.loc[te, "dense_seed"] - 2) * 0.02
    cells = cells_from_results(res, n_boot=2000, seed=1)
    np.testing.assert_allclose(cells.test_error, 0.10, atol=1e-15)
    assert (cells.test_error_lo < 0.095).all() and (cells.test_error_hi > 0.105).all()
    assert (cells.test_error_lo >= 0.08 - 1e-12).all() and (cells.test_error_hi <= 0.12 + 1e-12).all()
    res.loc[te, "value"] = 0.10
    flat = cells_from_results(res, n_boot=200)
    np.testing.assert_allclose(flat.test_error_hi - flat.test_error_lo, 0.0, atol=1e-15)


def test_cells_from_results_deterministic_and_seed_dependent():
    res = pipeline_like_results()
    a = cells_from_results(res, n_boot=100, seed=3)
    b = cells_from_results(res, n_boot=100, seed=3)
    assert a.to_csv(index=False) == b.to_csv(index=False)
    c = cells_from_results(res, n_boot=100, seed=4)
    assert not np.array_equal(a.lmc_lo.to_numpy(), c.lmc_lo.to_numpy())


def test_cells_from_results_one_dense_seed_resamples_retrain_seeds():
    res = pipeline_like_results(seeds=(1,), retrain=(1, 2))  # quick: 1 dense seed, 1 pair
    cells = cells_from_results(res, n_boot=100)
    assert set(cells.ci_unit) == {"none"} and set(cells.n_dense_seeds) == {1}
    # one pair per cell: nothing to resample, no LMC interval and no regime confidence
    assert cells.lmc_lo.isna().all() and cells.lmc_hi.isna().all()
    assert cells.regime_confidence.isna().all()
    # two retrain seeds: the test-error interval lies between the two members' values
    assert (cells.test_error_hi - cells.test_error_lo > 0).all()
    txt = summary_table(cells)
    assert "retraining noise only" in txt


def test_regime_confidence_planted():
    """A cell far from every threshold is 100 % sure; a cell whose dense seeds disagree about
    the barrier (LMC -0.5 / -0.1 / -0.1 around lmc_threshold -0.3) is not."""
    res = pipeline_like_results(seeds=(1, 2, 3), temps=(10.0, 20.0, 40.0), dens=(0.5,))
    pairs = res.stage == "pair"
    res.loc[pairs & (res.metric == "lmc"), "value"] = -0.01
    res.loc[pairs & (res.metric == "cka"), "value"] = 0.95
    sure = cells_from_results(res, n_boot=300)
    assert list(sure.regime) == ["II-B"] * 3
    np.testing.assert_allclose(sure.regime_confidence, 1.0)
    odd = pairs & (res.metric == "lmc") & (res.temperature == 40.0)
    res.loc[odd, "value"] = np.where(res.loc[odd, "dense_seed"] == 1, -0.7, -0.1)
    unsure = cells_from_results(res, {"use_jump": False}, n_boot=500)
    row = unsure[unsure.temperature == 40.0].iloc[0]
    assert row.lmc == pytest.approx(-0.3)  # mean of -0.7, -0.1, -0.1
    assert 0.2 < row.regime_confidence < 0.9
    assert unsure[unsure.temperature == 10.0].regime_confidence.iloc[0] == 1.0


def test_summary_table_carries_intervals():
    res = pipeline_like_results()
    cells = cells_from_results(res, n_boot=50)
    txt = summary_table(cells)
    r = cells.iloc[0]
    assert f"[{100 * r.test_error_lo:.1f},{100 * r.test_error_hi:.1f}]" in txt
    assert "regime confidence" in txt and "resampling the 3 dense seeds" in txt
    assert f"{r.lmc:+.3f} [{r.lmc_lo:+.3f},{r.lmc_hi:+.3f}]" in txt
    # without the CI columns the table is unchanged
    plain = summary_table(cells.drop(columns=["test_error_lo", "test_error_hi",
                                              "regime_confidence"]))
    assert "[" not in plain


# ---------------------------------------------------------------------------------------------
# The default rule on a Figure-2-like table (values drawn at random inside the ranges read off
# Figure 2, docs/fidelity.md, several draws, nothing tuned to one table)
# ---------------------------------------------------------------------------------------------

FIG2_EPOCHS = [float(e) for e in range(10, 161, 10)]
FIG2_DENS = [0.05, 0.06, 0.07, 0.08, 0.10, 0.14, 0.20, 0.40, 0.80]


def figure2_like(rng_seed):
    """LMC as read off Figure 2: 5-8 %: -0.25..-0.08 up to 80 epochs (drawn II-A), -0.45..-0.35 at 90,
    -0.68..-0.5 from 100 on (Regime I); 10 %: ~0 (-0.03..0) up to 100, -0.05 at 110, -0.23..-0.1
    from 120 on; >= 14 %: |LMC| <= 0.03. CKA rises with density (0.91 -> 0.99), 0.88-0.93 in
    Regime I."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for d in FIG2_DENS:
        for e in FIG2_EPOCHS:
            if d <= 0.08:
                lmc = (rng.uniform(-0.25, -0.08) if e <= 80 else
                       rng.uniform(-0.45, -0.35) if e == 90 else rng.uniform(-0.68, -0.5))
                cka = rng.uniform(0.88, 0.93) if e >= 90 else 0.91 + rng.uniform(0, 0.02)
            elif d == 0.10:
                lmc = (rng.uniform(-0.03, 0.0) if e <= 100 else -0.05 if e == 110 else
                       rng.uniform(-0.23, -0.1))
                cka = rng.uniform(0.90, 0.94)
            else:
                lmc = rng.uniform(-0.03, 0.0)
                cka = 0.93 + 0.06 * d + 0.0002 * e + rng.uniform(0, 0.003)
            rows.append(dict(knob="epochs", temperature=e, density=d, test_error=0.1, lmc=lmc,
                             cka=cka))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("rng_seed", range(5))
def test_default_rule_follows_figure2(rng_seed):
    df = figure2_like(rng_seed)
    lab = classify(df)
    low = df.density <= 0.08
    # the hot low-density cells stay connected (drawn II-A in Figure 2) ...
    assert (lab[low & (df.temperature <= 80)] != "I").all()
    # ... and the sharp drop after the first LR drop is Regime I
    assert (lab[low & (df.temperature >= 90)] == "I").all()
    # 10 %: the later, shallower loss of connectivity is Regime I too, the hot cells are not
    ten = df.density == 0.10
    assert (lab[ten & (df.temperature >= 120)] == "I").all()
    assert (lab[ten & (df.temperature <= 110)] != "I").all()
    # no Figure-2-like cell at density >= 14 % is Regime I (the must-have is >= 20 %)
    assert (lab[df.density >= 0.14] != "I").all()
    # case study 1 at 5 %: lower the temperature where Figure 2's arrows say so
    hot5 = lab[(df.density == 0.05) & (df.temperature <= 80)]
    assert set(hot5.map(advice)) <= {"lower temperature", "keep"}
    # the old default (LMC < -0.05) calls the hot low-density columns Regime I
    old = classify(df, {"lmc_threshold": -0.05, "jump_threshold": 0.1, "jump_lmc_ceiling": -0.02})
    assert (old[low & (df.temperature <= 80)] == "I").all()
