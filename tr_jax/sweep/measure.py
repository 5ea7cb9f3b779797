"""The measure stages of a sweep: every registered landscape measure (:mod:`tr_jax.measures`)
run over the retrained members or their pairs, as functions of the sweep's
:class:`~tr_jax.sweep.context.Context`.

A measure runs in chunks of whole cells, each chunk committed as its own record (written once);
a resumed stage reads the records that are done and computes the rest, and a grown sweep
measures only its new pairs and members. The measures of one group (LMC and CKA are the group
``measure``) share one checkpoint, committed when the group is done.
"""
from __future__ import annotations

import time

import numpy as np

from tr_jax import measures, sharding
from tr_jax.sweep import partial
from tr_jax.sweep.context import Context, measure_inputs, old_stage, progress_bar, restore
from tr_jax.sweep.metrics import fmt_duration
from tr_jax.sweep.tables import layers_key

__all__ = ["run_group", "chunked", "per_item", "cells_per_chunk", "with_layer_names"]


def chunk_metrics(ctx: Context, group: str, stage: str, lo: int, hi: int, n: int,
                  size: int) -> None:
    """After the record of chunk [lo, hi) of ``n`` items (chunks of ``size``) of the measure
    ``stage`` of ``group`` is committed: its metrics line (timed from the previous line) and,
    every ~60 s or at the last chunk, a progress line in the log."""
    mlog = ctx.mlog
    now = time.time()
    wall = now - mlog.last_t
    size = max(1, size)
    k, chunks = lo // size + 1, -(-n // size)
    mlog.chunk(group, stage, k, chunks, hi - lo, wall)
    # stage -> (start, items, last say)
    t0, done, last_say = ctx.chunk_timers.setdefault(stage, (now - wall, 0, now))
    done += hi - lo
    rate = done / max(now - t0, 1e-9)
    if hi >= n or now - last_say >= 60:
        ctx.say(f"{stage}: chunk {k}/{chunks}, {rate:.3g} items/s, "
                f"ETA stage {fmt_duration((n - hi) / max(rate, 1e-9))}")
        last_say = now
    ctx.chunk_timers[stage] = (t0, done, last_say)


def chunked(ctx: Context, group: str, stage: str, items: np.ndarray, chunk: int, compute,
            desc: str) -> dict:
    """``compute(idx) -> {key: array [len(idx), ...]}`` over ``items`` (pair or member
    indices) in chunks of ``chunk``, each chunk committed as its own record (written once);
    a resumed stage reads the records that are done and computes the rest. Returns the
    arrays of every item, in the order of ``items``."""
    n = len(items)
    done = {(lo, hi): arrays for lo, hi, arrays in ctx.wd.load_chunks(stage)}
    spans = [(lo, min(lo + chunk, n)) for lo in range(0, n, max(1, chunk))]
    have = sum(hi - lo for lo, hi in spans if (lo, hi) in done)
    if have:
        ctx.say(f"{stage}: resuming after {have}/{n} items")
    results = []
    with progress_bar(n, desc, ctx.progress) as bar:
        bar.update(have)
        for lo, hi in spans:
            if (lo, hi) not in done:
                done[(lo, hi)] = {k: np.asarray(v) for k, v in compute(items[lo:hi]).items()}
                ctx.wd.save_chunk(stage, lo, hi, done[(lo, hi)])
                chunk_metrics(ctx, group, stage, lo, hi, n, chunk)
                partial.committed(ctx, stage, items, done)  # cells.partial.csv
                bar.update(hi - lo)
            results.append(done[(lo, hi)])
    return {k: np.concatenate([r[k] for r in results]) for k in results[0]} if results else {}


def per_item(ctx: Context, group: str, stage: str, unit: str, old: dict | None,
             keys: tuple[str, ...], per_cell: int, chunk: int, compute, desc: str) -> dict:
    """A measure over every pair (``unit='pair'``) or member: computed in chunks, or — for a
    grown sweep — only the new ones, the finished run's numbers kept as they are."""
    grid = ctx.grid
    total = len(grid.pairs()) if unit == "pair" else grid.num_members
    items = np.arange(total)
    where = None
    if old is not None:
        where = grid.pair_map(ctx.old_grid) if unit == "pair" else grid.member_map(ctx.old_grid)
        items = np.flatnonzero(where < 0)
    new = chunked(ctx, group, stage, items, chunk * per_cell, compute, desc)
    if old is None:
        return new
    out = {}
    for k in keys:
        ref = np.asarray(old[k])
        full = np.empty((total, *ref.shape[1:]), ref.dtype)
        full[where >= 0] = ref[where[where >= 0]]
        if len(items):
            full[items] = new[k]
        out[k] = full
    return out


def cells_per_chunk(ctx: Context, per_cell: int, per_call: int = 1) -> int:
    """Cells per chunk: with a stacked strategy, enough that a chunk's items (``per_cell``
    each) fill whole compiled calls of ``per_call`` items spread over every device."""
    if not ctx.stacked:
        return 1
    unit = int(np.lcm(max(1, per_call), sharding.num_shards()))
    return min(ctx.grid.num_cells, int(unit // np.gcd(unit, per_cell)))


def run_group(ctx: Context, group: str, entries: tuple[measures.Measure, ...],
              retrained: dict) -> dict:
    """The arrays of every measure of ``group`` (per-item arrays and what each measure's
    ``finish`` derives), committed as the checkpoint ``group``; loaded when committed before
    (its leftover chunk records of a run killed right after the commit removed)."""
    inputs = {e.name: measure_inputs(ctx, e.name) for e in entries}
    out = restore(ctx, group)
    if out is not None:
        ctx.say(f"{group}: done before, loaded")
        for e in entries:
            ctx.wd.remove_chunks(e.name)
        return with_layer_names(out, entries, inputs, retrained)
    ctx.say(f"{group}: " + " and ".join(e.describe(inputs[e.name]) if e.describe else e.name
                                        for e in entries))
    t0 = time.time()
    old = old_stage(ctx, group)
    out = {}
    for e in entries:
        stage_inputs = inputs[e.name]
        per_cell = ctx.grid.pairs_per_cell if e.unit == "pair" else len(ctx.grid.retrain_seeds)
        device_items, per_call = e.sizing(stage_inputs) if e.sizing else (per_cell, 1)
        res = per_item(ctx, group, e.name, e.unit, old, e.keys, per_cell,
                       cells_per_chunk(ctx, device_items, per_call),
                       lambda idx, e=e, i=stage_inputs: e.compute(i, retrained, idx),
                       f"{e.name} ({e.unit}s)")
        if e.finish is not None:
            res.update(e.finish(stage_inputs, res))
        out.update(res)
    ctx.say(f"{group}: done in {time.time() - t0:.1f}s")
    ctx.wd.save(group, out, note="(stage done)")
    for e in entries:
        ctx.wd.remove_chunks(e.name)
    return with_layer_names(out, entries, inputs, retrained)


def with_layer_names(out: dict, entries: tuple[measures.Measure, ...], inputs: dict,
                     retrained: dict) -> dict:
    """``out`` and, for each measure with per-layer metrics, its layer names (under
    :func:`tr_jax.sweep.tables.layers_key`): a function of the config and the model, not kept
    in the checkpoint."""
    names = {layers_key(e.name): e.layer_names(inputs[e.name], retrained)
             for e in entries if e.layer_names is not None}
    return {**out, **names}
