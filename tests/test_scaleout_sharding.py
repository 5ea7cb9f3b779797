"""Scale-out is real: in a 2-process sweep every stage that computes on members holds, in each
process, only that process's half of the members (or pairs) axis.

Two local processes (127.0.0.1, gloo CPU collectives, 2 simulated CPU devices each: one members
mesh of 4 devices) run configs/tiny.py, Bezier curves and Hessian included, through
``tr_jax.sweep.run`` (tests/_sweep_worker.py). An inspection hook on the ``stage:members`` point
checks every leaf of every tree the driver reports there (dense and retraining programs, each
chunk of each measure): sharded as ``tr_jax.sharding.members_sharding()`` over all 4 devices, not
fully addressable, this process's shards exactly its half of the leading axis. The same check
must reject fakes of scale-out (a replicated array, an array on one process's devices only), in
the 2 processes and in one process with 4 devices. The cells of the 2-process run against those
of one process: tests/test_scaleout.py.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from _procs import cpu_env, finish, free_port, tails
from _sweep_worker import tree_record

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(__file__).with_name("_sweep_worker.py")
# 4 members (1 dense checkpoint x 2 densities x 2 retrain seeds), 2 pairs: padded to 4 over the
# 4 devices; one dense and one retraining program
SETS = ["temperatures=(1,)", "dense.epochs=1", "retrain.epochs=2", "measure.test_error_last_epochs=1",
        "measure.lmc_points=2", "prune.densities=(0.1, 0.5)", "run.members_strategy=vmap",
        "dense.lr=0.02", "retrain.lr=0.02", "run.chunk_steps=1", "dense.batch_size=256",
        "retrain.batch_size=256", "measure.bezier.enabled=True", "measure.hessian.enabled=True",
        "measure.hessian.images=32", "measure.hessian.max_probes=2", "measure.hessian.eig_iters=2"]
# the stage names the driver reports at ``stage:members`` for this config: the dense and
# retraining programs, and the chunks of every measure switched on
EXPECTED_STAGES = ("dense_p0", "retrain_p0", "outputs", "lmc", "bezier", "hessian")
TIMEOUT = 900  # about 4 min on 2 idle cores; twice that seen with the cores shared


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The 2-process sweep: (the hook's record of each process, the workdir). Each process writes
    its stdout and stderr to files (a full pipe would stall it, and the other's collectives)."""
    tmp = tmp_path_factory.mktemp("sweep_2p")
    wd, port = tmp / "w", free_port()
    procs = []
    for i in range(2):
        files = (tmp / f"p{i}.out", tmp / f"p{i}.err")
        with open(files[0], "w") as out, open(files[1], "w") as err:  # the child keeps its copies
            p = subprocess.Popen([sys.executable, str(WORKER), str(port), str(i), str(wd),
                                  str(tmp / f"p{i}.json"), *SETS], env=cpu_env(2), stdout=out,
                                 stderr=err, cwd=tmp)
        p.files = files
        procs.append(p)
    finish(procs, TIMEOUT, "the 2-process sweep")
    if any(p.returncode != 0 for p in procs):
        pytest.fail("a process of the 2-process sweep failed:\n" + tails(procs))
    records = [json.loads((tmp / f"p{i}.json").read_text()) for i in range(2)]
    for i, r in enumerate(records):
        assert r["process"] == i and r["done"], tails(procs)
    return records, wd


def test_the_check_tells_real_scale_out_from_fakes_in_two_processes(sweep):
    """In each process, before the sweep: an array from ``tr_jax.sharding.shard`` passes; a
    replicated one, one over this process's 2 devices and one on a single device are each
    rejected (every one of them holds all rows in each process)."""
    records, _ = sweep
    for r in records:
        c = r["controls"]
        assert c["sharded"] == [], c["sharded"]
        for fake in ("replicated", "local_mesh", "one_device"):
            assert any("should hold exactly rows" in p for p in c[fake]), (fake, c[fake])
        assert any("not the members sharding" in p for p in c["replicated"])
        assert any("fully addressable" in p for p in c["local_mesh"])


def test_every_members_stage_is_split_between_the_two_processes(sweep):
    """Every expected stage reports its members in both processes, the same number of trees;
    every leaf of every tree is sharded over the 4-device members mesh; process 0 holds exactly
    the first half of each leading axis, process 1 the second (disjoint, together all)."""
    records, _ = sweep
    for r in records:
        assert r["problems"] == [], "\n".join(r["problems"][:20])
        missing = [s for s in EXPECTED_STAGES if s not in r["stages"]]
        assert not missing, (f"process {r['process']}: no stage:members point for {missing}; "
                             f"seen {sorted(r['stages'])}")
    (s0, s1) = (records[0]["stages"], records[1]["stages"])
    assert sorted(s0) == sorted(s1)
    for stage in s0:
        assert len(s0[stage]) == len(s1[stage]), stage
        for t0, t1 in zip(s0[stage], s1[stage]):
            assert t0["leaves"] == t1["leaves"] > 0, stage
            assert t0["held"].keys() == t1["held"].keys() and t0["held"], stage
            for n, (a, b) in ((int(n), (t0["held"][n], t1["held"][n])) for n in t0["held"]):
                assert n % 4 == 0 and n > 0, (stage, n)
                assert a == [0, n // 2] and b == [n // 2, n], (stage, n, a, b)


def test_both_processes_end_with_the_cells_process_0_wrote(sweep):
    """Process 1 gets the whole result (the tables are gathered from both halves) and it equals
    the cells.csv written by process 0 alone; Bezier and Hessian columns included."""
    records, wd = sweep
    written = pd.read_csv(wd / "cells.csv")
    assert len(written) == 2  # 1 temperature x 2 densities
    for col in ("lmc", "cka", "bezier_mc", "hessian_trace", "hessian_top_eigenvalue"):
        assert np.isfinite(written[col]).all(), col
    for i in range(2):
        got = pd.read_csv(wd.parent / f"p{i}.json.cells.csv")
        assert list(got.columns) == list(written.columns)
        num = written.select_dtypes("number").columns
        np.testing.assert_allclose(got[num], written[num], rtol=1e-9, atol=0)
        other = [c for c in written.columns if c not in num]
        assert got[other].astype(str).equals(written[other].astype(str))


def test_the_check_rejects_a_host_array_and_a_tree_without_members():
    """In this process (one device): a numpy leaf is a host array, not a global one; a tree
    with no leaf with a leading axis is reported."""
    import jax

    from tr_jax import sharding
    kw = {"expected": sharding.members_sharding(), "n_devices": 4, "process_index": 0,
          "process_count": 2}
    probs, rec = tree_record({"a": {"b": np.zeros((4, 2))}}, **kw)
    assert probs and probs[0].startswith("['a']['b']: ndarray") and "host array" in probs[0]
    probs, _ = tree_record({"s": jax.numpy.float32(1.0)}, **kw)
    assert probs == ["no leaf with a leading axis"]
    probs, _ = tree_record({"x": jax.numpy.zeros((4, 2))}, **kw)  # one device: all rows here
    assert any("spans 1 device(s), not 4" in p for p in probs)
    assert any("should hold exactly rows 0..1" in p for p in probs)


FOUR_DEVICES = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from _sweep_worker import tree_record
    from tr_jax import sharding
    assert jax.device_count() == 4
    d = jax.devices()
    full = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    kw = dict(expected=sharding.members_sharding(), n_devices=4, process_count=2)
    def check(x, pid, local):
        return tree_record({"x": x}, process_index=pid, local_devices=local, **kw)
    x = sharding.shard(full)
    # one process playing process 0 (devices 0, 1) and process 1 (devices 2, 3)
    p0, r0 = check(x, 0, d[:2])
    p1, r1 = check(x, 1, d[2:])
    assert p0 == [] and p1 == [], (p0, p1)
    assert r0["held"] == {"8": [0, 4]} and r1["held"] == {"8": [4, 8]}, (r0, r1)
    assert check(x, 1, d[:2])[0]  # the other half
    rejected = {
        # every device holds every row
        "replicated": check(sharding.replicate(full), 0, d[:2])[0],
        # every row on process 0's devices (a mesh of its 2 devices)
        "one_process": check(jax.device_put(full, NamedSharding(
            Mesh(np.asarray(d[:2]), ("members",)), PartitionSpec("members"))), 0, d[:2])[0],
        # the members sharding, but all 4 devices in one process
        "all_local": check(x, 0, d)[0],
    }
    for name, probs in rejected.items():
        assert probs, name
        print(name, "|".join(probs))
    assert any("is not the members sharding" in p for p in rejected["replicated"])
    assert any("should hold exactly rows 0..3" in p for p in rejected["replicated"])
    assert any("spans 2 device(s), not 4" in p for p in rejected["one_process"])
    assert any("every device is local" in p for p in rejected["one_process"])
    assert any("should hold exactly rows 0..3" in p for p in rejected["one_process"])
    assert any("every device is local" in p for p in rejected["all_local"])
    print("CHECK OK")
""")


def test_the_check_rejects_fakes_on_four_devices(tmp_path):
    """One process with 4 CPU devices (XLA_FLAGS is read when JAX starts, hence a subprocess),
    playing each of 2 processes of 2 devices: the members-sharded array passes for either half;
    a fully replicated array, an array whose shards put every row on one process's devices, and
    the right sharding with every device local are each rejected."""
    try:
        r = subprocess.run([sys.executable, "-c", FOUR_DEVICES], env=cpu_env(4), capture_output=True,
                           text=True, timeout=180, cwd=pathlib.Path(__file__).parent)
    except subprocess.TimeoutExpired as e:  # run() has killed it
        pytest.fail(f"the 4-device check did not finish within 180 s:\n{e.stdout}\n{e.stderr}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "CHECK OK" in r.stdout
