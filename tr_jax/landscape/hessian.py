"""Hessian trace and top eigenvalues of the training loss (PyHessian as the predecessor;
docs/fidelity.md, Hessian trace).

What is computed, for a scalar ``loss_fn(params)`` and the Hessian H of it w.r.t. every leaf of
``params`` (for the sweep: every trainable parameter, BN affine and biases included, as PyHessian's
"every parameter with requires_grad"):

* :func:`hvp` -- H v as the forward-over-reverse product ``jvp(grad(loss_fn))`` on pytrees.
* :func:`hessian_trace` -- Hutchinson: tr H ~ mean_j v_j^T H v_j over Rademacher probes v_j (+-1,
  pytrees shaped like params). Probe j is drawn from ``fold_in(key, j)`` (:func:`rademacher_like`),
  so the probes do not depend on ``chunk``. Probes are evaluated ``chunk`` at a time (one vmapped
  HVP per chunk). **Stopping rule** (PyHessian's, checked once per chunk instead of once per
  probe): after chunk c the running mean m_c over all probes so far is compared with the mean
  before that chunk (m_0 = 0, as PyHessian starts from ``trace = 0``); the loop stops when
  ``|m_c - m_{c-1}| / (|m_{c-1}| + 1e-6) < tol`` or when ``max_probes`` probes are done. With
  ``chunk=1`` this is exactly PyHessian's rule. A last partial chunk (max_probes not a multiple of
  chunk) is computed in full but only its first probes count. Returns ``(mean, stderr, n)``:
  stderr = sample std (ddof 1) / sqrt(n) (NaN when n = 1).
* :func:`top_eigenvalue` -- PyHessian's power iteration: Gaussian start, v <- Hv / ||Hv||, Rayleigh
  quotient lambda_i = v^T H v, stop when ``|lambda_i - lambda_{i-1}| / (|lambda_{i-1}| + 1e-6) < tol``
  or after ``max_iters`` HVPs. Returns ``(lambda_i, i)``: the latest quotient (PyHessian returns
  lambda_{i-1}; the two differ by less than tol relative). Power iteration finds the eigenvalue of
  largest *magnitude*; near a minimum that is the top one.
* :func:`lanczos` -- the ``k`` algebraically largest Ritz values of ``num_iters`` Lanczos steps
  with full re-orthogonalisation (flattened with ``ravel_pytree``), descending.
* :func:`member_loss` / :func:`member_hessian` -- the sweep's loss and measurement: eval mode
  (running BN statistics), mean cross-entropy on one batch (the predecessor: 200 training images,
  no augmentation) of the masked network ``params * mask``.

``mask`` (1.0 keep / 0.0 pruned, shaped like params; ``None`` = every parameter): probes are
``rademacher * mask`` (power iteration and Lanczos project every iterate), i.e. the measured matrix
is M H M, the Hessian restricted to the unpruned subspace; its trace is the trace of the sub-Hessian
of the unpruned entries. For :func:`member_loss`, whose effective weights are ``params * mask``, H is
already M H_w M (pruned rows and columns are zero), so masked and unmasked probes give the same
v^T H v, probe for probe; the sweep passes the mask anyway.

**Loops** (``loop=``), same numbers either way:

* ``"while"``: one ``lax.while_loop`` (``fori_loop`` for Lanczos): jittable, and vmappable over a
  leading members axis of ``(params, key, mask)`` and of the data in the loss (under vmap the loop
  runs until every member has stopped; each member's result is the one it gets alone).
* ``"host"``: a Python loop over jitted steps (one chunk / iteration each), stopping on the host.
  Not traceable. The step is compiled once per loss *function*: pass the loss as a
  ``jax.tree_util.Partial`` (as :func:`member_loss` returns) so that its data are arguments and
  every member reuses one compiled step; a plain closure compiles once per closure object. Each
  step redoes the primal gradient pass (``while`` linearises once).
* ``"auto"`` (default): ``"while"`` when any of params / key / mask / the Partial's leaves is a
  tracer (inside jit or vmap), else ``"host"``. Why: on CPU an XLA while loop (or ``cond``) whose
  body holds the conv HVPs runs ~10x slower than the same body jitted alone (PreResNet-8, 8x8,
  200 images, 2 cores: 20 probes 30 s in a while loop, 2.8 s as a host loop: XLA CPU runs rolled
  loops slowly),
  and on accelerators a host loop costs one sync per chunk.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from tr_jax import _checks as ck
from tr_jax import models
from tr_jax.data.augment import normalize
from tr_jax import members as mem
from tr_jax.training.steps import cross_entropy

LossFn = Callable[[Any], jnp.ndarray]
LOOPS = ("auto", "while", "host")

# PyHessian's denominator guard in its relative-change tests.
_REL_EPS = 1e-6


def hvp(loss_fn: LossFn, params: Any, v: Any) -> Any:
    """Hessian-vector product H v (pytree like params), forward-over-reverse."""
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def _linear_hvp(loss_fn: LossFn, params: Any) -> Callable[[Any], Any]:
    """v -> H v with the primal gradient pass done once (``jax.linearize`` of the gradient)."""
    return jax.linearize(jax.grad(loss_fn), params)[1]


def _vdot(a: Any, b: Any) -> jnp.ndarray:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def apply_mask(v: Any, mask: Any | None) -> Any:
    """``v`` with the pruned entries zeroed (``mask`` None: unchanged)."""
    return v if mask is None else jax.tree.map(lambda x, m: x * m.astype(x.dtype), v, mask)


def _random_like(sample: Callable, key: jax.Array, params: Any, mask: Any | None) -> Any:
    # One draw of all P entries, unravelled: one RNG call compiles much faster than one per leaf.
    flat, unravel = ravel_pytree(params)
    return apply_mask(unravel(sample(key, flat.shape, flat.dtype)), mask)


def rademacher_like(key: jax.Array, params: Any, mask: Any | None = None) -> Any:
    """A Rademacher (+-1) pytree shaped like params, times mask (one flat draw, unravelled)."""
    return _random_like(jax.random.rademacher, key, params, mask)


def _normalize(v: Any) -> Any:
    norm = jnp.sqrt(_vdot(v, v))
    safe = jnp.where(norm > 0, norm, jnp.ones_like(norm))
    return jax.tree.map(lambda x: x / safe, v)


@jax.jit
def _start_vector(key: jax.Array, params: Any, mask: Any | None) -> Any:
    """The power iteration's first vector, a normalised (masked) Gaussian draw: one compiled call
    (op by op, every leaf shape would compile on its own)."""
    return _normalize(_random_like(jax.random.normal, key, params, mask))


def params_dtype(params: Any):
    """The common dtype of the parameter leaves."""
    return jnp.result_type(*jax.tree.leaves(params))


# ---------------------------------------------------------------- loops ---------------------------
# A loop is (step, cond, static): step(static, hv, params, key, mask, tol, state) -> state and
# cond(static, state) -> bool, with module-level step/cond and hashable static, so that the host
# loop's jitted step is cached across calls.

def _resolve_loop(loop: str, *trees: Any) -> str:
    if loop not in LOOPS:
        raise ValueError(f"loop {loop!r} is not one of {LOOPS}")
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))
    if loop == "host" and traced:
        raise ValueError("loop='host' cannot run under jit/vmap; use loop='while' or 'auto'")
    return loop if loop != "auto" else ("while" if traced else "host")


@mem.lazy_jit(static_argnums=(0, 1))
def _host_step(step: Callable, static: tuple, loss_fn: Partial, params: Any, key: jax.Array,
               mask: Any, tol: Any, state: Any) -> Any:
    return step(static, _linear_hvp(loss_fn, params), params, key, mask, tol, state)


def _placed_like(state: Any, inputs: Any) -> Any:
    """``state`` on the devices of the first committed array among ``inputs`` (replicated), as
    the host loop's step returns it: its first call then compiles what every later call reuses
    (an uncommitted first state would be a second input sharding, hence a second compile)."""
    leaf = next((x for x in jax.tree.leaves(inputs)
                 if isinstance(x, jax.Array) and getattr(x, "committed", False)), None)
    if leaf is None:
        return state
    sh = leaf.sharding
    if isinstance(sh, jax.sharding.NamedSharding):
        sh = jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec())
    elif not isinstance(sh, jax.sharding.SingleDeviceSharding):
        return state
    return jax.device_put(state, sh)


def run_loop(loop: str, step: Callable, cond: Callable, static: tuple, loss_fn: LossFn,
             params: Any, key: jax.Array, mask: Any, tol: Any, init: Any,
             hv: Callable | None = None) -> Any:
    """Run a probe loop (``loop``: auto / while / host) of ``step`` while ``cond``, shared by the
    trace, the Lanczos iteration and :mod:`tr_jax.landscape.spectrum`; ``hv`` (while loop only)
    is a linearised HVP to reuse."""
    if _resolve_loop(loop, loss_fn, params, key, mask, tol) == "while":
        hv = _linear_hvp(loss_fn, params) if hv is None else hv
        return lax.while_loop(lambda s: cond(static, s),
                              lambda s: step(static, hv, params, key, mask, tol, s), init)
    loss_fn = loss_fn if isinstance(loss_fn, Partial) else Partial(loss_fn)
    state = _placed_like(init, (loss_fn, params, key, mask))
    while bool(cond(static, state)):
        state = _host_step(step, static, loss_fn, params, key, mask, tol, state)
    return state


# ---------------------------------------------------------------- trace ---------------------------

def _trace_step(static, hv, params, key, mask, tol, state):
    chunk, max_probes = static
    i, buf, prev, _ = state

    def vhv(j):
        v = rademacher_like(jax.random.fold_in(key, j), params, mask)
        return _vdot(v, hv(v)).astype(buf.dtype)

    vals = jax.vmap(vhv)(i * chunk + jnp.arange(chunk, dtype=jnp.int32))  # [chunk]
    buf = lax.dynamic_update_slice(buf, vals, (i * chunk,))
    n = jnp.minimum((i + 1) * chunk, max_probes)
    mean = jnp.sum(jnp.where(jnp.arange(buf.size) < n, buf, 0.0)) / n.astype(buf.dtype)
    done = jnp.abs(mean - prev) / (jnp.abs(prev) + _REL_EPS) < tol
    return i + 1, buf, mean, done


def _trace_cond(static, state):
    chunk, max_probes = static
    i, _, _, done = state
    return (i * chunk < max_probes) & ~done


def hessian_trace(loss_fn: LossFn, params: Any, key: jax.Array, max_probes: int = 100,
                  tol: float = 1e-3, chunk: int = 10, mask: Any | None = None,
                  loop: str = "auto") -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Hutchinson estimate of tr H (tr M H M with a mask); see the module docstring for the rule.

    Args:
      loss_fn: scalar function of a params pytree (a ``Partial`` to reuse compiles, see loops).
      params: the point at which H is taken.
      key: PRNG key; probe j uses ``fold_in(key, j)``.
      max_probes: at most this many probes (static).
      tol: relative change of the running mean, checked after each chunk; 0 = run all probes.
      chunk: probes per vmapped HVP (static).
      mask: optional 0/1 pytree like params restricting the probes.
      loop: ``"auto" | "while" | "host"`` (module docstring).

    Returns:
      ``(mean, stderr, n)``: float scalars and the int32 number of probes used.
    """
    ck.check_args("tr_jax.landscape.hessian_trace", max_probes=(max_probes, ck.POS_INT),
                  chunk=(chunk, ck.POS_INT), tol=(tol, ck.NONNEG_FLOAT))
    return _hessian_trace(loss_fn, params, key, max_probes, tol, chunk, mask, loop)


def _hessian_trace(loss_fn, params, key, max_probes, tol, chunk, mask, loop, hv=None):
    if max_probes < 1 or chunk < 1:
        raise ValueError(f"max_probes and chunk must be >= 1; got {max_probes}, {chunk}")
    chunk = min(chunk, max_probes)
    size = -(-max_probes // chunk) * chunk
    dtype = params_dtype(params)
    init = (jnp.zeros((), jnp.int32), jnp.zeros((size,), dtype), jnp.zeros((), dtype),
            jnp.zeros((), bool))
    i, buf, mean, _ = run_loop(loop, _trace_step, _trace_cond, (chunk, max_probes), loss_fn, params,
                           key, mask, tol, init, hv)
    n = jnp.minimum(i * chunk, max_probes)
    nf = n.astype(dtype)
    var = jnp.sum(jnp.where(jnp.arange(size) < n, (buf - mean) ** 2, 0.0)) / (nf - 1.0)
    return mean, jnp.sqrt(var / nf), n


# ---------------------------------------------------------------- power iteration -----------------

def _power_step(static, hv, params, key, mask, tol, state):
    i, v, prev, _ = state
    w = apply_mask(hv(v), mask)
    eig = _vdot(w, v).astype(prev.dtype)
    done = (i > 0) & (jnp.abs(eig - prev) / (jnp.abs(prev) + _REL_EPS) < tol)
    return i + 1, _normalize(w), eig, done


def _power_cond(static, state):
    (max_iters,) = static
    i, _, _, done = state
    return (i < max_iters) & ~done


def top_eigenvalue(loss_fn: LossFn, params: Any, key: jax.Array, max_iters: int = 100,
                   tol: float = 1e-3, mask: Any | None = None, loop: str = "auto"
                   ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Power iteration (PyHessian's rule, module docstring) -> (eigenvalue, int32 #HVPs).

    ``max_iters`` (static) bounds the number of HVPs; ``tol=0`` runs all of them.
    """
    ck.check_args("tr_jax.landscape.top_eigenvalue", max_iters=(max_iters, ck.POS_INT),
                  tol=(tol, ck.NONNEG_FLOAT))
    return _top_eigenvalue(loss_fn, params, key, max_iters, tol, mask, loop)


def _top_eigenvalue(loss_fn, params, key, max_iters, tol, mask, loop, hv=None):
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1; got {max_iters}")
    v0 = _start_vector(key, params, mask)
    init = (jnp.zeros((), jnp.int32), v0, jnp.zeros((), params_dtype(params)), jnp.zeros((), bool))
    i, _, eig, _ = run_loop(loop, _power_step, _power_cond, (max_iters,), loss_fn, params, key, mask,
                        tol, init, hv)
    return eig, i


# ---------------------------------------------------------------- Lanczos -------------------------

def _lanczos_step(static, hv, params, key, mask, tol, state):
    j, basis, alphas, betas = state
    unravel = ravel_pytree(params)[1]
    v = basis[j]
    w = ravel_pytree(apply_mask(hv(unravel(v)), mask))[0]
    alpha = jnp.vdot(w, v)
    scale = jnp.linalg.norm(w)
    for _ in range(2):  # rows > j are zero, so this projects out exactly the earlier vectors
        w = w - basis.T @ (basis @ w)
    beta = jnp.linalg.norm(w)
    ok = beta > 1e-5 * scale  # else breakdown: an invariant subspace is found
    nxt = jnp.where(ok, w / jnp.where(ok, beta, 1.0), 0.0)
    return (j + 1, basis.at[j + 1].set(nxt), alphas.at[j].set(alpha),
            betas.at[j].set(jnp.where(ok, beta, 0.0)))


def _lanczos_cond(static, state):
    (num_iters,) = static
    return state[0] < num_iters


def lanczos(loss_fn: LossFn, params: Any, key: jax.Array, k: int = 5, num_iters: int = 30,
            mask: Any | None = None, loop: str = "auto") -> jnp.ndarray:
    """The k largest Ritz values [k] (descending) of num_iters Lanczos steps on H (M H M).

    Full re-orthogonalisation (two Gram-Schmidt passes) against all earlier Lanczos vectors, stored
    as a [num_iters + 1, P] matrix (P = number of parameters): keep num_iters small (tens) for big
    models, and num_iters <= P (after a breakdown, beta ~ 0, the next vector is zero and T gains
    spurious zero Ritz values).
    """
    ck.check_args("tr_jax.landscape.lanczos", k=(k, ck.POS_INT), num_iters=(num_iters, ck.POS_INT))
    if not 1 <= k <= num_iters:
        raise ValueError(f"need 1 <= k <= num_iters; got k={k}, num_iters={num_iters}")
    flat = ravel_pytree(params)[0]
    v0 = ravel_pytree(_random_like(jax.random.normal, key, params, mask))[0]
    v0 = v0 / jnp.linalg.norm(v0)
    zeros = jnp.zeros((num_iters,), flat.dtype)
    init = (jnp.zeros((), jnp.int32),
            jnp.zeros((num_iters + 1, flat.size), flat.dtype).at[0].set(v0), zeros, zeros)
    _, _, alphas, betas = run_loop(loop, _lanczos_step, _lanczos_cond, (num_iters,), loss_fn, params,
                               key, mask, 0.0, init)
    off = betas[:-1]
    tri = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigvalsh(tri)[::-1][:k]


# ---------------------------------------------------------------- the sweep's loss ----------------

@dataclasses.dataclass(frozen=True)
class _MemberLoss:
    """Hashable loss body: equal models share one compiled host step."""

    model: nn.Module

    def __call__(self, batch_stats, mask, x, labels, params):
        eff = apply_mask(params, mask)
        logits = models.apply(self.model, {"params": eff, "batch_stats": batch_stats}, x)
        return cross_entropy(logits, labels)


def member_loss(model: nn.Module, variables: dict, mask: Any, images: jnp.ndarray,
                labels: jnp.ndarray, mean: Sequence[float], std: Sequence[float]) -> Partial:
    """The sweep's loss as a function of params: eval-mode mean CE of the masked network.

    images: uint8 [B, H, W, C] raw pixels (the predecessor: B = 200 training images, no augmentation);
    labels: int [B]; variables: ``{'params', 'batch_stats'}`` (running statistics are used, not
    differentiated); mask: 0/1 pytree like params (``None`` = dense). Returns a
    ``Partial`` ``loss_fn(params)`` evaluating the network at ``params * mask``; its data are pytree
    leaves, so it can be passed through jit and the host loop compiles once per model and shape.
    """
    x = normalize(images, mean, std)
    return Partial(_MemberLoss(model), variables["batch_stats"], mask, x, labels)


def member_hessian(model: nn.Module, variables: dict, mask: Any, images: jnp.ndarray,
                   labels: jnp.ndarray, key: jax.Array, *, mean: Sequence[float],
                   std: Sequence[float], max_probes: int = 100, tol: float = 1e-3,
                   chunk: int = 10, max_iters: int = 100, loop: str = "auto"
                   ) -> dict[str, jnp.ndarray]:
    """The Hessian measure of one member (docs/fidelity.md, Hessian trace): Hutchinson trace
    and top eigenvalue of :func:`member_loss`.

    Probes restricted to the unpruned weights (``mask``); ``split(key)`` gives the trace and the
    power-iteration keys. Eagerly (loop 'auto' -> 'host') each member reuses the compiled steps;
    for a members axis, jit a ``jax.vmap`` of it (loop 'auto' -> 'while') over
    ``(variables, mask, images, labels, key)``. Returns ``{'trace', 'trace_stderr',
    'trace_probes', 'top_eigenvalue', 'eig_iters'}`` (scalars). ``max_probes``, ``chunk`` and
    ``max_iters`` >= 1, ``tol`` >= 0 (the config's ``measure.hessian.*``).
    """
    ck.check_args("tr_jax.landscape.member_hessian", max_probes=(max_probes, ck.POS_INT),
                  chunk=(chunk, ck.POS_INT), max_iters=(max_iters, ck.POS_INT),
                  tol=(tol, ck.NONNEG_FLOAT))
    loss_fn = member_loss(model, variables, mask, images, labels, mean, std)
    params = variables["params"]
    k_trace, k_eig = jax.random.split(key)
    hv = None  # in a while loop, one primal gradient pass serves both measurements
    if _resolve_loop(loop, loss_fn, params, key, mask, tol) == "while":
        hv = _linear_hvp(loss_fn, params)
    tr, se, n = _hessian_trace(loss_fn, params, k_trace, max_probes, tol, chunk, mask, loop, hv)
    eig, iters = _top_eigenvalue(loss_fn, params, k_eig, max_iters, tol, mask, loop, hv)
    return {"trace": tr, "trace_stderr": se, "trace_probes": n, "top_eigenvalue": eig,
            "eig_iters": iters}
