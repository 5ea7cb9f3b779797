"""Test set-up: fast CPU compiles, strict numerics, shared tiny fixtures."""
from __future__ import annotations

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
# the autotuner's cache (members_strategy="auto"): one per pytest run, shared with subprocesses
import tempfile  # noqa: E402

os.environ.setdefault("TR_JAX_CACHE_DIR", tempfile.mkdtemp(prefix="tr_jax_autotune_"))
# subprocesses (`tr-jax run` in the multi-process, kill and notebook tests) compile as this one
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Flax examples do this in tests: compiles are several times faster; numbers stay float32-exact
# enough for every tolerance used here. Benchmarks and the main job keep full optimisation.
jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def fidelity():
    """Reference test vectors (PyTorch semantics), see tests/data/README.md."""
    return {name: dict(np.load(DATA / f"{name}.npz"))
            for name in ("preresnet20", "prune", "lmc", "cka", "sgd")}


def torch_state_dict(d: dict, prefix: str = "") -> dict:
    """Entries of a fidelity npz that are reference state_dict tensors (optionally under prefix/)."""
    out = {}
    for k, v in d.items():
        if prefix:
            if k.startswith(prefix + "/"):
                out[k[len(prefix) + 1:]] = v
        elif "/" not in k and "." in k:
            out[k] = v
    return out


def assert_bn_stats(batch_stats: dict, reference: dict, prefix: str, layers, atol=1e-5, rtol=1e-5):
    """Compare running stats of BN layers given as flax paths ('layer1_0/bn1') with the reference's
    ``{prefix}/{torch key}.running_mean|running_var`` entries."""
    for key in layers:
        node = batch_stats
        for p in key.split("/"):
            node = node[p]
        t = key.replace("_", ".").replace("/", ".")
        np.testing.assert_allclose(node["mean"], reference[f"{prefix}/{t}.running_mean"], atol=atol)
        np.testing.assert_allclose(node["var"], reference[f"{prefix}/{t}.running_var"], rtol=rtol)

