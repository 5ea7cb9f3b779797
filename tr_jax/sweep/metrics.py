"""Metrics as they happen: ``metrics.jsonl`` in the workdir (and optionally TensorBoard scalars
under ``workdir/tb/``), written by process 0 only, append-only.

One JSON object per line:

* a training epoch of one program: ``{"t", "kind": "epoch", "stage": "dense"|"retrain",
  "program", "epoch" (1-indexed), "epochs", "wall_s", "member_steps_s", "images_s", "members":
  {"member", "dense_seed", "temperature", "density", "retrain_seed", "train_loss",
  "train_error", "test_error"}}`` — the member columns are lists, one entry per real member of
  the program (padding dropped); ``member`` holds the global ids (dense: index into the plan's
  dense members, retrain: into the grid's members); NaN / inf and values not measured that epoch
  are ``null``;
* a measure chunk: ``{"t", "kind": "chunk", "stage": "measure"|"bezier"|"hessian", "program"
  (the chunked stage: outputs, lmc, bezier, hessian), "chunk" (1-indexed), "chunks", "wall_s",
  "units" (pairs or members in the chunk)}``.

Exactly once per epoch: a program's epoch lines are buffered and flushed (append + fsync) just
before each of its progress checkpoints is committed and when the program ends; a program that
(re)starts from the checkpoint after epoch k (k = 0: from scratch) first drops its lines with
epoch > k (an atomic rewrite of the file), which were flushed by a run killed before its next
commit. So after any kill and resume the file holds every (program, epoch) once. A chunk line is
appended right after its chunk's record is committed (a kill between the two loses that line;
the chunk is not recomputed). :func:`read_metrics` also keeps only the last line of a repeated
(program, epoch) or (program, chunk) and ignores a last partial line (a kill mid-write).
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import time
from typing import Any, Iterable

import numpy as np

from tr_jax import sharding
from tr_jax.files import atomic_write_text

FILE = "metrics.jsonl"
MEMBER_COLUMNS = ("member", "dense_seed", "temperature", "density", "retrain_seed",
                  "train_loss", "train_error", "test_error")
COLUMNS = ("t", "kind", "stage", "program", "epoch", "epochs", "wall_s", "member_steps_s",
           "images_s", *MEMBER_COLUMNS, "chunk", "chunks", "units")


def _clean(x: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, NaN / inf as None (dicts and lists walked)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_clean(v) for v in x]
    if x is None or isinstance(x, (bool, np.bool_)):
        return None if x is None else bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def fmt_duration(seconds: float) -> str:
    """``3m12s``, ``1h05m``, ``42s``."""
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class MetricsLog:
    """The writer of one workdir's ``metrics.jsonl`` (a no-op when disabled or not process 0)."""

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True,
                 tensorboard: bool = False, knob: str = "temperature"):
        self.path = pathlib.Path(workdir) / FILE
        self.enabled = bool(enabled) and sharding.is_primary()
        self.tb_dir = pathlib.Path(workdir) / "tb"
        self.tensorboard = bool(tensorboard) and sharding.is_primary()
        self.knob = knob
        self._buffer: list[dict] = []
        self._tb = None
        self.last_t = time.time()  # the time of the last line (chunk timing, see ``chunk``)

    # -- epochs -----------------------------------------------------------------------------------
    def restart(self, program: str, after_epoch: int) -> None:
        """Program ``program`` (re)starts after epoch ``after_epoch``: drop its epoch lines
        beyond it (and anything buffered for it)."""
        self._buffer = [r for r in self._buffer if r.get("program") != program]
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:  # a partial last line of a killed write
                continue
            if not line.endswith("\n"):
                line += "\n"
            if (rec.get("kind") == "epoch" and rec.get("program") == program
                    and int(rec.get("epoch", 0)) > after_epoch):
                continue
            keep.append(line)
        if keep != lines:
            atomic_write_text(self.path, "".join(keep))

    def epoch(self, record: dict) -> None:
        """Buffer one epoch line (written at the next :meth:`flush`)."""
        self.last_t = time.time()
        if self.enabled or self.tensorboard:
            self._buffer.append({"t": round(self.last_t, 3), "kind": "epoch", **_clean(record)})

    def flush(self) -> None:
        """Append the buffered lines (fsync'd) and write their TensorBoard scalars."""
        lines, self._buffer = self._buffer, []
        if not lines:
            return
        if self.enabled:
            self._append(lines)
        if self.tensorboard:
            self._write_tb(lines)

    # -- measure chunks ---------------------------------------------------------------------------
    def chunk(self, stage: str, program: str, chunk: int, chunks: int, units: int,
              wall_s: float) -> None:
        self.last_t = time.time()
        if self.enabled:
            self._append([{"t": round(self.last_t, 3), "kind": "chunk", "stage": stage,
                           "program": program, "chunk": int(chunk), "chunks": int(chunks),
                           "wall_s": _clean(float(wall_s)), "units": int(units)}])

    # -- files ------------------------------------------------------------------------------------
    def _append(self, records: list[dict]) -> None:
        text = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n"
                       for r in records)
        with open(self.path, "a+b") as f:
            if f.tell() > 0:  # after a partial line of a killed write: start a new line
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    text = "\n" + text
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())

    def _write_tb(self, records: list[dict]) -> None:
        """Mean train loss and test error of every (stage, temperature, density) per epoch."""
        if self._tb is None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as e:
                raise ImportError("run.tensorboard=True needs tensorboardX: "
                                  "pip install 'tr_jax[tensorboard]'") from e
            self._tb = SummaryWriter(str(self.tb_dir))
        for r in records:
            m = r["members"]
            groups: dict[tuple, list[int]] = {}
            for i, (t, d) in enumerate(zip(m["temperature"], m["density"])):
                groups.setdefault((t, d), []).append(i)
            for (t, d), idx in groups.items():
                # tags '{stage}/{metric}/{knob}_{T}[_density_{d}]' (TensorBoard groups by the
                # first part; '=' is not a tag character)
                cell = f"{self.knob}_{t}" + ("" if d is None else f"_density_{d:g}")
                for key in ("train_loss", "train_error", "test_error"):
                    vals = [m[key][i] for i in idx if m[key][i] is not None]
                    if vals:
                        self._tb.add_scalar(f"{r['stage']}/{key}/{cell}", float(np.mean(vals)),
                                            global_step=int(r["epoch"]), walltime=r["t"])
        self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _lines(path: pathlib.Path) -> Iterable[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a partial (last) line of a killed write
            continue
    return out


def read_metrics(workdir: str | os.PathLike):
    """``metrics.jsonl`` of a workdir as a pandas DataFrame: one row per (epoch line, member)
    with the columns :data:`COLUMNS` (``kind`` 'epoch'), and one row per measure-chunk line
    (``kind`` 'chunk', member NaN). A repeated (program, epoch) or (program, chunk) keeps its
    last line; a partial last line is ignored. Empty (with the columns) when there is none."""
    import pandas as pd
    path = pathlib.Path(workdir)
    path = path / FILE if path.is_dir() else path
    last: dict[tuple, dict] = {}
    for rec in _lines(path):
        kind = rec.get("kind")
        key = (kind, rec.get("program"), rec.get("epoch" if kind == "epoch" else "chunk"))
        last.pop(key, None)
        last[key] = rec
    rows = []
    for rec in last.values():
        base = {k: v for k, v in rec.items() if k != "members"}
        if rec.get("kind") == "epoch":
            m = rec.get("members", {})
            n = len(m.get("member", []))
            for i in range(n):
                rows.append({**base, **{k: (m.get(k) or [None] * n)[i] for k in MEMBER_COLUMNS}})
        else:
            rows.append(base)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for k in ("wall_s", "member_steps_s", "images_s", "density", "train_loss", "train_error",
              "test_error", "member"):
        df[k] = pd.to_numeric(df[k], errors="coerce").astype(float)
    return df
