"""The depth measures of the registry: layer-wise CKA of the pairs (Kornblith et al. 2019; the
unbiased HSIC of Nguyen, Raghu & Kornblith 2021), per-layer Hessian traces and the Hessian's
eigenvalue density by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019), and the
Bezier settings ``bends`` / ``kind`` (Garipov et al. 2018).

Registry and config rules; the measures' compute functions on 4 small members without a sweep
(stacked and per-member paths agree; the last layer's CKA is the outputs measure's logit CKA; the
layers' traces add up to the Hessian measure's trace); and one tiny sweep with all three on,
grown by a retrain seed, whose old numbers are kept as they were.
"""
from __future__ import annotations

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
from _procs import cpu_env

from tr_jax import measures, models
from tr_jax import members as mem
from tr_jax.config import config_hash, default_config, load_config, validate
from tr_jax.data.datasets import load_dataset
from tr_jax.errors import ConfigError
from tr_jax.pruning import magnitude_masks
from tr_jax.sweep import stages
from tr_jax.sweep.context import padded_idx
from tr_jax.sweep.grid import Grid
from tr_jax.sweep.tables import _measured_metrics, layers_key

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
QUICK = str(ROOT / "configs" / "quick.py")
DEPTH = ("layer_cka", "layer_hessian", "hessian_esd")
TIMEOUT = 600


# ------------------------------------------------------------------ registry and config
def test_depth_measures_are_registered_and_off_everywhere():
    lc, lh, esd = (measures.get(n) for n in DEPTH)
    assert (lc.unit, lh.unit, esd.unit) == ("pair", "member", "member")
    assert lc.keys == ("layer_cka", "layer_cka_unbiased")
    assert lh.keys == ("layer_trace", "layer_trace_stderr")
    assert esd.keys == ("esd_nodes", "esd_weights")
    assert lc.layer_names is not None and lh.layer_names is not None and esd.figures is not None
    layered = {x.name for m in (lc, lh, esd) for x in m.metrics if x.layers}
    assert layered == {"layer_cka", "layer_cka_unbiased", "layer_trace", "layer_trace_stderr"}
    assert {"layer_cka_min", "layer_trace_top_share", "esd_negative_mass"} <= set(
        measures.cell_metrics("measured"))
    for cfg in (default_config(), load_config(QUICK), load_config(TINY)):
        for name in DEPTH:
            assert cfg.measure[name].enabled is False, name
        assert not {m.name for m in measures.enabled(cfg)} & set(DEPTH)
        assert cfg.measure.bezier.bends == 1 and cfg.measure.bezier.kind == "bezier"


def test_config_hashes_are_unchanged_by_the_new_settings():
    assert config_hash(default_config()) == "95210fd78fdb"
    assert config_hash(load_config(QUICK)) == "b8026ddaa8e7"
    assert config_hash(load_config(TINY)) == "4bbd8b7a8854"
    assert config_hash(load_config(TINY, ["measure.bezier.bends=1"])) == "4bbd8b7a8854"
    assert config_hash(load_config(TINY, ["measure.bezier.kind=bezier"])) == "4bbd8b7a8854"
    assert config_hash(load_config(TINY, ["measure.bezier.bends=2"])) != "4bbd8b7a8854"
    assert config_hash(load_config(TINY, ["measure.bezier.kind=polychain"])) != "4bbd8b7a8854"
    assert config_hash(load_config(TINY, ["measure.layer_cka.enabled=True"])) != "4bbd8b7a8854"


@pytest.mark.parametrize("key,value", [
    ("measure.bezier.bends", 0), ("measure.bezier.kind", "spline"),
    ("measure.layer_hessian.chunk", 21), ("measure.layer_cka.images", 2),
    ("measure.hessian_esd.lanczos_steps", 1)])
def test_bad_depth_settings_are_refused_naming_the_key(key, value):
    cfg = default_config()
    section, name = key.rsplit(".", 1)
    node = cfg
    for part in section.split("."):
        node = node[part]
    node[name] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        validate(cfg)
    assert e.value.key == key
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TINY, [f"{key}={value}"])


def test_bezier_curve_labels():
    label = measures.get("bezier").curve_label
    assert label(load_config(TINY)) == "Bezier"
    assert label(load_config(TINY, ["measure.bezier.bends=2"])) == "Bezier (2 bends)"
    assert label(load_config(TINY, ["measure.bezier.kind=polychain"])) == "polygonal chain (1 bend)"


def test_metric_and_measure_rules_for_layers():
    with pytest.raises(ValueError, match="cell=None"):
        measures.Metric("x", "x", ("a", "b"), cell="measured", layers=True)
    with pytest.raises(ValueError, match="'@'"):
        measures.Metric("x@y", "x", ("a", "b"))
    ok = measures.Metric("x", "x", ("a", "b"), cell=None, layers=True)
    with pytest.raises(ValueError, match="layer_names"):
        measures.Measure(name="x", unit="member", compute=lambda *a: {}, keys=("x",), metrics=(ok,))
    measures.Measure(name="x", unit="member", compute=lambda *a: {}, keys=("x",), metrics=(ok,),
                     layer_names=lambda i, r: ("a",))  # with layer names: accepted
    with pytest.raises(ValueError, match="new_settings"):
        measures.Measure(name="x", unit="member", compute=lambda *a: {}, keys=(), metrics=(),
                         settings={"enabled": True}, new_settings=("k",))


# ------------------------------------------------------------------ compute, without a sweep
IMAGES, PROBES = 64, 4
SMALL = ["temperatures=(1,)", "prune.densities=(0.5,)", "retrain.seeds=(1, 2, 3, 4)",
         f"measure.cka_images={IMAGES}", f"measure.layer_cka.images={IMAGES}",
         "measure.hessian.images=32", f"measure.hessian.max_probes={PROBES}",
         "measure.hessian.chunk=2", "measure.hessian.tol=0", "measure.hessian.eig_iters=2",
         "measure.layer_hessian.images=32", f"measure.layer_hessian.probes={PROBES}",
         "measure.layer_hessian.chunk=2", 'measure.layer_hessian.layers=""',
         "measure.hessian_esd.images=32", "measure.hessian_esd.probes=2",
         "measure.hessian_esd.lanczos_steps=6"]


@pytest.fixture(scope="module")
def members():
    """4 PreResNet-8 members (width 0.25) of different random inits with magnitude masks at
    density 0.5, the digits data and the grid of one cell of 4 retrain seeds (6 pairs)."""
    cfg = load_config(TINY, SMALL)
    ds = load_dataset("digits")
    model = models.build("preresnet", depth=8, num_classes=ds.num_classes, width=0.25)
    vs = [models.init(model, jax.random.key(10 + i), ds.image_shape) for i in range(4)]
    masks = [magnitude_masks(v["params"], 0.5) for v in vs]
    retrained = {"variables": mem.stack(vs), "mask": mem.stack(masks)}
    grid = Grid.from_config(cfg)
    assert grid.num_members == 4 and len(grid.pairs()) == 6
    X, Y = jax.numpy.asarray(ds.train_images), jax.numpy.asarray(ds.train_labels)
    Xt, Yt = jax.numpy.asarray(ds.test_images), jax.numpy.asarray(ds.test_labels)

    def inputs(stacked: bool) -> measures.Inputs:
        take = ((lambda t, idx: stages.take_members(t, padded_idx(idx, True))) if stacked
                else mem.take)
        return measures.Inputs(cfg=cfg, grid=grid, ds=ds, model=model, X=X, Y=Y, Xt=Xt, Yt=Yt,
                               root=jax.random.key(cfg.seed), stacked=stacked,
                               strategy="vmap" if stacked else "threads", take=take,
                               pad=lambda idx: padded_idx(idx, stacked))
    return {"stacked": inputs(True), "loop": inputs(False), "retrained": retrained}


def _run(name: str, inputs: measures.Inputs, retrained: dict) -> dict:
    m = measures.get(name)
    n = len(inputs.grid.pairs()) if m.unit == "pair" else inputs.grid.num_members
    out = dict(m.compute(inputs, retrained, np.arange(n)))
    if m.finish is not None:
        out.update(m.finish(inputs, out))
    return out


@pytest.fixture(scope="module")
def computed(members):
    """Every depth measure on both paths; the outputs and Hessian measures per member (the
    paths agree on the depth measures, so one path suffices to compare with them)."""
    r = members["retrained"]
    out = {path: {name: _run(name, members[path], r) for name in DEPTH}
           for path in ("stacked", "loop")}
    out["loop"].update({name: _run(name, members["loop"], r) for name in ("outputs", "hessian")})
    return out


def test_stacked_and_per_member_paths_agree(members, computed):
    a, b = computed["stacked"], computed["loop"]
    names = measures.get("layer_cka").layer_names(members["loop"], members["retrained"])
    assert names == ("layer1_0", "layer2_0", "layer3_0", "fc")
    groups = measures.get("layer_hessian").layer_names(members["loop"], members["retrained"])
    assert groups[0] == "conv1" and groups[-1] == "fc" and "layer2_0" in groups
    for k in ("layer_cka", "layer_cka_unbiased"):
        assert a["layer_cka"][k].shape == (6, 4)
        np.testing.assert_allclose(a["layer_cka"][k], b["layer_cka"][k], rtol=1e-4, atol=1e-5)
    assert np.all(np.abs(a["layer_cka"]["layer_cka"]) <= 1 + 1e-5)
    for k in ("layer_trace", "layer_trace_stderr"):
        assert a["layer_hessian"][k].shape == (4, len(groups))
        np.testing.assert_allclose(a["layer_hessian"][k], b["layer_hessian"][k], rtol=1e-3,
                                   atol=1e-5)
    assert np.isfinite(a["layer_hessian"]["layer_trace"]).all()
    assert np.all(a["layer_hessian"]["layer_trace_stderr"] > 0)
    for k in ("esd_nodes", "esd_weights"):
        assert a["hessian_esd"][k].shape == (4, 2, 6)
        np.testing.assert_allclose(a["hessian_esd"][k], b["hessian_esd"][k], rtol=1e-3, atol=1e-4)
    w = a["hessian_esd"]["esd_weights"]
    np.testing.assert_allclose(w.sum(axis=2), 1.0, atol=1e-4)  # SLQ weights: a distribution
    for k in ("layer_cka_min", "layer_trace_top_share", "esd_negative_mass", "esd_top"):
        got = {**a["layer_cka"], **a["layer_hessian"], **a["hessian_esd"]}[k]
        want = {**b["layer_cka"], **b["layer_hessian"], **b["hessian_esd"]}[k]
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=k)
    np.testing.assert_allclose(a["layer_cka"]["layer_cka_min"],
                               a["layer_cka"]["layer_cka_unbiased"].min(axis=1), rtol=1e-12)
    t = a["layer_hessian"]["layer_trace"]
    np.testing.assert_allclose(a["layer_hessian"]["layer_trace_top_share"],
                               t.max(axis=1) / t.sum(axis=1), rtol=1e-12)


def test_last_layer_cka_is_the_logit_cka(computed):
    out = computed["loop"]
    np.testing.assert_allclose(out["layer_cka"]["layer_cka"][:, -1], out["outputs"]["cka_logits"],
                               rtol=1e-4, atol=1e-5)
    assert np.ptp(out["outputs"]["cka_logits"]) > 0.05  # 6 different pairs, not a constant


def test_layer_traces_add_up_to_the_hessian_trace(computed):
    """Same probe keys (``Grid.hessian_keys``), probes, images and mask rule, tol 0, groups that
    cover every parameter: the sum of the layers' traces is the Hessian measure's trace."""
    out = computed["loop"]
    assert np.all(out["hessian"]["trace_probes"] == PROBES)
    np.testing.assert_allclose(out["layer_hessian"]["layer_trace"].sum(axis=1),
                               out["hessian"]["trace"], rtol=1e-4)


def test_esd_scalars_exact():
    nodes = np.array([[[-1.0, 0.5, 3.0], [-2.0, -0.5, 4.0]],
                      [[0.1, 0.2, 0.3], [0.0, 1.0, 7.0]]])
    weights = np.array([[[0.25, 0.25, 0.5], [0.1, 0.3, 0.6]],
                        [[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]]])  # member 1: 7.0 has no weight
    out = measures.esd_scalars(nodes, weights)
    np.testing.assert_array_equal(out["esd_negative_mass"], [(0.25 + 0.4) / 2, 0.0])
    np.testing.assert_array_equal(out["esd_top"], [4.0, 1.0])
    none = measures.esd_scalars(np.zeros((1, 1, 2)), np.zeros((1, 1, 2)))
    assert np.isnan(none["esd_top"][0]) and none["esd_negative_mass"][0] == 0.0


def test_measured_metrics_expand_layers_in_network_order():
    names = ("conv1", "layer1_0", "fc")
    cka = np.arange(6.0).reshape(2, 3)
    measured = {"layer_cka": {"layer_cka": cka, "layer_cka_unbiased": -cka,
                              "layer_cka_min": np.array([7.0, 8.0]),
                              layers_key("layer_cka"): names}}
    out = _measured_metrics(measured, "pair")
    assert [n for n, _ in out] == (["layer_cka@conv1", "layer_cka@layer1_0", "layer_cka@fc"]
                                   + [f"layer_cka_unbiased@{n}" for n in names] + ["layer_cka_min"])
    for j, (_, v) in enumerate(out[:3]):
        np.testing.assert_array_equal(v, cka[:, j])
    np.testing.assert_array_equal(out[4][1], -cka[:, 1])
    np.testing.assert_array_equal(out[-1][1], [7.0, 8.0])
    assert _measured_metrics(measured, "member") == []
    measured["layer_cka"][layers_key("layer_cka")] = names[:2]
    with pytest.raises(ValueError, match="layer_cka.*2 layers"):
        _measured_metrics(measured, "pair")


# ------------------------------------------------------------------ one sweep, then grown
SWEEP = ["temperatures=(1,)", "dense.epochs=1", "retrain.epochs=1", "prune.densities=(0.1, 0.5)",
         "measure.test_error_last_epochs=1", "measure.lmc_points=2", "measure.cka_images=64",
         "measure.layer_cka.enabled=True", "measure.layer_cka.images=64",
         "measure.layer_hessian.enabled=True", "measure.layer_hessian.images=64",
         "measure.layer_hessian.probes=4", "measure.layer_hessian.chunk=2",
         "measure.hessian_esd.enabled=True", "measure.hessian_esd.images=64",
         "measure.hessian_esd.lanczos_steps=6", "measure.bezier.enabled=True",
         "measure.bezier.bends=2"]
GROWN = ["retrain.seeds=(1, 2, 3)"]
KEYS = ["stage", "temperature", "dense_seed", "density", "retrain_seed", "pair", "metric"]
DEPTH_METRICS = ("layer_cka", "layer_cka_unbiased", "layer_cka_min", "layer_trace",
                 "layer_trace_stderr", "layer_trace_top_share", "esd_negative_mass", "esd_top")


def _sweep(wd: pathlib.Path, sets: list[str]) -> str:
    cmd = [sys.executable, "-m", "tr_jax.cli", "run", TINY, "--workdir", str(wd), "--no-progress",
           *[a for s in sets for a in ("--set", s)]]
    r = subprocess.run(cmd, env=cpu_env(1), capture_output=True, text=True, timeout=TIMEOUT,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _depth(results: pd.DataFrame) -> pd.Series:
    base = results.metric.str.split("@").str[0]
    return results[base.isin(DEPTH_METRICS)].set_index(KEYS)["value"].sort_index()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The tiny sweep (1 temperature x 2 densities x 2 retrain seeds: 4 members, 2 pairs) with
    the three depth measures and a 2-bend Bezier curve; then grown by a third retrain seed."""
    wd = tmp_path_factory.mktemp("depth") / "w"
    _sweep(wd, SWEEP)
    first = {"results": pd.read_csv(wd / "results.csv"), "cells": pd.read_csv(wd / "cells.csv"),
             "layers": pd.read_csv(wd / "layers.csv"), "log": (wd / "log.txt").read_text(),
             "figures": sorted(p.name for p in (wd / "figures").iterdir())}
    out = _sweep(wd, SWEEP + GROWN)
    return {"wd": wd, "first": first, "grown_out": out,
            "grown": pd.read_csv(wd / "results.csv"), "grown_cells": pd.read_csv(wd / "cells.csv")}


def test_sweep_writes_the_depth_rows_tables_and_figures(sweep):
    first = sweep["first"]
    res, cells = first["results"], first["cells"]
    assert not res.sick.any()
    cka_layers = ("layer1_0", "layer2_0", "layer3_0", "fc")
    pairs, mems = res[res.stage == "pair"], res[res.stage == "retrain"]
    assert len(pairs.groupby(["density", "pair"])) == 2 and len(mems.groupby(
        ["density", "retrain_seed"])) == 4
    for base in ("layer_cka", "layer_cka_unbiased"):
        for layer in cka_layers:
            rows = pairs[pairs.metric == f"{base}@{layer}"]
            assert len(rows) == 2 and np.isfinite(rows.value).all(), (base, layer)
            assert (rows.value <= 1 + 1e-5).all()
    trace_layers = [m.split("@")[1] for m in mems.metric.unique() if m.startswith("layer_trace@")]
    assert trace_layers[0] == "conv1" and trace_layers[-1] == "fc" and len(trace_layers) >= 5
    for layer in trace_layers:
        for base in ("layer_trace", "layer_trace_stderr"):
            rows = mems[mems.metric == f"{base}@{layer}"]
            assert len(rows) == 4 and np.isfinite(rows.value).all(), (base, layer)
    # the derived per-item metrics are the functions of the per-layer rows
    wide = res.pivot_table(index=["density", "retrain_seed", "pair"], columns="metric",
                           values="value", dropna=False)
    p = wide.dropna(subset=["layer_cka_min"])
    np.testing.assert_allclose(p.layer_cka_min,
                               p[[f"layer_cka_unbiased@{x}" for x in cka_layers]].min(axis=1),
                               rtol=1e-9)
    m = wide.dropna(subset=["layer_trace_top_share"])
    t = m[[f"layer_trace@{x}" for x in trace_layers]]
    np.testing.assert_allclose(m.layer_trace_top_share, t.max(axis=1) / t.sum(axis=1), rtol=1e-9)
    esd = mems[mems.metric == "esd_negative_mass"].value
    assert len(esd) == 4 and ((esd >= 0) & (esd <= 1)).all()
    for col in ("layer_cka_min", "layer_trace_top_share", "esd_negative_mass"):
        assert {col, f"{col}_lo", f"{col}_hi"} <= set(cells.columns), col
        assert cells[col].notna().all(), col
    assert len(cells) == 2 and cells.bezier_mc.notna().all()

    # layers.csv: the per-cell means of results.csv's healthy per-layer rows
    layers = first["layers"]
    rows = res[res.metric.str.contains("@") & ~res.sick].copy()
    rows[["base", "layer"]] = rows.metric.str.split("@", expand=True)
    want = rows.groupby(["temperature", "density", "base", "layer"]).value.mean()
    got = layers.set_index(["temperature", "density", "metric", "layer"]).value
    assert len(got) == len(want) == 2 * (2 * 4 + 2 * len(trace_layers))
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=1e-9)
    order = layers[(layers.metric == "layer_cka") & (layers.density == 0.5)].sort_values(
        "layer_index").layer
    assert tuple(order) == cka_layers

    figs = set(first["figures"])
    assert {"layers_layer_cka.png", "layers_layer_cka_unbiased.png", "layers_layer_trace.png",
            "hessian_esd.png"} <= figs
    assert "layers_layer_trace_stderr.png" not in figs  # no panel
    for name in ("layers_layer_cka.png", "layers_layer_trace.png", "hessian_esd.png"):
        assert (sweep["wd"] / "figures" / name).stat().st_size > 1000
    log = first["log"]
    assert "Bezier (2 bends)" in log and "polygonal chain" not in log
    assert "layer-wise CKA (64 images" in log and "per-layer Hessian traces (4 probes)" in log
    assert "Hessian eigenvalue density (2 probes x 6 Lanczos steps)" in log


def test_grown_sweep_keeps_the_old_depth_numbers(sweep):
    before, after = _depth(sweep["first"]["results"]), _depth(sweep["grown"])
    assert len(before) > 0 and len(after) > len(before)
    pd.testing.assert_series_equal(after.loc[before.index], before)  # bit for bit
    grown = sweep["grown"]
    new_members = grown[(grown.stage == "retrain") & (grown.retrain_seed == 3)]
    for base in ("layer_trace@fc", "esd_negative_mass", "layer_trace_top_share"):
        rows = new_members[new_members.metric == base]
        assert len(rows) == 2 and np.isfinite(rows.value).all(), base
    new_pairs = grown[(grown.stage == "pair") & grown.pair.isin(["1-3", "2-3"])]
    for base in ("layer_cka@fc", "layer_cka_unbiased@layer1_0", "layer_cka_min"):
        rows = new_pairs[new_pairs.metric == base]
        assert len(rows) == 4 and np.isfinite(rows.value).all(), base
    # 6 members, 6 pairs, every depth row present once
    depth = grown[grown.metric.str.split("@").str[0].isin(DEPTH_METRICS)]
    assert not depth.duplicated(KEYS).any()
    assert len(depth[depth.metric == "layer_cka@fc"]) == 6
    assert len(depth[depth.metric == "esd_top"]) == 6
    assert sweep["grown_cells"].layer_cka_min.notna().all()


# ------------------------------------------------------------------ refused before any work
def test_layers_that_select_nothing_are_refused_before_any_work(tmp_path):
    wd = tmp_path / "w"
    cmd = [sys.executable, "-m", "tr_jax.cli", "run", TINY, "--workdir", str(wd), "--no-progress",
           "--set", "measure.layer_cka.enabled=True", "--set", "measure.layer_cka.layers=^nothing$"]
    r = subprocess.run(cmd, env=cpu_env(1), capture_output=True, text=True, timeout=TIMEOUT,
                       cwd=ROOT)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tr-jax: error: measure.layer_cka.layers='^nothing$'")
    assert "matches no module path of PreResNet" in err[0] and "'layer1_0/conv1'" in err[0]
    assert sorted(f.name for f in wd.iterdir()) == ["log.txt"]  # the error's log, no run state


def test_a_user_model_needs_a_layers_regex():
    import flax.linen as nn

    from tr_jax.errors import UserError
    from tr_jax.sweep.context import check_layers

    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.Dense(16, name="hidden")(x.reshape((x.shape[0], -1))))
            return nn.Dense(10, name="head")(x)

    ds = load_dataset("digits", None)
    cfg = load_config(TINY)
    cfg.measure.layer_cka.enabled = True
    with pytest.raises(UserError, match=r"measure\.layer_cka\.layers='': .*not a built-in "
                                        r"architecture"):
        check_layers(cfg, Mlp(), ds)
    cfg.measure.layer_cka.layers = "^(hidden|head)$"
    check_layers(cfg, Mlp(), ds)  # a regex over its module paths selects its layers
    cfg.measure.layer_hessian.enabled = True  # '' = one group per top-level module: any model
    check_layers(cfg, Mlp(), ds)
    cfg.measure.layer_hessian.layers = "^conv"
    with pytest.raises(UserError, match=r"measure\.layer_hessian\.layers='\^conv': .*selects no "
                                        "parameter leaf"):
        check_layers(cfg, Mlp(), ds)
