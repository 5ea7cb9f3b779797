"""A run directory (a workdir): its config, its checkpoints, and the files written into it.

This module composes the workdir's concerns, each in its own module:

* :mod:`tr_jax.sweep.checkpoints` — one orbax checkpoint per finished stage, swapped in
  atomically and repaired after a kill, and a stage's chunk records;
* :mod:`tr_jax.sweep.growth` — a config that only adds temperatures, densities or seeds to a
  finished run (the growth plan, the kept ``@grown`` stages);
* :mod:`tr_jax.sweep.versions` — the tr_jax major.minor version a workdir belongs to;
* :mod:`tr_jax.files` — the atomic writer of tables, texts and figures, and
  :class:`DiskFullError`.

Every write is atomic, so a run killed at any moment (SIGKILL, power loss, a full disk) leaves the
workdir in a state it resumes from. A workdir belongs to one config and one tr_jax major.minor
version (``tr_jax_version.json``): another config is refused with the keys that differ, another
version with both versions named. Running out of disk space raises :class:`DiskFullError` naming
the workdir; the state before the failed write stays intact and resumable.

The names other modules import from here (``Workdir``, ``atomic_write_csv``,
``atomic_write_text``, ``GROWN_SUFFIX``, ...) stay importable from here.
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import orbax.checkpoint as ocp

from tr_jax import sharding
from tr_jax.files import (DiskFullError, atomic_write_bytes, atomic_write_csv, atomic_write_text,
                          disk_full_error, is_disk_full)
from tr_jax.sweep import growth as grow_mod
from tr_jax.sweep import versions
from tr_jax.sweep.checkpoints import CHUNKS, Checkpoints, CorruptCheckpointError, committed
from tr_jax.sweep.growth import GROW_KEYS, GROWN, GROWN_STAGES, GROWN_SUFFIX, growth
from tr_jax.sweep.versions import VERSION_FILE, read_json

__all__ = ["Workdir", "CorruptCheckpointError", "DiskFullError", "atomic_write_bytes",
           "atomic_write_text", "atomic_write_csv", "growth", "GROWN", "GROWN_SUFFIX",
           "GROWN_STAGES", "GROW_KEYS", "VERSION_FILE", "CHUNKS"]


class Workdir:
    """A run directory, opened for one config (``config_json``) by tr_jax ``version`` (default:
    this one). Opening it checks the version (:mod:`~tr_jax.sweep.versions`), compares the
    config with the one it holds (refused, or a growth of a finished run:
    :mod:`~tr_jax.sweep.growth`) and repairs what a killed run left half written. Checkpoints
    and chunk records: :class:`~tr_jax.sweep.checkpoints.Checkpoints` (``self.checkpoints``),
    whose methods are available here too.

    ``grown_stages``: the stages whose finished checkpoints a grown run keeps (default
    :data:`~tr_jax.sweep.growth.GROWN_STAGES`; ``growth.grown_stages(measure_stages)`` builds
    one from a list of growable measure stages)."""

    def __init__(self, path: str | os.PathLike, config_json: str, version: str | None = None, *,
                 grown_stages: Sequence[str] | None = None):
        if version is None:
            from tr_jax import __version__ as version
        self.path = pathlib.Path(path).absolute()
        self.version = str(version)
        self.grown_stages = tuple(GROWN_STAGES if grown_stages is None else grown_stages)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if is_disk_full(e):
                raise disk_full_error(self.path, "the workdir", e) from e
            raise
        cfg_file, ver_file = self.path / "config.json", self.path / VERSION_FILE
        if cfg_file.exists():
            versions.check(self.path, self.version)
            old = read_json(cfg_file)
            if old != json.loads(config_json):
                added = grow_mod.plan(self.path, old, json.loads(config_json))
                self._grow(old, config_json, added)
        self.grown_from = None  # the config whose finished stages this run extends
        if (self.path / GROWN).exists():
            self.grown_from = read_json(self.path / GROWN)
        if sharding.is_primary():
            if not ver_file.exists():  # a new workdir (or one from before versions were recorded)
                atomic_write_text(ver_file, versions.record(self.version))
            if not cfg_file.exists():
                atomic_write_text(cfg_file, config_json)
        self._ckpt = ocp.StandardCheckpointer()
        self.checkpoints = Checkpoints(self.path, self._ckpt, self.log)
        if sharding.is_primary():
            self._tidy()
        sharding.barrier("tr_jax:workdir:open")

    @property
    def bytes_written(self) -> int:
        """Bytes of checkpoints and chunk records this run wrote (bench_scale reads it)."""
        return self.checkpoints.bytes_written

    @bytes_written.setter
    def bytes_written(self, n: int) -> None:
        self.checkpoints.bytes_written = n

    # -- growth of a finished sweep (tr_jax.sweep.growth) ---------------------------------------
    def _grow(self, old: dict, config_json: str, added: dict[str, list]) -> None:
        """Accept a config that only adds temperatures, densities or seeds to a *finished* run:
        its finished stages are kept as ``stages/{stage}@grown`` (with the old config in
        ``grown.json``) and the new run computes only the new members, taking the old members'
        numbers from them. Every step is idempotent, so a kill in between is repaired by
        rerunning the same command."""
        grow_mod.check_growable(self.path, old)
        if sharding.is_primary():
            grow_mod.keep_finished(self.path, old, config_json, committed, self.grown_stages)
        sharding.barrier("tr_jax:workdir:grow")
        self.log(f"[{time.strftime('%H:%M:%S')}] growing the finished sweep: adds "
                 + grow_mod.describe(added))

    def finish_growth(self) -> None:
        """Drop the old run's stages once every stage of the grown run is committed."""
        if sharding.is_primary() and self.grown_from is not None:
            grow_mod.finish(self.path, self.grown_stages)
        sharding.barrier("tr_jax:workdir:grown")
        self.grown_from = None

    def _tidy(self) -> None:
        """Repair or remove what a killed run left half written: checkpoint swaps (finished, see
        :meth:`Checkpoints.recover`), orbax's temporary folders, temporary chunk records, table
        and figure files."""
        self.checkpoints.tidy()
        temps = [p for name in ("config.json", VERSION_FILE, "results.csv", "cells.csv", "summary.txt")
                 for p in self.path.glob(f".{name}.*")]
        if (self.path / "figures").is_dir():
            temps += list((self.path / "figures").glob(".*.png.*.tmp"))
        for p in temps:
            if p.is_file():
                p.unlink(missing_ok=True)

    # -- checkpoints and chunk records (tr_jax.sweep.checkpoints) -------------------------------
    def stage_dir(self, name: str) -> pathlib.Path:
        return self.checkpoints.stage_dir(name)

    def _tmp_dirs(self, name: str) -> tuple[pathlib.Path, pathlib.Path]:
        return self.checkpoints.tmp_dirs(name)

    @staticmethod
    def _committed(d: pathlib.Path) -> bool:
        return committed(d)

    def _recover(self, name: str) -> None:
        self.checkpoints.recover(name)

    def has(self, name: str) -> bool:
        """Whether checkpoint ``name`` is committed (a half-done swap is finished first)."""
        return self.checkpoints.has(name)

    def save(self, name: str, tree: Any, note: str = "") -> None:
        """Commit ``tree`` as checkpoint ``name``, atomically: :meth:`Checkpoints.save`."""
        self.checkpoints.save(name, tree, note)

    def load(self, name: str, like: Any = None) -> Any:
        """Checkpoint ``name`` (:class:`CorruptCheckpointError` when unreadable):
        :meth:`Checkpoints.load`."""
        return self.checkpoints.load(name, like)

    def restore(self, name: str, like: Any = None,
                warn: Callable[[str], None] | None = None) -> Any | None:
        """Checkpoint ``name``, or None when absent or unreadable (then moved aside and ``warn``
        told): :meth:`Checkpoints.restore`."""
        return self.checkpoints.restore(name, like, warn)

    def remove(self, name: str) -> None:
        self.checkpoints.remove(name)

    def chunks_dir(self, stage: str) -> pathlib.Path:
        return self.checkpoints.chunks_dir(stage)

    def save_chunk(self, stage: str, lo: int, hi: int, arrays: dict[str, np.ndarray]) -> None:
        """Commit the results of items ``lo .. hi - 1`` of ``stage``:
        :meth:`Checkpoints.save_chunk`."""
        self.checkpoints.save_chunk(stage, lo, hi, arrays)

    def load_chunks(self, stage: str) -> list[tuple[int, int, dict[str, np.ndarray]]]:
        """The committed chunk records of ``stage``: :meth:`Checkpoints.load_chunks`."""
        return self.checkpoints.load_chunks(stage)

    def remove_chunks(self, stage: str) -> None:
        self.checkpoints.remove_chunks(stage)

    def log(self, line: str) -> None:
        """Append ``line`` to the workdir's ``log.txt`` (process 0 only)."""
        if not sharding.is_primary():
            return
        try:
            with open(self.path / "log.txt", "a") as f:
                f.write(line.rstrip() + "\n")
        except OSError as e:
            if is_disk_full(e):
                raise disk_full_error(self.path, "log.txt", e) from e
            raise

