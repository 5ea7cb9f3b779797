"""Scale-out: the members axis is one global array over every device of every process.

Multi-process runs are real: local processes on 127.0.0.1 with gloo CPU collectives, each with 2
simulated CPU devices, running the same ``tr-jax run`` command on one workdir; every subprocess is
bounded in time.
"""
from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from _procs import cpu_env, finish, free_port

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
# 4 members, 2 pairs, 2 retrain epochs with a progress checkpoint after the first (lr 0.02: see
# test_cli.test_four_simulated_devices_give_the_cells_of_one)
SETS = ["temperatures=(1,)", "dense.epochs=1", "retrain.epochs=2", "run.checkpoint_every=1",
        "measure.test_error_last_epochs=1", "measure.lmc_points=2", "prune.densities=(0.1, 0.5)",
        "run.members_strategy=vmap", "dense.lr=0.02", "retrain.lr=0.02", "run.chunk_steps=1",
        "dense.batch_size=256", "retrain.batch_size=256",
        # the per-layer measures on the stacked path, over the members mesh of 2 processes (the
        # spectral density shares their gather and padding; its own test is test_depth_measures)
        "measure.layer_cka.enabled=True", "measure.layer_cka.images=64",
        "measure.layer_hessian.enabled=True", "measure.layer_hessian.images=32",
        "measure.layer_hessian.probes=2", "measure.layer_hessian.chunk=1"]
TIMEOUT = 600


def _cmd(wd: pathlib.Path, *extra: str, kill_at: str | None = None) -> list[str]:
    """The ``tr-jax run`` command; with ``kill_at`` (``POINT[@NAME]:N``) through the kill tests'
    launcher, which SIGKILLs the process at that fault point (``tr_jax.hooks.kill_at``)."""
    sets = [a for s in SETS for a in ("--set", s)]
    exe = ([sys.executable, str(ROOT / "tests" / "_faulty_cli.py"), "--kill-at", kill_at, "--"]
           if kill_at else [sys.executable, "-m", "tr_jax.cli"])
    return [*exe, "run", TINY, "--workdir", str(wd), "--no-progress", *sets, *extra]


def _launch(wd: pathlib.Path, n_proc: int, port: int, kill_at: dict[int, str] | None = None,
            **env) -> list[subprocess.Popen]:
    """Start the processes of one run; each writes its stdout and stderr to files beside the
    workdir (never pipes: a full pipe would stall a process, and with it the other's collective).
    ``kill_at``: process index -> the fault point that kills it (see :func:`_cmd`)."""
    procs = []
    for i in range(n_proc):
        extra = ([] if n_proc == 1 else
                 ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n_proc),
                  "--process-id", str(i)])
        base = wd.parent / f"{wd.name}.{port}.p{i}"
        wd.parent.mkdir(parents=True, exist_ok=True)
        files = (pathlib.Path(f"{base}.out"), pathlib.Path(f"{base}.err"))
        with open(files[0], "w") as out, open(files[1], "w") as err:  # the child keeps its copies
            p = subprocess.Popen(_cmd(wd, *extra, kill_at=(kill_at or {}).get(i)),
                                 env=cpu_env(4 // n_proc, **env), stdout=out, stderr=err)
        p.files = files
        procs.append(p)
    return procs


def _numbers(path: pathlib.Path) -> pd.DataFrame:
    return pd.read_csv(path)


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """One process with 4 devices: the reference for the multi-process runs."""
    wd = tmp_path_factory.mktemp("one_process") / "w"
    (rc, out, err), = finish(_launch(wd, 1, 0), TIMEOUT)
    assert rc == 0, err[-3000:]
    assert "(4 device(s), 1 process(es))" in out
    return wd


def test_two_processes_killed_mid_retrain_resume_to_the_tables_of_one(four_devices, tmp_path):
    """2 processes x 2 devices (gloo, 127.0.0.1) run tiny under vmap on one workdir. Process 0 is
    SIGKILLed inside the commit of the retraining's progress checkpoint (written by both
    processes' orbax saves, not yet swapped in: a fault point, ``tr_jax.hooks``); process 1,
    which cannot pass the commit's last barrier without process 0, is killed then. Both
    restarted with the same command resume after epoch 1 and end with the cells
    of one process with 4 devices (within 1e-4, same regimes); only process 0 wrote the tables,
    the figures and the log."""
    wd = tmp_path / "w"
    procs = _launch(wd, 2, free_port(), kill_at={0: "save:written@retrain_p0_progress:1"})
    try:
        assert procs[0].wait(timeout=TIMEOUT) == -signal.SIGKILL, procs[0].files[1].read_text()[-3000:]
        # process 0 died after both passed the barrier after writing: process 1 (which writes
        # nothing) waits at the barrier that ends the commit, which it cannot pass alone
        procs[1].send_signal(signal.SIGKILL)
    finally:
        finish(procs, 30)
    assert not (wd / "cells.csv").exists()
    assert (wd / "stages" / ".retrain_p0_progress.new").is_dir()  # written, not swapped in

    results = finish(_launch(wd, 2, free_port()), TIMEOUT)
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    (_, out0, _), (_, out1, _) = results
    assert "(4 device(s), 2 process(es))" in out0
    assert "retrain_p0: resuming from the checkpoint after epoch 1" in out0
    quiet = [ln for ln in out1.splitlines() if not ln.startswith("[Gloo]")]  # gloo's own lines
    assert "wrote cells.csv" in out0 and quiet == []
    log = (wd / "log.txt").read_text()
    assert log.count("wrote cells.csv") == 1
    a, b = _numbers(four_devices / "cells.csv"), _numbers(wd / "cells.csv")
    num = a.select_dtypes("number").columns
    np.testing.assert_allclose(b[num], a[num], rtol=1e-4, atol=1e-5)
    assert list(a.regime) == list(b.regime)
    for col in ("layer_cka_min", "layer_trace_top_share"):
        assert b[col].notna().all(), col
    # the per-layer rows of results.csv (layer CKA per pair, layer traces per member) agree too
    keys = ["stage", "density", "retrain_seed", "pair", "metric"]
    ra, rb = (_numbers(w / "results.csv") for w in (four_devices, wd))
    ra, rb = (r[r.metric.str.contains("@")].set_index(keys).value.sort_index() for r in (ra, rb))
    metric = ra.index.get_level_values("metric")
    assert metric.str.startswith("layer_cka").sum() == 2 * 2 * 4  # 2 pairs, 2 kinds, 4 layers
    traced = metric[metric.str.startswith("layer_trace@")].unique()
    assert len(traced) >= 5 and metric.str.startswith("layer_trace").sum() == 4 * 2 * len(traced)
    assert ra.index.equals(rb.index) and np.isfinite(rb).all()
    np.testing.assert_allclose(rb.to_numpy(), ra.to_numpy(), rtol=1e-4, atol=1e-5)


SHARDING_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from tr_jax import models, sharding
    from tr_jax.sweep import stages
    from tr_jax.training import StepConfig, Trainer
    model = models.build("preresnet", depth=8, num_classes=10, width=0.25)
    v = models.init(model, jax.random.key(0), (8, 8, 1))
    dense = jax.tree.map(lambda x: np.stack([np.asarray(x)] * 2), v)
    keys = np.arange(16, dtype=np.uint32).reshape(8, 2)
    rows = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    state = stages.build_members(sharding.replicate(dense["params"]), sharding.replicate(dense),
                                 rows, rows, np.array([0.1, 0.5] * 4, np.float32), keys,
                                 lr=0.1, weight_decay=1e-4, momentum=0.9)
    n = jax.device_count()  # 4: the members mesh; 1: the single-device reference
    for name, tree in (("built", state),):
        for leaf in jax.tree.leaves(tree):
            if n == 4:
                assert leaf.sharding.spec == jax.sharding.PartitionSpec("members"), leaf.sharding
            assert [s.data.shape[0] for s in leaf.addressable_shards] == [8 // n] * n
    rng = np.random.default_rng(0)
    X = sharding.replicate(rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8))
    Y = sharding.replicate(rng.integers(0, 10, (64,)).astype(np.int32))
    step = StepConfig(mean=(0.5,), std=(0.25,), batch_size=32, pad=1, flip=False)
    final, _ = Trainer(model, step, "vmap", chunk_steps=2).fit(state, X, Y, 1)
    for leaf in jax.tree.leaves(final.params):
        assert len(leaf.sharding.device_set) == n
        if n == 4:
            assert leaf.sharding.spec == jax.sharding.PartitionSpec("members"), leaf.sharding
    if n == 4:  # each device holds its own members' weights: the 4 shards differ
        w = final.params["conv1"]["kernel"]
        shards = [np.asarray(s.data) for s in w.addressable_shards]
        assert not np.allclose(shards[0], shards[2])
    np.savez(sys.argv[1], *[sharding.to_host(x) for x in jax.tree.leaves(final.params)])
    print("SHARDED OK")
""")


def test_stage_state_is_sharded_over_the_members_mesh(tmp_path):
    """Built members and the retrained state are global arrays split over 4 devices, 2 members
    each (a no-op sharding would leave one device or replicated copies), and the partitioned
    training equals the same training in a process with one device (within 1e-4: the programs
    differ at float rounding level)."""
    out = {}
    for n in (4, 1):
        r = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT, str(tmp_path / f"{n}.npz")],
                           env=cpu_env(n), capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "SHARDED OK" in r.stdout
        with np.load(tmp_path / f"{n}.npz") as z:
            out[n] = [z[k] for k in z.files]
    assert len(out[4]) == len(out[1]) > 0
    for a, b in zip(out[4], out[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fit_never_deletes_the_callers_state():
    """Trainer.fit donates only internal copies: under vmap (one device) and threads alike, the
    caller's state is usable afterwards and unchanged ('map' and 'gemm' copy the state as 'vmap'
    does: ``members.split_groups``)."""
    from tr_jax import models
    from tr_jax.training import StepConfig, Trainer, init_state, stack
    model = models.build("preresnet", depth=8, num_classes=10, width=0.25)
    v = models.init(model, jax.random.key(0), (8, 8, 1))
    state = stack([init_state(v, jax.tree.map(jnp.ones_like, v["params"]), jax.random.key(i),
                              0.1, 1e-4) for i in range(2)])
    before = jax.tree.map(np.asarray, state)
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8))
    Y = jnp.asarray(rng.integers(0, 10, (64,)).astype(np.int32))
    step = StepConfig(mean=(0.5,), std=(0.25,), batch_size=32, pad=1, flip=False)
    for strategy in ("vmap", "threads"):
        final, _ = Trainer(model, step, strategy, chunk_steps=2).fit(state, X, Y, 1)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(before)):
            assert not a.is_deleted(), strategy
            np.testing.assert_array_equal(np.asarray(a), b)
        assert not np.allclose(np.asarray(final.params["conv1"]["kernel"]),
                               before.params["conv1"]["kernel"])


def test_padded_indices_keep_their_row_shape(monkeypatch):
    """Members, pairs and key rows padded to a multiple of the devices (4 here) repeat the last
    row and keep their row shape (key rows are [k, 2])."""
    from tr_jax import sharding
    from tr_jax.sweep.train import padded_idx
    monkeypatch.setattr(sharding, "num_shards", lambda: 4)
    keys = np.arange(10, dtype=np.uint32).reshape(5, 2)
    assert padded_idx(keys, False).shape == (5, 2)  # per-member strategies: no padding
    out = padded_idx(keys, True)
    assert out.shape == (8, 2)
    np.testing.assert_array_equal(out[:5], keys)
    assert (out[5:] == keys[-1]).all()
    np.testing.assert_array_equal(padded_idx(np.arange(3), True), [0, 1, 2, 2])
