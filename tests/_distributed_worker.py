"""One process of the 2-process test in test_distributed.py (run as a script, not collected).

argv: PORT PROCESS_ID TMPDIR [orbax]. Prints ``key=value`` lines the test checks. Global arrays
are built with ``tr_jax.sharding`` (the members mesh the sweeps use), and the rows of the members
axis this process holds are checked with the check of the 2-process sweep test
(``_sweep_worker.tree_record``)."""
import pathlib
import sys
import time

import numpy as np

from tr_jax import distributed

port, pid, tmp = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
t0 = time.time()
assert distributed.initialize(coordinator=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
assert distributed.initialize(coordinator=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
import jax  # noqa: E402
from _sweep_worker import check_kwargs, tree_record  # noqa: E402

from tr_jax import sharding  # noqa: E402
from tr_jax.sweep.lock import WorkdirLockedError, workdir_lock  # noqa: E402

print(f"process={jax.process_index()} of={jax.process_count()} devices={jax.device_count()} "
      f"local={jax.local_device_count()} primary={distributed.is_primary()}", flush=True)
print(f"mesh={sharding.mesh().axis_names} shards={sharding.num_shards()} "
      f"mesh_devices={sharding.mesh().devices.size}", flush=True)
full = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
x = sharding.shard(full)  # 8 members over 4 devices: no padding
assert x.sharding == sharding.members_sharding() and not x.is_fully_addressable
problems, rec = tree_record({"x": x}, **check_kwargs())
lo_hi = rec["held"].get("8") or ["?", "?"]
print(f"members_rows={lo_hi[0]}:{lo_hi[1]}", flush=True)  # this process's rows of the 8
print(f"members_problems={problems}", flush=True)
host = distributed.to_host(x)
print(f"to_host_sharded={np.array_equal(host, full)}", flush=True)
r = sharding.replicate(full)
assert r.sharding == sharding.replicated_sharding() and not r.is_fully_addressable
print(f"to_host_replicated={np.array_equal(distributed.to_host(r), full)}", flush=True)
print(f"broadcast={distributed.broadcast_str(f'from-{pid}-é')}", flush=True)
distributed.barrier("test")
print("barrier=passed", flush=True)

with workdir_lock(tmp / "shared") as lk:  # one lock for the whole run
    print(f"lock_primary={lk.primary} lock_run={lk.run_id}", flush=True)
    distributed.barrier("locked")
try:
    with workdir_lock(tmp / "busy"):  # held by the test process: refused in both processes
        print("busy_lock=taken", flush=True)
except WorkdirLockedError as e:
    print(f"busy_lock=refused {'in use by another' in str(e)}", flush=True)

if len(sys.argv) > 4:  # orbax: save a sharded global array, restore it sharded
    import orbax.checkpoint as ocp
    ck = ocp.StandardCheckpointer()
    ck.save(tmp / "ckpt", {"x": x})
    ck.wait_until_finished()
    like = {"x": sharding.members_like(jax.ShapeDtypeStruct(full.shape[1:], full.dtype), 8)}
    back = ck.restore(tmp / "ckpt", like)["x"]
    ok = (back.sharding == sharding.members_sharding()
          and np.array_equal(distributed.to_host(back), full))
    print(f"orbax={ok}", flush=True)
print(f"seconds={time.time() - t0:.1f}", flush=True)
