"""One run per workdir (tr_jax.sweep.lock) and the console entry's exit codes (tr_jax.cli)."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from tr_jax import cli
from tr_jax.sweep import lock as lock_mod
from tr_jax.sweep.lock import LOCK_NAME, WorkdirLock, WorkdirLockedError

ROOT = pathlib.Path(__file__).parents[1]
LOCK_PY = pathlib.Path(lock_mod.__file__)
TINY = str(ROOT / "configs" / "tiny.py")
HOST = socket.gethostname()

# lock.py alone (no jax import): a holder process starts in milliseconds
_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("lock", sys.argv[1])
lock = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock)
go = sys.argv[5] if len(sys.argv) > 5 else None  # wait for this file: start together
while go and time.sleep(0.001) is None and not __import__("os").path.exists(go):
    pass
try:
    lk = lock.WorkdirLock(sys.argv[2], run_id=sys.argv[3]).acquire()
except lock.WorkdirLockedError:
    print("refused", flush=True); sys.exit(3)
print("locked", flush=True)
time.sleep(float(sys.argv[4]))
lk.release()
"""


def _holder(wd: pathlib.Path, run_id: str, hold_s: float = 60.0, go: str = "") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _HOLDER, str(LOCK_PY), str(wd), run_id,
                             str(hold_s), go], stdout=subprocess.PIPE, text=True)


def _wait_line(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """The holder's first line ('locked' / 'refused'), within timeout seconds."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        proc.kill()
        raise AssertionError(f"no line from the holder within {timeout} s")
    return proc.stdout.readline().strip()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=30)
    return p.pid


def _write_lock(wd: pathlib.Path, **rec) -> pathlib.Path:
    wd.mkdir(parents=True, exist_ok=True)
    rec = {"host": HOST, "pid": _dead_pid(), "start": "2026-01-01 00:00:00 UTC",
           "run_id": "old-run", **rec}
    path = wd / LOCK_NAME
    path.write_text(json.dumps(rec))
    return path


def test_live_holder_is_refused_at_once_then_killed_holder_is_taken_over(tmp_path):
    wd = tmp_path / "w"
    proc = _holder(wd, "run-A")
    try:
        assert _wait_line(proc) == "locked"
        rec = json.loads((wd / LOCK_NAME).read_text())
        assert (rec["host"], rec["pid"], rec["run_id"]) == (HOST, proc.pid, "run-A")
        t0 = time.monotonic()
        with pytest.raises(WorkdirLockedError) as e:
            WorkdirLock(wd, "run-B").acquire()
        assert time.monotonic() - t0 < 2.0  # at once, no waiting
        msg = str(e.value)
        for part in (f"host {HOST}", f"pid {proc.pid}", f"started {rec['start']}", "run-A",
                     f"kill {proc.pid}", str(wd / LOCK_NAME)):
            assert part in msg, msg
        proc.kill()  # SIGKILL: no cleanup, the lock file stays
        proc.wait(timeout=30)
        assert (wd / LOCK_NAME).exists()
        lines = []
        with WorkdirLock(wd, "run-B", echo=lines.append) as lk:
            assert lk.took_over["pid"] == proc.pid
            assert len(lines) == 1 and "took over the stale lock" in lines[0], lines
            assert f"pid {proc.pid}" in lines[0]
            assert json.loads((wd / LOCK_NAME).read_text())["run_id"] == "run-B"
        assert not (wd / LOCK_NAME).exists()
        assert sorted(p.name for p in wd.iterdir()) == []  # no temporary left
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_same_run_joins_other_runs_are_refused_release_removes(tmp_path):
    wd = tmp_path / "w"
    with WorkdirLock(wd, "run-A", heartbeat_s=0) as lk:
        assert lk.took_over is None and (wd / LOCK_NAME).exists()
        # another process of the same distributed run (here: a non-primary lock object)
        with WorkdirLock(wd, "run-A", primary=False):
            pass
        with pytest.raises(WorkdirLockedError, match="in use by another tr-jax run.*run-A"):
            WorkdirLock(wd, "run-B", primary=False, join_timeout_s=0.2).acquire()
        with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
            WorkdirLock(wd, "run-B").acquire()  # a second run in this very process
        with WorkdirLock(wd, "run-A"):  # re-entrant (the CLI and sweep.run both lock)
            pass
        assert (wd / LOCK_NAME).exists()  # still held by the outer one
    assert not (wd / LOCK_NAME).exists()
    with pytest.raises(WorkdirLockedError, match="did not appear.*shared by all processes"):
        WorkdirLock(wd, "run-A", primary=False, join_timeout_s=0.2).acquire()
    with WorkdirLock(wd, "run-C", heartbeat_s=0):  # free again
        pass


def test_pid_reused_flock_free_is_stale(tmp_path):
    """The recorded pid is alive (this process) but nobody holds the flock: the holder died and
    its pid was reused."""
    wd = tmp_path / "w"
    _write_lock(wd, pid=os.getpid())
    with WorkdirLock(wd, "run-B", heartbeat_s=0, echo=lambda s: None) as lk:
        assert lk.took_over["run_id"] == "old-run"


def test_other_host_lock_is_taken_over_only_without_heartbeat(tmp_path):
    wd = tmp_path / "w"
    path = _write_lock(wd, host="elsewhere.example", pid=12345)
    with pytest.raises(WorkdirLockedError) as e:
        WorkdirLock(wd, "run-B", stale_after_s=60).acquire()
    for part in ("host elsewhere.example", "pid 12345", "last heartbeat was 0 s ago", "after 60 s"):
        assert part in str(e.value), str(e.value)
    old = time.time() - 120
    os.utime(path, (old, old))
    with WorkdirLock(wd, "run-B", stale_after_s=60, heartbeat_s=0, echo=lambda s: None) as lk:
        assert lk.took_over["host"] == "elsewhere.example"


def test_heartbeat_refreshes_the_lock_file(tmp_path):
    wd = tmp_path / "w"
    with WorkdirLock(wd, "run-A", heartbeat_s=0.05) as lk:
        old = time.time() - 1000
        os.utime(lk.path, (old, old))
        deadline = time.time() + 10
        while lk.path.stat().st_mtime < old + 500 and time.time() < deadline:
            time.sleep(0.02)
        assert lk.path.stat().st_mtime > old + 500
        assert lk.touch()


def test_concurrent_takers_of_a_stale_lock_one_wins(tmp_path):
    wd = tmp_path / "w"
    _write_lock(wd)  # a dead holder on this host
    go = tmp_path / "go"
    procs = [_holder(wd, f"run-{i}", hold_s=3.0, go=str(go)) for i in range(4)]
    try:
        time.sleep(0.5)  # all started and polling
        go.touch()
        lines = [_wait_line(p) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)
    assert sorted(lines) == ["locked", "refused", "refused", "refused"], lines


def _console(monkeypatch, main) -> int:
    """cli._console_entry with main replaced; returns the code it hard-exits (or exits) with."""
    class _Exit(BaseException):
        pass

    def hard_exit(code):
        raise _Exit(code)

    monkeypatch.setattr(cli, "main", main)
    monkeypatch.setattr(cli, "_hard_exit", hard_exit)
    with pytest.raises((_Exit, SystemExit)) as e:
        cli._console_entry()
    return e.value.args[0] if isinstance(e.value, _Exit) else e.value.code


def test_console_entry_exit_codes(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    def broken():
        raise RuntimeError("boom")

    assert _console(monkeypatch, interrupted) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert _console(monkeypatch, broken) == 2
    assert "tr-jax: error: unexpected RuntimeError: boom" in capsys.readouterr().err
    assert _console(monkeypatch, lambda: 2) == 2
    assert _console(monkeypatch, lambda: 0) == 0


def test_tr_jax_run_on_a_locked_workdir_exits_2_despite_a_live_thread(tmp_path):
    """A real console-script process with a non-daemon thread alive (as orbax's background save
    thread can be) is refused, names the holder and exits 2 promptly."""
    wd = tmp_path / "w"
    script = ("import sys, threading, time\n"
              "threading.Thread(target=time.sleep, args=(600,), daemon=False).start()\n"
              f"sys.argv = ['tr-jax', 'run', {TINY!r}, '--workdir', {str(wd)!r}, '--no-progress']\n"
              "from tr_jax.cli import _console_entry\n_console_entry()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with WorkdirLock(wd, "holder-run", heartbeat_s=0):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    for part in ("tr-jax: error: workdir", "in use by another tr-jax run", f"host {HOST}",
                 f"pid {os.getpid()}", "holder-run"):
        assert part in proc.stderr, proc.stderr[-3000:]
    assert not (wd / "config.json").exists()  # refused before touching the workdir


def test_a_taker_at_work_is_waited_for_not_raced(tmp_path):
    """A dead holder whose flock is held (another process is taking the lock over): the next
    taker waits, then sees the winner's lock and is refused; it does not rename over it."""
    import fcntl
    import threading
    wd = tmp_path / "w"
    stale = _write_lock(wd)
    fd = os.open(stale, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the other taker, mid-takeover
    winner = tmp_path / "winner.json"
    winner.write_text(json.dumps({"host": HOST, "pid": os.getpid(), "start": "now",
                                  "run_id": "winner"}))
    wfd = os.open(winner, os.O_RDONLY)
    fcntl.flock(wfd, fcntl.LOCK_EX)  # the winner's live flock

    def win():
        time.sleep(0.3)
        os.rename(winner, stale)
        os.close(fd)

    t = threading.Thread(target=win)
    t.start()
    try:
        with pytest.raises(WorkdirLockedError, match="winner"):
            WorkdirLock(wd, "late", heartbeat_s=0).acquire()
    finally:
        t.join(timeout=10)
        os.close(wfd)


def test_workdir_lock_nests_without_a_run_id(tmp_path):
    from tr_jax.sweep.lock import workdir_lock
    wd = tmp_path / "w"
    with workdir_lock(wd, heartbeat_s=0) as outer:
        with workdir_lock(wd) as inner:  # e.g. sweep.run inside the CLI's lock
            assert inner is outer
        assert (wd / LOCK_NAME).exists()
        with pytest.raises(WorkdirLockedError):
            WorkdirLock(wd, "another-run").acquire()
    assert not (wd / LOCK_NAME).exists()
