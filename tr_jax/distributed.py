"""Multi-process runs: start ``jax.distributed`` and move values between processes.

    from tr_jax import distributed
    distributed.initialize(distributed=True)                       # auto-detect: TPU pod, SLURM, MPI
    distributed.initialize(coordinator="10.0.0.1:1234", num_processes=2, process_id=0)  # explicit

:func:`initialize` must run before anything touches a JAX backend (no ``jax.devices()``, no array,
no computation before it). On CPU it switches on the gloo collectives itself. With neither
``distributed`` nor explicit arguments it does nothing, and every helper here then works for one
process (``barrier`` is a no-op, ``broadcast_str`` returns its argument).

Failures of other processes end this one with a :class:`~tr_jax.errors.PeerError` (one line):
:func:`initialize` waits at most ``timeout_s`` for every process to connect, and names the ones it
waited for; inside :func:`stage` (the pipeline's dense, retrain, measure, bezier and hessian
stages), the runtime's report of a lost peer (a gloo or coordination-service error) becomes a
PeerError naming the lost process and the stage, and saying that rerunning the same commands
resumes from the last checkpoint.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from tr_jax._jax_compat import backends_are_initialized, runtime_error_type
from tr_jax.errors import PeerError

BROADCAST_MAX_BYTES = 4096  # broadcast_str's fixed buffer

# the arguments jax.distributed was initialised with; the stage under way (see ``stage``); why
# the runtime failed to start (it cannot be started again in this process); the lost peer's
# PeerError message (either of the last two: the process exits with code 2, see
# ``_exit_without_shutdown``)
_STATE: dict = {"args": None, "stage": None, "failed": None, "lost": None}
# jax.distributed's own connect timeout is this much longer than ``timeout_s``: tr_jax gives up
# first, with its message, while JAX's connect is still waiting (when JAX's runs out, XLA ends the
# process with SIGABRT; see ``_start_runtime``)
RUNTIME_GRACE_S = 3600
WAIT_NOTICE_S = 1.0  # the "waiting up to ..." line is printed once a start has taken this long


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
    if _simulated_cpu_devices() > 1 and backends_are_initialized() is False:
        import jax
        jax.config.update("jax_cpu_enable_async_dispatch", False)


def initialize(distributed: bool = False, coordinator: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               timeout_s: float = 300, heartbeat_timeout_s: int = 100) -> bool:
    """Start the multi-process runtime; returns whether more than one process is up.

    ``distributed=True`` lets ``jax.distributed.initialize`` auto-detect the cluster (TPU pod
    slices, SLURM, Open MPI); any explicit argument given with it overrides what is detected.
    Without ``distributed``, ``coordinator`` (``HOST:PORT`` of process 0), ``num_processes`` and
    ``process_id`` must be given together; with none of them this is a no-op (one process).
    Idempotent: a second call with the same arguments returns the same answer. Must run before
    any JAX backend is initialised (ValueError otherwise).

    ``timeout_s``: how long to wait for every process to connect (``tr-jax run --start-timeout``);
    past it, :class:`~tr_jax.errors.PeerError` names the process(es) waited for and how to start
    them. A ``waiting up to ...`` line goes to stderr once the wait passes a second. After that
    error the runtime cannot start again in this process; at exit (as after a PeerError from
    :func:`stage`) the process ends with code 2 without JAX's shutdown, which would wait for the
    missing process and then abort.
    ``heartbeat_timeout_s``: JAX's heartbeat timeout; a peer that dies while this process is not
    in a collective with it is detected by the runtime after this long, and the runtime then ends
    this process itself (SIGABRT, XLA's message naming the unhealthy task).
    """
    _validate(distributed, coordinator, num_processes, process_id)
    if (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
            or not 0 < timeout_s < math.inf):
        raise ValueError(f"--start-timeout {timeout_s!r} must be a positive number of seconds")
    if _STATE["failed"]:
        raise PeerError(f"the multi-process runtime already failed to start in this process "
                        f"({_STATE['failed']}); start a fresh process")
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
    if backends_are_initialized():
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
        _start_runtime(coordinator, num_processes, process_id, timeout_s, heartbeat_timeout_s)
    except PeerError:
        raise
    except Exception as e:  # re-raised with what was tried
        where = (f"coordinator {coordinator}, process {process_id} of {num_processes}"
                 if coordinator else "auto-detected cluster")
        hint = ("" if coordinator else "; outside a TPU pod slice, SLURM or Open MPI job pass "
                "--coordinator HOST:PORT --num-processes N --process-id I")
        if coordinator and "failed to start rpc server" in str(e).lower():
            hint = (f"; is port {parse_coordinator(coordinator)[1]} in use by another program? "
                    "pick a free one in --coordinator (the same in every process)")
        raise PeerError(f"could not start the multi-process runtime ({where}): "
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


# -- bounded start, lost peers -------------------------------------------------------------------
def _start_runtime(coordinator: str | None, num_processes: int | None, process_id: int | None,
                   timeout_s: float, heartbeat_timeout_s: int) -> None:
    """``jax.distributed.initialize``, given up after ``timeout_s`` with a PeerError.

    When JAX's own connect times out, XLA ends the process (SIGABRT and a C++ stack trace, from
    the client's error callback, which Python cannot replace: jaxlib hands the callback an
    ``absl::Status`` it has no Python type for). So JAX's connect runs in a daemon thread with a
    timeout ``RUNTIME_GRACE_S`` longer than ``timeout_s``, and this thread stops waiting for it
    first: the caller gets the PeerError, ``tr-jax`` exits with it, and the abandoned connect never
    reaches XLA's fatal path while the process is still exiting."""
    import atexit
    import sys
    import threading
    import time

    import jax
    atexit.register(_exit_without_shutdown)  # after JAX's own atexit hook, so it runs before it
    box: dict = {}

    def connect() -> None:
        try:
            jax.distributed.initialize(
                coordinator_address=coordinator, num_processes=num_processes,
                process_id=process_id, heartbeat_timeout_seconds=int(heartbeat_timeout_s),
                initialization_timeout=int(math.ceil(timeout_s)) + RUNTIME_GRACE_S)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t0 = time.monotonic()
    worker = threading.Thread(target=connect, name="tr_jax-distributed-start", daemon=True)
    worker.start()
    worker.join(min(WAIT_NOTICE_S, timeout_s))
    if worker.is_alive():
        n = f"{num_processes} processes" if num_processes else "the processes of the cluster"
        print(f"tr-jax: waiting up to {timeout_s:g} s for {n} at "
              f"{coordinator or 'the auto-detected coordinator'} ...", file=sys.stderr, flush=True)
        worker.join(max(0.0, timeout_s - (time.monotonic() - t0)))
    if worker.is_alive():
        msg = _not_arrived(coordinator, num_processes, process_id, timeout_s)
        _STATE["failed"] = msg
        raise PeerError(msg)
    if "error" in box:
        raise box["error"]


def _exit_without_shutdown() -> None:
    """At exit, after a failed start or a lost peer: end the process now (code 2, as ``tr-jax``),
    skipping JAX's ``jax.distributed.shutdown``, whose shutdown barrier would wait for the missing
    process until the heartbeat timeout and then abort (measured: 100 s, SIGABRT)."""
    if _STATE["failed"] or _STATE["lost"]:
        import os
        import sys
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(2)


def _listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port (2 s at most)."""
    import socket
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=2.0):
            return True
    except OSError:
        return False


def _not_arrived(coordinator: str | None, num_processes: int | None, process_id: int | None,
                 timeout_s: float) -> str:
    """Which process(es) a start that timed out waited for, and how to start them. JAX's runtime
    does not tell a waiting process who is missing: process 0 names the others; any other process
    checks whether process 0 (the coordinator) listens at all."""
    waited = f"waited {timeout_s:g} s"
    same = "(and the same --coordinator/--num-processes)"
    if coordinator is None or num_processes is None or process_id is None:
        return (f"{waited} for the other processes of the auto-detected cluster; start the same "
                "command in every process of the job, or raise --start-timeout")
    n, me = num_processes, process_id
    host, port = parse_coordinator(coordinator)
    if me == 0:
        if n == 2:
            return (f"{waited} for process 1 of 2 at {coordinator}; start the same command with "
                    f"--process-id 1 {same} on the other host, or raise --start-timeout")
        return (f"{waited} for processes 1..{n - 1} of {n} at {coordinator} (at least one has not "
                f"connected); start the same command with each missing --process-id {same}, or "
                "raise --start-timeout")
    if not _listening(host, port):
        return (f"{waited} for process 0 of {n} (the coordinator) at {coordinator}: nothing "
                f"accepts connections there; start the same command with --process-id 0 {same} on "
                f"{host} (or fix --coordinator), or raise --start-timeout")
    others = [i for i in range(1, n) if i != me]
    if not others:
        return (f"{waited} for process 0 of {n} at {coordinator}: the port answers but the run "
                "did not start; is process 0 running the same command with the same "
                "--num-processes, or is another program listening on that port?")
    return (f"{waited} for the processes of {n} at {coordinator}: process 0 is up, at least one of "
            f"processes {', '.join(map(str, others))} has not connected; start the same command "
            f"with each missing --process-id {same}, or raise --start-timeout")


# what the runtime says when a peer is gone: gloo's transport, the coordination service
_PEER_SIGNS = ("gloo", "connection closed by peer", "connection reset by peer", "broken pipe",
               "coordination service", "coordinationservice", "socket closed")
# ... and, from jaxlib's runtime errors only, its status codes for an unreachable peer
_RUNTIME_SIGNS = ("deadline_exceeded", "unavailable", "aborted: barrier", "heartbeat")


def _runtime_failure(e: BaseException) -> BaseException | None:
    """The error in e's chain (e, its cause, its context) that reports a lost peer, if any."""
    JaxRuntimeError = runtime_error_type()
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen and len(seen) < 16:
        seen.add(id(x))
        text = str(x).lower()
        if any(s in text for s in _PEER_SIGNS) or (
                isinstance(x, JaxRuntimeError) and any(s in text for s in _RUNTIME_SIGNS)):
            return x
        x = x.__cause__ or x.__context__
    return None


def _short(text: str, limit: int = 200) -> str:
    """The telling part of a runtime error's message, on one line: without XLA's repeated
    "Error dispatching computation:" wrappers and source locations, from the first sign of a lost
    peer on (e.g. "Gloo AllGather failed: Connection closed by peer [127.0.0.1]:36264")."""
    import re
    text = re.sub(r"(Error dispatching computation: ?)+", "", " ".join(text.split()))
    text = re.sub(r"\[[\w./-]+\.(cc|h):\d+\] ?", "", text)
    low = text.lower()
    starts = [i for i in (low.find(s) for s in ("gloo", "connection closed by peer",
                                                "connection reset by peer")) if i >= 0]
    if starts:
        text = text[min(starts):]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def peer_error(e: BaseException, stage_name: str | None = None) -> PeerError | None:
    """The :class:`PeerError` explaining ``e`` when ``e`` is the runtime's report of a lost peer in
    a multi-process run (else None): the lost process (with 2 processes, the other one; with more,
    the runtime does not say which), the stage under way, and that rerunning the same commands
    resumes from the last checkpoint."""
    if isinstance(e, PeerError) or process_count() < 2:
        return None
    cause = _runtime_failure(e)
    if cause is None:
        return None
    n, me = process_count(), process_index()
    who = f"process {1 - me} of 2" if n == 2 else f"a peer process (of {n})"
    name = stage_name or _STATE["stage"]
    where = f"in the {name} stage" if name else "while the run was starting or ending"
    detail = _short(str(cause))
    return PeerError(f"lost {who} {where} (stopped, killed or failed: see its own output; process "
                     f"{me} saw \"{detail}\"); rerun the same {n} commands "
                     "(every --process-id, the same --coordinator) to resume from the last "
                     "checkpoint")


def set_stage(name: str | None) -> None:
    """Name the stage under way (in lost-peer messages) until the enclosing :func:`stage` ends."""
    _STATE["stage"] = name


@contextlib.contextmanager
def stage(name: str | None):
    """Run a stage of a multi-process run: a lost peer inside becomes a :class:`PeerError` naming
    the stage then under way (``name``, or what :func:`set_stage` named since). Nests: an inner
    stage translates first, the outer one passes PeerError through; the previous name is restored
    on exit. With one process it only records the name."""
    prev = _STATE["stage"]
    _STATE["stage"] = name
    try:
        yield
    except Exception as e:
        err = peer_error(e)
        if err is None:
            raise
        _STATE["lost"] = str(err)  # the process ends at exit without JAX's shutdown barrier
        raise err from e
    finally:
        _STATE["stage"] = prev
