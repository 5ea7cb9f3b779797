"""How members advance together: the ``members_strategy`` switch (see docs/design.md).

* ``loop``           a Python loop over members, each a jitted call on an unstacked member;
* ``threads[:k]``    ``loop``'s per-member calls dispatched from k host threads (default: one per
                     CPU core), so independent members' programs overlap on the cores;
* ``vmap``           one jitted call, ``jax.vmap`` over the members axis (per-member conv weights
                     become a grouped convolution);
* ``map``            one jitted call, ``lax.map`` over members (sequential inside one program);
* ``map_chunked:k``  ``lax.map`` with ``batch_size=k`` (vmap over k members at a time);
* ``gemm``           ``vmap`` of the model with ``conv_impl="gemm"`` (``tr_jax.models.conv``):
                     every conv is im2col + one batched matmul over members, never a grouped
                     convolution. Here it lifts ``fn`` like ``vmap``; ``Trainer`` swaps the model.

``auto`` picks the default for the backend from ``experiments/bench_members.py``: ``threads`` on
CPU, ``vmap`` on GPU/TPU (on GPU/TPU a default, not a measured choice). Measured on the 2-core CPU
(PreResNet-20, batch 64, member-images/s against M sequential single-member runs, medians, one
run of ``bench_members.py`` with its defaults; README, Performance): 8x8x1 ``threads`` 0.98 / 1.23
/ 1.29 / 1.32x at M = 1 / 4 / 16 / 64, ``loop`` 0.96-1.11x, ``vmap`` 1.35x at M=4 but 0.72x at
M=64; 32x32x3 ``threads`` 0.96 / 1.01 / 0.98 / 1.08x, ``loop`` 0.90-1.02x (the same program as
sequential: +-7% is noise), ``vmap`` 0.49x at M=4 (grouped convolutions); ``lax.map`` of conv
steps far slower (rolled loops). ``loop`` and
``threads`` run the very same compiled single-member program, so they agree bit for bit; the
stacked strategies agree with them within float tolerance.

On CPU every program tr_jax compiles here gets ``compiler_options()``: XLA's YNNPACK fusions off
(their weight-gradient convolutions ran 1.5-2.2x slower than XLA's Eigen ones and single-threaded;
a PreResNet-20 32x32 train step 1.5x faster on two free cores, 1.1x on one).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from tr_jax import sharding

STRATEGIES = ("loop", "threads", "threads:k", "vmap", "gemm", "map", "map_chunked:k", "auto")
PER_MEMBER = ("loop", "threads")  # strategies whose groups are single unstacked members

# XLA CPU: YNNPACK fusions off (see the module docstring; measured in bench_vs_torch.py).
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def default_strategy(backend: str | None = None) -> str:
    """The measured default members strategy of ``backend`` (default: JAX's default backend)."""
    backend = backend or jax.default_backend()
    return "threads" if backend == "cpu" else "vmap"


def eval_batch_size(batch_size: int = 0, backend: str | None = None) -> int:
    """Images per evaluation call: ``batch_size`` if > 0, else the backend's measured default:
    128 on CPU, 500 (the reference's test batch) elsewhere. On 2 CPU cores a PreResNet-20 CIFAR
    evaluation of 1 024 images took 0.78 s in batches of 64-256 and 1.12 s in batches of 500
    (activations of 500 images leave the caches). Only the float summation order of the mean
    loss depends on it; error counts do not."""
    if batch_size < 0:
        raise ValueError(f"eval batch size {batch_size} must be >= 0 (0 = auto)")
    if batch_size:
        return int(batch_size)
    return 128 if (backend or jax.default_backend()) == "cpu" else 500


def bn_chunk_batches(chunk_batches: int = 0, backend: str | None = None,
                     batch_pixels: int = 64 * 32 * 32) -> int:
    """BN-recalibration batches per compiled call (``tr_jax.landscape.recalibrate``):
    ``chunk_batches`` if > 0, else 16 on accelerators and, on CPU, as many batches as keep
    ``batch_pixels`` (batch size x H x W) per call within one CIFAR batch of 64 (at most 16):
    1 for 32x32 images (2 048 CIFAR images on 2 cores: 1.57 s against 2.0-2.3 s for 4-16 per
    call), 16 for 8x8 digits (0.29 s against 0.35 s for 1). The statistics do not depend on it."""
    if chunk_batches < 0:
        raise ValueError(f"chunk_batches={chunk_batches} must be >= 0 (0 = auto)")
    if chunk_batches:
        return int(chunk_batches)
    if (backend or jax.default_backend()) != "cpu":
        return 16
    return int(min(16, max(1, (64 * 32 * 32) // max(1, batch_pixels))))


def resolve(strategy: str, backend: str | None = None) -> str:
    """Validate ``strategy``; turn ``auto`` into the backend's measured default."""
    if strategy == "auto":
        return default_strategy(backend)
    if strategy in ("loop", "threads", "vmap", "gemm", "map"):
        return strategy
    for prefix in ("map_chunked:", "threads:"):
        if strategy.startswith(prefix):
            k = strategy.split(":", 1)[1]
            if k.isdigit() and int(k) > 0:
                return strategy
    raise ValueError(f"members_strategy {strategy!r} is not one of {STRATEGIES} "
                     "(map_chunked:k / threads:k with a positive integer k)")


def per_member(strategy: str) -> bool:
    """Whether ``strategy`` advances unstacked single members (``loop``, ``threads[:k]``)."""
    return resolve(strategy).split(":", 1)[0] in PER_MEMBER


def num_threads(strategy: str) -> int:
    """Host threads that dispatch members: k of ``threads:k``, one per CPU core for ``threads``,
    1 for every other strategy."""
    s = resolve(strategy)
    if s.startswith("threads:"):
        return int(s.split(":", 1)[1])
    return max(1, os.cpu_count() or 1) if s == "threads" else 1


@functools.lru_cache(maxsize=None)
def _options_supported(backend: str) -> bool:
    """Whether this jaxlib accepts ``_CPU_OPTIONS`` (checked once on a trivial program)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(
            jnp.zeros((2,), jnp.float32)).compile()
        return True
    except Exception:  # unknown option in another jaxlib: keep XLA's defaults
        return False


def compiler_options(backend: str | None = None) -> dict | None:
    """XLA compiler options for tr_jax's compiled steps on ``backend`` (None: XLA's defaults).

    CPU: YNNPACK fusions off, unless ``XLA_FLAGS`` already chooses them or this jaxlib does not
    know the option. Elsewhere: None."""
    backend = backend or jax.default_backend()
    if backend != "cpu" or "ynn_fusion_type" in os.environ.get("XLA_FLAGS", ""):
        return None
    return dict(_CPU_OPTIONS) if _options_supported(backend) else None


def jit(fn: Callable, **kwargs) -> Callable:
    """``jax.jit`` with this backend's ``compiler_options()``."""
    return jax.jit(fn, compiler_options=compiler_options(), **kwargs)


class _LazyJit:
    """``jit(fn, **kwargs)`` built on the first call, so that a module-level compiled function
    does not start JAX's backend (or probe the compiler options) at import time."""

    def __init__(self, fn: Callable, kwargs: dict):
        functools.update_wrapper(self, fn)
        self._fn, self._kwargs, self._jitted = fn, kwargs, None

    def _get(self) -> Callable:
        if self._jitted is None:
            self._jitted = jit(self._fn, **self._kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        return self._get()(*args, **kwargs)

    def __getattr__(self, name: str):  # lower, eval_shape, _cache_size, ...
        return getattr(self._get(), name)


def lazy_jit(fn: Callable | None = None, **kwargs) -> Callable:
    """``jit`` with this backend's ``compiler_options()``, for module-level functions (also a
    decorator: ``@lazy_jit(static_argnames=...)``); the jit is made on the first call."""
    if fn is None:
        return lambda f: _LazyJit(f, kwargs)
    return _LazyJit(fn, kwargs)


def over_members(fn: Callable, strategy: str, in_axes: Sequence[int | None],
                 donate_argnums: tuple[int, ...] = ()) -> Callable:
    """Jitted ``fn`` lifted to a *group* of members under ``strategy``.

    ``in_axes[i]`` is 0 for per-member arguments (leading members axis) and None for shared ones
    (the dataset). Under ``loop`` and ``threads`` a group is one member without a members axis.
    """
    strategy = resolve(strategy)
    if per_member(strategy):
        return jit(fn, donate_argnums=donate_argnums)
    if strategy in ("vmap", "gemm"):  # gemm: the caller's fn holds the conv_impl="gemm" model
        return jit(jax.vmap(fn, in_axes=tuple(in_axes)), donate_argnums=donate_argnums)
    batch = None if strategy == "map" else int(strategy.split(":", 1)[1])

    def mapped(*args):
        per_member = tuple(a for a, ax in zip(args, in_axes) if ax == 0)

        def body(xs):
            it = iter(xs)
            return fn(*[next(it) if ax == 0 else a for a, ax in zip(args, in_axes)])

        return lax.map(body, per_member, batch_size=batch)

    return jit(mapped, donate_argnums=donate_argnums)


def run_groups(work: Callable[[Any], Any], groups: Sequence[Any], strategy: str) -> list[Any]:
    """``[work(g) for g in groups]``, from ``num_threads(strategy)`` host threads under
    ``threads`` (results in order). ``work`` must not share mutable state across groups."""
    n = min(num_threads(strategy), len(groups))
    if n <= 1:
        return [work(g) for g in groups]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(n, thread_name_prefix="tr_jax_members") as pool:
        return list(pool.map(work, groups))


# Whole-tree ops are one jitted call each: op by op, every leaf shape would be a compile of its
# own (a PreResNet's ~50 leaves have 13 shapes) and every leaf a dispatch.
@jax.jit
def _stack(*trees: Any) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@functools.partial(jax.jit, static_argnums=1)
def _unstack(tree: Any, n: int) -> tuple:
    return tuple(jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n))


@jax.jit
def _take(tree: Any, idx: jnp.ndarray) -> Any:
    return jax.tree.map(lambda x: x[idx], tree)


def take(tree: Any, idx) -> Any:
    """Rows ``idx`` (host ints or an int array [k]) of every leaf of a stacked tree (one compiled
    call)."""
    return _take(tree, jnp.asarray(idx, jnp.int32))


def stack(trees: Sequence[Any]) -> Any:
    """Stack member pytrees on a new leading members axis (one compiled call)."""
    return _stack(*trees)


def unstack(tree: Any) -> list[Any]:
    """Inverse of ``stack`` (one compiled call)."""
    return list(_unstack(tree, int(jax.tree.leaves(tree)[0].shape[0])))


def num_members(stacked: Any) -> int:
    return int(jax.tree.leaves(stacked)[0].shape[0])


def shard_members(stacked: Any) -> Any:
    """A fresh copy of a stacked tree with its members axis sharded over every device of every
    process (``tr_jax.sharding.shard``: a 1-D ``Mesh`` named ``members``), padded (repeating the
    last member) to a multiple of the device count; ``join_groups(..., num=M)`` drops the padding.
    Jitted steps then run SPMD, each device on its share of members. Always a copy, so a step
    that donates its state never deletes the caller's arrays (on every backend)."""
    return sharding.shard(stacked)


def split_groups(stacked: Any, strategy: str) -> list[Any]:
    """The groups a strategy advances: one per member for ``loop`` and ``threads``, else the
    whole stack, its members axis sharded over every device (``shard_members``)."""
    if per_member(strategy):
        return unstack(stacked)
    return [shard_members(stacked)]


def join_groups(groups: Sequence[Any], strategy: str, num: int | None = None) -> Any:
    """Inverse of ``split_groups``; ``num`` trims a padded members axis back to ``num``."""
    out = stack(groups) if per_member(strategy) else groups[0]
    if num is not None and num_members(out) != num:
        out = jax.tree.map(lambda x: x[:num], out)
    return out
