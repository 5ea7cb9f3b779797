"""Shared by the multi-process tests: a free loopback port, the environment of a process with N
simulated CPU devices, and a bounded wait for processes whose output goes to files."""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(devices: int, **extra: str) -> dict:
    """The environment of a process with ``devices`` simulated CPU devices that compiles as the
    test suite does and imports this checkout. The devices share the 2 cores with the other test
    worker: a device thread can reach a collective more than XLA's default 20 + 40 s after the
    others, so the termination timeout of an in-process collective is raised to 600 s (the
    tests' own bound)."""
    flags = (f"--xla_force_host_platform_device_count={devices} "
             "--xla_cpu_collective_call_terminate_timeout_seconds=600")
    return {**os.environ, "XLA_FLAGS": flags,
            "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "PYTHONPATH": str(ROOT), **extra}


def tails(procs: list[subprocess.Popen]) -> str:
    """The last lines each process wrote (``p.files``: its stdout and stderr files)."""
    return "\n".join(f"--- process {i} (rc {p.poll()}):\n{p.files[0].read_text()[-2000:]}\n"
                     f"{p.files[1].read_text()[-4000:]}" for i, p in enumerate(procs))


def finish(procs: list[subprocess.Popen], timeout: float,
           what: str = "the run") -> list[tuple[int, str, str]]:
    """Wait for every process, ``timeout`` seconds in all; on a timeout kill them all and fail
    with what each wrote last. Returns (return code, stdout, stderr) per process."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{what} did not finish within {timeout:.0f} s:\n{tails(procs)}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    return [(p.returncode, p.files[0].read_text(), p.files[1].read_text()) for p in procs]
