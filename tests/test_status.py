"""`tr-jax status`: hand-built workdirs (each field and the text), then a real run, seen live and
after a SIGKILL."""
import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from tr_jax import cli
from tr_jax.config import load_config, to_json
from tr_jax.errors import UserError
from tr_jax.sweep import status as status_fn
from tr_jax.sweep.lock import LOCK_NAME, WorkdirLock
from tr_jax.sweep.status import format_status, status, watch

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.py"
HOST = socket.gethostname()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _workdir(tmp_path: pathlib.Path, log=(), metrics=(), stages=(), tail: str = "") -> pathlib.Path:
    """A fake workdir: tiny's config.json, log.txt lines, metrics.jsonl records (plus a partial
    last line ``tail``) and committed checkpoints under stages/."""
    wd = tmp_path / "w"
    wd.mkdir()
    (wd / "config.json").write_text(to_json(load_config(TINY)))
    (wd / "log.txt").write_text("".join(line + "\n" for line in log))
    if metrics or tail:
        (wd / "metrics.jsonl").write_text(
            "".join(json.dumps(m) + "\n" for m in metrics) + tail)
    for name in stages:
        d = wd / "stages" / name
        d.mkdir(parents=True)
        (d / "_CHECKPOINT_METADATA").write_text("{}")
    return wd


def _epoch(program, epoch, epochs, losses, wall=2.0, t=None, stage=None):
    n = len(losses)
    return {"t": t or time.time(), "kind": "epoch", "stage": stage or program.split("_")[0],
            "program": program, "epoch": epoch, "epochs": epochs, "wall_s": wall,
            "member_steps_s": 25.0, "images_s": 6400.0,
            "members": {"member": list(range(n)), "dense_seed": [1] * n,
                        "temperature": [1] * n, "density": [0.1] * n, "retrain_seed": [1] * n,
                        "train_loss": losses, "train_error": [0.5] * n, "test_error": [None] * n}}


def _write_stale_lock(wd: pathlib.Path, **rec) -> None:
    rec = {"host": HOST, "pid": _dead_pid(), "start": "2026-01-01 00:00:00 UTC",
           "start_unix": time.time() - 100, "run_id": "dead-run", "argv": ["tr-jax"], **rec}
    (wd / LOCK_NAME).write_text(json.dumps(rec))


# -- hand-built workdirs ------------------------------------------------------------------------
def test_live_holder_metrics_position_throughput_eta_and_sick(tmp_path):
    log = ["[10:00:00] tr_jax 0.3.0: config 'tiny' (hash x) on cpu",
           "[10:00:05] dense_p0: 1 dense member(s) x 2 epochs (10 steps, batch 256)",
           "[10:00:09] committed dense (stage done)",
           "[10:00:09] prune: 2 dense checkpoint(s) x 2 densities (uniform magnitude), on device",
           "[10:00:09] retrain (lr_rewinding): 8 members ... in 1 program(s) x 2 epochs"]
    metrics = [_epoch("dense_p0", 1, 2, [2.3]), _epoch("dense_p0", 2, 2, [2.1]),
               # sick: member 2 (null: NaN as JSON writes it) and member 4 (an inf that slipped)
               _epoch("retrain_p0", 1, 2, [1.0, 1.1, None, 1.0, 1.2, 1.0, 0.9, 1.0], wall=3.0)]
    wd = _workdir(tmp_path, log, metrics, stages=["dense"],
                  tail='{"t": 1, "kind": "epoch", "sta')  # a line still being written
    text_metrics = (wd / "metrics.jsonl").read_text().replace("1.2, 1.0, 0.9", "Infinity, 1.0, 0.9")
    (wd / "metrics.jsonl").write_text(text_metrics)
    with WorkdirLock(wd, heartbeat_s=0):
        st = status(wd)
        assert st["state"] == "running"
        h = st["holder"]
        assert (h["state"], h["host"], h["pid"]) == ("alive", HOST, os.getpid())
        assert 0 <= h["heartbeat_age_s"] < 30 and h["start"]
        pos = st["position"]
        assert (pos["stage"], pos["program"], pos["unit"], pos["done"], pos["total"],
                pos["source"]) == ("retrain", "retrain_p0", "epoch", 1, 2, "metrics.jsonl")
        assert st["throughput"]["member_steps_s"] == 25.0
        assert st["throughput"]["images_s"] == 6400.0
        # one epoch left at 3 s, no later retrain program; then measure (not timed) remains
        assert st["eta"]["stage_s"] == pytest.approx(3.0)
        assert st["eta"]["run_s"] is None and st["eta"]["run_at_least_s"] == pytest.approx(3.0)
        assert "measure" in st["eta"]["note"]
        assert st["sick"]["count"] == 2
        assert sorted(m["member"] for m in st["sick"]["members"]) == [2, 4]
        assert st["committed"] == ["dense"] and "rerun" not in st
        assert st["last_log"].startswith("[10:00:09] retrain (lr_rewinding)")
        text = format_status(st)
        assert "state: running" in text
        assert f"holder: alive - host {HOST}, pid {os.getpid()}" in text
        assert "stage under way: retrain / retrain_p0: epochs 1/2 done (from metrics.jsonl)" in text
        assert "25 member-steps/s, 6400 images/s, 3 s/epoch (from metrics.jsonl)" in text
        assert "ETA: stage 3s, run unknown (at least 3s)" in text
        assert "sick members so far: 2 (retrain member 2, retrain member 4)" in text
        assert "last log line: [10:00:09] retrain" in text
        json.dumps(st)  # JSON-able
    assert math.isfinite(st["time"])


def test_the_log_is_ahead_of_metrics(tmp_path):
    # metrics.jsonl is flushed at progress checkpoints; the log's progress lines come at once
    log = ["[10:00:09] retrain (lr_rewinding): 2 members in 1 program(s) x 4 epochs",
           "[10:00:20] retrain_p0: epoch 3/4, 40 member-steps/s, 9000 images/s, ETA stage 5s"]
    metrics = [_epoch("retrain_p0", 1, 4, [1.0, 1.0], wall=9.0),
               _epoch("retrain_p0", 2, 4, [1.0, 1.0], wall=3.0)]
    wd = _workdir(tmp_path, log, metrics, stages=["dense"])
    with WorkdirLock(wd, heartbeat_s=0):
        st = status(wd)
    pos = st["position"]
    assert (pos["program"], pos["done"], pos["total"], pos["source"]) == (
        "retrain_p0", 3, 4, "log.txt")
    tp = st["throughput"]
    assert (tp["member_steps_s"], tp["images_s"], tp["source"]) == (40.0, 9000.0, "log.txt")
    assert st["eta"]["stage_s"] == pytest.approx(3.0)  # 1 epoch x 3 s (epoch 1 compiled)
    assert "throughput (retrain_p0 epoch 3): 40 member-steps/s, 9000 images/s (from log.txt)" \
        in format_status(st)


def test_chunk_lines_give_the_measure_stage_and_its_eta(tmp_path):
    metrics = [_epoch("retrain_p0", 2, 2, [1.0])] + [
        {"t": time.time(), "kind": "chunk", "stage": "measure", "program": "outputs",
         "chunk": c, "chunks": 5, "wall_s": 4.0, "units": 2} for c in (1, 2)]
    log = ["[10:00:09] committed retrain (stage done)",
           "[10:00:10] measure: LMC (3 points) and CKA (256 images) for 4 pairs"]
    wd = _workdir(tmp_path, log, metrics, stages=["dense", "retrain"])
    with WorkdirLock(wd, heartbeat_s=0):
        st = status(wd)
    pos = st["position"]
    assert (pos["stage"], pos["unit"], pos["done"], pos["total"]) == ("measure", "chunk", 2, 5)
    # tiny: bezier and hessian off, so the measure stage is the last one
    assert st["eta"]["stage_s"] == pytest.approx(12.0)
    assert st["eta"]["run_s"] == pytest.approx(12.0)
    assert "stage under way: measure / outputs: chunks 2/5 done" in format_status(st)


def test_without_metrics_the_log_gives_the_stage(tmp_path):
    log = ["[10:00:00] tr_jax 0.3.0: config 'tiny' (hash x) on cpu",
           "[10:00:05] dense_p0: 1 dense member(s) x 2 epochs (10 steps, batch 256)",
           "[10:00:07] committed dense_p0_progress after epoch 1"]
    wd = _workdir(tmp_path, log)
    with WorkdirLock(wd, heartbeat_s=0):
        st = status(wd)
    assert (st["position"]["stage"], st["position"]["program"]) == ("dense", "dense_p0")
    assert st["position"]["source"] == "log.txt"
    assert st["throughput"] is None and st["sick"]["count"] == 0
    assert st["eta"]["stage_s"] is None
    text = format_status(st)
    assert "stage under way: dense / dense_p0 (from log.txt)" in text
    assert "ETA: stage unknown, run unknown" in text


def test_stale_lock_is_killed_and_says_what_a_rerun_does(tmp_path):
    log = ["[10:00:05] dense_p0: 1 dense member(s) x 2 epochs",
           "[10:00:07] committed dense_p0_snap1 (snapshot)",
           "[10:00:09] committed dense (stage done)",
           "[10:00:09] retrain (lr_rewinding): 8 members in 1 program(s) x 2 epochs",
           "[10:00:12] committed retrain_p0_progress after epoch 1"]
    wd = _workdir(tmp_path, log, [_epoch("retrain_p0", 1, 2, [1.0, 1.0])],
                  stages=["retrain_p0_progress"])
    # dense: a swap killed half way (the new version committed, not yet renamed in place)
    new = wd / "stages" / ".dense.new"
    new.mkdir()
    (new / "_CHECKPOINT_METADATA").write_text("{}")
    _write_stale_lock(wd)
    st = status(wd)
    assert st["state"] == "killed" and st["holder"]["state"] == "stale"
    assert st["committed"] == ["dense", "retrain_p0_progress"]
    rr = st["rerun"]
    assert rr["load"] == ["dense"]
    assert rr["resumes"] == [{"program": "retrain_p0", "after_epoch": 1, "epochs": 2}]
    assert rr["remaining"] == ["retrain", "measure", "tables"]
    text = format_status(st)
    assert "state: not running and not finished (killed" in text
    assert "holder: stale" in text and "is gone on this host" in text
    assert "stage last seen: retrain / retrain_p0: epochs 1/2 done" in text
    assert "ETA" not in text
    assert "  load: dense" in text
    assert "  retrain_p0 resumes after epoch 1 of 2" in text
    assert "  remaining: retrain, measure, tables" in text


def test_chunk_records_and_no_lock(tmp_path):
    wd = _workdir(tmp_path, ["[10:00:09] committed retrain (stage done)"],
                  stages=["dense", "retrain"])
    d = wd / "stages" / "outputs.chunks"
    d.mkdir()
    for lo, hi in ((0, 2), (2, 4)):
        (d / f"{lo:09d}_{hi:09d}.npz").write_bytes(b"")
    st = status(wd)
    assert st["holder"]["state"] == "none" and st["state"] == "killed"
    assert st["position"]["stage"] == "measure"
    assert st["rerun"]["load"] == ["dense", "retrain"]
    assert st["rerun"]["chunks"] == [{"stage": "measure", "records": "outputs", "items_done": 4}]
    assert st["rerun"]["remaining"] == ["measure", "tables"]
    text = format_status(st)
    assert "holder: none (no run.lock)" in text
    assert "measure resumes with 4 item(s) of its outputs records done" in text


def test_finished_workdir(tmp_path):
    wd = _workdir(tmp_path, ["[10:00:30] wrote cells.csv, results.csv, 9 figures"],
                  stages=["dense", "retrain", "measure"])
    (wd / "cells.csv").write_text("a\n1\n")
    st = status(wd)
    assert st["state"] == "finished" and "rerun" not in st
    text = format_status(st)
    assert "state: finished" in text and "holder: none" in text
    # another host's lock without a heartbeat for long: stale, the run still finished
    _write_stale_lock(wd, host="elsewhere.example")
    os.utime(wd / LOCK_NAME, (time.time() - 4000, time.time() - 4000))
    st = status(wd)
    assert st["holder"]["state"] == "stale" and st["state"] == "finished"
    os.utime(wd / LOCK_NAME)  # a fresh heartbeat from another host: alive
    assert status(wd)["holder"]["state"] == "alive"


def test_errors_and_cli(tmp_path, capsys):
    with pytest.raises(UserError, match="does not exist"):
        status(tmp_path / "nope")
    with pytest.raises(UserError, match="holds no tr-jax run"):
        status(tmp_path)
    assert cli.main(["status", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tr-jax: error: workdir") and err.count("\n") == 1
    wd = _workdir(tmp_path, ["[10:00:00] x"])
    assert cli.main(["status", str(wd), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["state"] == "killed" and out["workdir"] == str(wd)
    assert status_fn is status


def test_watch_stops_when_not_running_or_after_count(tmp_path, capsys):
    wd = _workdir(tmp_path, ["[10:00:00] x"])
    printed, slept = [], []
    with WorkdirLock(wd, heartbeat_s=0):
        st = watch(wd, 0.01, count=3, echo=printed.append, sleep=slept.append)
    assert st["state"] == "running" and len(printed) == 3 + 2 and len(slept) == 2
    printed.clear()
    assert watch(wd, 0.01, echo=printed.append, sleep=slept.append)["state"] == "killed"
    assert len(printed) == 1  # not running: one print, then stop

    def interrupt(_):
        raise KeyboardInterrupt
    with WorkdirLock(wd, heartbeat_s=0):
        assert watch(wd, 5, echo=printed.append, sleep=interrupt)["state"] == "running"
        assert cli.main(["status", str(wd), "--watch", "0.01", "--watch-count", "2"]) == 0
    assert capsys.readouterr().out.count("state: running") == 2


# -- a real run: live, then killed --------------------------------------------------------------
def test_real_run_live_then_killed(tmp_path):
    """A real run, seen live during its dense stage, then SIGKILLed by a fault point
    (``tr_jax.hooks``) once the retrain stage's checkpoint is written, not yet swapped in (its
    progress checkpoint after epoch 1 committed and logged before): the status counts the stage
    as done, as the rerun's repair does, and the rerun does what the status says."""
    wd = tmp_path / "run"
    script = pathlib.Path(sys.executable).parent / "tr-jax"  # the console script, as a user runs it
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "tr_jax.cli"]
    args = ["run", str(TINY), "--workdir", str(wd), "--no-progress", "--set",
            "run.checkpoint_every=1"]
    cmd = exe + args
    faulty = [sys.executable, str(ROOT / "tests" / "_faulty_cli.py"),
              "--kill-at", "save:written@retrain:1", "--"]
    out = open(tmp_path / "run.out", "w")
    proc = subprocess.Popen(faulty + args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    live = None
    try:
        deadline = time.monotonic() + 240
        log = wd / "log.txt"
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text() if log.exists() else ""
            if live is None and "dense_p0: " in text:
                live = status(wd)  # (c) while the run is alive
            time.sleep(0.1)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, (tmp_path / "run.out").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        out.close()
    assert live is not None, "the run never started its dense stage"
    assert live["state"] == "running" and live["holder"]["state"] == "alive"
    assert live["holder"]["pid"] == proc.pid and live["holder"]["host"] == HOST
    assert live["position"]["stage"] in ("dense", "retrain")
    assert f"pid {proc.pid}" in format_status(live)

    st = status(wd)  # (b) after the kill
    assert st["state"] == "killed" and st["holder"]["state"] == "stale"
    assert st["rerun"]["load"][:1] == ["dense"]
    assert st["position"]["stage"] == "retrain"
    text = format_status(st)
    assert "  load: dense" in text
    assert "retrain" in st["committed"] and st["rerun"]["load"][:2] == ["dense", "retrain"]
    assert st["rerun"]["resumes"] == [] and "resumes after" not in text
    assert st["rerun"]["remaining"] == ["measure", "tables"]
    # the rerun does what the status said
    before = (wd / "log.txt").read_text()
    try:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                       timeout=240, check=True)
    except subprocess.TimeoutExpired:  # run() has killed it
        pytest.fail("the rerun did not finish within 240 s")
    rerun_log = (wd / "log.txt").read_text()[len(before):]
    assert "dense: done before, loaded" in rerun_log
    assert "retrain: done before, loaded" in rerun_log
    done = status(wd)
    assert done["state"] == "finished" and done["holder"]["state"] == "none"
    assert "state: finished" in format_status(done)
