"""tr_jax.distributed: argument checks, the one-process fallbacks, and a real 2-process run on
127.0.0.1 (gloo CPU collectives): global arrays to host, broadcast, barrier, the shared workdir
lock and an orbax save/restore of a sharded global array."""
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from _procs import free_port

from tr_jax import cli, distributed
from tr_jax.sweep.lock import WorkdirLock

ROOT = pathlib.Path(__file__).parents[1]
WORKER = pathlib.Path(__file__).with_name("_distributed_worker.py")
TINY = str(ROOT / "configs" / "tiny.py")


@pytest.mark.parametrize("kwargs, match", [
    ({"coordinator": "10.0.0.1", "num_processes": 2, "process_id": 0}, "'10.0.0.1' is not HOST:PORT"),
    ({"distributed": True, "coordinator": "host:0"}, "'host:0' is not HOST:PORT"),
    ({"distributed": True, "coordinator": ":1234"}, "':1234' is not HOST:PORT"),
    ({"coordinator": "h:1", "num_processes": 2}, "without --process-id"),
    ({"process_id": 0}, "--process-id given without --coordinator, --num-processes"),
    ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, "--process-id 2 is out of range"),
    ({"coordinator": "h:1", "num_processes": 0, "process_id": 0}, "--num-processes 0 must be"),
    ({"coordinator": "h:1", "num_processes": 2, "process_id": -1}, "--process-id -1 must be"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distributed.initialize(**kwargs)


def test_cli_refuses_bad_arguments(capsys):
    assert cli.main(["run", TINY, "--workdir", "w", "--coordinator", "[::1]", "--num-processes",
                     "2", "--process-id", "0"]) == 2
    assert "'[::1]' is not HOST:PORT" in capsys.readouterr().err
    assert distributed.parse_coordinator("[::1]:1234") == ("[::1]", 1234)


def test_one_process_fallbacks():
    assert distributed.initialize() is False
    assert distributed.process_count() == 1 and distributed.is_primary()
    assert distributed.broadcast_str("abc") == "abc"
    distributed.barrier("nothing to wait for")
    x = jax.numpy.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(distributed.to_host(x), np.arange(6.0).reshape(2, 3))
    with pytest.raises(ValueError, match="at most"):
        distributed.broadcast_str("x" * (distributed.BROADCAST_MAX_BYTES + 1))


def test_initialize_after_jax_started_is_refused():
    jax.devices()  # the backend is up
    with pytest.raises(ValueError, match="must run before anything uses JAX"):
        distributed.initialize(coordinator="127.0.0.1:1", num_processes=1, process_id=0)


@pytest.mark.parametrize("devices, inline", [(4, True), (1, False)])
def test_one_process_with_simulated_cpu_devices_dispatches_inline(devices, inline):
    """initialize() of one process with several simulated CPU devices switches off asynchronous
    dispatch of single-device CPU computations (a mitigation of an XLA rendezvous abort, see
    tr_jax.distributed); with one device it leaves JAX's default."""
    code = ("from tr_jax import distributed; distributed.initialize(); import jax; "
            "from jax._src import xla_bridge as xb; "
            "print(jax.device_count(), not xb._CPU_ENABLE_ASYNC_DISPATCH.value)")
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == [str(devices), str(inline)]


def test_two_processes_on_localhost(tmp_path):
    """Two real processes, 2 CPU devices each, one 4-device members mesh (tr_jax.sharding): a
    members array of 8 rows is split 4 + 4 between the processes, process 0 the first half."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    with WorkdirLock(tmp_path / "busy", "the-test's-run", heartbeat_s=0):
        procs = [subprocess.Popen([sys.executable, str(WORKER), str(port), str(i), str(tmp_path),
                                   "orbax"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        # stdout and stderr apart: gloo's own log lines on stderr must not split a key=value
        # line of the worker (a CI run once lost 'broadcast=' that way)
        outs, errs = [], []
        deadline = time.monotonic() + 180
        try:
            for p in procs:
                out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
                outs.append(out)
                errs.append(err)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            tails = [(outs[j], errs[j]) if j < len(outs) else p.communicate(timeout=30)
                     for j, p in enumerate(procs)]
            pytest.fail("the 2 processes did not finish within 180 s:\n" + "\n".join(
                f"--- process {i}:\n{o[-2000:]}\n{e[-3000:]}" for i, (o, e) in enumerate(tails)))
        finally:
            for p in procs:
                p.kill()
                p.wait(timeout=30)
    run_ids = set()
    for i, (p, out, err) in enumerate(zip(procs, outs, errs)):
        assert p.returncode == 0, out[-2000:] + err[-2000:]
        lines = dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln and " " not in
                     ln.split("=", 1)[0])
        assert f"process={i} of=2 devices=4 local=2 primary={i == 0}" in out, out[-4000:]
        assert lines["mesh"] == "('members',) shards=4 mesh_devices=4"
        assert lines["members_problems"] == "[]", lines["members_problems"]
        assert lines["members_rows"] == ("0:4", "4:8")[i]
        assert lines["to_host_sharded"] == "True" and lines["to_host_replicated"] == "True"
        assert lines.get("broadcast") == "from-0-é", out  # process 0's value, in both
        assert lines["barrier"] == "passed"
        assert f"lock_primary={i == 0}" in out
        run_ids.add(out.split("lock_run=")[1].split()[0])
        assert lines["busy_lock"] == "refused True"  # both refused, neither hung
        assert lines["orbax"] == "True"
    assert len(run_ids) == 1  # one lock, one run id for the whole run
    assert not (tmp_path / "shared" / "run.lock").exists()  # released by process 0
