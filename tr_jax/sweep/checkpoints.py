"""A workdir's checkpoints: one orbax checkpoint per finished stage, swapped in atomically, and a
stage's chunk records.

* a checkpoint is written by orbax into ``stages/.{name}.new`` (orbax itself writes a temporary
  folder and renames it on commit), then swapped in: the previous version is renamed to
  ``stages/.{name}.old``, the new one to ``stages/{name}``, the old one deleted. A run killed
  anywhere in between is repaired on the next access (:meth:`Checkpoints.recover`): a committed
  ``.new`` is put in place, else the old version stays (or is put back), so a checkpoint is never
  lost while it is replaced and a fully written one is never recomputed;
* a chunk record (the results of a few items of a stage) is a small ``.npz`` file in
  ``stages/{stage}.chunks``, written once by the atomic writer (:mod:`tr_jax.files`).

A checkpoint is done when it is committed. A committed checkpoint that is unreadable (truncated,
corrupted, written by an incompatible orbax) is not trusted: :meth:`Checkpoints.restore` logs a
warning, moves it aside to ``stages/{name}.corrupt`` and reports it absent, so the stage is
recomputed (:meth:`Checkpoints.load` raises :class:`CorruptCheckpointError` naming the folder).

The hook points ``save:written``, ``save:swapping`` and ``chunk:written`` (:mod:`tr_jax.hooks`)
are reached between the steps above.
"""
from __future__ import annotations

import io
import os
import pathlib
import shutil
import time
from typing import Any, Callable

import numpy as np

from tr_jax import hooks, sharding
from tr_jax.files import atomic_write_bytes, disk_full_error, is_disk_full

CHUNKS = ".chunks"  # suffix of a stage's folder of chunk records


class CorruptCheckpointError(ValueError):
    """A committed checkpoint could not be read back (``path``: its folder, ``detail``: why)."""

    def __init__(self, path: pathlib.Path, detail: str):
        self.path, self.detail = path, detail
        super().__init__(f"checkpoint {str(path)!r} is unreadable ({detail}). Delete that folder "
                         "and rerun: the stage is recomputed.")


def committed(d: pathlib.Path) -> bool:
    """Whether ``d`` is a checkpoint folder orbax finished writing."""
    return d.is_dir() and (d / "_CHECKPOINT_METADATA").exists()


def _dir_bytes(d: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


class Checkpoints:
    """The checkpoints and chunk records under ``{workdir}/stages``. ``checkpointer``: an orbax
    ``StandardCheckpointer``; ``log``: where commits and warnings go (process 0's ``log.txt``).
    Every process calls every method; process 0 alone renames and deletes."""

    def __init__(self, workdir: pathlib.Path, checkpointer: Any, log: Callable[[str], None]):
        self.workdir = pathlib.Path(workdir)
        self.root = self.workdir / "stages"
        self.checkpointer = checkpointer
        self.log = log
        self.bytes_written = 0  # by this run: checkpoints and chunk records

    # -- the swap and its repair --------------------------------------------------------------
    def stage_dir(self, name: str) -> pathlib.Path:
        return self.root / name

    def tmp_dirs(self, name: str) -> tuple[pathlib.Path, pathlib.Path]:
        """``.{name}.new`` and ``.{name}.old``: the two temporary folders of a swap."""
        d = self.stage_dir(name)
        return d.with_name(f".{name}.new"), d.with_name(f".{name}.old")

    def recover(self, name: str) -> None:
        """Finish a swap a killed run left half done (see the module docstring): a committed
        ``.{name}.new`` is the newest state and is put in place; else, when ``{name}`` itself is
        missing, a committed ``.{name}.old`` is put back. Leftovers are deleted."""
        d = self.stage_dir(name)
        new, old = self.tmp_dirs(name)
        if committed(new):
            if d.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.rename(d, old)
            os.rename(new, d)
        elif not committed(d) and committed(old):
            shutil.rmtree(d, ignore_errors=True)
            os.rename(old, d)
        for leftover in (new, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)

    def tidy(self) -> None:
        """Repair or remove what a killed run left half written under ``stages``: checkpoint
        swaps (finished, see :meth:`recover`), orbax's temporary folders, temporary chunk
        records. Process 0 only."""
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            if ".orbax-checkpoint-tmp" in p.name:
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.endswith(CHUNKS) and p.is_dir():
                for q in p.glob(".*.tmp"):
                    q.unlink(missing_ok=True)
        for p in self.root.iterdir():
            if p.name.startswith(".") and p.name.endswith((".new", ".old")) and p.exists():
                self.recover(p.name[1:-4])

    def has(self, name: str) -> bool:
        if sharding.is_primary():
            self.recover(name)
        sharding.barrier(f"tr_jax:has:{name}")
        return committed(self.stage_dir(name))

    def save(self, name: str, tree: Any, note: str = "") -> None:
        """Commit ``tree`` (a pytree of host arrays and global ``jax.Array`` s) as checkpoint
        ``name``, atomically (see the module docstring), and log ``committed {name} {note}``.
        Every process calls it: orbax's multi-process protocol has each process write its own
        shards of the global arrays, then one commit; process 0 then swaps the folder in."""
        import jax
        d = self.stage_dir(name)
        new, old = self.tmp_dirs(name)
        primary = sharding.is_primary()
        if primary:
            self.recover(name)
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
            self.checkpointer.save(new, tree, force=True)
            self.checkpointer.wait_until_finished()
        except Exception as e:
            if primary:
                shutil.rmtree(new, ignore_errors=True)
                for p in d.parent.glob(f".{name}.new*"):  # orbax's own temporary folder
                    shutil.rmtree(p, ignore_errors=True)
            if is_disk_full(e):
                raise disk_full_error(self.workdir, f"checkpoint {str(d)!r}", e) from e
            raise
        sharding.barrier(f"tr_jax:save:{name}:written")
        if primary:
            self.bytes_written += _dir_bytes(new)
            hooks.point("save:written", name=name, path=str(new))
            if d.exists():
                os.rename(d, old)
            hooks.point("save:swapping", name=name, path=str(d))
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
            self.recover(name)
        sharding.barrier(f"tr_jax:load:{name}")

        def target(x):
            if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and getattr(x, "sharding", None):
                return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
            return np.asarray(x)

        try:
            if like is None:
                return jax.tree.map(np.asarray, self.checkpointer.restore(d))
            like = jax.tree.map(target, like)
            out = jax.tree.map(lambda r, t: r if isinstance(t, jax.ShapeDtypeStruct)
                               else np.asarray(r), self.checkpointer.restore(d, like), like)
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
        return self.root / f"{stage}{CHUNKS}"

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
            atomic_write_bytes(path, buf.getvalue(), "chunk:written", name=stage, lo=int(lo),
                               hi=int(hi))
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
