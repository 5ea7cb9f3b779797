"""Multi-process runs: start ``jax.distributed`` and move values between processes.

    from tr_jax import distributed
    distributed.initialize(distributed=True)                       # auto-detect: TPU pod, SLURM, MPI
    distributed.initialize(coordinator="10.0.0.1:1234", num_processes=2, process_id=0)  # explicit

:func:`initialize` must run before anything touches a JAX backend (no ``jax.devices()``, no array,
no computation before it). On CPU it switches on the gloo collectives itself. With neither
``distributed`` nor explicit arguments it does nothing, and every helper here then works for one
process (``barrier`` is a no-op, ``broadcast_str`` returns its argument).
"""
from __future__ import annotations

import numpy as np

BROADCAST_MAX_BYTES = 4096  # broadcast_str's fixed buffer

_STATE: dict = {"args": None}  # the arguments jax.distributed was initialised with


def parse_coordinator(coordinator: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) -> (host, port); ValueError naming the value."""
    host, sep, port = str(coordinator).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--coordinator {coordinator!r} is not HOST:PORT (e.g. 10.0.0.1:1234; "
                         "the port is the one process 0 listens on, 1-65535)")
    return host, int(port)


def _validate(distributed: bool, coordinator: str | None, num_processes: int | None,
              process_id: int | None) -> None:
    explicit = {"--coordinator": coordinator, "--num-processes": num_processes,
                "--process-id": process_id}
    given = [k for k, v in explicit.items() if v is not None]
    if given and not distributed and len(given) < 3:
        missing = [k for k in explicit if k not in given]
        raise ValueError(f"{', '.join(given)} given without {', '.join(missing)}: an explicit "
                         "multi-process run needs all three (or --distributed to auto-detect the "
                         "rest on a TPU pod slice, SLURM or Open MPI)")
    if coordinator is not None:
        parse_coordinator(coordinator)
    if num_processes is not None and (isinstance(num_processes, bool)
                                      or not isinstance(num_processes, int) or num_processes < 1):
        raise ValueError(f"--num-processes {num_processes!r} must be a positive integer")
    if process_id is not None and (isinstance(process_id, bool) or not isinstance(process_id, int)
                                   or process_id < 0):
        raise ValueError(f"--process-id {process_id!r} must be an integer >= 0")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise ValueError(f"--process-id {process_id} is out of range for --num-processes "
                         f"{num_processes} (process ids are 0..{num_processes - 1})")


def _simulated_cpu_devices() -> int:
    """CPU devices this process asks XLA to simulate (``--xla_force_host_platform_device_count``
    in ``XLA_FLAGS``, or ``jax_num_cpu_devices``); 1 when neither is set."""
    import os
    import re

    import jax
    m = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return max(int(m.group(1)) if m else 1, int(getattr(jax.config, "jax_num_cpu_devices", 1)))


def _inline_cpu_dispatch_with_simulated_devices() -> None:
    """One process with several simulated CPU devices: single-device CPU computations run inline
    instead of on the thread pool that also runs every device's share of the SPMD programs. A
    one-process 4-device run on 2 cores aborted twice (in ~10 test-suite runs) with XLA's
    in-process rendezvous timeout ("only 2 of 4 threads arrived"), in the measure stage; this
    keeps that pool to the SPMD programs' per-device tasks (a mitigation: the cause is not
    proven). No effect once a backend is up, or with one device."""
    from jax._src import xla_bridge
    if _simulated_cpu_devices() > 1 and not xla_bridge.backends_are_initialized():
        import jax
        jax.config.update("jax_cpu_enable_async_dispatch", False)


def initialize(distributed: bool = False, coordinator: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int = 300) -> bool:
    """Start the multi-process runtime; returns whether more than one process is up.

    ``distributed=True`` lets ``jax.distributed.initialize`` auto-detect the cluster (TPU pod
    slices, SLURM, Open MPI); any explicit argument given with it overrides what is detected.
    Without ``distributed``, ``coordinator`` (``HOST:PORT`` of process 0), ``num_processes`` and
    ``process_id`` must be given together; with none of them this is a no-op (one process).
    Idempotent: a second call with the same arguments returns the same answer. Must run before
    any JAX backend is initialised (ValueError otherwise). ``timeout_s``: how long to wait for
    all processes to connect.
    """
    _validate(distributed, coordinator, num_processes, process_id)
    args = (bool(distributed), coordinator, num_processes, process_id)
    if not distributed and coordinator is None:
        _inline_cpu_dispatch_with_simulated_devices()
        return process_count() > 1
    import jax
    if jax.distributed.is_initialized():
        if _STATE["args"] not in (None, args):
            raise ValueError(f"the multi-process runtime is already up (with {_STATE['args']}); "
                             f"cannot start it again with {args}")
        return jax.process_count() > 1
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        raise ValueError("tr_jax.distributed.initialize() must run before anything uses JAX "
                         "(devices, arrays, computations): call it first")
    if jax.config.jax_cpu_collectives_implementation != "mpi":  # respect an explicit MPI choice
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # CPU programs run to completion before the next is dispatched: with asynchronous dispatch,
    # the per-device threads of two consecutive SPMD programs can have collectives in flight on
    # the same gloo groups at once, in an order that may differ between processes (the suspected
    # cause of a hang seen once in the kill-then-resume test, never reproduced since). Only the
    # CPU backend is affected; multi-process CPU runs are for tests and small clusters.
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s)
    except Exception as e:  # re-raised with what was tried
        where = (f"coordinator {coordinator}, process {process_id} of {num_processes}"
                 if coordinator else "auto-detected cluster")
        hint = ("" if coordinator else "; outside a TPU pod slice, SLURM or Open MPI job pass "
                "--coordinator HOST:PORT --num-processes N --process-id I")
        raise ValueError(f"could not start the multi-process runtime ({where}): "
                         f"{type(e).__name__}: {e}{hint}") from e
    _STATE["args"] = args
    return jax.process_count() > 1


def process_count() -> int:
    """Number of processes (1 unless the multi-process runtime is up)."""
    import jax
    return jax.process_count() if jax.distributed.is_initialized() else 1


def process_index() -> int:
    """This process's index (0 unless the multi-process runtime is up)."""
    import jax
    return jax.process_index() if jax.distributed.is_initialized() else 0


def is_primary() -> bool:
    """Whether this is process 0 (the one that writes shared files)."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier of this name; a no-op with one process."""
    if process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def broadcast_str(s: str) -> str:
    """Process 0's ``s`` in every process (a collective: all processes must call it). At most
    ``BROADCAST_MAX_BYTES`` bytes of UTF-8."""
    raw = s.encode()
    if len(raw) > BROADCAST_MAX_BYTES:
        raise ValueError(f"broadcast_str: {len(raw)} bytes, at most {BROADCAST_MAX_BYTES}")
    if process_count() == 1:
        return s
    from jax.experimental import multihost_utils
    buf = np.zeros(BROADCAST_MAX_BYTES, np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    length, out = multihost_utils.broadcast_one_to_all((np.int32(len(raw)), buf))
    return bytes(np.asarray(out)[:int(length)]).decode()


def to_host(x) -> np.ndarray:
    """A (global) array as a host numpy array, whole, in every process.

    Fully addressable arrays (one process) are copied; fully replicated ones use the local copy;
    sharded global arrays are all-gathered (a collective: every process must call it then).
    """
    import jax
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
