"""Hessian trace and top eigenvalues of the training loss (SPEC §2.5, PyHessian as the predecessor).

What is computed, for a scalar ``loss_fn(params)`` and the Hessian H of it w.r.t. every leaf of
``params`` (for the sweep: every trainable parameter, BN affine and biases included, as PyHessian's
"every parameter with requires_grad"):

* :func:`hvp` -- H v as the forward-over-reverse product ``jvp(grad(loss_fn))`` on pytrees.
* :func:`hessian_trace` -- Hutchinson: tr H ~ mean_j v_j^T H v_j over Rademacher probes v_j (+-1,
  pytrees shaped like params). Probe j is drawn from ``fold_in(key, j)`` (:func:`rademacher_like`),
  so the probes do not depend on ``chunk``. Probes are evaluated ``chunk`` at a time (one vmapped
  HVP per chunk) inside a ``lax.while_loop``. **Stopping rule** (PyHessian's, checked once per chunk
  instead of once per probe): after chunk c the running mean m_c over all probes so far is compared
  with the mean before that chunk (m_0 = 0, as PyHessian starts from ``trace = 0``); the loop stops
  when ``|m_c - m_{c-1}| / (|m_{c-1}| + 1e-6) < tol`` or when ``max_probes`` probes are done. With
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
* :func:`member_loss` -- the sweep's loss: eval mode (running BN statistics), mean cross-entropy on
  one batch (the predecessor: 200 training images, no augmentation) of the masked network
  ``params * mask``.

``mask`` (1.0 keep / 0.0 pruned, shaped like params; ``None`` = every parameter): probes are
``rademacher * mask`` (power iteration and Lanczos project every iterate), i.e. the measured matrix
is M H M, the Hessian restricted to the unpruned subspace; its trace is the trace of the sub-Hessian
of the unpruned entries. For :func:`member_loss`, whose effective weights are ``params * mask``, H is
already M H_w M (pruned rows and columns are zero), so masked and unmasked probes give the same
v^T H v, probe for probe; the sweep passes the mask anyway.

Every function is jittable and vmappable over a leading members axis of ``(params, key, mask)``
and of the data captured in ``loss_fn`` (under vmap the while loop runs until every member has
stopped; each member's result is the one it gets alone). :func:`member_hessian` is the jitted
one-member measurement the sweep vmaps or maps over members.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from tr_jax import models
from tr_jax.data.augment import normalize
from tr_jax.training.steps import cross_entropy

LossFn = Callable[[Any], jnp.ndarray]

# PyHessian's denominator guard in its relative-change tests.
_REL_EPS = 1e-6


def hvp(loss_fn: LossFn, params: Any, v: Any) -> Any:
    """Hessian-vector product H v (pytree like params), forward-over-reverse."""
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def _linear_hvp(loss_fn: LossFn, params: Any) -> Callable[[Any], Any]:
    """v -> H v with the primal gradient pass done once (``jax.linearize`` of the gradient).

    Same numbers as :func:`hvp`; the loops below call it many times at the same params.
    """
    return jax.linearize(jax.grad(loss_fn), params)[1]


def _vdot(a: Any, b: Any) -> jnp.ndarray:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _apply_mask(v: Any, mask: Any | None) -> Any:
    return v if mask is None else jax.tree.map(lambda x, m: x * m.astype(x.dtype), v, mask)


def _random_like(sample: Callable, key: jax.Array, params: Any, mask: Any | None) -> Any:
    # One draw of all P entries, unravelled: one RNG call compiles much faster than one per leaf.
    flat, unravel = ravel_pytree(params)
    return _apply_mask(unravel(sample(key, flat.shape, flat.dtype)), mask)


def rademacher_like(key: jax.Array, params: Any, mask: Any | None = None) -> Any:
    """A Rademacher (+-1) pytree shaped like params, times mask.

    Drawn as one flat vector in ``ravel_pytree`` order, then unravelled.
    """
    return _random_like(jax.random.rademacher, key, params, mask)


def _normalize(v: Any) -> tuple[Any, jnp.ndarray]:
    norm = jnp.sqrt(_vdot(v, v))
    safe = jnp.where(norm > 0, norm, jnp.ones_like(norm))
    return jax.tree.map(lambda x: x / safe, v), norm


def hessian_trace(loss_fn: LossFn, params: Any, key: jax.Array, max_probes: int = 100,
                  tol: float = 1e-3, chunk: int = 10, mask: Any | None = None
                  ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Hutchinson estimate of tr H (tr M H M with a mask); see the module docstring for the rule.

    Args:
      loss_fn: scalar function of a params pytree.
      params: the point at which H is taken.
      key: PRNG key; probe j uses ``fold_in(key, j)``.
      max_probes: at most this many probes (static).
      tol: relative change of the running mean, checked after each chunk; 0 = run all probes.
      chunk: probes per vmapped HVP (static).
      mask: optional 0/1 pytree like params restricting the probes.

    Returns:
      ``(mean, stderr, n)``: float scalars and the int32 number of probes used.
    """
    return _trace(_linear_hvp(loss_fn, params), params, key, max_probes, tol, chunk, mask)


def _trace(hv: Callable[[Any], Any], params: Any, key: jax.Array, max_probes: int, tol: float,
           chunk: int, mask: Any | None) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    if max_probes < 1 or chunk < 1:
        raise ValueError(f"max_probes and chunk must be >= 1; got {max_probes}, {chunk}")
    chunk = min(chunk, max_probes)
    n_chunks = -(-max_probes // chunk)
    size = n_chunks * chunk
    dtype = jnp.result_type(*jax.tree.leaves(params))

    def vhv(j):
        v = rademacher_like(jax.random.fold_in(key, j), params, mask)
        return _vdot(v, hv(v)).astype(dtype)

    def count(i):  # probes that count after i chunks
        return jnp.minimum(i * chunk, max_probes)

    def body(state):
        i, buf, prev, _ = state
        vals = jax.vmap(vhv)(i * chunk + jnp.arange(chunk, dtype=jnp.int32))  # [chunk]
        buf = lax.dynamic_update_slice(buf, vals, (i * chunk,))
        n = count(i + 1)
        mean = jnp.sum(jnp.where(jnp.arange(size) < n, buf, 0.0)) / n.astype(dtype)
        done = jnp.abs(mean - prev) / (jnp.abs(prev) + _REL_EPS) < tol
        return i + 1, buf, mean, done

    def cond(state):
        i, _, _, done = state
        return (i < n_chunks) & ~done

    init = (jnp.zeros((), jnp.int32), jnp.zeros((size,), dtype), jnp.zeros((), dtype),
            jnp.zeros((), bool))
    i, buf, mean, _ = lax.while_loop(cond, body, init)
    n = count(i)
    valid = jnp.arange(size) < n
    nf = n.astype(dtype)
    var = jnp.sum(jnp.where(valid, (buf - mean) ** 2, 0.0)) / (nf - 1.0)
    return mean, jnp.sqrt(var / nf), n


def top_eigenvalue(loss_fn: LossFn, params: Any, key: jax.Array, max_iters: int = 100,
                   tol: float = 1e-3, mask: Any | None = None
                   ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Power iteration (PyHessian's rule, see the module docstring) -> (eigenvalue, #HVPs).

    ``max_iters`` (static) bounds the number of HVPs; ``tol=0`` runs all of them.
    """
    return _power(_linear_hvp(loss_fn, params), params, key, max_iters, tol, mask)


def _power(hv: Callable[[Any], Any], params: Any, key: jax.Array, max_iters: int, tol: float,
           mask: Any | None) -> tuple[jnp.ndarray, jnp.ndarray]:
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1; got {max_iters}")
    v0, _ = _normalize(_random_like(jax.random.normal, key, params, mask))
    dtype = jnp.result_type(*jax.tree.leaves(params))

    def body(state):
        i, v, prev, _ = state
        w = _apply_mask(hv(v), mask)
        eig = _vdot(w, v).astype(dtype)
        done = (i > 0) & (jnp.abs(eig - prev) / (jnp.abs(prev) + _REL_EPS) < tol)
        return i + 1, _normalize(w)[0], eig, done

    def cond(state):
        i, _, _, done = state
        return (i < max_iters) & ~done

    init = (jnp.zeros((), jnp.int32), v0, jnp.zeros((), dtype), jnp.zeros((), bool))
    i, _, eig, _ = lax.while_loop(cond, body, init)
    return eig, i


def lanczos(loss_fn: LossFn, params: Any, key: jax.Array, k: int = 5, num_iters: int = 30,
            mask: Any | None = None) -> jnp.ndarray:
    """The k largest Ritz values [k] (descending) of num_iters Lanczos steps on H (M H M).

    Full re-orthogonalisation (two Gram-Schmidt passes) against all earlier Lanczos vectors, stored
    as a [num_iters, P] matrix (P = number of parameters): keep num_iters small (tens) for big
    models, and num_iters <= P (after a breakdown, beta ~ 0, the next vector is zero and T gains
    spurious zero Ritz values).
    """
    if not 1 <= k <= num_iters:
        raise ValueError(f"need 1 <= k <= num_iters; got k={k}, num_iters={num_iters}")
    flat, unravel = ravel_pytree(params)
    fmask = None if mask is None else ravel_pytree(mask)[0].astype(flat.dtype)
    hv = _linear_hvp(loss_fn, params)

    def matvec(x):
        y = ravel_pytree(hv(unravel(x)))[0]
        return y if fmask is None else y * fmask

    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    v0 = v0 if fmask is None else v0 * fmask
    v0 = v0 / jnp.linalg.norm(v0)
    basis = jnp.zeros((num_iters + 1, flat.size), flat.dtype).at[0].set(v0)

    def step(j, state):
        basis, alphas, betas = state
        v = basis[j]
        w = matvec(v)
        alpha = jnp.vdot(w, v)
        scale = jnp.linalg.norm(w)
        for _ in range(2):  # rows > j are zero, so this projects out exactly the earlier vectors
            w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        ok = beta > 1e-5 * scale  # else breakdown: an invariant subspace is found
        nxt = jnp.where(ok, w / jnp.where(ok, beta, 1.0), 0.0)
        return basis.at[j + 1].set(nxt), alphas.at[j].set(alpha), betas.at[j].set(jnp.where(ok, beta, 0.0))

    zeros = jnp.zeros((num_iters,), flat.dtype)
    _, alphas, betas = lax.fori_loop(0, num_iters, step, (basis, zeros, zeros))
    off = betas[:-1]
    tri = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigvalsh(tri)[::-1][:k]


def member_loss(model: nn.Module, variables: dict, mask: Any, images: jnp.ndarray,
                labels: jnp.ndarray, mean: Sequence[float], std: Sequence[float]) -> LossFn:
    """The sweep's loss as a function of params: eval-mode mean CE of the masked network.

    images: uint8 [B, H, W, C] raw pixels (SPEC §2.5: B = 200 training images, no augmentation);
    labels: int [B]; variables: ``{'params', 'batch_stats'}`` (running statistics are used, not
    differentiated); mask: 0/1 pytree like params (``None`` = dense). The returned
    ``loss_fn(params)`` evaluates the network at ``params * mask``.
    """
    x = normalize(images, mean, std)
    batch_stats = variables["batch_stats"]

    def loss_fn(params):
        eff = _apply_mask(params, mask)
        logits = models.apply(model, {"params": eff, "batch_stats": batch_stats}, x)
        return cross_entropy(logits, labels)

    return loss_fn


@functools.partial(jax.jit, static_argnames=("model", "mean", "std", "max_probes", "chunk",
                                             "max_iters"))
def member_hessian(model: nn.Module, variables: dict, mask: Any, images: jnp.ndarray,
                   labels: jnp.ndarray, key: jax.Array, *, mean: tuple[float, ...],
                   std: tuple[float, ...], max_probes: int = 100, tol: float = 1e-3,
                   chunk: int = 10, max_iters: int = 100) -> dict[str, jnp.ndarray]:
    """SPEC §2.5 for one member: Hutchinson trace and top eigenvalue of :func:`member_loss`.

    Probes restricted to the unpruned weights (``mask``). ``mean``/``std`` are tuples (static).
    Vmappable over members: ``jax.vmap(functools.partial(member_hessian, model, mean=..., std=...))``
    over ``(variables, mask, images, labels, key)``. Returns ``{'trace', 'trace_stderr',
    'trace_probes', 'top_eigenvalue', 'eig_iters'}`` (scalars).
    """
    loss_fn = member_loss(model, variables, mask, images, labels, mean, std)
    params = variables["params"]
    k_trace, k_eig = jax.random.split(key)
    hv = _linear_hvp(loss_fn, params)  # one primal gradient pass shared by both loops
    tr, se, n = _trace(hv, params, k_trace, max_probes, tol, chunk, mask)
    eig, iters = _power(hv, params, k_eig, max_iters, tol, mask)
    return {"trace": tr, "trace_stderr": se, "trace_probes": n, "top_eigenvalue": eig,
            "eig_iters": iters}
