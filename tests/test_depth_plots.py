"""Per-layer metrics: tr_jax.regimes.layer_rows / layer_profiles and the depth figures
(tr_jax.plots.layer_profile, tr_jax.plots.esd_grid)."""

import numpy as np
import pandas as pd
import pytest

import tr_jax.plots.depth as depth
from tr_jax.plots import esd_grid, layer_profile
from tr_jax.regimes import layer_profiles, layer_rows

CKA = "layer_cka_unbiased"
LAYERS = ["conv1", "layer1_0/conv1", "layer1_0/conv2", "fc"]


def _row(metric, value, *, t=10.0, d=0.1, seed=0, pair="1-2", stage="pair", sick=False,
         knob="epochs"):
    return dict(knob=knob, stage=stage, temperature=t, dense_seed=seed, density=d,
                retrain_seed=np.nan, pair=pair, metric=metric, value=value, sick=sick)


def results_frame() -> pd.DataFrame:
    """A hand-built results table with known per-layer values.

    * (10, 0.1): two dense seeds, two pairs each; layer k of seed 0 holds k + {1, 3} (mean k + 2),
      of seed 1 k + {5, 7} (mean k + 6); one sick row of 1000 on every layer.
    * (40, 0.1): one dense seed, three pairs: layer k holds k + {0.1, 0.5, 0.9}.
    * (10, 0.5): one healthy row per layer (value 10 k + 1), one sick.
    * (40, 0.5): one dense seed, eight pairs with spread-out values.
    * a second base (``layer_trace``) whose layers appear in the order fc, conv1;
      non-layer rows (test_error, lmc) in between.
    """
    rows = [_row("test_error", 0.1, stage="dense", pair=np.nan)]
    for seed, vals in ((0, (1.0, 3.0)), (1, (5.0, 7.0))):
        for p, v in zip(("1-2", "1-3"), vals):
            rows += [_row(f"{CKA}@{name}", k + v, seed=seed, pair=p) for k, name in enumerate(LAYERS)]
            rows.append(_row("lmc", -0.01, seed=seed, pair=p))
    rows += [_row(f"{CKA}@{name}", 1000.0, seed=1, pair="2-3", sick=True)
             for name in LAYERS]
    for p, v in zip(("1-2", "1-3", "2-3"), (0.1, 0.5, 0.9)):
        rows += [_row(f"{CKA}@{name}", k + v, t=40.0, pair=p) for k, name in enumerate(LAYERS)]
    rows += [_row(f"{CKA}@{name}", 10.0 * k + 1.0, d=0.5) for k, name in enumerate(LAYERS)]
    rows += [_row(f"{CKA}@{name}", -50.0, d=0.5, pair="1-3", sick=True)
             for name in LAYERS]
    spread = [0.3, 1.7, 0.2, 2.9, 1.1, 0.8, 2.2, 0.05]
    for i, v in enumerate(spread):
        rows += [_row(f"{CKA}@{name}", k + v, t=40.0, d=0.5, pair=f"p{i}")
                 for k, name in enumerate(LAYERS)]
    rows += [_row("layer_trace@fc", 4.0, stage="retrain", pair=np.nan),
             _row("layer_trace@conv1", 2.0, stage="retrain", pair=np.nan)]
    return pd.DataFrame(rows)


def _cell(prof, t, d, layer, metric=CKA):
    sel = prof[(prof["temperature"] == t) & (prof["density"] == d) & (prof["metric"] == metric)
               & (prof["layer"] == layer)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


# --------------------------------------------------------------------------- layer_rows


def test_layer_rows_splits_names_and_drops_other_metrics():
    res = results_frame()
    rows = layer_rows(res)
    assert len(rows) == int(res["metric"].str.contains("@").sum())
    assert not rows["metric"].isin(["test_error", "lmc"]).any()
    assert set(rows["base"]) == {CKA, "layer_trace"}
    cka = rows[rows["base"] == CKA]
    assert list(dict.fromkeys(cka["layer"])) == LAYERS  # "/" kept inside the layer name
    assert list(cka.drop_duplicates("layer")["layer_index"]) == [0, 1, 2, 3]
    trace = rows[rows["base"] == "layer_trace"]
    # the index counts per base metric, in order of first appearance
    assert dict(zip(trace["layer"], trace["layer_index"])) == {"fc": 0, "conv1": 1}
    assert rows["layer_index"].dtype.kind == "i"


def test_layer_rows_splits_at_the_first_at_sign_only():
    res = pd.DataFrame([_row("a@b/c@d", 1.0), _row("a@x", 2.0)])
    rows = layer_rows(res)
    assert list(rows["base"]) == ["a", "a"]
    assert list(rows["layer"]) == ["b/c@d", "x"]
    assert list(rows["layer_index"]) == [0, 1]


def test_layer_rows_empty_keeps_columns():
    res = pd.DataFrame([_row("test_error", 0.1), _row("lmc", 0.0)])
    rows = layer_rows(res)
    assert rows.empty
    assert list(rows.columns) == list(res.columns) + ["base", "layer", "layer_index"]


# --------------------------------------------------------------------------- layer_profiles


def test_layer_profiles_means_units_and_intervals():
    prof = layer_profiles(results_frame(), n_boot=500, seed=3)
    assert list(prof.columns) == ["knob", "temperature", "density", "metric", "layer",
                                  "layer_index", "value", "lo", "hi", "n"]
    # one row per (knob, temperature, density, base, layer): 4 CKA cells x 4 layers + 2 traces
    assert len(prof) == 4 * 4 + 2
    for k, name in enumerate(LAYERS):
        # two dense seeds: units are the seeds; sick rows (1000) are excluded
        two = _cell(prof, 10.0, 0.1, name)
        assert two["value"] == pytest.approx(k + 4.0)
        assert two["n"] == 2
        assert two["layer_index"] == k
        # replicates are seed-mean combinations: the interval spans the two seed means
        assert two["lo"] == pytest.approx(k + 2.0)
        assert two["hi"] == pytest.approx(k + 6.0)
        # one dense seed: units are the pairs
        one = _cell(prof, 40.0, 0.1, name)
        assert one["value"] == pytest.approx(k + 0.5)
        assert one["n"] == 3
        assert k + 0.1 <= one["lo"] < one["value"] < one["hi"] <= k + 0.9
        # a single healthy unit: no interval
        single = _cell(prof, 10.0, 0.5, name)
        assert single["value"] == pytest.approx(10.0 * k + 1.0)
        assert single["n"] == 1
        assert np.isnan(single["lo"]) and np.isnan(single["hi"])
        eight = _cell(prof, 40.0, 0.5, name)
        assert eight["n"] == 8
        assert eight["lo"] <= eight["value"] <= eight["hi"]
    trace = prof[prof["metric"] == "layer_trace"]
    assert list(trace["layer"]) == ["fc", "conv1"]  # sorted by layer_index
    assert list(trace["value"]) == [4.0, 2.0]


def test_layer_profiles_sorted():
    prof = layer_profiles(results_frame(), n_boot=50)
    keys = prof[["knob", "metric", "density", "temperature", "layer_index"]]
    assert keys.equals(keys.sort_values(list(keys.columns)).reset_index(drop=True))


def test_layer_profiles_deterministic_for_a_seed():
    res = results_frame()
    a = layer_profiles(res, n_boot=300, seed=7)
    b = layer_profiles(res, n_boot=300, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = layer_profiles(res, n_boot=300, seed=8)
    eight = (a["temperature"] == 40.0) & (a["density"] == 0.5)
    assert not np.allclose(a.loc[eight, ["lo", "hi"]], c.loc[eight, ["lo", "hi"]])
    pd.testing.assert_series_equal(a["value"], c["value"])


def test_layer_profiles_ci_width():
    res = results_frame()
    wide = layer_profiles(res, n_boot=400, ci=0.95)
    narrow = layer_profiles(res, n_boot=400, ci=0.5)
    eight = (wide["temperature"] == 40.0) & (wide["density"] == 0.5)
    assert ((wide["hi"] - wide["lo"])[eight] > (narrow["hi"] - narrow["lo"])[eight]).all()


def test_layer_profiles_sick_from_csv_and_missing(tmp_path):
    res = results_frame()
    path = tmp_path / "results.csv"
    res.to_csv(path, index=False)
    back = pd.read_csv(path)
    back["sick"] = back["sick"].astype(str)  # as text, e.g. from a mixed column
    pd.testing.assert_frame_equal(layer_profiles(back, n_boot=100), layer_profiles(res, n_boot=100))
    # no sick column: every row is healthy, the sick rows count
    prof = layer_profiles(res.drop(columns="sick"), n_boot=100)
    assert _cell(prof, 10.0, 0.1, "conv1")["value"] == pytest.approx((1 + 3 + 5 + 7 + 1000) / 5)
    assert _cell(prof, 10.0, 0.5, "fc")["n"] == 2


def test_layer_profiles_all_sick_cell_and_empty():
    res = pd.DataFrame([_row("m@a", 1.0, sick=True), _row("m@a", 2.0, t=20.0)])
    prof = layer_profiles(res, n_boot=50)
    sick = prof[prof["temperature"] == 10.0].iloc[0]
    assert np.isnan(sick["value"]) and sick["n"] == 0
    assert prof[prof["temperature"] == 20.0].iloc[0]["value"] == 2.0
    empty = layer_profiles(pd.DataFrame([_row("test_error", 0.1)]))
    assert empty.empty and "layer_index" in empty.columns


def test_layer_profiles_fast_for_a_thousand_groups():
    import time

    rng = np.random.default_rng(0)
    layers = [f"block{i}/conv" for i in range(10)]
    rows = [_row(f"m@{name}", float(rng.normal()), t=t, d=d, seed=s, pair=p)
            for t in (10.0, 20.0, 40.0, 80.0, 160.0) for d in (0.05, 0.1, 0.2, 0.5)
            for s in (0, 1, 2) for p in ("1-2", "1-3", "2-3") for name in layers]
    rows += [_row(f"q@{name}", float(rng.normal()), t=t, d=d, pair=p)
             for t in (10.0, 20.0, 40.0, 80.0, 160.0) for d in (0.05, 0.1, 0.2, 0.5)
             for p in ("1-2", "1-3", "2-3") for name in layers * 4]
    res = pd.DataFrame(rows)
    start = time.perf_counter()
    prof = layer_profiles(res)
    took = time.perf_counter() - start
    assert len(prof) == 400
    assert took < 2.0, took


# --------------------------------------------------------------------------- figures


@pytest.fixture
def captured(monkeypatch):
    """The figures the depth module saves (the real PNG is still written)."""
    figs = []
    real = depth.save_figure

    def keep(fig, path, **kw):
        figs.append(fig)
        return real(fig, path, **kw)

    monkeypatch.setattr(depth, "save_figure", keep)
    return figs


def test_layer_profile_heatmap(tmp_path, captured):
    prof = layer_profiles(results_frame(), n_boot=50)
    out = layer_profile(prof, CKA, tmp_path / "cka.png", cbar="unbiased CKA")
    assert out.is_file() and out.stat().st_size > 0
    fig = captured[-1]
    assert len(fig.axes) == 2 + 1  # two densities + the colour bar
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["density 10%", "density 50%"]
    assert fig.axes[-1].get_ylabel() == "unbiased CKA"
    grid = np.ma.filled(panels[0].images[0].get_array(), np.nan)
    assert grid.shape == (2, 4)  # temperatures x layers
    # epochs: fewest epochs (hottest) at the top
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["10", "40"]
    assert [t.get_text() for t in panels[0].get_xticklabels()] == LAYERS
    assert all(t.get_rotation() == 90 for t in panels[0].get_xticklabels())
    np.testing.assert_allclose(grid[0], [4.0, 5.0, 6.0, 7.0])
    np.testing.assert_allclose(grid[1], [0.5, 1.5, 2.5, 3.5])
    # one colour scale for both panels
    norms = {(im.norm.vmin, im.norm.vmax) for ax in panels for im in ax.images}
    assert norms == {(0.5, 31.0)}
    texts = [t.get_text() for t in panels[0].texts]
    assert "4.00" in texts and "0.50" in texts


def test_layer_profile_log_masks_non_positive(tmp_path, captured):
    prof = pd.DataFrame(dict(knob="sam_rho", temperature=[0.0, 0.0, 0.1, 0.1],
                             density=0.2, metric="layer_trace", layer=["a", "b", "a", "b"],
                             layer_index=[0, 1, 0, 1], value=[100.0, -1.0, 10.0, 1000.0]))
    layer_profile(prof, "layer_trace", tmp_path / "t.png", log=True, fmt="{:.0f}")
    fig = captured[-1]
    assert len(fig.axes) == 2
    grid = panels_grid = fig.axes[0].images[0].get_array()
    # sam_rho: larger radius is hotter, so 0.1 is the top row
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["0.1", "0"]
    np.testing.assert_allclose(np.ma.filled(panels_grid, np.nan)[0], [1.0, 3.0])
    assert np.ma.getmaskarray(grid)[1, 1] and not np.ma.getmaskarray(grid)[1, 0]
    assert "log10" in fig.axes[-1].get_ylabel()


def test_layer_profile_unknown_metric_names_it(tmp_path):
    prof = layer_profiles(results_frame(), n_boot=20)
    with pytest.raises(ValueError, match="nope.*layer_cka_unbiased.*layer_trace"):
        layer_profile(prof, "nope", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _spectrum(eigs, probes=2):
    """SLQ-like nodes/weights of a diagonal matrix: exact eigenvalues, equal weights, plus one
    unused node (weight 0) far away."""
    k = len(eigs)
    nodes = np.tile(np.append(np.asarray(eigs, float), 100.0), (probes, 1))
    weights = np.tile(np.append(np.full(k, 1.0 / k), 0.0), (probes, 1))
    return nodes, weights


def test_esd_grid(tmp_path, captured):
    eigs = [-1.0, 0.5, 2.0, 4.0]
    spectra = {(20.0, 0.1): _spectrum(eigs), (10.0, 0.1): _spectrum([1.0, 3.0]),
               (10.0, 0.5): _spectrum([0.0, 2.0])}
    out = esd_grid(spectra, tmp_path / "esd.png", knob="epochs", title="ESD")
    assert out.is_file() and out.stat().st_size > 0
    fig = captured[-1]
    assert len(fig.axes) == 4  # 2 temperatures x 2 densities
    axes = np.array(fig.axes).reshape(2, 2)
    # rows hot -> cold (fewest epochs on top), columns density ascending
    assert "10" in axes[0, 0].get_ylabel() and "20" in axes[1, 0].get_ylabel()
    assert axes[0, 0].get_title() == "density 10%" and axes[0, 1].get_title() == "density 50%"
    assert axes[1, 0].get_xlabel() == "eigenvalue" and axes[0, 0].get_xlabel() == ""
    # the missing cell (20 epochs, 50%) is blank
    assert [t.get_text() for t in axes[1, 1].texts] == ["no data"]
    assert not axes[1, 1].get_lines()
    ax = axes[1, 0]
    assert ax.get_yscale() == "log"
    curve, zero = ax.get_lines()[0], ax.get_lines()[1]
    assert list(zero.get_xdata()) == [0.0, 0.0]
    x, y = np.asarray(curve.get_xdata()), np.asarray(curve.get_ydata())
    assert x.max() < 10.0  # the unused node at 100 plays no part
    assert y.min() >= 1e-8 * y.max() * (1 - 1e-9)
    peaks = x[1:-1][(y[1:-1] > y[:-2]) & (y[1:-1] >= y[2:])]
    assert len(peaks) == len(eigs)
    np.testing.assert_allclose(np.sort(peaks), eigs, atol=0.06)


def test_esd_grid_empty_raises(tmp_path):
    with pytest.raises(ValueError, match="spectra is empty"):
        esd_grid({}, tmp_path / "e.png", knob="epochs")
