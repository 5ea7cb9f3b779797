"""One process of the 2-process sweep in test_scaleout_sharding.py (run as a script, not collected),
and the check of a members tree that the test imports.

As a script: ``PORT PROCESS_ID WORKDIR OUT_JSON [KEY=VALUE ...]``. Starts the multi-process runtime
(2 processes on 127.0.0.1), checks the checker on global arrays built here (one sharded over the
members mesh, which it must accept, and fakes of scale-out, which it must reject), then runs
configs/tiny.py with the overrides through ``tr_jax.sweep.run`` with an inspection hook on the
``stage:members`` point, and writes what the hook saw to OUT_JSON (and the cells table this
process got from the run to OUT_JSON.cells.csv).

Importing this module touches no JAX backend.
"""
from __future__ import annotations

import json
import pathlib
import sys
import traceback
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
N_PROCESSES = 2


def leaf_problems(leaf: Any, *, expected, n_devices: int, process_index: int, process_count: int,
                  local_devices=None) -> tuple[list[str], tuple[int, int] | None]:
    """What is wrong with one leaf of a members tree (empty: nothing), and the rows [lo, hi) of
    its leading axis that this process holds (None when they are not one contiguous run).

    A leaf is right when it is a global ``jax.Array`` with the ``expected`` sharding (the leading
    axis split over the members mesh of all ``n_devices`` devices), its leading axis padded to a
    multiple of ``n_devices``, not fully addressable, and this process's shards hold exactly its
    part of the leading axis (process ``p`` of ``P``: rows ``p*N/P .. (p+1)*N/P - 1``), each shard
    ``N / n_devices`` rows, no row twice. ``local_devices`` (default: the addressable devices)
    lets one process with several devices play one process of several: only the shards on those
    devices count as held here, and "not fully addressable" becomes "some device is not local".
    """
    import jax
    from jax.sharding import NamedSharding

    if not isinstance(leaf, jax.Array):
        return [f"{type(leaf).__name__} of shape {getattr(leaf, 'shape', '?')}: a host array, "
                "not a global jax.Array"], None
    n = int(leaf.shape[0])
    out: list[str] = []
    sh = leaf.sharding
    if n % n_devices:
        out.append(f"leading axis {n} is not padded to a multiple of {n_devices} devices")
    if not isinstance(sh, NamedSharding):
        out.append(f"sharding {sh!r} is not a NamedSharding")
    elif not isinstance(expected, NamedSharding):
        out.append(f"the members sharding {expected!r} is no mesh (one device?)")
    else:
        if tuple(sh.spec)[:1] != tuple(expected.spec)[:1] or sh.mesh != expected.mesh:
            out.append(f"sharding {sh!r} is not the members sharding {expected!r}")
        if not sh.is_equivalent_to(expected, leaf.ndim):
            out.append(f"sharding {sh!r} is not equivalent to {expected!r}")
    if len(sh.device_set) != n_devices:
        out.append(f"spans {len(sh.device_set)} device(s), not {n_devices}")
    if local_devices is None:
        if leaf.is_fully_addressable:
            out.append("fully addressable: this process holds every device's data")
        shards = leaf.addressable_shards
    else:
        local = set(local_devices)
        if sh.device_set <= local:
            out.append("every device is local: one process holds every device's data")
        shards = [s for s in leaf.addressable_shards if s.device in local]
    per_shard = n // n_devices
    rows: list[int] = []
    for s in shards:
        lo, hi, step = s.index[0].indices(n) if s.index else (0, n, 1)
        if step != 1 or s.data.shape[0] != per_shard or hi - lo != per_shard:
            out.append(f"the shard on {s.device} holds rows {lo}:{hi} ({s.data.shape[0]} rows), "
                       f"not {per_shard} rows")
        rows.extend(range(lo, hi, step))
    part = n // process_count
    want = list(range(process_index * part, (process_index + 1) * part))
    if sorted(rows) != want:
        span = f"{min(rows)}..{max(rows)}" if rows else "none"
        out.append(f"holds {len(rows)} row(s) ({span}, {len(set(rows))} distinct) of {n}; process "
                   f"{process_index} of {process_count} should hold exactly rows "
                   f"{want[0] if want else 0}..{want[-1] if want else -1}")
    held = (min(rows), max(rows) + 1) if rows and sorted(rows) == list(
        range(min(rows), max(rows) + 1)) else None
    return out, held


def tree_record(tree: Any, **kw) -> tuple[list[str], dict]:
    """Check every leaf with a leading axis of ``tree`` (see :func:`leaf_problems`): the problems
    (each prefixed with the leaf's path) and ``{"leaves": k, "held": {N: [lo, hi]}}``, the rows
    held of each leading-axis size N among the leaves."""
    import jax

    problems: list[str] = []
    held: dict[str, Any] = {}
    k = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if getattr(leaf, "ndim", 0) < 1:
            continue
        k += 1
        where = jax.tree_util.keystr(path) or "<root>"
        probs, h = leaf_problems(leaf, **kw)
        problems += [f"{where}: {p}" for p in probs]
        n = str(int(leaf.shape[0]))
        rows = list(h) if h is not None else None
        if held.setdefault(n, rows) != rows:
            problems.append(f"{where}: holds rows {rows} of {n}, another leaf {held[n]}")
    if k == 0:
        problems.append("no leaf with a leading axis")
    return problems, {"leaves": k, "held": held}


def check_kwargs() -> dict:
    """The arguments of :func:`leaf_problems` for this process (the runtime must be up)."""
    import jax

    from tr_jax import sharding
    return {"expected": sharding.members_sharding(), "n_devices": jax.device_count(),
            "process_index": jax.process_index(), "process_count": jax.process_count()}


def controls() -> dict[str, list[str]]:
    """The checker's verdict on global arrays built here: one from ``tr_jax.sharding.shard``
    (right) and three fakes of scale-out (each process holds all rows)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from tr_jax import sharding
    full = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    local = Mesh(np.asarray(jax.local_devices()), ("local",))  # this process's devices only
    arrays = {
        "sharded": sharding.shard(full),
        "replicated": sharding.replicate(full),
        "local_mesh": jax.device_put(full, NamedSharding(local, PartitionSpec("local"))),
        "one_device": jax.device_put(full, jax.local_devices()[0]),
    }
    kw = check_kwargs()
    return {name: tree_record({"x": x}, **kw)[0] for name, x in arrays.items()}


def main(argv: list[str]) -> None:
    port, pid, workdir, out_json = argv[0], int(argv[1]), pathlib.Path(argv[2]), argv[3]
    overrides = argv[4:]
    coordinator = f"127.0.0.1:{port}"
    from tr_jax import distributed
    # the arguments tr_jax.sweep.run starts the runtime with: its own call is then a no-op
    distributed.initialize(distributed=True, coordinator=coordinator, num_processes=N_PROCESSES,
                           process_id=pid, timeout_s=120)
    from tr_jax import hooks, sweep
    from tr_jax.config import load_config

    record: dict[str, Any] = {"process": pid, "controls": controls(), "stages": {},
                              "problems": [], "done": False}
    kw = check_kwargs()

    def inspect(point: str, info) -> None:
        if point != "stage:members":
            return
        stage = str(info.get("stage"))
        try:
            problems, rec = tree_record(info.get("tree"), **kw)
        except Exception:  # recorded: a raise here would stall the other process)
            problems, rec = [traceback.format_exc(limit=3)], {}
        record["problems"] += [f"{stage}: {p}" for p in problems]
        record["stages"].setdefault(stage, []).append(rec)

    remove = hooks.add(inspect)
    cfg = load_config(ROOT / "configs" / "tiny.py", overrides)
    try:
        res = sweep.run(cfg, str(workdir), progress=False, echo=lambda s: print(s, flush=True),
                        distributed=True, coordinator=coordinator, num_processes=N_PROCESSES,
                        process_id=pid, start_timeout_s=120)
        record["done"] = True
        res["cells"].to_csv(f"{out_json}.cells.csv", index=False)  # this process's tables
    finally:
        remove()
        pathlib.Path(out_json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
