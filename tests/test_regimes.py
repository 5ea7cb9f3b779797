"""Tests for tr_jax.regimes: planted regime tables whose answers are known."""

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
    # largest drop 0.08 -> -0.03 = 0.11 > 0.1; both colder cells above lmc_threshold
    lmcs = [0.08, -0.03, -0.04, -0.01]
    labels = classify(column(lmcs))
    # last cell recovers above jump_lmc_ceiling (-0.02) -> connected
    assert list(labels) == ["II-B", "I", "I", "II-B"]
    no_jump = classify(column(lmcs), {"use_jump": False})
    assert "I" not in list(no_jump)
    small_drop = classify(column(lmcs), {"jump_threshold": 0.2})
    assert "I" not in list(small_drop)


def test_jump_respects_temperature_orientation():
    # sam_rho: larger = hotter. Hot -> cold is 0.2, 0.1, 0.05, 0.0
    df = pd.DataFrame(dict(knob="sam_rho", temperature=[0.0, 0.05, 0.1, 0.2], density=0.2,
                           test_error=0.1, lmc=[-0.04, -0.03, 0.09, 0.1], cka=0.97))
    labels = classify(df)
    # drop 0.09 -> -0.03 (0.12) between rho 0.1 (hot) and 0.05 (cold): colder cells are I
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
    df = column([0.08, -0.04], knob="label_noise")  # temperatures 10, 20
    with pytest.raises(ValueError, match="label_noise"):
        classify(df)
    # smaller = hotter: hot -> cold is 0.08 -> -0.04, a 0.12 drop -> jump rule fires
    assert list(classify(df, hotter_is_smaller={"label_noise": True})) == ["II-B", "I"]
    # larger = hotter: hot -> cold is -0.04 -> 0.08, no drop, both connected
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
