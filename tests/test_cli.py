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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("run") / "a"
    assert cli.main(["run", TINY, "--workdir", str(wd), "--no-progress"]) == 0
    return wd


def test_run_writes_every_file(tiny_run, capsys):
    wd = tiny_run
    for name in ("cells.csv", "results.csv", "config.json", "log.txt", "summary.txt"):
        assert (wd / name).stat().st_size > 0, name
    figs = sorted(p.name for p in (wd / "figures").glob("*.png"))
    assert figs == ["curves_density_0.1.png", "curves_density_0.5.png", "epochs_cka.png",
                    "epochs_cka_logits.png", "epochs_lmc.png", "epochs_loss_barrier.png",
                    "epochs_normalized_test_error.png", "epochs_test_error.png"]
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
    assert (res.stage == "retrain").sum() == 8 * 2  # test_error + measured_density
    assert set(res[res.stage == "pair"].metric) == {"lmc", "cka", "cka_logits", "loss_barrier"}
    dens = res[(res.stage == "retrain") & (res.metric == "measured_density")]
    np.testing.assert_allclose(dens.value, dens.density, atol=0.01)
    # the cell table's numbers are the members' means
    m = res[(res.stage == "retrain") & (res.metric == "test_error")].groupby(
        ["temperature", "density"]).value.mean()
    c = cells.set_index(["temperature", "density"]).test_error
    np.testing.assert_allclose(c.loc[m.index], m)


def test_same_root_key_gives_identical_cells_and_resume_skips(tiny_run, tmp_path, capsys):
    wd2 = tmp_path / "b"
    assert cli.main(["run", TINY, "--workdir", str(wd2), "--no-progress"]) == 0
    assert (tiny_run / "cells.csv").read_bytes() == (wd2 / "cells.csv").read_bytes()
    assert (tiny_run / "results.csv").read_bytes() == (wd2 / "results.csv").read_bytes()
    capsys.readouterr()
    assert cli.main(["run", TINY, "--workdir", str(wd2), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "dense: done before" in out and "retrain: done before" in out
    assert (tiny_run / "cells.csv").read_bytes() == (wd2 / "cells.csv").read_bytes()


def test_other_seed_changes_numbers(tiny_run, tmp_path):
    wd = tmp_path / "c"
    assert cli.main(["run", TINY, "--workdir", str(wd), "--no-progress", "--set", "seed=1"]) == 0
    a = pd.read_csv(tiny_run / "cells.csv")
    b = pd.read_csv(wd / "cells.csv")
    assert not np.allclose(a.cka, b.cka)


def test_workdir_with_another_config_is_refused(tiny_run, capsys):
    code = cli.main(["run", TINY, "--workdir", str(tiny_run), "--no-progress",
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


@pytest.mark.parametrize("crash_epoch, stage", [(1, "dense"), (2, "retrain")])
def test_crash_inside_a_stage_resumes_to_the_same_result(crash_epoch, stage, tmp_path, monkeypatch,
                                                         capsys):
    """Kill a run at the start of 0-indexed epoch ``crash_epoch`` (the first such epoch is in the
    named stage; progress checkpoint every epoch), rerun: the tables equal those of an
    uninterrupted run, and finished work is not redone."""
    from tr_jax.training import loop
    args = ["run", TINY, "--no-progress", "--set", "run.checkpoint_every=1",
            "--set", "retrain.epochs=3"]
    assert cli.main([*args, "--workdir", str(tmp_path / "whole")]) == 0

    real = loop.Trainer.train_epoch
    calls = {"n": 0}

    def dying(self, groups, images, labels, epoch):
        if epoch == crash_epoch and calls["n"] == 0:
            calls["n"] += 1
            raise KeyboardInterrupt("simulated crash")
        return real(self, groups, images, labels, epoch)

    monkeypatch.setattr(loop.Trainer, "train_epoch", dying)
    wd = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        cli.main([*args, "--workdir", str(wd)])
    prog = f"{stage}_p0"  # the stage's first (here: only) program
    assert (wd / "stages" / f"{prog}_progress").is_dir() and not (wd / "cells.csv").exists()
    capsys.readouterr()
    assert cli.main([*args, "--workdir", str(wd)]) == 0
    out = capsys.readouterr().out
    assert f"{prog}: resuming from the checkpoint after epoch {crash_epoch}" in out
    assert stage == "dense" or "dense: done before" in out
    assert not (wd / "stages" / f"{prog}_progress").exists()
    for name in ("cells.csv", "results.csv"):
        assert (wd / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_bezier_and_hessian_stages_land_in_the_tables(tmp_path, capsys):
    wd = tmp_path / "bh"
    args = ["run", TINY, "--workdir", str(wd), "--no-progress", "--set", "temperatures=(2,)",
            "--set", "prune.densities=(0.3,)", "--set", "measure.bezier.enabled=True",
            "--set", "measure.hessian.enabled=True"]
    assert cli.main(args) == 0
    cells = pd.read_csv(wd / "cells.csv")
    for col in ("bezier_mc", "hessian_trace", "hessian_top_eigenvalue"):
        assert np.all(np.isfinite(cells[col])), col
    assert np.all(cells.hessian_trace > 0) and np.all(cells.hessian_top_eigenvalue > 0)
    res = pd.read_csv(wd / "results.csv")
    h = res[res.metric == "hessian_trace_probes"]
    assert len(h) == 2 and np.all(h.value == 4)  # max_probes 4 in chunks of 2, tol not reached
    assert (res.metric == "bezier_mc").sum() == 1
    names = {p.name for p in (wd / "figures").glob("*.png")}
    assert {"epochs_bezier_mc.png", "epochs_hessian_trace.png",
            "epochs_hessian_top_eigenvalue.png"} <= names
    capsys.readouterr()
    assert cli.main(args) == 0  # rerun: every stage loads, nothing recomputed
    out = capsys.readouterr().out
    assert "bezier: done before" in out and "hessian: done before" in out


def _numbers(path):
    """cells.csv without the config hash (a run with other progress settings hashes differently)."""
    return pd.read_csv(path).drop(columns=["config_hash"])


def test_sigkill_mid_run_then_rerun_gives_the_same_cells(tiny_run, tmp_path):
    """A real `tr-jax run` process is SIGKILLed right after its first progress checkpoint inside
    retraining; the rerun resumes there and ends with the uninterrupted run's numbers."""
    import os
    import signal
    import time

    wd = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tr_jax.cli", "run", TINY, "--workdir", str(wd), "--no-progress",
           "--set", "run.checkpoint_every=1"]
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}  # as in-process (conftest)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    marker = wd / "stages" / "retrain_p0_progress" / "_CHECKPOINT_METADATA"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (wd / "cells.csv").exists()
    assert cli.main(["run", TINY, "--workdir", str(wd), "--no-progress",
                     "--set", "run.checkpoint_every=1"]) == 0
    log = (wd / "log.txt").read_text()
    assert "dense: done before" in log and "retrain_p0: resuming from the checkpoint" in log
    pd.testing.assert_frame_equal(_numbers(wd / "cells.csv"), _numbers(tiny_run / "cells.csv"),
                                  check_exact=True)  # bit for bit


def test_four_simulated_devices_give_the_cells_of_one(tmp_path):
    """The members axis sharded over 4 CPU devices (dense: 1 member padded to 4; retrain: 4)
    reproduces the single-device run (strategy vmap in both). The partitioned programs differ from
    the single-device ones at float rounding level (~5e-7 on the dense weights); at lr 0.1 an
    untrained width-0.25 net amplifies that within one epoch, so this test trains at lr 0.02."""
    import os
    sets = ["--set", "temperatures=(1,)", "--set", "dense.epochs=1", "--set", "retrain.epochs=1",
            "--set", "measure.test_error_last_epochs=1", "--set", "measure.lmc_points=2",
            "--set", "prune.densities=(0.1, 0.5)", "--set", "run.members_strategy=vmap",
            "--set", "dense.lr=0.02", "--set", "retrain.lr=0.02"]
    outs = {}
    for n in (1, 4):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
               "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
        wd = tmp_path / f"dev{n}"
        r = subprocess.run([sys.executable, "-m", "tr_jax.cli", "run", TINY, "--workdir", str(wd),
                            "--no-progress", *sets], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"({n} device(s))" in r.stdout
        outs[n] = _numbers(wd / "cells.csv")
    num = outs[1].select_dtypes("number").columns
    np.testing.assert_allclose(outs[4][num], outs[1][num], rtol=1e-4, atol=1e-5)
