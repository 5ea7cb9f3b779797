"""One process of the 2-process test in test_distributed.py (run as a script, not collected).

argv: PORT PROCESS_ID TMPDIR. Prints ``key=value`` lines the test checks."""
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
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from tr_jax.sweep.lock import WorkdirLockedError, workdir_lock  # noqa: E402

print(f"process={jax.process_index()} of={jax.process_count()} devices={jax.device_count()} "
      f"local={jax.local_device_count()} primary={distributed.is_primary()}", flush=True)
mesh = Mesh(np.array(jax.devices()), ("m",))
full = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
sharded = NamedSharding(mesh, P("m"))
x = jax.make_array_from_callback(full.shape, sharded, lambda idx: full[idx])
assert not x.is_fully_addressable
host = distributed.to_host(x)
print(f"to_host_sharded={np.array_equal(host, full)}", flush=True)
r = jax.make_array_from_callback(full.shape, NamedSharding(mesh, P()), lambda idx: full[idx])
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
    like = {"x": jax.ShapeDtypeStruct(full.shape, full.dtype, sharding=sharded)}
    back = ck.restore(tmp / "ckpt", like)["x"]
    ok = back.sharding == sharded and np.array_equal(distributed.to_host(back), full)
    print(f"orbax={ok}", flush=True)
print(f"seconds={time.time() - t0:.1f}", flush=True)
