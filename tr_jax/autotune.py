"""``members_strategy = "auto"`` measured: the fastest members layout on the device at hand.

    choice = tj.autotune.choose(model, step_cfg, image_shape=(32, 32, 3), members=64,
                                budget_s=60.0, chunk_steps=4)
    choice.strategy        # e.g. 'gemm'
    print(tj.autotune.describe(choice))   # the choice and every measured alternative

For one program shape (model, ``StepConfig``, image shape, M members, steps per compiled call)
``choose`` times a few train steps of each candidate layout through ``Trainer.train_epoch`` (the
code path a sweep runs: ``loop``/``threads`` per member, ``vmap``, ``gemm``, ``map``,
``map_chunked:k`` stacked), on synthetic data on the default device, and returns the fastest with
the table of what was measured. The candidates are timed in order, the backend's fixed default
(``members.default_strategy``) first, after one compile-and-warm-up call each; the median of
``repeats`` calls counts.

Budget: tuning one shape may spend ``budget_s`` seconds (a sweep's ``run.autotune_budget_s``,
default ``tr_jax.config.AUTOTUNE_BUDGET_S``). When the first candidate's cost, times the number
of candidates, would exceed it, tuning stops there and the backend default
is kept, with the reason in ``Choice.reason``; later candidates are skipped once the budget is
spent. The price is set by the first candidate's compile and first call, timed at the job's own
program shape (pass the job's ``StepConfig`` and steps per call): when all M members are timed
that compile is the job's own (``Trainer``'s compiled programs are cached per process), so a
skipped tuning costs one call.

Memory: the candidates are timed at a *probe* of ``P <= M`` members that fits a memory budget
(``memory_budget_bytes``: the run's ``run.memory_budget_gb``, else ``MEMORY_FRACTION`` of the
accelerator's memory, or of the host's RAM on CPU) at the per-member footprint of one member's
compiled train step (``one_member_step``: temporaries + arguments + outputs of its memory
analysis). ``P`` is M when M members fit, else the largest power of two that does (a stable cache
key). ``gemm``, whose im2col step needs ~4x the temporaries of a plain conv step (PreResNet-20,
CIFAR shapes), is timed at what fits its own footprint (<= P; its row's ``members``; its
one-member step is compiled only when it is about to be timed). ``Choice.probe``, the table rows
(``members``) and the reason say it ("timed at 64 of 1296 members: memory budget 5.7 GiB (25% of
the host RAM) / 90.2 MiB per member"). Nothing of the sweep is allocated: the probe's members are
copies of one freshly initialised member, on synthetic data.

Cache: the choice (or the skip) is kept in ``autotune.json`` under ``cache_dir()``
(``$TR_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/tr_jax``, else ``~/.cache/tr_jax``), keyed by
(backend, device kind, device count, model, step config less its normalisation constants, image
shape, M, probe size, steps per call, candidates, tr_jax and jax versions); a second call with the
same key times nothing, and ``lookup`` (``--dry-run``) reads it without timing. A cached
entry never changes results: every strategy computes the same numbers within float tolerance, and
the strategy in use is a provenance column of the tables.

A fixed strategy wins: ``resolve_strategy("vmap", ...)`` returns ``vmap`` without timing anything;
only ``"auto"`` measures.
"""
from __future__ import annotations

import dataclasses
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

from tr_jax import __version__, models
from tr_jax import members as mem
from tr_jax.files import atomic_write_text
from tr_jax.training import Trainer, init_state, stack

MEMORY_FRACTION = 0.25  # of the device's memory (host RAM on CPU) the timed probe may take
STEP_TIMING_S = 2.0  # one_member_step stops timing calls once they took this long in all
CACHE_ENV = "TR_JAX_CACHE_DIR"
CACHE_FILE = "autotune.json"
MAP_ON_CPU = ("not timed on CPU: a rolled lax.map of conv train steps runs each step ~25-70x "
              "slower on XLA CPU; pass candidates= to time it")


class Choice(NamedTuple):
    """An autotuning outcome: the strategy to use, the measured table (one dict per candidate:
    ``strategy`` and either ``member_steps_s``, ``seconds``, ``compile_s``, ``vs_default`` or
    ``skipped``), why (``reason``), whether it came from the cache, and the members it was timed
    at (``probe``, <= M; None when nothing was timed)."""

    strategy: str
    table: list
    reason: str
    cached: bool = False
    probe: int | None = None


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


def _timing_repr(step_cfg: Any) -> str:
    """``repr(step_cfg)`` without its normalisation constants (they change no timing, and a
    ``--dry-run`` that reads only the data's shape does not know them)."""
    if dataclasses.is_dataclass(step_cfg) and {"mean", "std"} <= {
            f.name for f in dataclasses.fields(step_cfg)}:
        step_cfg = dataclasses.replace(step_cfg, mean=(), std=())
    return repr(step_cfg)


def cache_key(model: nn.Module, step_cfg: Any, image_shape: tuple[int, ...], members: int,
              chunk_steps: int, candidates: Sequence[str],
              probe: int | None = None) -> tuple[str, dict]:
    """(sha256 key, the fields it hashes) of one program shape on this device and version, timed
    at ``probe`` members (None: all ``members``)."""
    fields = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
              "device_count": jax.device_count(), "model": repr(model),
              "step_config": _timing_repr(step_cfg), "image_shape": list(image_shape),
              "members": int(members), "probe": int(members if probe is None else probe),
              "chunk_steps": int(chunk_steps),
              "candidates": list(candidates), "tr_jax": __version__,
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
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
        return None
    except OSError as e:
        return f"autotune cache not written ({path}: {e})"


def device_memory_bytes() -> int | None:
    """The accelerator's memory limit (None on CPU or when the backend does not say)."""
    if jax.default_backend() == "cpu":
        return None
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def host_memory_bytes() -> int | None:
    """This machine's RAM (physical pages x page size), lowered to the cgroup's memory limit
    when there is one (a container); None when the OS says neither."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = None
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(pathlib.Path(f).read_text().strip())
        except (OSError, ValueError):  # absent, or "max"
            continue
        if limit > 0 and (total is None or limit < total):
            total = limit
        break
    return total


def default_memory_budget() -> tuple[float | None, str]:
    """(bytes, what they are) the timed probe may take when the run sets no budget:
    ``MEMORY_FRACTION`` of the accelerator's memory, or of the host's RAM on CPU."""
    dev = device_memory_bytes()
    if dev:
        return MEMORY_FRACTION * dev, f"{MEMORY_FRACTION:.0%} of the device memory"
    host = host_memory_bytes()
    if host:
        return MEMORY_FRACTION * host, f"{MEMORY_FRACTION:.0%} of the host RAM"
    return None, "no memory size known"


def _synthetic(model: nn.Module, step_cfg: Any, image_shape: tuple[int, ...], n_images: int):
    """Synthetic uint8 images and int32 labels (``n_images``) and one freshly initialised
    member's train state: what the autotuner and the dry run's step estimate time."""
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.integers(0, 256, (n_images, *image_shape), dtype=np.uint8))
    Y = jnp.asarray(rng.integers(0, 10, (n_images,)), jnp.int32)
    v = models.init(model, jax.random.key(0), tuple(image_shape))
    one = init_state(v, jax.tree.map(jnp.ones_like, v["params"]), jax.random.key(1), 0.1, 5e-4,
                     step_cfg.momentum, optimizer=step_cfg.optimizer)
    return X, Y, one


_ONE_STEP: dict = {}  # (model, step config, image shape, program) -> compiled one-member step


def one_member_step(model: nn.Module, step_cfg: Any, image_shape: tuple[int, ...],
                    repeats: int = 0, strategy: str = "vmap") -> dict:
    """One member's train step, one step per compiled call (``strategy``'s program model:
    ``gemm`` the im2col one, any other the model itself), on synthetic data: ``flops_per_step``
    and ``bytes_per_member`` (temporaries + arguments + outputs; at least the state's bytes) from
    the compiled program's cost and memory analyses, ``compile_s``, ``device``, and with
    ``repeats`` the median ``seconds_per_step`` of up to that many calls (fewer once they took
    ``STEP_TIMING_S``: a VGG-16 step on 2 CPU cores takes seconds). The dry run's step estimate
    and the autotuner's per-member footprint; compiled and timed once per process per shape."""
    prog = "gemm" if mem.resolve(strategy) == "gemm" else "vmap"
    key = (model, _timing_repr(step_cfg), tuple(image_shape), prog)  # mean/std: same program
    hit = _ONE_STEP.get(key)
    if hit is None:
        bs = int(step_cfg.batch_size)
        X, Y, one = _synthetic(model, step_cfg, image_shape, bs)
        state = stack([one])
        fn = Trainer(model, step_cfg, prog, chunk_steps=1).train_fn(1, bs)
        args = (X, Y, jnp.int32(0), jnp.int32(0), jnp.ones((1,), jnp.float32))
        t = time.perf_counter()
        compiled = fn.lower(state, *args).compile()
        compile_s = time.perf_counter() - t
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        memo = compiled.memory_analysis()
        nbytes = sum(getattr(memo, k, 0) for k in ("temp_size_in_bytes", "argument_size_in_bytes",
                                                   "output_size_in_bytes")) if memo else 0
        nbytes = max(int(nbytes), sum(x.nbytes for x in jax.tree.leaves(state)))
        hit = {"compiled": compiled, "state": state, "args": args, "compile_s": compile_s,
               "flops_per_step": float((cost or {}).get("flops", 0.0)), "bytes_per_member": nbytes}
        while len(_ONE_STEP) >= 4:  # a few shapes per process (dense, retrain, gemm)
            _ONE_STEP.pop(next(iter(_ONE_STEP)))
        _ONE_STEP[key] = hit
    out = {k: hit[k] for k in ("flops_per_step", "bytes_per_member", "compile_s")}
    out["device"] = jax.devices()[0].device_kind
    if repeats:  # kept with the compile: the dense and retrain steps are often one program
        times = hit.setdefault("times", [])
        while len(times) < repeats and sum(times) < STEP_TIMING_S:  # a slow step: one call
            st = jax.tree.map(jnp.copy, hit["state"])  # the call donates its state
            t = time.perf_counter()
            jax.block_until_ready(hit["compiled"](st, *hit["args"]))
            times.append(time.perf_counter() - t)
        out["seconds_per_step"] = float(np.median(times))
    return out


def _fit(bytes_per_member: float, budget_bytes: float | None, members: int) -> int:
    """Members timed under a memory budget: all ``members`` when they fit, else the largest
    power of two that does (at least 1)."""
    if not budget_bytes:
        return members
    fit = int(budget_bytes // max(bytes_per_member, 1.0))
    return members if fit >= members else 1 << max(0, fit.bit_length() - 1)


def probe_size(model: nn.Module, step_cfg: Any, image_shape: tuple[int, ...], members: int,
               memory_budget_bytes: float | None = None, strategy: str = "vmap"
               ) -> tuple[int, str]:
    """(P, why): the members ``choose`` times ``strategy`` at for a program of ``members``:
    what fits ``memory_budget_bytes`` (None: ``default_memory_budget()``) at the footprint of
    one compiled member step (``one_member_step``); compiles that step once, times nothing."""
    if memory_budget_bytes:
        budget, src = float(memory_budget_bytes), "run.memory_budget_gb"
    else:
        budget, src = default_memory_budget()
    try:
        per = one_member_step(model, step_cfg, image_shape, strategy=strategy)["bytes_per_member"]
    except Exception as e:  # noqa: BLE001  (the timing would fail the same way; stay small)
        return 1, f"timed at 1 of {members} members: footprint unknown ({type(e).__name__})"
    if not budget:
        return members, f"timed at all {members} members ({src}: no memory budget)"
    probe = _fit(per, budget, members)
    at = f"at {probe} of {members}" if probe < members else f"at all {members}"
    return probe, (f"timed {at} members: memory budget {_size(budget)} ({src}) / "
                   f"{_size(per)} per member")


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def measure(model: nn.Module, step_cfg: Any, image_shape: tuple[int, ...], members: int,
            strategy: str, chunk_steps: int, repeats: int = 2,
            give_up: Callable[[float], bool] | None = None) -> dict:
    """Time ``strategy``'s train programs for ``members`` members (copies of one member): one
    compile-and-warm-up call, then the median of ``repeats`` calls of ``chunk_steps`` steps each
    (synthetic uint8 data, batch ``step_cfg.batch_size``). Returns ``members`` (as stacked),
    ``member_steps_s``, ``seconds`` (per call) and ``compile_s`` (the first call); only
    ``members`` and ``compile_s`` when ``give_up(compile_s)`` is true."""
    X, Y, one = _synthetic(model, step_cfg, image_shape, step_cfg.batch_size * chunk_steps)
    tr = Trainer(model, step_cfg, strategy, chunk_steps=chunk_steps, drop_last=True,
                 milestones=())
    stacked = jax.tree.map(lambda x: jnp.repeat(x[None], members, axis=0), one)
    n = mem.num_members(stacked)
    groups = mem.split_groups(stacked, tr.strategy)
    del stacked, one
    times = []
    for epoch in range(repeats + 1):
        t = time.perf_counter()
        groups, _ = tr.train_epoch(groups, X, Y, epoch)
        jax.block_until_ready(groups)
        times.append(time.perf_counter() - t)
        if epoch == 0 and give_up is not None and give_up(times[0]):
            return {"members": n, "compile_s": times[0]}
    sec = statistics.median(times[1:])
    return {"members": n, "member_steps_s": n * chunk_steps / sec, "seconds": sec,
            "compile_s": times[0]}


def _cached(key: str, fields: dict) -> Choice | None:
    hit = _read_cache(cache_dir() / CACHE_FILE).get(key)
    if hit and hit.get("fields") == fields:
        return Choice(hit["strategy"], hit["table"], hit["reason"], cached=True,
                      probe=hit.get("probe"))
    return None


def lookup(model: nn.Module, step_cfg: Any, image_shape: tuple[int, ...], members: int,
           candidates: Sequence[str] | None = None, *, chunk_steps: int = 4,
           memory_budget_bytes: float | None = None) -> Choice | None:
    """The cached choice for this program shape on this device and version (timed at the probe
    ``probe_size`` gives), or None; times nothing (for ``--dry-run``): it compiles one member's
    step for the probe, unless that is already done in this process."""
    cands = _ordered(check_candidates(
        default_candidates(members) if candidates is None else candidates, model))
    probe, _ = probe_size(model, step_cfg, image_shape, members, memory_budget_bytes)
    return _cached(*cache_key(model, step_cfg, image_shape, members, chunk_steps, cands, probe))


def planned(model: nn.Module, step_cfg: Any, image_shape: tuple[int, ...], members: int,
            candidates: Sequence[str] | None = None, *, budget_s: float, chunk_steps: int = 4,
            memory_budget_bytes: float | None = None) -> str:
    """``--dry-run``'s line for ``members_strategy = "auto"``: the cached choice when there is
    one (``describe``), else what the run will time, at how many members and for about how long
    (``budget_s``, the run's time budget). Times nothing and allocates no sweep: one member's
    step is compiled."""
    cands = _ordered(check_candidates(
        default_candidates(members) if candidates is None else candidates, model))
    probe, why = probe_size(model, step_cfg, image_shape, members, memory_budget_bytes)
    hit = _cached(*cache_key(model, step_cfg, image_shape, members, chunk_steps, cands, probe))
    if hit is not None:
        return describe(hit, members)
    return (f"members strategy M={members}: auto, measured at the start of the run, "
            f"~{budget_s:.0f} s (the autotune time budget on {jax.default_backend()}; candidates "
            f"{', '.join(cands)}, {why}); nothing cached yet, the backend default is "
            f"{mem.default_strategy()!r}")


def _ordered(cands: tuple[str, ...]) -> tuple[str, ...]:
    """``cands`` with the backend default first (otherwise in the given order)."""
    default = mem.default_strategy()
    return tuple(sorted(cands, key=lambda s: s != default))


def _fastest(table: list[dict], default: str) -> str:
    timed = [r for r in table if "member_steps_s" in r]
    return max(timed, key=lambda r: r["member_steps_s"])["strategy"] if timed else default


def choose(model: nn.Module, step_cfg: Any, image_shape: tuple[int, ...], members: int,
           candidates: Sequence[str] | None = None, *, budget_s: float, chunk_steps: int = 4,
           repeats: int = 2, memory_budget_bytes: float | None = None,
           use_cache: bool = True, echo: Callable[[str], None] | None = None) -> Choice:
    """The fastest members strategy for one program shape on this device (module docstring).

    ``candidates`` (None: ``default_candidates``) are validated by ``check_candidates``; the
    backend default is timed first when it is among them. ``budget_s`` (> 0; a sweep's
    ``run.autotune_budget_s``) bounds the seconds spent timing, compiles included;
    ``memory_budget_bytes`` (None: ``default_memory_budget()``) bounds the memory: candidates
    are timed at ``probe_size`` members (``gemm``, whose step needs more, at what fits at its own
    footprint), said in ``Choice.probe``, the table and the reason.
    ``use_cache`` reads and writes ``cache_dir() / CACHE_FILE``. ``echo`` receives one line per
    timed candidate."""
    if members < 1:
        raise ValueError(f"members={members} must be >= 1")
    if not budget_s > 0:
        raise ValueError(f"budget_s={budget_s!r} must be > 0 (seconds of timing)")
    default = mem.default_strategy()
    cands = _ordered(check_candidates(
        default_candidates(members) if candidates is None else candidates, model))
    cpu, budget = jax.default_backend() == "cpu", float(budget_s)
    probe, at = probe_size(model, step_cfg, image_shape, members, memory_budget_bytes)
    key, fields = cache_key(model, step_cfg, image_shape, members, chunk_steps, cands, probe)
    path = cache_dir() / CACHE_FILE
    if use_cache:
        hit = _cached(key, fields)
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
            n = probe
            if s == "gemm" and probe > 1:  # im2col: a heavier step, timed at what fits it
                n = min(probe, probe_size(model, step_cfg, image_shape, members,
                                          memory_budget_bytes, strategy="gemm")[0])
            row = {"strategy": s, **measure(model, step_cfg, image_shape, n, s,
                                            chunk_steps, repeats, give_up=over)}
        except Exception as e:  # e.g. out of memory at large M: the others still count
            row = {"strategy": s, "skipped": f"failed: {type(e).__name__}: {str(e)[:200]}"}
        if "compile_s" in row and "member_steps_s" not in row:
            first = row.pop("compile_s")
            reason = (f"autotuning skipped: ~{first * len(cands):.0f}s for {len(cands)} "
                      f"candidates ({first:.1f}s for the compile and first call of {s!r}) would "
                      f"exceed the budget {budget:.0f}s (run.autotune_budget_s); kept the "
                      f"backend default {default!r}")
            table += [{"strategy": c, "skipped": "over budget",
                       **({"members": row.get("members", n)} if c == s else {})} for c in cands]
            break
        table.append(row)
        if echo and "member_steps_s" in row:
            echo(f"autotune M={members} {s} (timed at {row.get('members', n)}): "
                 f"{row['member_steps_s']:.1f} member-steps/s "
                 f"(compile + first call {row['compile_s']:.1f}s)")
    best = default if reason else _fastest(table, default)
    base = next((r for r in table if r["strategy"] == default and "member_steps_s" in r), None)
    for r in table:
        if base and "member_steps_s" in r:
            r["vs_default"] = r["member_steps_s"] / base["member_steps_s"]
    reason = (reason or (f"measured fastest of {sum('member_steps_s' in r for r in table)} "
                         f"timed candidates in {time.perf_counter() - t0:.0f}s")) + f"; {at}"
    choice = Choice(best, table, reason, probe=probe)
    if use_cache:
        err = _write_cache(path, key, {"strategy": best, "table": table, "reason": reason,
                                       "probe": probe, "fields": fields, "time": time.time()})
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
            at = (f" (at {r['members']} members)" if r.get("members", choice.probe)
                  != choice.probe else "")
            rows.append(f"{r['strategy']} {r['member_steps_s']:.1f}/s{rel}{at}")
        else:
            rows.append(f"{r['strategy']} ({r['skipped']})")
    m = f" M={members}" if members is not None else ""
    src = ", cached" if choice.cached else ""
    alts = f"; member-steps/s: {', '.join(rows)}" if rows else ""
    return f"members strategy{m}: {choice.strategy} ({choice.reason}{src}){alts}"
