"""The whole pipeline through the CLI on a tiny config: files, determinism, resume, bad input."""
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tr_jax import cli
from tr_jax.config import load_config

ROOT = pathlib.Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.py")


#: tiny with its two optional stages on: one run serves every test of this file
BH = ["--set", "measure.bezier.enabled=True", "--set", "measure.hessian.enabled=True"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("run") / "a"
    assert cli.main(["run", TINY, "--workdir", str(wd), "--no-progress", *BH]) == 0
    return wd


def test_run_writes_every_file(tiny_run, capsys):
    wd = tiny_run
    for name in ("cells.csv", "results.csv", "config.json", "log.txt", "summary.txt"):
        assert (wd / name).stat().st_size > 0, name
    figs = sorted(p.name for p in (wd / "figures").glob("*.png"))
    assert figs == ["curves_density_0.1.png", "curves_density_0.5.png", "epochs_bezier_mc.png",
                    "epochs_cka.png", "epochs_cka_logits.png", "epochs_hessian_top_eigenvalue.png",
                    "epochs_hessian_trace.png", "epochs_lmc.png", "epochs_loss_barrier.png",
                    "epochs_normalized_test_error.png", "epochs_test_error.png",
                    "epochs_three_regimes.png"]
    cells = pd.read_csv(wd / "cells.csv")
    assert len(cells) == 2 * 2  # temperatures x densities
    for col in ("knob", "temperature", "density", "test_error", "lmc", "cka", "regime",
                "normalized_test_error"):
        assert col in cells.columns
    assert set(cells["regime"]) <= {"I", "II-A", "II-B"}
    assert np.all(cells.lmc <= 1e-9 + 1.0) and np.all((cells.cka > 0) & (cells.cka <= 1 + 1e-6))
    assert np.all(cells.groupby("density").normalized_test_error.min() == 0)
    res = pd.read_csv(wd / "results.csv")
    # tidy: 2 temps x 2 densities x 2 retrain seeds members, 4 pairs, 2 dense checkpoints
    # per member: test_error, measured_density and 4 Hessian numbers (trace, its stderr and
    # probes, top eigenvalue); per pair: LMC, CKAs, loss barrier and the Bezier curve's mc
    assert (res.stage == "retrain").sum() == 8 * 6
    assert set(res[res.stage == "pair"].metric) == {"lmc", "cka", "cka_logits", "loss_barrier",
                                                    "bezier_mc"}
    dens = res[(res.stage == "retrain") & (res.metric == "measured_density")]
    np.testing.assert_allclose(dens.value, dens.density, atol=0.01)
    # the cell table's numbers are the members' means
    m = res[(res.stage == "retrain") & (res.metric == "test_error")].groupby(
        ["temperature", "density"]).value.mean()
    c = cells.set_index(["temperature", "density"]).test_error
    np.testing.assert_allclose(c.loc[m.index], m)


def test_workdir_with_another_config_is_refused(tiny_run, capsys):
    code = cli.main(["run", TINY, "--workdir", str(tiny_run), "--no-progress", *BH,
                     "--set", "retrain.epochs=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "different config" in err and "retrain.epochs: 2 -> 3" in err


@pytest.mark.parametrize("override, message", [
    ("model.depth=10", "depth=10"),
    ("prune.densities=[0.5,1.5]", "got 1.5"),
    ("retrain.epoch=3", "Did you mean 'epochs'"),
    ("datset=digits", "Did you mean 'dataset'"),
    ("dataset=cifar11", "'cifar11'"),
    ("retrain.seeds=[1]", "at least 2"),
    ("temperatures=[]", "temperatures is empty"),
    ("run.members_strategy=vmapp", "'vmapp'"),
])
def test_bad_input_names_the_value(override, message, capsys, tmp_path):
    code = cli.main(["run", TINY, "--workdir", str(tmp_path / "x"), "--set", override])
    assert code == 2
    assert message in capsys.readouterr().err


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from tr_jax.config import default_config\n"
                   "def get_config():\n    c = default_config()\n"
                   "    c.unlock()\n    c.model.widht = 2\n    return c\n")
    with pytest.raises(ValueError, match="model.widht.*Did you mean 'width'"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config(tmp_path / "nope.py")


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "tr_jax.cli", "run", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--workdir" in out.stdout


def test_bezier_and_hessian_stages_land_in_the_tables(tiny_run, capsys):
    wd = tiny_run
    cells = pd.read_csv(wd / "cells.csv")
    for col in ("bezier_mc", "hessian_trace", "hessian_top_eigenvalue"):
        assert np.all(np.isfinite(cells[col])), col
    assert np.all(cells.hessian_trace > 0) and np.all(cells.hessian_top_eigenvalue > 0)
    res = pd.read_csv(wd / "results.csv")
    h = res[res.metric == "hessian_trace_probes"]
    assert len(h) == 8 and np.all(h.value == 4)  # max_probes 4 in chunks of 2, tol not reached
    assert (res.metric == "bezier_mc").sum() == 4  # one per pair
    capsys.readouterr()
    assert cli.main(["run", TINY, "--workdir", str(wd), "--no-progress", *BH]) == 0
    out = capsys.readouterr().out  # rerun: every stage loads, nothing recomputed
    for stage in ("dense", "retrain", "measure", "bezier", "hessian"):
        assert f"{stage}: done before" in out, stage
