"""Growing a finished sweep: a config that only adds temperatures, densities or seeds.

A workdir belongs to one config. Another config is refused with the keys that differ — unless
it only *adds* values to a finished run (:func:`growth`): then the finished stages are kept as
``stages/{stage}@grown`` (the old config in ``grown.json``), the new run computes only the new
members and takes the old members' numbers from the kept stages, and :func:`finish` drops them
once the grown run is complete. Every step is idempotent, so a kill in between is repaired by
rerunning the same command.

Which stages are kept is data: :data:`GROWN_STAGES` by default (the training stages
:data:`TRAIN_STAGES` and the measure stages :data:`MEASURE_STAGES`); a caller with its own
list of growable measure stages passes ``grown_stages(measure_stages)`` to
:class:`tr_jax.sweep.store.Workdir` (``grown_stages=``).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tr_jax.files import atomic_write_text
from tr_jax.sweep.versions import read_json

GROWN = "grown.json"  # the config of the finished run a grown run extends
GROWN_SUFFIX = "@grown"
#: the training stages a grown run keeps (their checkpoints are the old members' weights)
TRAIN_STAGES = ("dense", "retrain")
#: the measure stages a grown run keeps by default (their checkpoints: the old members' numbers)
MEASURE_STAGES = ("measure", "bezier", "hessian")
#: the stages whose finished checkpoints a grown run keeps, by default
GROWN_STAGES = TRAIN_STAGES + MEASURE_STAGES
#: config keys a finished sweep may grow along (each new list a superset of the old one; with
#: the epochs knob, ``dense.epochs`` may grow too, for later temperature checkpoints)
GROW_KEYS = ("temperatures", "prune.densities", "dense.seeds", "retrain.seeds")
#: the files of a finished run that a grown run rewrites (removed when growth starts)
FINISHED_FILES = ("results.csv", "cells.csv", "summary.txt")


def grown_stages(measure_stages: Iterable[str] = MEASURE_STAGES) -> tuple[str, ...]:
    """The stages a grown run keeps: the training stages and ``measure_stages`` (the growable
    measure stages, e.g. from a registry of measure stages)."""
    return TRAIN_STAGES + tuple(s for s in measure_stages if s not in TRAIN_STAGES)


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"dotted.key": value}``."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two flat configs, sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


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


def plan(workdir: pathlib.Path, old: dict, new: dict) -> dict[str, list]:
    """Compare a workdir's config ``old`` with the ``new`` one (both nested, and different): the
    values ``new`` adds, or a ValueError naming the keys that differ otherwise."""
    fo, fn = flat(old), flat(new)
    keys = diff(fo, fn)
    added = growth(fo, fn, keys)
    if added is None:
        shown = ", ".join(f"{k}: {fo.get(k)!r} -> {fn.get(k)!r}" for k in keys[:6])
        raise ValueError(
            f"workdir {str(workdir)!r} holds a run of a different config ({shown}"
            f"{', ...' if len(keys) > 6 else ''}). Use another --workdir, or delete "
            "this one to start over. (A finished workdir accepts a config that only "
            "adds temperatures, densities or seeds.)")
    return added


def check_growable(workdir: pathlib.Path, old: dict) -> None:
    """Refuse to grow an unfinished run, or one still growing from another config."""
    if not (workdir / "cells.csv").exists() and not (workdir / GROWN).exists():
        raise ValueError(
            f"workdir {str(workdir)!r} holds an unfinished run; a sweep can only grow "
            "(more temperatures, densities or seeds) once it is finished: rerun it with its "
            "own config first, then with the grown one.")
    if (workdir / GROWN).exists() and read_json(workdir / GROWN) != old:
        raise ValueError(f"workdir {str(workdir)!r} is still growing from an earlier config: "
                         "finish that run (rerun its command) before growing it again.")


def keep_finished(workdir: pathlib.Path, old: dict, config_json: str,
                  committed: Callable[[pathlib.Path], bool],
                  stages: Sequence[str] = GROWN_STAGES) -> None:
    """Start growing (process 0 only; idempotent): record the old config in ``grown.json``, move
    each committed stage of ``stages`` to ``stages/{stage}@grown``, remove the finished run's
    tables and write the new config."""
    if not (workdir / GROWN).exists():
        atomic_write_text(workdir / GROWN, json.dumps(old, indent=1) + "\n")
    root = workdir / "stages"
    for name in stages:
        d, kept = root / name, root / f"{name}{GROWN_SUFFIX}"
        if committed(d) and not kept.exists():
            os.rename(d, kept)
    for name in FINISHED_FILES:
        (workdir / name).unlink(missing_ok=True)
    atomic_write_text(workdir / "config.json", config_json)


def finish(workdir: pathlib.Path, stages: Sequence[str] = GROWN_STAGES) -> None:
    """Drop the old run's kept stages and ``grown.json`` (process 0 only), once every stage of
    the grown run is committed. Any other ``stages/*@grown`` folder is dropped too (kept under an
    earlier list of growable stages)."""
    root = workdir / "stages"
    for name in stages:
        shutil.rmtree(root / f"{name}{GROWN_SUFFIX}", ignore_errors=True)
    if root.is_dir():
        for p in root.glob(f"*{GROWN_SUFFIX}"):
            shutil.rmtree(p, ignore_errors=True)
    (workdir / GROWN).unlink(missing_ok=True)


def describe(added: dict[str, list]) -> str:
    """The log line's account of what a grown run adds."""
    return "; ".join(f"{k} {v}" for k, v in added.items())
