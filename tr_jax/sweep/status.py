"""Where a sweep stands: ``tr-jax status WORKDIR [--json] [--watch S]``.

Reads a workdir, live or not, from any shell or host that sees it, and writes nothing: it never
takes the workdir's lock (``run.lock`` is read, and its holder judged, without a flock). It tells

* the holder of the workdir (host, pid, start, heartbeat age) and whether it is ``alive``,
  ``stale`` (a lock whose run has died) or ``none`` (no lock file);
* the stage and program under way and its epochs (or chunks) done of total, from the last lines
  of ``metrics.jsonl`` (else from the stage lines of ``log.txt``);
* the throughput of the last epoch (member-steps/s, images/s), an ETA for the stage (remaining
  epochs or chunks x their recent mean time) and a rough one for the run (the remaining training
  from the plan rebuilt out of ``config.json``; the measure stages are estimated only once their
  chunks are timed, else the run ETA is unknown and a lower bound is given);
* the members that are sick so far (non-finite train loss in their last epoch line);
* the last line of ``log.txt``;
* for a finished workdir (``cells.csv`` and no live holder): ``finished``; for one whose run is
  gone before the end (``killed``): what a rerun does — which stages are committed and loaded,
  which program resumes from which progress checkpoint, which measure stages resume from their
  chunk records, which stages remain.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import re
import socket
import sys
import time
from typing import Any, Callable

from tr_jax import measures
from tr_jax.errors import UserError
from tr_jax.sweep.checkpoints import committed as _committed

__all__ = ["status", "format_status", "watch"]



def _stages() -> tuple[str, ...]:
    """The stages of a run, in order: training, each measure group of the registry
    (:mod:`tr_jax.measures`), then ``tables`` (results.csv, cells.csv, figures)."""
    return ("dense", "retrain", *measures.groups(), "tables")


def _chunk_stages() -> dict[str, str]:
    """Chunk-record folders (``stages/{name}.chunks``: one per measure) and their stage."""
    return {m.name: m.group for m in measures.registered()}


_RECENT = 5  # epoch (or chunk) lines averaged for an ETA
_TAIL_BYTES = 1 << 20  # metrics.jsonl: only its last MiB is read

_LOG_TIME = re.compile(r"^\[(\d\d:\d\d:\d\d)\] ")
_PROGRAM = re.compile(r"\b((dense|retrain)_[pg]\d+)\b")
_COMMITTED = re.compile(r"\] committed (\S+)(?: (.*))?$")
_AFTER_EPOCH = re.compile(r"after epoch (\d+)")
_HEAD = re.compile(r"^(\w+)(?: \([^)]*\))?:")
_LOG_EPOCH = re.compile(r"\] ((?:dense|retrain)_[pg]\d+): epoch (\d+)/(\d+), ([0-9.e+]+) "
                        r"member-steps/s, ([0-9.e+]+) images/s")
_LOG_CHUNK = re.compile(r"\] (\w+): chunk (\d+)/(\d+)")
_RESUMING_ITEMS = re.compile(r"\] (\w+): resuming after (\d+)/(\d+) items")


# -- reading ------------------------------------------------------------------------------------
def _read_lock(wd: pathlib.Path) -> dict:
    """The holder of ``wd/run.lock`` and its state, judged without taking any lock."""
    from tr_jax.sweep.lock import LOCK_NAME, pid_alive, stale_after_default
    path = wd / LOCK_NAME
    try:
        st = path.stat()
        raw = path.read_text()
    except FileNotFoundError:
        return {"state": "none", "why": "no run.lock: no run holds the workdir"}
    except OSError as e:
        return {"state": "unknown", "why": f"run.lock is unreadable ({e})"}
    try:
        rec = json.loads(raw)
        rec = rec if isinstance(rec, dict) else {}
    except ValueError:
        rec = {}
    age = max(0.0, time.time() - st.st_mtime)
    out = {k: rec.get(k) for k in ("host", "pid", "start", "start_unix", "run_id", "argv")}
    out["heartbeat_age_s"] = round(age, 1)
    stale_after = stale_after_default()
    pid, host = rec.get("pid"), rec.get("host")
    if not rec:
        out.update(state="unknown", why="run.lock holds no readable record")
    elif host == socket.gethostname():
        if not (isinstance(pid, int) and pid_alive(pid)):
            out.update(state="stale", why=f"pid {pid} is gone on this host")
        elif _started_after(pid, rec.get("start_unix")):
            out.update(state="stale", why=f"pid {pid} is now another process (started after "
                       "the lock)")
        else:
            out.update(state="alive", why=f"pid {pid} runs on this host")
    elif age > stale_after:
        out.update(state="stale", why=f"another host; no heartbeat for {age:.0f} s (stale after "
                   f"{stale_after:.0f} s)")
    else:
        out.update(state="alive", why=f"another host; heartbeat {age:.0f} s ago (stale after "
                   f"{stale_after:.0f} s without one)")
    return out


def _started_after(pid: int, start_unix: Any) -> bool:
    """Whether process ``pid`` (this host) started after ``start_unix`` (a reused pid); False
    when unknown."""
    try:
        if not isinstance(start_unix, (int, float)):
            return False
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime (field 22), in clock ticks after boot
        btime = next(int(line.split()[1]) for line in
                     pathlib.Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK") > float(start_unix) + 2.0
    except (OSError, ValueError, IndexError, StopIteration):
        return False


def _metrics(wd: pathlib.Path) -> list[dict]:
    """The complete lines of ``metrics.jsonl`` (its last MiB), oldest first; a partial or
    damaged line is skipped; [] when the file is absent."""
    path = wd / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > _TAIL_BYTES:
        lines = lines[1:]  # the first may be cut
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("kind") in ("epoch", "chunk"):
            out.append(rec)
    return out


def _log_lines(wd: pathlib.Path) -> list[str]:
    try:
        return (wd / "log.txt").read_text(errors="replace").splitlines()
    except OSError:
        return []


def _checkpoints(wd: pathlib.Path) -> list[str]:
    """The committed checkpoints of ``wd/stages`` as the next access sees them: a half-done swap
    counts as the store repairs it (a committed ``.{name}.new`` is the newest state, else a
    committed ``.{name}.old`` is put back when ``{name}`` is missing)."""
    stages = wd / "stages"
    if not stages.is_dir():
        return []
    names = set()
    for p in stages.iterdir():
        if p.name.startswith(".") and p.name.endswith((".new", ".old")):
            name = p.name[1:-4]
            if p.name.endswith(".new") and _committed(p):
                names.add(name)
            elif p.name.endswith(".old") and _committed(p) and not _committed(stages / name):
                names.add(name)
        elif not p.name.startswith(".") and not p.name.endswith((".chunks", ".corrupt")) \
                and _committed(p):
            names.add(p.name)
    stages_ = _stages()
    return sorted(names, key=lambda n: (stages_.index(_stage_of(n)) if _stage_of(n) else
                                        len(stages_), n))


def _chunk_items(wd: pathlib.Path) -> dict[str, int]:
    """Items done per chunk-record folder (``outputs``, ``lmc``, ``bezier``, ``hessian``)."""
    out = {}
    stages = wd / "stages"
    if not stages.is_dir():
        return out
    for d in stages.glob("*.chunks"):
        n = 0
        for p in d.glob("[0-9]*_[0-9]*.npz"):
            try:
                lo, hi = (int(x) for x in p.stem.split("_"))
            except ValueError:
                continue
            n += hi - lo
        out[d.name[:-len(".chunks")]] = n
    return out


def _config(wd: pathlib.Path):
    """The workdir's config (config.json over the defaults), or None when unreadable."""
    try:
        import ml_collections

        from tr_jax.config import default_config
        saved = json.loads((wd / "config.json").read_text())

        def merge(base: dict, new: dict) -> dict:
            for k, v in new.items():
                base[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(
                    base.get(k), dict) else v
            return base
        return ml_collections.ConfigDict(merge(default_config().to_dict(), saved))
    except Exception:  # noqa: BLE001 - a status shows what it can
        return None


def _plan(cfg) -> tuple[Any, str]:
    """The run's plan rebuilt from its config (no data read, nothing compiled) and a note; the
    programs follow ``run.max_members`` (a memory budget may split them differently)."""
    if cfg is None:
        return None, "config.json is unreadable"
    try:
        from tr_jax.data.datasets import DATASET_SHAPES
        from tr_jax.sweep.plan import make_plan
        if cfg.dataset not in DATASET_SHAPES:
            return None, f"the training set size of dataset {cfg.dataset!r} is not known here"
        note = ("programs as run.max_members splits them; a memory budget may split them further"
                if cfg.run.get("memory_budget_gb", 0) else "")
        return make_plan(cfg, DATASET_SHAPES[cfg.dataset][0]), note
    except Exception as e:  # noqa: BLE001
        return None, f"the plan could not be rebuilt ({type(e).__name__}: {e})"


# -- judging ------------------------------------------------------------------------------------
def _stage_of(name: str) -> str | None:
    for s in _stages():
        if name == s or name.startswith(s + "_") or name.startswith(s + " "):
            return s
    return _chunk_stages().get(name)


def _log_position(lines: list[str], enabled: list[str]) -> dict:
    """The stage and program the log's last stage lines name, with progress where it says."""
    pos: dict[str, Any] = {"stage": None, "program": None}
    for line in lines:
        body = _LOG_TIME.sub("", line)
        if body.startswith("wrote cells.csv"):
            pos = {"stage": "tables", "program": None}
            continue
        m = _COMMITTED.search(line)
        head = None if m else _HEAD.match(body)
        if not (m or head):
            continue
        name = m.group(1) if m else head.group(1)
        prog = _PROGRAM.match(name)
        stage = _stage_of(name) or ("retrain" if name == "prune" else None)
        if stage is None:
            continue
        if m and name == stage and not prog:  # a stage committed: the next one is under way
            order = _stages()
            nxt = [s for s in enabled if order.index(s) > order.index(stage)]
            pos = {"stage": nxt[0] if nxt else stage, "program": None}
            continue
        if pos.get("stage") != stage:
            pos = {"stage": stage, "program": None}
        if prog:
            pos["program"] = prog.group(1)
        r = _RESUMING_ITEMS.search(line)
        if r:
            pos.update(unit="item", done=int(r.group(2)), total=int(r.group(3)))
        e = _LOG_EPOCH.search(line)
        if e:
            pos.update(unit="epoch", done=int(e.group(2)), total=int(e.group(3)),
                       member_steps_s=float(e.group(4)), images_s=float(e.group(5)))
        c = _LOG_CHUNK.search(line)
        if c:
            pos.update(program=c.group(1), unit="chunk", done=int(c.group(2)),
                       total=int(c.group(3)))
    return pos


def _sick(epochs: list[dict]) -> list[dict]:
    """Members whose train loss is null or non-finite in their last epoch line."""
    last: dict[tuple, dict] = {}
    for rec in epochs:
        mem = rec.get("members") or {}
        ids, losses = mem.get("member") or [], mem.get("train_loss") or []
        for i, m in enumerate(ids):
            loss = losses[i] if i < len(losses) else None
            row = {"stage": rec.get("stage"), "program": rec.get("program"), "member": m,
                   "epoch": rec.get("epoch"), "train_loss": loss}
            for k in ("dense_seed", "temperature", "density", "retrain_seed"):
                v = mem.get(k)
                row[k] = v[i] if isinstance(v, list) and i < len(v) else None
            last[(rec.get("stage"), m)] = row
    return [r for r in last.values() if not _finite(r["train_loss"])]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _mean_wall(recs: list[dict]) -> float | None:
    """The mean time of the recent lines; a program's first epoch (or chunk) is left out when
    others are timed (it includes the compile)."""
    warm = [r for r in recs if r.get("epoch", r.get("chunk")) != 1]
    recs = warm or recs
    walls = [r.get("wall_s") for r in recs[-_RECENT:] if _finite(r.get("wall_s"))]
    return sum(walls) / len(walls) if walls else None


def _program_members(plan, name: str) -> int | None:
    if plan is None:
        return None
    for p in plan.programs:
        if p.name == name:
            return len(p.members)
    return None


def _training_eta(plan, stage: str, current: dict | None, epoch_recs: list[dict],
                  member_steps_s: float | None) -> float | None:
    """Seconds left in training stage ``stage``: the current program's remaining epochs at its
    recent epoch time, then the stage's later programs (their member-epochs at that pace, or at
    the measured member-steps/s when the stage has no epoch timed yet)."""
    progs = plan.stage_programs(stage) if plan is not None else []
    left = 0.0
    later = progs
    if current is not None:
        recs = [r for r in epoch_recs if r.get("program") == current["program"]]
        wall = _mean_wall(recs)
        prog = next((p for p in progs if p.name == current["program"]), None)
        if wall is None and prog is not None and member_steps_s:  # no epoch timed: the rate
            wall = len(prog.members) * prog.steps / max(prog.epochs, 1) / member_steps_s
        if wall is None:
            return None
        left += (current["epochs"] - current["epoch"]) * wall
        names = [p.name for p in progs]
        if current["program"] in names:
            later = progs[names.index(current["program"]) + 1:]
        elif progs:
            return None  # a program the plan does not know (a grown sweep): no estimate
        n = _program_members(plan, current["program"]) or len(
            (recs[-1].get("members") or {}).get("member") or []) or 1
        per_member_epoch = wall / n
        left += sum(len(p.members) * p.epochs for p in later) * per_member_epoch
        return left
    if not progs or not member_steps_s:
        return None
    return sum(len(p.members) * p.steps for p in progs) / member_steps_s


def status(workdir: str | os.PathLike) -> dict:
    """The state of the sweep in ``workdir`` (see the module docstring) as a JSON-able dict.

    Raises :class:`tr_jax.errors.UserError` when ``workdir`` is not a folder or holds no run.
    """
    wd = pathlib.Path(workdir).absolute()
    if not wd.is_dir():
        raise UserError(f"workdir {str(wd)!r} does not exist: give the --workdir of a "
                        "`tr-jax run`")
    if not any((wd / n).exists() for n in ("config.json", "run.lock", "log.txt")):
        raise UserError(f"{str(wd)!r} holds no tr-jax run (no config.json, run.lock or log.txt): "
                        "give the --workdir of a `tr-jax run`")
    now = time.time()
    holder = _read_lock(wd)
    alive = holder["state"] == "alive"
    finished = (wd / "cells.csv").exists()
    state = "running" if alive else "finished" if finished else "killed"
    lines = _log_lines(wd)
    recs = _metrics(wd)
    epoch_recs = [r for r in recs if r["kind"] == "epoch"]
    cfg = _config(wd)
    plan, plan_note = _plan(cfg)
    running = None if cfg is None else measures.groups(cfg)
    stages_ = _stages()
    enabled = [s for s in stages_ if running is None or s in running
               or s in ("dense", "retrain", "tables")]

    out: dict[str, Any] = {"workdir": str(wd), "time": now, "state": state, "holder": holder,
                           "config": None if cfg is None else cfg.get("name")}
    # where the run is
    logpos = _log_position(lines, enabled)
    last = recs[-1] if recs else None
    pos: dict[str, Any] = {k: logpos[k] for k in ("stage", "program", "unit", "done", "total")
                           if k in logpos}
    pos["source"] = "log.txt" if logpos.get("stage") else None
    # metrics.jsonl is flushed at progress checkpoints, the log's progress lines at once: the
    # log's position wins when it is ahead (a later stage or program, or more epochs done)
    use_metrics = last is not None and last.get("stage") in stages_ and (
        pos["stage"] is None or stages_.index(last["stage"]) > stages_.index(pos["stage"])
        or (last["stage"] == pos["stage"] and (
            pos.get("program") in (None, last.get("program"))
            and (pos.get("done") or 0) <= (last.get("epoch", last.get("chunk")) or 0))))
    current_epoch = None
    if pos.get("unit") == "epoch":
        current_epoch = {"program": pos.get("program"), "epoch": pos["done"],
                         "epochs": pos["total"]}
    if use_metrics:
        pos = {"stage": last["stage"], "program": last.get("program"), "source": "metrics.jsonl",
               "age_s": round(now - last.get("t", now), 1)}
        if last["kind"] == "epoch":
            pos.update(unit="epoch", done=last.get("epoch"), total=last.get("epochs"))
            current_epoch = {"program": last.get("program"), "epoch": last.get("epoch") or 0,
                             "epochs": last.get("epochs") or 0}
        else:
            pos.update(unit="chunk", done=last.get("chunk"), total=last.get("chunks"))
    if finished and not alive:
        pos = {"stage": None, "program": None, "source": None}
    out["position"] = pos

    # throughput of the last epoch line
    lep = epoch_recs[-1] if epoch_recs else None
    out["throughput"] = None if lep is None else {
        "program": lep.get("program"), "epoch": lep.get("epoch"),
        "member_steps_s": lep.get("member_steps_s"), "images_s": lep.get("images_s"),
        "epoch_wall_s": lep.get("wall_s"), "source": "metrics.jsonl"}
    if not use_metrics and "member_steps_s" in logpos and pos.get("unit") == "epoch":
        out["throughput"] = {"program": pos.get("program"), "epoch": pos.get("done"),
                             "member_steps_s": logpos["member_steps_s"],
                             "images_s": logpos["images_s"], "epoch_wall_s": None,
                             "source": "log.txt"}
    rate = (out["throughput"] or {}).get("member_steps_s")

    # ETAs
    eta: dict[str, Any] = {"stage_s": None, "run_s": None, "run_at_least_s": None, "note": ""}
    committed = _checkpoints(wd)
    if state == "running" and pos.get("stage"):
        stage = pos["stage"]
        stage_s = None
        if stage in ("dense", "retrain"):
            cur = current_epoch if pos.get("unit") == "epoch" else None
            stage_s = _training_eta(plan, stage, cur, epoch_recs, rate)
        elif pos.get("unit") == "chunk":
            wall = _mean_wall([r for r in recs if r["kind"] == "chunk"
                               and r.get("program") == pos.get("program")])
            if wall is not None:
                stage_s = max(0, (pos["total"] or 0) - (pos["done"] or 0)) * wall
        elif stage == "tables":
            stage_s = 0.0
        eta["stage_s"] = stage_s
        later = [s for s in enabled if stages_.index(s) > stages_.index(stage)
                 and s not in committed]
        train_left = 0.0 if stage_s is None else stage_s
        unknown = []
        for s in later:
            if s == "tables":
                continue
            if s in ("dense", "retrain") and plan is not None and rate:
                train_left += plan.member_steps(s) / rate
            else:
                unknown.append(s)
        if stage_s is None:
            eta["note"] = "the stage is not timed yet"
        elif unknown:
            eta["run_at_least_s"] = train_left
            eta["note"] = (f"{', '.join(unknown)} not timed yet"
                           + (f"; {plan_note}" if plan_note else ""))
        else:
            eta["run_s"] = train_left
            eta["note"] = plan_note if plan is not None else (plan_note or "")
            if plan is None and any(s in ("dense", "retrain") for s in later):
                eta["run_s"], eta["run_at_least_s"] = None, train_left
        if plan is None and not eta["note"]:
            eta["note"] = plan_note
    out["eta"] = eta

    sick = _sick(epoch_recs)
    out["sick"] = {"count": len(sick), "members": sick}
    out["last_log"] = lines[-1] if lines else None
    out["committed"] = committed
    out["metrics"] = (wd / "metrics.jsonl").exists()

    if state == "killed":
        out["rerun"] = _rerun(wd, lines, committed, enabled, plan)
    return out


def _rerun(wd: pathlib.Path, lines: list[str], committed: list[str], enabled: list[str],
           plan) -> dict:
    """What ``tr-jax run`` does when rerun on a killed workdir."""
    stages_ = _stages()
    done = [s for s in stages_ if s in committed]
    # a stage whose successors are committed is still loaded (its results feed the tables)
    load = done + [c for c in committed if c not in stages_ and not c.endswith("_progress")
                   and "_snap" not in c and _stage_of(c) not in done]
    resumes = []
    epochs_at = {}
    for line in lines:
        m = _COMMITTED.search(line)
        if m and m.group(1).endswith("_progress"):
            e = _AFTER_EPOCH.search(m.group(2) or "")
            if e:
                epochs_at[m.group(1)] = int(e.group(1))
    for c in committed:
        if c.endswith("_progress") and _stage_of(c) not in done:
            prog = c[:-len("_progress")]
            epoch = epochs_at.get(c)
            total = None
            if plan is not None:
                total = next((p.epochs for p in plan.programs if p.name == prog), None)
            resumes.append({"program": prog, "after_epoch": epoch, "epochs": total})
    chunks = []
    for name, n in sorted(_chunk_items(wd).items()):
        stage = _chunk_stages().get(name)
        if n and stage and stage not in done:
            chunks.append({"stage": stage, "records": name, "items_done": n})
    remaining = [s for s in enabled if s not in done]
    return {"load": load, "resumes": resumes, "chunks": chunks, "remaining": remaining}


# -- text ---------------------------------------------------------------------------------------
def _dur(s: float | None) -> str:
    if s is None:
        return "unknown"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def format_status(st: dict) -> str:
    """The status dict of :func:`status` as text, one fact a line."""
    h = st["holder"]
    head = {"running": "running", "finished": "finished",
            "killed": "not running and not finished (killed, or stopped by an error)"}
    lines = [f"workdir {st['workdir']}" + (f" (config {st['config']!r})" if st.get("config")
                                            else ""),
             f"state: {head.get(st['state'], st['state'])}"]
    if h["state"] == "none":
        lines.append("holder: none (no run.lock)")
    else:
        lines.append(f"holder: {h['state']} - host {h.get('host')}, pid {h.get('pid')}, started "
                     f"{h.get('start')}, heartbeat {_dur(h.get('heartbeat_age_s'))} ago "
                     f"({h.get('why')})")
    pos = st["position"]
    if pos.get("stage"):
        where = pos["stage"] + (f" / {pos['program']}" if pos.get("program")
                                and pos["program"] != pos["stage"] else "")
        if pos.get("unit"):
            unit = {"epoch": "epochs", "chunk": "chunks", "item": "items"}[pos["unit"]]
            where += f": {unit} {pos.get('done')}/{pos.get('total')} done"
        verb = "under way" if st["state"] == "running" else "last seen"
        lines.append(f"stage {verb}: {where} (from {pos['source']})")
    tp = st.get("throughput")
    if tp:
        lines.append(f"throughput ({tp['program']} epoch {tp['epoch']}): "
                     f"{_num(tp.get('member_steps_s'))} member-steps/s, "
                     f"{_num(tp.get('images_s'))} images/s"
                     + (f", {_num(tp['epoch_wall_s'])} s/epoch" if tp.get("epoch_wall_s") else "")
                     + f" (from {tp.get('source')})")
    if st["state"] == "running":
        eta = st["eta"]
        run = (_dur(eta["run_s"]) if eta["run_s"] is not None else
               f"unknown (at least {_dur(eta['run_at_least_s'])})"
               if eta.get("run_at_least_s") is not None else "unknown")
        lines.append(f"ETA: stage {_dur(eta['stage_s'])}, run {run}"
                     + (f" ({eta['note']})" if eta.get("note") else ""))
    sick = st["sick"]
    if sick["count"]:
        desc = ", ".join(f"{m['stage']} member {m['member']}" for m in sick["members"][:10])
        more = f" and {sick['count'] - 10} more" if sick["count"] > 10 else ""
        lines.append(f"sick members so far: {sick['count']} ({desc}{more})")
    elif st.get("metrics"):
        lines.append("sick members so far: none")
    if st.get("committed"):
        lines.append(f"committed: {', '.join(st['committed'])}")
    rr = st.get("rerun")
    if rr:
        lines.append("a rerun (the same `tr-jax run` command) would:")
        lines.append("  load: " + (", ".join(rr["load"]) or "nothing (starts from scratch)"))
        for r in rr["resumes"]:
            after = (f"after epoch {r['after_epoch']}" if r["after_epoch"] is not None
                     else "from its progress checkpoint")
            of = f" of {r['epochs']}" if r.get("epochs") and r["after_epoch"] is not None else ""
            lines.append(f"  {r['program']} resumes {after}{of}")
        for c in rr["chunks"]:
            lines.append(f"  {c['stage']} resumes with {c['items_done']} item(s) of its "
                         f"{c['records']} records done")
        lines.append("  remaining: " + (", ".join(rr["remaining"]) or "nothing"))
    if st.get("last_log"):
        lines.append(f"last log line: {st['last_log']}")
    return "\n".join(lines)


def _num(x) -> str:
    return "n/a" if not _finite(x) else f"{x:.4g}"


def watch(workdir: str | os.PathLike, every_s: float, *, as_json: bool = False,
          count: int | None = None, echo: Callable[[str], None] = print,
          sleep: Callable[[float], None] = time.sleep) -> dict:
    """Print the status every ``every_s`` seconds until the run is no longer alive (finished,
    killed), Ctrl-C, or ``count`` prints; returns the last status."""
    n = 0
    while True:
        st = status(workdir)
        echo(json.dumps(st, indent=1, default=str) if as_json else format_status(st))
        n += 1
        if st["state"] != "running" or (count is not None and n >= count):
            return st
        try:
            sleep(every_s)
        except KeyboardInterrupt:
            return st
        if not as_json:
            echo("")


if __name__ == "__main__":  # pragma: no cover
    print(format_status(status(sys.argv[1])))
