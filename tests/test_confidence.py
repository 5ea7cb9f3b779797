"""Regime confidences and intervals only where there is something to resample, and the warning
for a test split too small to resolve a point of test error."""
import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from tr_jax import stats
from tr_jax.data import (SMALL_TEST_SPLIT, SmallTestSplitWarning, check_dataset, from_arrays,
                         load_npz, small_test_split_note)
from tr_jax.plots import draw_three_regimes, draw_uncertain_cells
from tr_jax.regimes import cells_from_results, summary_table

PAIR_METRICS = ("lmc", "cka", "cka_logits", "loss_barrier")
TEMPS = (10.0, 20.0, 40.0)
DENS = (0.05, 0.5)


def results(seeds=(1,), retrain=(1, 2), knobs=("epochs",), sick_dense=None, rng_seed=0):
    """A results table shaped as ``tr_jax.sweep.run.tables_of`` builds it: per dense seed, temperature and
    density the retrained members (test error) and their pairs (LMC, CKA, ...), random values;
    ``sick_dense=(seed, T)`` makes that dense model and its members sick."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for knob in knobs:
        base = {"config_hash": "c0ffee", "tr_jax_version": "0.3.0", "knob": knob}
        for s in seeds:
            for t in TEMPS:
                sick = (s, t) == sick_dense
                rows.append({**base, "stage": "dense", "temperature": t, "dense_seed": s,
                             "density": 1.0, "retrain_seed": np.nan, "pair": "",
                             "metric": "test_error", "value": rng.uniform(0.05, 0.2),
                             "sick": sick})
                for d in DENS:
                    for r in retrain:
                        rows.append({**base, "stage": "retrain", "temperature": t,
                                     "dense_seed": s, "density": d, "retrain_seed": r,
                                     "pair": "", "metric": "test_error", "sick": sick,
                                     "value": np.nan if sick else rng.uniform(0.05, 0.3)})
                    for i, ra in enumerate(retrain):
                        for rb in retrain[i + 1:]:
                            co = {**base, "stage": "pair", "temperature": t, "dense_seed": s,
                                  "density": d, "retrain_seed": np.nan, "pair": f"{ra}-{rb}",
                                  "sick": sick}
                            for m, lo, hi in (("lmc", -0.5, 0.0), ("cka", 0.8, 1.0),
                                              ("cka_logits", 0.8, 1.0), ("loss_barrier", 0, 1)):
                                rows.append({**co, "metric": m, "value": rng.uniform(lo, hi)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# cells.csv: NaN where fewer than two independent units
# ---------------------------------------------------------------------------------------------

def test_one_dense_seed_one_pair_has_no_confidence():
    """The quick config: 1 dense seed, 2 retrain seeds -> one pair per cell. Nothing to
    resample for LMC/CKA: no regime confidence, no pair-metric interval (was 100 % and a
    zero-width interval); the test error still resamples its 2 retrained members."""
    cells = cells_from_results(results(), n_boot=200)
    assert cells.regime.notna().all()
    assert cells.regime_confidence.isna().all()
    for m in PAIR_METRICS + ("dense_test_error",):  # one pair; one dense seed
        assert cells[f"{m}_lo"].isna().all() and cells[f"{m}_hi"].isna().all(), m
    for m in ("test_error", "normalized_test_error"):  # two retrained members per cell
        assert cells[f"{m}_lo"].notna().all() and cells[f"{m}_hi"].notna().all(), m
    assert (cells.test_error_hi > cells.test_error_lo).all()
    assert set(cells.ci_unit) == {"none"} and set(cells.n_dense_seeds) == {1}
    # the points are untouched
    assert cells.lmc.notna().all() and cells.cka.notna().all()


def test_summary_shows_na_and_the_reason_once():
    cells = cells_from_results(results(knobs=("epochs", "sam_rho")), n_boot=100)
    txt = summary_table(cells)
    assert txt.count("(n/a)") == len(cells)
    assert not re.search(r"\(\d+%\)", txt)  # no "(NN%)" confidence mark anywhere
    reason = ("regime confidence n/a: each cell rests on one dense seed and one retrained pair; "
              "nothing to resample")
    assert txt.count("regime confidence n/a") == 1 and txt.count(reason) == 1
    assert "[n/a]" in txt and "nan" not in txt.lower().replace("n/a", "")
    # the test error keeps its (retrain-seed) interval
    r = cells.iloc[0]
    assert f"[{100 * r.test_error_lo:.1f},{100 * r.test_error_hi:.1f}]" in txt


def test_one_dense_seed_three_retrain_seeds_resamples_pairs():
    """3 retrain seeds give 3 pairs: they share members, but they are what the fallback
    resamples (retraining noise only), and 2+ of them give an interval and a confidence."""
    cells = cells_from_results(results(retrain=(1, 2, 3)), n_boot=300)
    assert set(cells.ci_unit) == {"retrain_seed/pair"}
    conf = cells.regime_confidence
    assert conf.notna().all() and ((conf >= 0) & (conf <= 1)).all()
    for m in PAIR_METRICS + ("test_error",):
        assert (cells[f"{m}_hi"] > cells[f"{m}_lo"]).all(), m
    # the dense test error still rests on the one dense seed
    assert cells.dense_test_error_lo.isna().all() and cells.dense_test_error_hi.isna().all()
    txt = summary_table(cells)
    assert "regime confidence n/a" not in txt and "(n/a)" not in txt
    assert "retraining noise only" in txt


def _by_hand(res, metric, stage, n_boot, seed, ci=0.95):
    """The dense-seed bootstrap written out: one draw of the dense seeds for the whole sweep,
    each cell's pooled mean with the drawn multiplicities, the percentile interval."""
    rows = res[(res.stage == stage) & (res.metric == metric) & ~res.sick]
    seeds = sorted(rows.dense_seed.unique(), key=str)
    w = stats.resample_weights(len(seeds), n_boot, seed)
    out = {}
    for key, g in rows.groupby(["temperature", "density"]):
        sums = np.array([g[g.dense_seed == s].value.sum() for s in seeds])
        counts = np.array([float((g.dense_seed == s).sum()) for s in seeds])
        out[key] = stats.percentile_interval((w @ sums) / (w @ counts), ci)
    return out


@pytest.mark.parametrize("seeds,retrain", [((1, 2), (1, 2)), ((1, 2, 3), (1, 2, 3))])
def test_two_or_more_dense_seeds_keep_their_numbers(seeds, retrain):
    res = results(seeds=seeds, retrain=retrain, rng_seed=5)
    cells = cells_from_results(res, n_boot=400, seed=3)
    assert set(cells.ci_unit) == {"dense_seed"} and set(cells.n_dense_seeds) == {len(seeds)}
    conf = cells.regime_confidence
    assert conf.notna().all() and ((conf >= 0) & (conf <= 1)).all()
    for m in PAIR_METRICS + ("test_error", "dense_test_error", "normalized_test_error"):
        lo, hi = cells[f"{m}_lo"], cells[f"{m}_hi"]
        assert lo.notna().all() and hi.notna().all(), m
        assert (lo <= cells[m] + 1e-12).all() and (hi >= cells[m] - 1e-12).all(), m
    for m in PAIR_METRICS + ("test_error",):  # random values differ between seeds
        assert (cells[f"{m}_hi"] > cells[f"{m}_lo"]).all(), m
    # the same numbers as the dense-seed bootstrap written out by hand
    for m, stage in (("lmc", "pair"), ("cka", "pair"), ("test_error", "retrain")):
        want = _by_hand(res, m, stage, 400, 3)
        for row in cells.itertuples():
            lo, hi = want[(row.temperature, row.density)]
            assert getattr(row, f"{m}_lo") == lo and getattr(row, f"{m}_hi") == hi, m
    txt = summary_table(cells)
    assert "regime confidence n/a" not in txt and "(n/a)" not in txt and "[n/a]" not in txt


def test_a_cell_left_with_one_healthy_dense_seed():
    """Two dense seeds, one of them sick at 40 epochs: those cells rest on one dense seed."""
    cells = cells_from_results(results(seeds=(1, 2), sick_dense=(1, 40.0)), n_boot=200)
    one = cells.temperature == 40.0
    assert cells[one].regime_confidence.isna().all() and cells[one].lmc_lo.isna().all()
    assert set(cells[one].ci_unit) == {"none"} and set(cells[~one].ci_unit) == {"dense_seed"}
    assert cells[~one].regime_confidence.notna().all() and cells[~one].lmc_lo.notna().all()
    txt = summary_table(cells)
    assert txt.count("(n/a)") == int(one.sum())
    assert txt.count("regime confidence n/a in 2 of 6 cells: they rest on one healthy dense "
                     "seed; nothing to resample.") == 1


# ---------------------------------------------------------------------------------------------
# figures: no "?" for a confidence that is n/a
# ---------------------------------------------------------------------------------------------

def _question_marks(ax):
    return [t for t in ax.texts if t.get_text() == "?"]


def test_nan_confidence_draws_no_question_mark():
    cells = cells_from_results(results(), n_boot=100)
    assert cells.regime_confidence.isna().all()
    ax = Figure().add_subplot()
    out = draw_three_regimes(ax, cells)
    assert out["uncertain"] == [] and _question_marks(ax) == []
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any("regime confidence" in s for s in labels)
    ax2 = Figure().add_subplot()
    assert draw_uncertain_cells(ax2, cells) == [] and _question_marks(ax2) == []
    # the same grid with a low (measured) confidence does get its marks
    ax3 = Figure().add_subplot()
    assert len(draw_uncertain_cells(ax3, cells.assign(regime_confidence=0.5))) == len(cells)
    assert len(_question_marks(ax3)) == len(cells)


# ---------------------------------------------------------------------------------------------
# the report: n/a and the reason, once
# ---------------------------------------------------------------------------------------------

def test_report_shows_na_and_the_reason_once(tmp_path):
    from tr_jax.report import write_report
    res = results()
    cells = cells_from_results(res, n_boot=100)
    cells.to_csv(tmp_path / "cells.csv", index=False)
    res.to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "config.json").write_text(json.dumps({
        "name": "quick-like", "knob": "epochs", "dataset": "digits",
        "dense": {"seeds": [1]}, "retrain": {"seeds": [1, 2], "mode": "lr_rewinding"}}))
    md = write_report(tmp_path, dpi=40)["markdown"].read_text()
    regimes_section = md.split("\n## Regimes\n")[1].split("\n## ")[0]
    assert "(n/a)" in regimes_section and not re.search(r"\(\d+%\)", regimes_section)
    assert md.count("regime confidence n/a: each cell rests on one dense seed and one retrained "
                    "pair; nothing to resample") == 1


# ---------------------------------------------------------------------------------------------
# a test split too small to resolve a point of test error
# ---------------------------------------------------------------------------------------------

def test_small_test_split_note():
    assert small_test_split_note(1).startswith(
        "test split of 1 image(s): one image = 100 points of test error")
    assert small_test_split_note(50).startswith(
        "test split of 50 image(s): one image = 2 points of test error")
    assert small_test_split_note(SMALL_TEST_SPLIT - 1) is not None
    assert small_test_split_note(SMALL_TEST_SPLIT) is None
    assert small_test_split_note(360) is None  # the digits' test split


def _arrays(n_test, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(20 + n_test, 4, 4, 1), dtype=np.uint8)
    y = np.arange(20 + n_test) % 3
    return x[:20], y[:20], x[20:], y[20:]


@pytest.mark.parametrize("n_test,points", [(1, "100"), (50, "2")])
def test_from_arrays_and_load_npz_warn_on_a_small_test_split(tmp_path, n_test, points):
    arrays = _arrays(n_test)
    want = f"test split of {n_test} image\\(s\\): one image = {points} points of test error"
    with pytest.warns(SmallTestSplitWarning, match=want):
        ds = from_arrays(*arrays)
    path = tmp_path / "d.npz"
    np.savez(path, **dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays)))
    with pytest.warns(SmallTestSplitWarning, match=want):
        load_npz(str(path))
    with warnings.catch_warnings():  # the sweep's re-check stays quiet: the sweep says it
        warnings.simplefilter("error", SmallTestSplitWarning)
        check_dataset(ds)


def test_no_warning_for_360_test_images():
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallTestSplitWarning)
        ds = from_arrays(*_arrays(360))
    assert ds.num_test == 360


def test_sweep_says_it_once_when_it_starts(tmp_path):
    import pathlib

    from tr_jax.config import load_config
    from tr_jax.data import load_digits
    from tr_jax.sweep import setup
    tiny = str(pathlib.Path(__file__).parents[1] / "configs" / "tiny.py")
    digits = load_digits()
    with pytest.warns(SmallTestSplitWarning):  # the functional API's warning
        ds = from_arrays(digits.train_images, digits.train_labels, digits.test_images[:50],
                         digits.test_labels[:50], digits.mean, digits.std, "digits50")
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallTestSplitWarning)  # a log line, not a warning
        setup(load_config(tiny, []), str(tmp_path / "a"), progress=False,
                 echo=lines.append, dataset=ds)
    said = [s for s in lines if "test split of 50 image(s): one image = 2 points" in s]
    assert len(said) == 1 and "warning:" in said[0]
    assert (tmp_path / "a" / "log.txt").read_text().count("test split of 50 image(s)") == 1
    lines.clear()
    setup(load_config(tiny, []), str(tmp_path / "b"), progress=False, echo=lines.append)
    assert not any("test split" in s for s in lines)  # digits: 360 test images
