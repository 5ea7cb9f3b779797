"""One run per workdir: a lock file that names its holder, shared by all processes of one run.

``run.lock`` in the workdir holds a JSON record ``{host, pid, start, start_unix, run_id, argv}`` of
the run that owns the workdir. All processes of one distributed run share that one lock:

* the *primary* process (process 0) creates it. The record is written to a private temporary file
  first, which is then hard-linked to ``run.lock`` (``link`` fails when the name exists: the
  ``O_CREAT|O_EXCL`` of a complete file, so nobody ever reads a half-written record). The holder
  keeps an ``fcntl.flock`` on it for as long as it runs; the kernel drops that flock when the
  process dies, however it dies.
* the other processes of the same run recognise their run by its ``run_id`` (one string all
  processes agree on, see :func:`shared_run_id` / :func:`tr_jax.distributed.broadcast_str`) and
  join without taking anything.

Another run is refused at once with :class:`WorkdirLockedError`, naming the holder's host, pid
and start time. A lock left by a run that died is *stale* and is taken over:

* holder on this host: stale when its pid is gone (``os.kill(pid, 0)`` raises
  ``ProcessLookupError``) or its flock is free (the pid was reused by an unrelated process);
* holder on another host (a shared filesystem): stale when its heartbeat — the lock file's
  mtime, refreshed by the holder every ``heartbeat_s`` seconds from a daemon thread, and by
  :meth:`WorkdirLock.touch` — is older than ``stale_after_s`` (default 10 minutes,
  ``TR_JAX_LOCK_STALE_AFTER`` in the environment overrides it) and no flock is visible on it.

A takeover is atomic: the new record is renamed over the stale file (never delete-then-create),
while the taker holds the stale file's flock (so two takers on one host cannot both win), and
only after checking that ``run.lock`` is still the very file judged stale (same inode). The taker
then checks that ``run.lock`` is its own file; if another taker won in between, it starts over
and is refused by the winner.

Within one process the lock is re-entrant: taking it again for the same workdir with the same
``run_id``, or with none (the CLI and :func:`tr_jax.sweep.run` may both lock), nests.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import pathlib
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

LOCK_NAME = "run.lock"
STALE_AFTER_S = 600.0  # another host's lock is stale after this long without a heartbeat
log = logging.getLogger(__name__)

# this process's locks: lock file path -> [lock, nesting depth]
_HELD: dict[str, list] = {}
_HELD_MUTEX = threading.Lock()


class WorkdirLockedError(ValueError):
    """The workdir is in use by another run (or the lock could not be joined)."""


def make_run_id() -> str:
    """A new, unique run id: host, pid, start time and a random suffix."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{socket.gethostname()}:{os.getpid()}:{now}:{uuid.uuid4().hex[:12]}"


def shared_run_id() -> str:
    """One run id for all processes of a (possibly distributed) run: process 0 makes one with
    :func:`make_run_id` and broadcasts it. Every process must call it (a collective when the
    multi-process runtime is up, see :mod:`tr_jax.distributed`)."""
    from tr_jax import distributed
    return distributed.broadcast_str(make_run_id())


def stale_after_default() -> float:
    """Seconds after which another host's silent lock is stale (``TR_JAX_LOCK_STALE_AFTER``,
    else ``STALE_AFTER_S``)."""
    return float(os.environ.get("TR_JAX_LOCK_STALE_AFTER", STALE_AFTER_S))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (also when another user owns it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _try_flock(fd: int) -> bool:
    """Take an exclusive flock without waiting; False when another open file holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _read_record(fd: int) -> dict | None:
    """The JSON record of an open lock file, or None when unreadable."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = b""
        while chunk := os.read(fd, 65536):
            raw += chunk
        rec = json.loads(raw.decode())
        return rec if isinstance(rec, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _describe(rec: dict | None) -> str:
    if rec is None:
        return "an unknown holder (the lock file is unreadable)"
    return (f"host {rec.get('host', '?')}, pid {rec.get('pid', '?')}, started "
            f"{rec.get('start', '?')} (run {rec.get('run_id', '?')})")


class _Holder:
    """An open handle on the existing ``run.lock`` and what it says about its holder."""

    def __init__(self, path: pathlib.Path):
        self.fd = os.open(path, os.O_RDONLY)  # FileNotFoundError: the lock went away meanwhile
        self.inode = os.fstat(self.fd).st_ino
        self.record = _read_record(self.fd)
        self.flocked = False  # whether *we* hold its flock (taken in ``judge``)

    def close(self) -> None:
        os.close(self.fd)  # also drops our flock on it

    @property
    def host(self) -> str | None:
        return None if self.record is None else self.record.get("host")

    def heartbeat_age(self) -> float:
        return time.time() - os.fstat(self.fd).st_mtime

    def judge(self, stale_after_s: float) -> str:
        """``'live'``, ``'stale'``, or ``'busy'`` (dead holder, but its flock is held: another
        taker is at work, or a child the holder forked still has it open)."""
        self.flocked = _try_flock(self.fd)
        if self.host == socket.gethostname():
            pid = self.record.get("pid")
            alive = isinstance(pid, int) and pid_alive(pid)
            if self.flocked:
                return "stale"  # dead, or pid reused: the holder's flock died with it
            return "live" if alive else "busy"
        if self.flocked and self.heartbeat_age() > stale_after_s:
            return "stale"
        return "live"


class WorkdirLock:
    """The lock of a workdir, for one process of one run; a context manager.

    Args:
        path: the workdir (created if missing); the lock is ``path/run.lock``.
        run_id: the run's id, the same string in every process of the run
            (default: this process's current lock of the workdir if it holds one, i.e. nest;
            else a new one from :func:`make_run_id`; a distributed run must pass one, e.g.
            :func:`shared_run_id`).
        primary: whether this process creates the lock (process 0); the others only join, i.e.
            check that ``run.lock`` names their ``run_id`` (waiting up to ``join_timeout_s`` for
            it to appear on a shared filesystem).
        stale_after_s: another host's lock without a heartbeat for this long is stale.
        heartbeat_s: the holder refreshes the lock file's mtime this often (daemon thread);
            ``0`` = only on :meth:`touch`. Default: ``stale_after_s / 10``.
        echo: where to report a takeover (default: ``logging``).

    Raises :class:`WorkdirLockedError` (a ``ValueError``) on :meth:`acquire` when another run holds
    the workdir.
    """

    def __init__(self, path: str | os.PathLike, run_id: str | None = None, primary: bool = True,
                 stale_after_s: float | None = None, heartbeat_s: float | None = None,
                 join_timeout_s: float = 30.0, echo: Callable[[str], None] | None = None):
        self.workdir = pathlib.Path(path).absolute()
        self.path = self.workdir / LOCK_NAME
        self._run_id_given = bool(run_id)  # without one, nest in this process's lock if any
        self.run_id = run_id or make_run_id()
        self.primary = primary
        self.stale_after_s = stale_after_default() if stale_after_s is None else float(stale_after_s)
        self.heartbeat_s = self.stale_after_s / 10 if heartbeat_s is None else float(heartbeat_s)
        self.join_timeout_s = join_timeout_s
        self.echo = echo or log.warning
        self.took_over: dict | None = None  # the stale holder's record, when acquire took over
        self.record: dict | None = None  # what this process wrote into run.lock (primary)
        self._fd: int | None = None
        self._nested_in: WorkdirLock | None = None  # the lock this acquisition nests in
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- public --------------------------------------------------------------------------------
    def acquire(self) -> WorkdirLock:
        """Take (primary) or join (other processes) the workdir's lock; re-entrant per process."""
        key = str(self.path)
        with _HELD_MUTEX:
            held = _HELD.get(key)
            if held is not None and (held[0].run_id == self.run_id or not self._run_id_given):
                held[1] += 1
                self._nested_in = held[0]
                return held[0]
            if held is not None and self.primary and held[0].primary:
                raise WorkdirLockedError(self._refusal(held[0].record))
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self._take if self.primary else self._join)()
            _HELD[key] = [self, 1]
        if self._fd is not None and self.heartbeat_s > 0:
            self._beat = threading.Thread(target=self._heartbeat, name="tr_jax-lock-heartbeat",
                                          daemon=True)
            self._beat.start()
        return self

    def release(self) -> None:
        """Leave the lock; the last release in this process closes it, and the primary then
        removes ``run.lock`` (if it is still its own)."""
        with _HELD_MUTEX:
            held = _HELD.get(str(self.path))
            owner, self._nested_in = self._nested_in or self, None
            if held is None or held[0] is not owner:
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del _HELD[str(self.path)]
        owner._close()

    def _close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if self._is_ours():
                    self.path.unlink()
            os.close(self._fd)
            self._fd = None

    def touch(self) -> bool:
        """Refresh the heartbeat (the lock file's mtime); False when the lock is no longer ours
        (another run judged it stale and took it over)."""
        if self._fd is None:
            return True
        with contextlib.suppress(OSError):
            os.utime(self._fd)
        return self._is_ours()

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- primary ------------------------------------------------------------------------------
    def _record(self) -> dict:
        now = time.time()
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "start": datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
                .strftime("%Y-%m-%d %H:%M:%S UTC"),
                "start_unix": now, "run_id": self.run_id, "argv": sys.argv}

    def _new_file(self) -> tuple[int, pathlib.Path]:
        """Our record in a private temporary file, flocked, ready to become ``run.lock``."""
        tmp = self.path.with_name(f".{LOCK_NAME}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            self.record = self._record()
            os.write(fd, (json.dumps(self.record, indent=1) + "\n").encode())
            os.fsync(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return fd, tmp

    def _take(self) -> None:
        deadline = time.monotonic() + 3.0  # bounded wait on another taker ('busy')
        while True:
            fd, tmp = self._new_file()
            try:
                done = self._take_once(fd, tmp, deadline)
            except BaseException:
                os.close(fd)
                raise
            finally:
                tmp.unlink(missing_ok=True)
            if done:
                self._fd = fd
                return
            os.close(fd)
            time.sleep(0.05)

    def _take_once(self, fd: int, tmp: pathlib.Path, deadline: float) -> bool:
        """One attempt: link our file as ``run.lock``, else judge the holder and take over a
        stale lock. True when the lock is ours; False to try again; raises when refused."""
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            pass
        try:
            holder = _Holder(self.path)
        except FileNotFoundError:
            return False  # released meanwhile
        try:
            if holder.record is not None and holder.record.get("run_id") == self.run_id:
                raise WorkdirLockedError(f"{self.path} already names this run ({self.run_id}) but "
                                         "this process does not hold it: two primaries in one run?")
            verdict = holder.judge(self.stale_after_s)
            if verdict == "busy" and time.monotonic() < deadline:
                return False
            if verdict == "live":
                raise WorkdirLockedError(self._refusal(holder.record,
                                                       age=holder.heartbeat_age()))
            if os.stat(self.path).st_ino != holder.inode:
                return False  # someone replaced it meanwhile: look again
            os.rename(tmp, self.path)  # atomic replace of the stale file
        finally:
            holder.close()
        if not self._is_ours(fd):
            return False
        self.took_over = holder.record or {}
        self.echo(f"tr-jax: took over the stale lock of {self.workdir} from "
                  f"{_describe(holder.record)}: that run is gone")
        return True

    def _is_ours(self, fd: int | None = None) -> bool:
        fd = self._fd if fd is None else fd
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except OSError:
            return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.touch():
                self.echo(f"tr-jax: warning: {self.path} is no longer this run's lock (another "
                          "run took it over as stale); stop this run.")
                return

    def _refusal(self, rec: dict | None, age: float | None = None) -> str:
        host = (rec or {}).get("host", "?")
        pid = (rec or {}).get("pid", "?")
        other_host = host != socket.gethostname()
        why = (f"; its last heartbeat was {age:.0f} s ago, a lock from another host is taken over "
               f"after {self.stale_after_s:.0f} s without one" if other_host and age is not None
               else "")
        return (f"workdir {str(self.workdir)!r} is in use by another tr-jax run: "
                f"{_describe(rec)}{why}. Wait for it to finish, or stop it (kill {pid} on {host}) "
                f"and rerun this command: a lock whose run has died is taken over automatically. "
                f"Or use another --workdir. If you are sure no run uses this workdir, delete "
                f"{self.path}.")

    # -- other processes of the run -------------------------------------------------------------
    def _join(self) -> None:
        deadline = time.monotonic() + self.join_timeout_s
        rec = None
        while True:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                fd = None
            if fd is not None:
                rec = _read_record(fd)
                os.close(fd)
                if rec is not None and rec.get("run_id") == self.run_id:
                    return
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if rec is None:
            raise WorkdirLockedError(
                f"{self.path} did not appear within {self.join_timeout_s:.0f} s: process 0 of "
                f"this run (run {self.run_id}) has not locked the workdir, or the workdir is not "
                "on a filesystem shared by all processes of the run (it must be).")
        raise WorkdirLockedError(self._refusal(rec))


def _held_here(path: str | os.PathLike) -> bool:
    """Whether this process already holds (or has joined) the lock of this workdir."""
    with _HELD_MUTEX:
        return str(pathlib.Path(path).absolute() / LOCK_NAME) in _HELD


@contextlib.contextmanager
def workdir_lock(path: str | os.PathLike, run_id: str | None = None,
                 **kwargs) -> Iterator[WorkdirLock]:
    """Lock a workdir for this run, in every process of it; a context manager.

    With one process: :class:`WorkdirLock` ``(path, run_id, primary=True)``. With several
    (``jax.distributed`` up) it is a collective — every process must enter it: ``run_id``
    defaults to :func:`shared_run_id`; process 0 takes the lock and broadcasts the outcome, so a
    refusal is raised in every process (none is left waiting in a collective); then the others
    join. On a normal exit all processes meet at a barrier before process 0 removes the lock, so
    no process of the run is still writing when the workdir becomes free.
    """
    from tr_jax import distributed
    if distributed.process_count() == 1 or _held_here(path):  # (nested: no collective)
        with WorkdirLock(path, run_id, primary=True, **kwargs) as lk:
            yield lk
        return
    run_id = run_id or shared_run_id()
    lk = WorkdirLock(path, run_id, primary=distributed.is_primary(), **kwargs)
    error, failure = "", None
    if lk.primary:
        try:
            lk.acquire()
        except Exception as e:  # told to every process, then raised here as it is
            error, failure = f"process 0 could not lock the workdir: {e}", e
    error = distributed.broadcast_str(error[:1000])
    if failure is not None:
        raise failure
    if error:
        raise WorkdirLockedError(error)
    try:
        if not lk.primary:
            lk.acquire()
        distributed.barrier("tr_jax.workdir_lock")
        yield lk
        distributed.barrier("tr_jax.workdir_unlock")
    finally:
        lk.release()
