"""``members_strategy = "auto"`` measured: the fastest members layout on the device at hand (issue 18).

    choice = tj.autotune.choose(model, step_cfg, image_shape=(32, 32, 3), members=64,
                                chunk_steps=4)
    choice.strategy        # e.g. 'gemm'
    print(tj.autotune.describe(choice))   # the choice and every measured alternative

For one program shape (model, ``StepConfig``, image shape, M members, steps per compiled call)
``choose`` times a few train steps of each candidate layout through ``Trainer.train_epoch`` (the
code path a sweep runs: ``loop``/``threads`` per member, ``vmap``, ``gemm``, ``map``,
``map_chunked:k`` stacked), on synthetic data on the default device, and returns the fastest with
the table of what was measured. The candidates are timed in order, the backend's fixed default
(``members.default_strategy``) first, after one compile-and-warm-up call each; the median of
``repeats`` calls counts.

Budget: tuning one shape may spend ``budget_s`` seconds (default: ``CPU_BUDGET_S`` on CPU, 5 % of
the quick job's ~6 min on 2 cores, ``ACCELERATOR_BUDGET_S`` elsewhere). When the first candidate's
cost, times the number of candidates, would exceed it, tuning stops there and the backend default
is kept, with the reason in ``Choice.reason``; later candidates are skipped once the budget is
spent. The price is set by the first candidate's compile and first call, timed at the job's own
program shape (pass the job's ``StepConfig`` and steps per call): that compile is the job's own
(``Trainer``'s compiled programs are cached per process), so a skipped tuning costs one call.

Cache: the choice (or the skip) is kept in ``autotune.json`` under ``cache_dir()``
(``$TR_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/tr_jax``, else ``~/.cache/tr_jax``), keyed by
(backend, device kind, device count, model, step config, image shape, M, steps per call,
candidates, tr_jax and jax versions); a second call with the same key times nothing. A cached
entry never changes results: every strategy computes the same numbers within float tolerance, and
the strategy in use is a provenance column of the tables.

A fixed strategy wins: ``resolve_strategy("vmap", ...)`` returns ``vmap`` without timing anything;
only ``"auto"`` measures.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import statistics
import time
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tr_jax import members as mem

QUICK_JOB_S = 360.0  # configs/quick.py on the 2-core CPU: ~6 min wall (README)
CPU_BUDGET_S = 0.05 * QUICK_JOB_S  # the bound: 5 % of the quick job
ACCELERATOR_BUDGET_S = 120.0
CACHE_ENV = "TR_JAX_CACHE_DIR"
OFF_ENV = "TR_JAX_AUTOTUNE_OFF"  # "1": a sweep's "auto" is the backend default, nothing timed
CACHE_FILE = "autotune.json"
MAP_ON_CPU = ("not timed on CPU: a rolled lax.map of conv train steps runs each step ~25-70x "
              "slower on XLA CPU (DESIGN.md); pass candidates= to time it")


class Choice(NamedTuple):
    """An autotuning outcome: the strategy to use, the measured table (one dict per candidate:
    ``strategy`` and either ``member_steps_s``, ``seconds``, ``compile_s``, ``vs_default`` or
    ``skipped``), why (``reason``), and whether it came from the cache."""

    strategy: str
    table: list
    reason: str
    cached: bool = False


def default_candidates(members: int, backend: str | None = None) -> tuple[str, ...]:
    """The layouts ``auto`` times: the backend default first; ``threads`` only on CPU;
    ``map``/``map_chunked`` only on accelerators (on CPU they are listed, not timed)."""
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return ("threads", "loop", "vmap", "gemm")
    chunked = (f"map_chunked:{members // 4}",) if members >= 8 else ()
    return ("vmap", "gemm", "map", *chunked, "loop")


def model_candidates(model: nn.Module, members: int, backend: str | None = None
                     ) -> tuple[str, ...]:
    """``default_candidates`` without ``gemm`` for a model that has no ``conv_impl`` (a user's
    own model: its convs are its own)."""
    gemm_ok = "conv_impl" in getattr(model, "__dataclass_fields__", {})
    return tuple(c for c in default_candidates(members, backend) if c != "gemm" or gemm_ok)


def check_candidates(candidates: Sequence[str], model: nn.Module | None = None) -> tuple[str, ...]:
    """The validated candidate strategies; raises ``ValueError`` naming the bad value: an empty
    list, ``auto`` (it is what is being chosen), an unknown strategy, a duplicate, or ``gemm`` for
    a model without ``conv_impl``."""
    if isinstance(candidates, str) or not candidates:
        raise ValueError(f"candidates must be a non-empty list of strategies, got {candidates!r}")
    out: list[str] = []
    for c in candidates:
        if c == "auto":
            raise ValueError("'auto' cannot be a candidate: it is what autotuning chooses; "
                             f"use strategies of {mem.STRATEGIES}")
        s = mem.resolve(c)  # raises on unknown names, listing the known ones
        if s in out:
            raise ValueError(f"candidate {c!r} is listed twice in {list(candidates)!r}")
        if s == "gemm" and model is not None and "conv_impl" not in getattr(
                model, "__dataclass_fields__", {}):
            raise ValueError(f"candidate 'gemm' needs a model with a conv_impl field; "
                             f"{type(model).__name__} has none")
        out.append(s)
    return tuple(out)


def cache_dir() -> pathlib.Path:
    """``$TR_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/tr_jax``, else ``~/.cache/tr_jax``."""
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "tr_jax"


def cache_key(model: nn.Module, step_cfg: Any, image_shape: tuple[int, ...], members: int,
              chunk_steps: int, candidates: Sequence[str]) -> tuple[str, dict]:
    """(sha256 key, the fields it hashes) of one program shape on this device and version."""
    import tr_jax
    fields = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
              "device_count": jax.device_count(), "model": repr(model),
              "step_config": repr(step_cfg), "image_shape": list(image_shape),
              "members": int(members), "chunk_steps": int(chunk_steps),
              "candidates": list(candidates), "tr_jax": tr_jax.__version__,
              "jax": jax.__version__}
    blob = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20], fields


def _read_cache(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: pathlib.Path, key: str, entry: dict) -> str | None:
    """Add ``entry`` under ``key`` (atomic replace); returns an error message instead of raising
    when the cache cannot be written (tuning still succeeds)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = entry
        from tr_jax.sweep.store import atomic_write_text
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
        return None
    except OSError as e:
        return f"autotune cache not written ({path}: {e})"


def measure(model: nn.Module, step_cfg: Any, image_shape: tuple[int, ...], members: int,
            strategy: str, chunk_steps: int, repeats: int = 2,
            give_up: Callable[[float], bool] | None = None) -> dict:
    """Time ``strategy``'s train programs for ``members`` members: one compile-and-warm-up call,
    then the median of ``repeats`` calls of ``chunk_steps`` steps each (synthetic uint8 data,
    batch ``step_cfg.batch_size``). Returns ``member_steps_s``, ``seconds`` (per call) and
    ``compile_s`` (the first call); only ``compile_s`` when ``give_up(compile_s)`` is true."""
    from tr_jax import models
    from tr_jax.training import Trainer, init_state, stack
    bs = step_cfg.batch_size
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.integers(0, 256, (bs * chunk_steps, *image_shape), dtype=np.uint8))
    Y = jnp.asarray(rng.integers(0, 10, (bs * chunk_steps,)), jnp.int32)
    v = models.init(model, jax.random.key(0), tuple(image_shape))
    one = init_state(v, jax.tree.map(jnp.ones_like, v["params"]), jax.random.key(1), 0.1, 5e-4,
                     step_cfg.momentum, optimizer=step_cfg.optimizer)
    tr = Trainer(model, step_cfg, strategy, chunk_steps=chunk_steps, drop_last=True,
                 milestones=())
    groups = mem.split_groups(stack([one] * members), tr.strategy)
    times = []
    for epoch in range(repeats + 1):
        t = time.perf_counter()
        groups, _ = tr.train_epoch(groups, X, Y, epoch)
        jax.block_until_ready(groups)
        times.append(time.perf_counter() - t)
        if epoch == 0 and give_up is not None and give_up(times[0]):
            return {"compile_s": times[0]}
    sec = statistics.median(times[1:])
    return {"member_steps_s": members * chunk_steps / sec, "seconds": sec,
            "compile_s": times[0]}


def lookup(model: nn.Module, step_cfg: Any, image_shape: tuple[int, ...], members: int,
           candidates: Sequence[str] | None = None, *, chunk_steps: int = 4) -> Choice | None:
    """The cached choice for this program shape on this device and version, or None; times
    nothing (for ``--dry-run`` without measuring)."""
    cands = _ordered(check_candidates(
        default_candidates(members) if candidates is None else candidates, model))
    key, fields = cache_key(model, step_cfg, image_shape, members, chunk_steps, cands)
    hit = _read_cache(cache_dir() / CACHE_FILE).get(key)
    if hit and hit.get("fields") == fields:
        return Choice(hit["strategy"], hit["table"], hit["reason"], cached=True)
    return None


def _ordered(cands: tuple[str, ...]) -> tuple[str, ...]:
    """``cands`` with the backend default first (otherwise in the given order)."""
    default = mem.default_strategy()
    return tuple(sorted(cands, key=lambda s: s != default))


def _fastest(table: list[dict], default: str) -> str:
    timed = [r for r in table if "member_steps_s" in r]
    return max(timed, key=lambda r: r["member_steps_s"])["strategy"] if timed else default


def choose(model: nn.Module, step_cfg: Any, image_shape: tuple[int, ...], members: int,
           candidates: Sequence[str] | None = None, *, chunk_steps: int = 4, repeats: int = 2,
           budget_s: float | None = None, use_cache: bool = True,
           echo: Callable[[str], None] | None = None) -> Choice:
    """The fastest members strategy for one program shape on this device (module docstring).

    ``candidates`` (None: ``default_candidates``) are validated by ``check_candidates``; the
    backend default is timed first when it is among them. ``budget_s`` (None: the backend's) bounds
    the seconds spent timing; ``use_cache`` reads and writes ``cache_dir() / CACHE_FILE``.
    ``echo`` receives one line per timed candidate."""
    if members < 1:
        raise ValueError(f"members={members} must be >= 1")
    default = mem.default_strategy()
    cands = _ordered(check_candidates(
        default_candidates(members) if candidates is None else candidates, model))
    cpu = jax.default_backend() == "cpu"
    budget = (CPU_BUDGET_S if cpu else ACCELERATOR_BUDGET_S) if budget_s is None else budget_s
    key, fields = cache_key(model, step_cfg, image_shape, members, chunk_steps, cands)
    path = cache_dir() / CACHE_FILE
    if use_cache:
        hit = lookup(model, step_cfg, image_shape, members, cands, chunk_steps=chunk_steps)
        if hit is not None:
            return hit
    table: list[dict] = []
    t0, reason = time.perf_counter(), ""
    for i, s in enumerate(cands):
        spent = time.perf_counter() - t0
        if cpu and s.startswith("map") and candidates is None:
            table.append({"strategy": s, "skipped": MAP_ON_CPU})
            continue
        if spent > budget and table:  # the first candidate is always timed
            table.append({"strategy": s, "skipped": f"budget {budget:.0f}s spent"})
            continue
        # the first candidate's first call (compile + one call) prices the whole tuning
        over = (lambda first: first * len(cands) > budget) if i == 0 and len(cands) > 1 else None
        try:
            row = {"strategy": s, **measure(model, step_cfg, image_shape, members, s,
                                            chunk_steps, repeats, give_up=over)}
        except Exception as e:  # e.g. out of memory at large M: the others still count
            row = {"strategy": s, "skipped": f"failed: {type(e).__name__}: {str(e)[:200]}"}
        if "compile_s" in row and "member_steps_s" not in row:
            first = row.pop("compile_s")
            reason = (f"autotuning skipped: ~{first * len(cands):.0f}s for {len(cands)} "
                      f"candidates ({first:.1f}s for the compile and first call of {s!r}) would "
                      f"exceed the budget {budget:.0f}s" + (
                          " (5% of the quick job on CPU)" if cpu and budget_s is None else "")
                      + f"; kept the backend default {default!r}")
            table += [{"strategy": c, "skipped": "over budget"} for c in cands]
            break
        table.append(row)
        if echo and "member_steps_s" in row:
            echo(f"autotune M={members} {s}: {row['member_steps_s']:.1f} member-steps/s "
                 f"(compile + first call {row['compile_s']:.1f}s)")
    best = default if reason else _fastest(table, default)
    base = next((r for r in table if r["strategy"] == default and "member_steps_s" in r), None)
    for r in table:
        if base and "member_steps_s" in r:
            r["vs_default"] = r["member_steps_s"] / base["member_steps_s"]
    reason = reason or (f"measured fastest of {sum('member_steps_s' in r for r in table)} "
                        f"timed candidates in {time.perf_counter() - t0:.0f}s")
    choice = Choice(best, table, reason)
    if use_cache:
        err = _write_cache(path, key, {"strategy": best, "table": table, "reason": reason,
                                       "fields": fields, "time": time.time()})
        if err and echo:
            echo(err)
    return choice


def resolve_strategy(strategy: str, model: nn.Module, step_cfg: Any,
                     image_shape: tuple[int, ...], members: int, **kwargs) -> Choice:
    """``run.members_strategy`` for one program shape: a fixed strategy is validated and returned
    as is (nothing timed); ``"auto"`` is ``choose(model, step_cfg, image_shape, members,
    **kwargs)``."""
    if strategy != "auto":
        return Choice(mem.resolve(strategy), [], "fixed in the config")
    return choose(model, step_cfg, image_shape, members, **kwargs)


def describe(choice: Choice, members: int | None = None) -> str:
    """One line for the log and ``--dry-run``: the choice, the reason and every alternative."""
    rows = []
    for r in choice.table:
        if "member_steps_s" in r:
            rel = f" {r['vs_default']:.2f}x" if "vs_default" in r else ""
            rows.append(f"{r['strategy']} {r['member_steps_s']:.1f}/s{rel}")
        else:
            rows.append(f"{r['strategy']} ({r['skipped']})")
    m = f" M={members}" if members is not None else ""
    src = ", cached" if choice.cached else ""
    alts = f"; member-steps/s: {', '.join(rows)}" if rows else ""
    return f"members strategy{m}: {choice.strategy} ({choice.reason}{src}){alts}"
