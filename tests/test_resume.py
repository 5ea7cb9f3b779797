"""Resuming and reliability of whole runs through the CLI on the SMALL config (tiny cut to one
temperature): determinism and resume, crashes inside a stage, real processes SIGKILLed anywhere, a
member alone against its group, a diverging member, corrupt stages, a full disk."""
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tr_jax import cli, hooks
from tr_jax.config import load_config

ROOT = pathlib.Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.py")


def _numbers(path):
    """cells.csv without the config hash (a run with other progress settings hashes differently)."""
    return pd.read_csv(path).drop(columns=["config_hash"])


#: the tiny config cut to one temperature (4 retrain members, 2 pairs) and 6 steps an epoch of
#: one step a call (cheap to compile in the subprocesses of the kill test), a progress checkpoint
#: every epoch: the reference run of the reliability tests below
SMALL = ["temperatures=(2,)", "run.checkpoint_every=1", "run.chunk_steps=1",
         "dense.batch_size=256", "retrain.batch_size=256"]


def _sets(overrides) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


#: the fault points of the workdir (tr_jax.hooks) that the kill test aims at
KILL_POINTS = ("save:written", "save:swapping", "chunk:written")
_POINTS: dict[str, list[tuple[str, str]]] = {}  # workdir -> the points its run passed, in order


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """An uninterrupted run of the SMALL config (the fault points it passes are recorded)."""
    wd = tmp_path_factory.mktemp("small") / "ref"
    seen = _POINTS.setdefault(str(wd), [])

    def record(point, info):
        if point in KILL_POINTS:
            seen.append((point, str(info["name"])))
    with hooks.added(record):
        assert cli.main(["run", TINY, "--workdir", str(wd), "--no-progress", *_sets(SMALL)]) == 0
    return wd


def test_other_seed_changes_numbers(small_run, tmp_path):
    wd = tmp_path / "c"
    assert cli.main(["run", TINY, "--workdir", str(wd), "--no-progress", *_sets(SMALL),
                     "--set", "seed=1"]) == 0
    a = pd.read_csv(small_run / "cells.csv")
    b = pd.read_csv(wd / "cells.csv")
    assert not np.allclose(a.cka, b.cka)


def _same_tables(reference: pathlib.Path, wd: pathlib.Path, extra=()) -> None:
    """cells.csv and results.csv of ``wd`` (the SMALL config + ``extra`` overrides) equal the
    reference's byte for byte, but for the config hash (``extra`` settings such as
    run.max_members change it, not the numbers)."""
    from tr_jax.config import config_hash
    ours = config_hash(load_config(TINY, [*SMALL, *extra]))
    theirs = config_hash(load_config(TINY, SMALL))
    for name in ("cells.csv", "results.csv"):
        assert (wd / name).read_text().replace(ours, theirs) == (reference / name).read_text(), name


@pytest.mark.parametrize("crash_call, stage", [(1, "dense"), (3, "retrain")])
def test_crash_inside_a_stage_resumes_to_the_same_result(crash_call, stage, small_run, tmp_path,
                                                         monkeypatch, capsys):
    """An exception at the start of epoch 1 of a stage (the SMALL config trains 2 dense epochs,
    then 2 retrain epochs; progress checkpoint every epoch), then a rerun: the tables equal the
    uninterrupted run's, and finished work is not redone."""
    from tr_jax.training import loop
    real = loop.Trainer.train_epoch
    calls = {"n": 0}

    def dying(self, groups, images, labels, epoch):
        calls["n"] += 1
        if calls["n"] == crash_call + 1:
            raise KeyboardInterrupt("simulated crash")
        return real(self, groups, images, labels, epoch)

    monkeypatch.setattr(loop.Trainer, "train_epoch", dying)
    wd = tmp_path / "crashed"
    args = ["run", TINY, "--no-progress", "--workdir", str(wd), *_sets(SMALL)]
    with pytest.raises(KeyboardInterrupt):
        cli.main(args)
    prog = f"{stage}_p0"  # the stage's first (here: only) program
    assert (wd / "stages" / f"{prog}_progress").is_dir() and not (wd / "cells.csv").exists()
    capsys.readouterr()
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert f"{prog}: resuming from the checkpoint after epoch 1" in out
    assert stage == "dense" or "dense: done before" in out
    assert not (wd / "stages" / f"{prog}_progress").exists()
    _same_tables(small_run, wd)


def _leftovers(wd: pathlib.Path) -> list[str]:
    """Half-written things (temporary files, checkpoint swaps, orbax temporaries) in a workdir."""
    return sorted(str(p.relative_to(wd)) for p in wd.rglob("*")
                  if p.name.startswith(".") or "orbax-checkpoint-tmp" in p.name)


def _plan_kills(points: list[tuple[str, str]], aims, rng) -> list[tuple[str, str, int]]:
    """One kill per aim ``(label, predicate(point, name))``, in order: ``(point, name, k)``, the
    k-th time the run reaches ``point`` for checkpoint or stage ``name``, drawn by ``rng`` among
    the ``points`` of the uninterrupted run. Each aim's point belongs to a name (a checkpoint, a
    chunked stage) whose first point comes after every point of the previous aim's name: the
    run killed there has not reached that name yet, and the rerun (which resumes after what is
    committed) reaches it exactly as the uninterrupted run does, so k counts the same. A choice
    is kept only when the later aims still have a point."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, (_, name) in enumerate(points):
        first.setdefault(name, i)
        last[name] = i

    def options(after: int, pred) -> list[int]:
        return [i for i, (p, n) in enumerate(points) if pred(p, n) and first[n] > after]

    def feasible(after: int, preds) -> bool:
        for pred in preds:
            opts = options(after, pred)
            if not opts:
                return False
            after = last[points[opts[0]][1]]
        return True

    plan, after = [], -1
    preds = [pred for _, pred in aims]
    for a, (label, pred) in enumerate(aims):
        opts = [i for i in options(after, pred) if feasible(last[points[i][1]], preds[a + 1:])]
        assert opts, f"no fault point for {label} in {points}"
        i = int(rng.choice(opts))
        point, name = points[i]
        plan.append((point, name, points[: i + 1].count((point, name))))
        after = last[name]
    return plan


def test_kill_anywhere_then_rerun_gives_the_same_tables(small_run, tmp_path):
    """Real `tr-jax run` processes on one workdir, each SIGKILLed at a fault point
    (``tr_jax.hooks``: a checkpoint written but not swapped in, between the two renames of a
    swap, a chunk record written but not renamed) drawn by a seeded generator among the points
    the uninterrupted run passes: in dense training, at a checkpoint swap, in retraining and in
    the measure stage. The kill lands at a named point, with a count, whatever the machine's
    speed. Each rerun resumes; the last one completes. The tables equal the uninterrupted
    run's byte for byte, nothing committed is computed twice (log.txt logs every commit) and
    nothing half-written is left. (tests/test_reliability.py dies at the other moments of
    checkpoint and table writes.)"""
    import os
    import re
    import signal

    measure = ("measure", "bezier", "hessian")
    aims = [  # (where, which points)
        ("dense training",  # before the stage's commit: the rerun resumes the program
         lambda p, n: n.startswith("dense_")),
        ("a checkpoint swap", lambda p, n: p == "save:swapping"),
        ("retraining", lambda p, n: n.startswith("retrain_")),
        ("measurement", lambda p, n: p == "chunk:written" or n in measure),
    ]
    plan = _plan_kills(_POINTS[str(small_run)], aims, np.random.default_rng(2023))
    wd = tmp_path / "killed"
    args = ["run", TINY, "--workdir", str(wd), "--no-progress", *_sets(SMALL)]
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",  # as in-process (conftest)
           # what one attempt compiled, the next loads instead of compiling it again
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    launcher = str(ROOT / "tests" / "_faulty_cli.py")
    for (where, _), (point, name, k) in zip(aims, plan):
        spec = f"{point}@{name}:{k}"
        proc = subprocess.Popen([sys.executable, launcher, "--kill-at", spec, "--", *args],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, (where, spec, proc.returncode,
                                                    err.decode()[-2000:])
    assert not (wd / "cells.csv").exists()
    assert cli.main(args) == 0
    _same_tables(small_run, wd)
    text = (wd / "log.txt").read_text()
    commits = re.findall(r"\] committed (.+)", text)
    assert len(commits) == len(set(commits)), f"committed twice: {commits}"
    # a checkpoint killed in its save is committed by the rerun's repair, which logs nothing
    killed = {name for point, name, _ in plan if point.startswith("save:")}
    assert {f"{s} (stage done)" for s in ("dense", "retrain", "measure")
            if s not in killed} <= set(commits), (plan, commits)
    assert "resuming" in text and "done before, loaded" in text
    assert _leftovers(wd) == []


def test_a_member_alone_equals_the_member_in_its_group(small_run, tmp_path):
    """run.max_members=1 (and density 0.5 only): each of the 2 retrain members is a program of
    its own; its numbers equal those it has in the reference's single 4-member program (exactly,
    under the CPU default 'loop' strategy; tests/test_training.py checks vmap/map groups against
    members alone within float tolerance)."""
    wd = tmp_path / "alone"
    sets = [*SMALL, "run.max_members=1", "prune.densities=(0.5,)", "run.checkpoint_every=0"]
    assert cli.main(["run", TINY, "--workdir", str(wd), "--no-progress", *_sets(sets)]) == 0
    assert "in 2 program(s)" in (wd / "log.txt").read_text()
    cols = ["stage", "temperature", "dense_seed", "density", "retrain_seed", "pair", "metric",
            "value", "sick"]
    ref = pd.read_csv(small_run / "results.csv")
    pd.testing.assert_frame_equal(pd.read_csv(wd / "results.csv")[cols],
                                  ref[ref.density.isin([0.5, 1.0])][cols].reset_index(drop=True),
                                  check_exact=True)


def test_a_diverging_member_is_flagged_and_the_sweep_goes_on(small_run, tmp_path):
    """knob lr with temperatures (0.1, 1e6), density 0.5: the dense member at lr 1e6 diverges
    (NaN weights), and so do the 2 retrain members pruned from it. They are flagged (results.csv
    `sick`, cells.csv `sick_members`, no regime), the run completes, and the healthy lr-0.1
    members have exactly the numbers of the reference's 2-epoch checkpoint at density 0.5 (the
    same dense seed, schedule and keys: a member does not depend on the rest of its sweep)."""
    wd = tmp_path / "sick"
    sets = [*SMALL[1:], "knob=lr", "temperatures=(0.1, 1e6)", "prune.densities=(0.5,)"]
    assert cli.main(["run", TINY, "--workdir", str(wd), "--no-progress", *_sets(sets)]) == 0
    res = pd.read_csv(wd / "results.csv")
    cells = pd.read_csv(wd / "cells.csv")
    assert res.sick.dtype == bool
    assert set(res[res.sick].temperature) == {1e6} and not res[res.temperature == 0.1].sick.any()
    assert (res.sick & (res.stage == "retrain") & (res.metric == "test_error")).sum() == 2
    hot, ok = cells[cells.temperature == 1e6], cells[cells.temperature == 0.1]
    assert list(hot.sick_members) == [2] and hot.regime.isna().all() and hot.lmc.isna().all()
    assert list(ok.sick_members) == [0] and ok.regime.notna().all()
    ref = pd.read_csv(small_run / "results.csv")
    cols = ["stage", "dense_seed", "retrain_seed", "pair", "metric", "value"]
    got = res[res.temperature == 0.1][cols].reset_index(drop=True)
    want = ref[ref.density.isin([0.5, 1.0])][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    ref_cells = pd.read_csv(small_run / "cells.csv")
    num = ["test_error", "lmc", "cka", "cka_logits", "loss_barrier", "dense_test_error"]
    np.testing.assert_array_equal(ok[num].to_numpy(), ref_cells[ref_cells.density == 0.5][num])
    assert "sick (diverged) members: 1 dense checkpoint(s), 2 retrained" in (
        wd / "log.txt").read_text()
    assert (wd / "figures" / "lr_test_error.png").stat().st_size > 0
    # the analysis API rebuilds the same cell means from results.csv, sick rows left out
    from tr_jax import regimes
    rebuilt = regimes.cells_from_results(res).sort_values(["temperature", "density"])
    np.testing.assert_allclose(rebuilt[num].to_numpy(float),
                               cells.sort_values(["temperature", "density"])[num].to_numpy(float),
                               rtol=1e-12, atol=0)


def _copy_run(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's failed read
def test_a_corrupt_stage_is_recomputed_with_a_warning(small_run, tmp_path, capsys):
    """A truncated checkpoint of a finished stage (here: dense) is not trusted: a warning names
    it, it is moved aside, the stage is recomputed; the tables do not change."""
    wd = _copy_run(small_run, tmp_path / "corrupt")
    stage = wd / "stages" / "dense"
    for p in stage.rglob("*"):
        if p.is_file() and not p.name.startswith("_") and p.name != "commit_success.txt":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    capsys.readouterr()
    assert cli.main(["run", TINY, "--workdir", str(wd), "--no-progress", *_sets(SMALL)]) == 0
    out = capsys.readouterr().out
    assert f"WARNING: checkpoint '{stage}' is unreadable" in out and "recomputing it" in out
    assert "dense_p0: 1 dense member(s)" in out and "retrain: done before" in out
    assert (wd / "stages" / "dense.corrupt").is_dir()
    _same_tables(small_run, wd)


def test_a_full_disk_mid_run_stops_cleanly_and_resumes(small_run, tmp_path, monkeypatch, capsys):
    """No space left while committing the dense stage (after its epoch-1 progress checkpoint; a
    stage of one program commits no separate program checkpoint):
    the run stops with an error that names the workdir and says to free space; everything
    committed before stays; the rerun resumes from epoch 1 and ends with the same tables."""
    import errno
    import shutil

    from tr_jax.sweep import store
    wd = _copy_run(small_run, tmp_path / "full")
    shutil.rmtree(wd / "stages" / "dense")
    real = store.ocp.StandardCheckpointer.save

    def full_disk(self, path, *a, **k):
        if pathlib.Path(path).name == ".dense.new":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *a, **k)

    monkeypatch.setattr(store.ocp.StandardCheckpointer, "save", full_disk)
    args = ["run", TINY, "--workdir", str(wd), "--no-progress", *_sets(SMALL)]
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"no space left on the disk of workdir '{wd}'" in err and "Free some space" in err
    assert sorted(p.name for p in (wd / "stages").iterdir()) == [
        "dense_p0_progress", "dense_p0_snap2", "measure", "retrain"]
    assert _leftovers(wd) == []
    monkeypatch.undo()
    assert cli.main(args) == 0
    assert "dense_p0: resuming from the checkpoint after epoch 1" in capsys.readouterr().out
    _same_tables(small_run, wd)
