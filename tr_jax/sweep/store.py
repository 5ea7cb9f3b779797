"""A run directory: its config, one orbax checkpoint per finished stage, and atomic writes.

Every write is atomic, so a run killed at any moment (SIGKILL, power loss, a full disk) leaves the
workdir in a state it resumes from:

* a checkpoint is written by orbax into ``stages/.{name}.new`` (orbax itself writes a temporary
  folder and renames it on commit), then swapped in: the previous version is renamed to
  ``stages/.{name}.old``, the new one to ``stages/{name}``, the old one deleted. A run killed
  anywhere in between is repaired on the next access: a committed ``.new`` is put in place, else
  the old version stays (or is put back), so a checkpoint is never lost while it is replaced and
  a fully written one is never recomputed;
* tables and text files are written to a temporary file in the same folder, then renamed over
  the destination (:func:`atomic_write_text`); figures likewise (``plots.save_figure``).

A stage is done when its checkpoint is committed. A checkpoint that is committed but unreadable
(truncated, corrupted, written by an incompatible orbax) is not trusted: :meth:`Workdir.restore`
logs a warning, moves it aside to ``stages/{name}.corrupt`` and reports it absent, so the stage is
recomputed (:meth:`Workdir.load` raises :class:`CorruptCheckpointError` naming the folder instead).

A workdir belongs to one config and one tr_jax major.minor version (``tr_jax_version.json``):
another config is refused with the keys that differ, another version with both versions named.
Running out of disk space raises :class:`DiskFullError` naming the workdir; the state before the
failed write stays intact and resumable.
"""
from __future__ import annotations

import errno
import io
import json
import os
import pathlib
import shutil
import signal
import tempfile
import time
from typing import Any, Callable

import numpy as np
import orbax.checkpoint as ocp

from tr_jax import sharding

VERSION_FILE = "tr_jax_version.json"
CHUNKS = ".chunks"  # suffix of a stage's folder of chunk records
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "enospc")


class DiskFullError(ValueError, OSError):
    """A write into the workdir failed for lack of disk space (errno ENOSPC / EDQUOT)."""

    errno = errno.ENOSPC


class CorruptCheckpointError(ValueError):
    """A committed checkpoint could not be read back (``path``: its folder, ``detail``: why)."""

    def __init__(self, path: pathlib.Path, detail: str):
        self.path, self.detail = path, detail
        super().__init__(f"checkpoint {str(path)!r} is unreadable ({detail}). Delete that folder "
                         "and rerun: the stage is recomputed.")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


GROWN = "grown.json"  # the config of the finished run a grown run extends
GROWN_SUFFIX = "@grown"
GROWN_STAGES = ("dense", "retrain", "measure", "bezier", "hessian")
#: config keys a finished sweep may grow along (each new list a superset of the old one; with
#: the epochs knob, ``dense.epochs`` may grow too, for later temperature checkpoints)
GROW_KEYS = ("temperatures", "prune.densities", "dense.seeds", "retrain.seeds")


def growth(old: dict[str, Any], new: dict[str, Any], diff: list[str]) -> dict[str, list] | None:
    """What a config adds to a finished one (``{key: added values}``), or None when it changes
    anything else (flat configs; ``diff`` the keys whose values differ). ``name`` may change."""
    added = {}
    for k in diff:
        if k == "name":
            continue
        if k == "dense.epochs" and old.get("knob") == "epochs":  # a longer run, same schedule
            if new.get(k, 0) < old.get(k, 0):
                return None
            added[k] = [new[k]]
            continue
        if k not in GROW_KEYS:
            return None
        o, n = list(old.get(k) or []), list(new.get(k) or [])
        if not set(o) <= set(n):
            return None
        added[k] = [v for v in n if v not in o]
    return added or None


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def _is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it was raised from) says the disk is full: an OSError with
    errno ENOSPC/EDQUOT, or — tensorstore and orbax's background threads re-raise other types — a
    message that says so."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return True
        if any(t in str(e).lower() for t in _DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _disk_full(workdir: pathlib.Path, what: str, e: BaseException) -> DiskFullError:
    return DiskFullError(
        f"no space left on the disk of workdir {str(workdir)!r} while writing {what} ({e}). Free "
        "some space (or copy the workdir to a larger disk) and rerun the same command: the state "
        "before this write is intact and the run resumes from its last committed checkpoint.")


def _dir_bytes(d: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is unreadable ({e}): this is not a tr_jax workdir, or it "
                         "was damaged. Use another --workdir (or delete this one to start "
                         "over).") from e


_FAULTS: dict[str, int] = {}


def fault_point(point: str, name: str = "") -> None:
    """Fault injection for the kill-anywhere tests: with ``TR_JAX_KILL_AT=point:n`` (or
    ``point@name:n``, counting only the writes of checkpoint ``name``) in the environment, the
    process SIGKILLs itself the n-th time it reaches ``point``. Points: ``save:written`` (a
    checkpoint is written but not yet swapped in), ``save:swapping`` (the old version moved aside,
    the new one not yet in place), ``text:written`` (a table written to its temporary file, not
    yet renamed), ``chunk:written`` (a chunk record written, not yet renamed). A no-op without
    the variable."""
    spec = os.environ.get("TR_JAX_KILL_AT")
    if not spec:
        return
    where, _, n = spec.rpartition(":")
    where, _, only = where.partition("@")
    if where != point or (only and only != name):
        return
    _FAULTS[spec] = _FAULTS.get(spec, 0) + 1
    if str(_FAULTS[spec]) == n:
        os.kill(os.getpid(), signal.SIGKILL)


class Workdir:
    def __init__(self, path: str | os.PathLike, config_json: str, version: str | None = None):
        if version is None:
            from tr_jax import __version__ as version
        self.path = pathlib.Path(path).absolute()
        self.version = str(version)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if _is_disk_full(e):
                raise _disk_full(self.path, "the workdir", e) from e
            raise
        cfg_file, ver_file = self.path / "config.json", self.path / VERSION_FILE
        if cfg_file.exists():
            if ver_file.exists():
                old_version = _read_json(ver_file).get("tr_jax_version", "?")
                if _major_minor(old_version) != _major_minor(self.version):
                    raise ValueError(
                        f"workdir {str(self.path)!r} was written by tr_jax {old_version}, this is "
                        f"tr_jax {self.version}: its checkpoints and tables may not be compatible. "
                        f"Use another --workdir for tr_jax {self.version} (or delete this one to "
                        f"start over), or finish it with tr_jax "
                        f"{'.'.join(_major_minor(old_version))}.x.")
            old = _read_json(cfg_file)
            new = json.loads(config_json)
            if old != new:
                fo, fn = _flat(old), _flat(new)
                diff = sorted(k for k in set(fo) | set(fn) if fo.get(k) != fn.get(k))
                added = growth(fo, fn, diff)
                if added is None:
                    shown = ", ".join(f"{k}: {fo.get(k)!r} -> {fn.get(k)!r}" for k in diff[:6])
                    raise ValueError(
                        f"workdir {str(self.path)!r} holds a run of a different config ({shown}"
                        f"{', ...' if len(diff) > 6 else ''}). Use another --workdir, or delete "
                        "this one to start over. (A finished workdir accepts a config that only "
                        "adds temperatures, densities or seeds.)")
                self._grow(old, config_json, added)
        self.grown_from = None  # the config whose finished stages this run extends
        if (self.path / GROWN).exists():
            self.grown_from = _read_json(self.path / GROWN)
        if sharding.is_primary():
            if not ver_file.exists():  # a new workdir (or one from before versions were recorded)
                atomic_write_text(ver_file, json.dumps({"tr_jax_version": self.version}) + "\n")
            if not cfg_file.exists():
                atomic_write_text(cfg_file, config_json)
        self._ckpt = ocp.StandardCheckpointer()
        self.bytes_written = 0  # by this run: checkpoints and chunk records (bench_scale reads it)
        if sharding.is_primary():
            self._tidy()
        sharding.barrier("tr_jax:workdir:open")

    def _grow(self, old: dict, config_json: str, added: dict[str, list]) -> None:
        """Accept a config that only adds temperatures, densities or seeds to a *finished* run:
        its finished stages are kept as ``stages/{stage}@grown`` (with the old config in
        ``grown.json``) and the new run computes only the new members, taking the old members'
        numbers from them. Every step is idempotent, so a kill in between is repaired by
        rerunning the same command."""
        if not (self.path / "cells.csv").exists() and not (self.path / GROWN).exists():
            raise ValueError(
                f"workdir {str(self.path)!r} holds an unfinished run; a sweep can only grow "
                "(more temperatures, densities or seeds) once it is finished: rerun it with its "
                "own config first, then with the grown one.")
        if (self.path / GROWN).exists() and _read_json(self.path / GROWN) != old:
            raise ValueError(f"workdir {str(self.path)!r} is still growing from an earlier config: "
                             "finish that run (rerun its command) before growing it again.")
        if sharding.is_primary():
            if not (self.path / GROWN).exists():
                atomic_write_text(self.path / GROWN, json.dumps(old, indent=1) + "\n")
            stages = self.path / "stages"
            for name in GROWN_STAGES:
                d, kept = stages / name, stages / f"{name}{GROWN_SUFFIX}"
                if self._committed(d) and not kept.exists():
                    os.rename(d, kept)
            for name in ("results.csv", "cells.csv", "summary.txt"):
                (self.path / name).unlink(missing_ok=True)
            atomic_write_text(self.path / "config.json", config_json)
        sharding.barrier("tr_jax:workdir:grow")
        self.log(f"[{time.strftime('%H:%M:%S')}] growing the finished sweep: adds "
                 + "; ".join(f"{k} {v}" for k, v in added.items()))

    def finish_growth(self) -> None:
        """Drop the old run's stages once every stage of the grown run is committed."""
        if sharding.is_primary() and self.grown_from is not None:
            for name in GROWN_STAGES:
                shutil.rmtree(self.stage_dir(f"{name}{GROWN_SUFFIX}"), ignore_errors=True)
            (self.path / GROWN).unlink(missing_ok=True)
        sharding.barrier("tr_jax:workdir:grown")
        self.grown_from = None

    def _tidy(self) -> None:
        """Repair or remove what a killed run left half written: checkpoint swaps (finished, see
        :meth:`_recover`), orbax's temporary folders, temporary table and figure files."""
        stages = self.path / "stages"
        if stages.is_dir():
            for p in stages.iterdir():
                if ".orbax-checkpoint-tmp" in p.name:
                    shutil.rmtree(p, ignore_errors=True)
                elif p.name.endswith(CHUNKS) and p.is_dir():
                    for q in p.glob(".*.tmp"):
                        q.unlink(missing_ok=True)
            for p in stages.iterdir():
                if p.name.startswith(".") and p.name.endswith((".new", ".old")) and p.exists():
                    self._recover(p.name[1:-4])
        temps = [p for name in ("config.json", VERSION_FILE, "results.csv", "cells.csv", "summary.txt")
                 for p in self.path.glob(f".{name}.*")]
        if (self.path / "figures").is_dir():
            temps += list((self.path / "figures").glob(".*.png.*.tmp"))
        for p in temps:
            if p.is_file():
                p.unlink(missing_ok=True)

    def stage_dir(self, name: str) -> pathlib.Path:
        return self.path / "stages" / name

    def _tmp_dirs(self, name: str) -> tuple[pathlib.Path, pathlib.Path]:
        d = self.stage_dir(name)
        return d.with_name(f".{name}.new"), d.with_name(f".{name}.old")

    @staticmethod
    def _committed(d: pathlib.Path) -> bool:
        return d.is_dir() and (d / "_CHECKPOINT_METADATA").exists()

    def _recover(self, name: str) -> None:
        """Finish a swap a killed run left half done (see the module docstring): a committed
        ``.{name}.new`` is the newest state and is put in place; else, when ``{name}`` itself is
        missing, a committed ``.{name}.old`` is put back. Leftovers are deleted."""
        d = self.stage_dir(name)
        new, old = self._tmp_dirs(name)
        if self._committed(new):
            if d.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.rename(d, old)
            os.rename(new, d)
        elif not self._committed(d) and self._committed(old):
            shutil.rmtree(d, ignore_errors=True)
            os.rename(old, d)
        for leftover in (new, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)

    def has(self, name: str) -> bool:
        if sharding.is_primary():
            self._recover(name)
        sharding.barrier(f"tr_jax:has:{name}")
        return self._committed(self.stage_dir(name))

    def save(self, name: str, tree: Any, note: str = "") -> None:
        """Commit ``tree`` (a pytree of host arrays and global ``jax.Array`` s) as checkpoint
        ``name``, atomically (see the module docstring), and log ``committed {name} {note}`` in
        log.txt. Every process calls it: orbax's multi-process protocol has each process write
        its own shards of the global arrays, then one commit; process 0 then swaps the folder in.
        """
        import jax
        d = self.stage_dir(name)
        new, old = self._tmp_dirs(name)
        primary = sharding.is_primary()
        if primary:
            self._recover(name)
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(new, ignore_errors=True)
        sharding.barrier(f"tr_jax:save:{name}:ready")
        multi = sharding.multi_process()  # there, only global arrays are orbax's to shard

        def leaf(x):
            if isinstance(x, jax.Array) and not (multi and x.is_fully_addressable):
                return x
            return np.asarray(x)
        tree = jax.tree.map(leaf, tree)
        try:
            self._ckpt.save(new, tree, force=True)
            self._ckpt.wait_until_finished()
        except Exception as e:
            if primary:
                shutil.rmtree(new, ignore_errors=True)
                for p in d.parent.glob(f".{name}.new*"):  # orbax's own temporary folder
                    shutil.rmtree(p, ignore_errors=True)
            if _is_disk_full(e):
                raise _disk_full(self.path, f"checkpoint {str(d)!r}", e) from e
            raise
        sharding.barrier(f"tr_jax:save:{name}:written")
        if primary:
            self.bytes_written += _dir_bytes(new)
            fault_point("save:written", name)
            if d.exists():
                os.rename(d, old)
            fault_point("save:swapping", name)
            os.rename(new, d)
            shutil.rmtree(old, ignore_errors=True)
            self.log(f"[{time.strftime('%H:%M:%S')}] committed {name}{' ' + note if note else ''}")
        sharding.barrier(f"tr_jax:save:{name}:done")

    def load(self, name: str, like: Any = None) -> Any:
        """Checkpoint ``name``; with ``like`` (a pytree of the same structure) the containers
        (NamedTuples, optimiser states) are rebuilt too, and shapes and dtypes checked. Leaves of
        ``like`` that are global arrays or sharded ``jax.ShapeDtypeStruct`` s come back as global
        arrays sharded the same way (each process reads its own shards); every other leaf as
        numpy. An unreadable checkpoint raises :class:`CorruptCheckpointError` naming its folder.
        """
        import jax
        d = self.stage_dir(name)
        if sharding.is_primary():
            self._recover(name)
        sharding.barrier(f"tr_jax:load:{name}")

        def target(x):
            if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and getattr(x, "sharding", None):
                return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
            return np.asarray(x)

        try:
            if like is None:
                return jax.tree.map(np.asarray, self._ckpt.restore(d))
            like = jax.tree.map(target, like)
            out = jax.tree.map(lambda r, t: r if isinstance(t, jax.ShapeDtypeStruct)
                               else np.asarray(r), self._ckpt.restore(d, like), like)
            for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(like)):
                if a.shape != b.shape or a.dtype != b.dtype:
                    raise ValueError(f"an array of shape {a.shape} {a.dtype} where "
                                     f"{b.shape} {b.dtype} was expected")
            return out
        except Exception as e:
            raise CorruptCheckpointError(d, f"{type(e).__name__}: {str(e)[:300]}") from e

    def restore(self, name: str, like: Any = None,
                warn: Callable[[str], None] | None = None) -> Any | None:
        """``load(name, like)``, or None when the checkpoint is absent or uncommitted — or
        unreadable: then ``warn`` is told, the folder is moved aside to ``{name}.corrupt`` and the
        caller recomputes the stage."""
        if not self.has(name):
            return None
        try:
            return self.load(name, like)
        except CorruptCheckpointError as e:
            aside = self.stage_dir(f"{name}.corrupt")
            sharding.barrier(f"tr_jax:corrupt:{name}")
            if sharding.is_primary():
                shutil.rmtree(aside, ignore_errors=True)
                os.rename(self.stage_dir(name), aside)
            sharding.barrier(f"tr_jax:corrupt:{name}:moved")
            (warn or self.log)(
                f"WARNING: checkpoint {str(e.path)!r} is unreadable ({e.detail}); treating {name} as "
                f"not done and recomputing it. The unreadable checkpoint was moved to "
                f"{str(aside)!r} (delete it at will).")
            return None

    def remove(self, name: str) -> None:
        if sharding.is_primary():
            shutil.rmtree(self.stage_dir(name), ignore_errors=True)
        sharding.barrier(f"tr_jax:remove:{name}")

    # -- chunk records: a stage's progress, one small file per finished chunk ------------------
    def chunks_dir(self, stage: str) -> pathlib.Path:
        return self.path / "stages" / f"{stage}{CHUNKS}"

    def save_chunk(self, stage: str, lo: int, hi: int, arrays: dict[str, np.ndarray]) -> None:
        """Commit the results of items ``lo .. hi - 1`` of ``stage`` (small host arrays, the same
        on every process) as their own record: written once, never rewritten, so the bytes a
        stage writes stay linear in its items. Process 0 writes (temporary file, fsync, rename)."""
        if sharding.is_primary():
            d = self.chunks_dir(stage)
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"{int(lo):09d}_{int(hi):09d}.npz"
            buf = io.BytesIO()
            np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
            atomic_write_bytes(path, buf.getvalue(), "chunk:written", stage)
            self.bytes_written += path.stat().st_size
        sharding.barrier(f"tr_jax:chunk:{stage}:{lo}")

    def load_chunks(self, stage: str) -> list[tuple[int, int, dict[str, np.ndarray]]]:
        """The committed chunk records of ``stage``: ``(lo, hi, arrays)``, sorted by ``lo``. An
        unreadable record (a disk fault) is dropped with a warning in the log: its chunk is
        recomputed."""
        d = self.chunks_dir(stage)
        out = []
        if not d.is_dir():
            return out
        for p in sorted(d.glob("[0-9]*_[0-9]*.npz")):
            lo, hi = (int(x) for x in p.stem.split("_"))
            try:
                with np.load(p) as z:
                    out.append((lo, hi, {k: z[k] for k in z.files}))
            except Exception as e:  # noqa: BLE001 - any unreadable record is recomputed
                self.log(f"WARNING: chunk record {str(p)!r} is unreadable ({e}); recomputing it")
        return out

    def remove_chunks(self, stage: str) -> None:
        if sharding.is_primary():
            shutil.rmtree(self.chunks_dir(stage), ignore_errors=True)
        sharding.barrier(f"tr_jax:chunks:{stage}:removed")

    def log(self, line: str) -> None:
        if not sharding.is_primary():
            return
        try:
            with open(self.path / "log.txt", "a") as f:
                f.write(line.rstrip() + "\n")
        except OSError as e:
            if _is_disk_full(e):
                raise _disk_full(self.path, "log.txt", e) from e
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fault: str = "text:written",
                       name: str = "") -> None:
    """The one atomic writer of tr_jax's files (tables, texts, figures, chunk records): write to
    a temporary file in the same folder, fsync, rename. A reader never sees a half-written file,
    and a failed write (a full disk: :class:`DiskFullError` naming the file) leaves the previous
    file intact. ``fault``/``name``: the :func:`fault_point` passed between write and rename."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        fault_point(fault, name)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, Exception) and _is_disk_full(e):
            raise _disk_full(path.parent, f"{str(path)!r}", e) from e
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_csv(path: str | os.PathLike, df) -> None:
    atomic_write_text(path, df.to_csv(index=False))
