"""Per-layer Hessian traces and the Hessian eigenvalue spectral density (ESD) of the training loss.

Both extend :mod:`tr_jax.landscape.hessian` (the Hutchinson trace and top eigenvalue of the sweep's
loss, :func:`~tr_jax.landscape.hessian.member_loss`) and use the same Hessian-vector products, the
same probes and the same ``mask`` rule: probes (and Lanczos iterates) are zero on pruned entries,
so the measured matrix is M H M, the Hessian restricted to the unpruned weights.

Each measurement has a core on a generic Hessian-vector product ``hvp_fn(v) -> H v`` (``v`` a
pytree shaped like ``params``; any symmetric linear map works, e.g. a plain matrix in the tests)
and a thin wrapper on a member (model, variables, mask, data), as
:func:`~tr_jax.landscape.hessian.member_hessian` is one.

**Per-layer traces** (:func:`block_traces`, :func:`layer_traces`). The parameter leaves are split
into groups ("layers", :func:`layer_groups`: by default one group per top-level module, e.g.
``conv1``, ``layer1_0`` ... ``bn``, ``fc`` in PreResNet). For a group b, tr(H_bb) is the trace of
the diagonal block of H on b's entries; the block traces add up to tr H. One Hessian-vector
product per probe serves every group: for a Rademacher probe v over *all* (unpruned) entries,

    E[v_b^T (H v)_b] = sum_{i in b} sum_j H_ij E[v_i v_j] = sum_{i in b} H_ii = tr(H_bb),

since E[v_i v_j] = 1 if i = j else 0 (the cross-block terms vanish in expectation). Its variance
is 2 sum_{i != j in b} H_ij^2 + sum_{i in b, j not in b} H_ij^2: a probe on b alone has the first
term only, but a separate probe per block would cost one Hessian-vector product per block and
probe. Probe j is ``rademacher_like(fold_in(key, j), params, mask)``, the probe
:func:`~tr_jax.landscape.hessian.hessian_trace` draws, so with the same key,
the same number of probes and groups covering every leaf, the per-layer estimates add up to
hessian_trace's estimate probe by probe. A fixed number of probes (no stopping rule: each layer
would stop at another probe), ``chunk`` at a time (one vmapped HVP per chunk); per layer the mean
and stderr = sample std (ddof 1) / sqrt(probes) (NaN for one probe).

**ESD by stochastic Lanczos quadrature** (:func:`slq`, :func:`esd_density`,
:func:`hessian_esd`; Lin, Saad & Yang 2016; Ghorbani, Krishnan & Xiao 2019). For each probe
p, a unit start vector v = r / ||r|| (r Rademacher, masked) and k
Lanczos steps with full re-orthogonalisation (two Gram-Schmidt passes against every earlier
Lanczos vector, as :func:`~tr_jax.landscape.hessian.lanczos`) give the k x k tridiagonal T; its
eigenpairs (theta_i, u_i) give the quadrature nodes theta_i (Ritz values) and weights
w_i = u_i[0]^2, with sum_i w_i theta_i^m = v^T H^m v for m <= 2k - 1. As E[v v^T] = I / n (n: the
number of unpruned entries), mean_p sum_i w_pi theta_pi^m estimates tr(H_S^m) / n for the
sub-Hessian H_S of the unpruned entries: the nodes and weights are a discrete approximation of the
ESD of H_S (the n_pruned zero eigenvalues of M H M are not counted). The smoothed density is
phi(t) = mean_p sum_i w_pi N(t; theta_pi, sigma^2), which integrates to 1 over the real line.
After a breakdown (beta_j ~ 0 at step j < k: an invariant subspace is found, e.g. k >= n) the
later Lanczos vectors are zero, and the last k - j nodes are 0 with weight exactly 0.

Why not :func:`~tr_jax.landscape.hessian.lanczos`: it returns only the k largest Ritz values,
and SLQ needs the whole tridiagonal matrix and the first components of its eigenvectors. The step
here is the same recurrence, batched over probes (one vmapped HVP per step for all probes), and
runs on :mod:`tr_jax.landscape.hessian`'s loops (``loop="auto" | "while" | "host"``, see there:
the host loop pays on CPU; ``while`` is jittable and vmappable over members). ``matfree`` (a JAX
library with SLQ) is not a dependency of tr_jax, and the recurrence is a few lines.

Memory: SLQ keeps ``num_probes x (lanczos_steps + 1)`` flattened parameter vectors (4 probes x 31
steps x 0.27 M parameters of PreResNet-20 = 134 MB in float32), per member under vmap.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from tr_jax import _checks as ck
from tr_jax import models
from tr_jax.landscape import hessian as hs

__all__ = ["layer_groups", "block_traces", "layer_traces", "slq", "esd_density", "esd_summary",
           "hessian_esd"]

HvpFn = Callable[[Any], Any]
Layers = None | str | Callable[[str], "str | None"] | Mapping[str, "tuple[int, ...]"]

# A Lanczos step breaks down when the new residual is below this fraction of ||H v_j||
# (the rule of tr_jax.landscape.hessian.lanczos).
_BREAKDOWN = 1e-5
#: points of the default density grid
DEFAULT_POINTS = 1001


# ---------------------------------------------------------------- layer groups --------------------

def layer_groups(params: Any, layers: Layers = None) -> dict[str, tuple[int, ...]]:
    """Groups of parameter leaves: ``{name: leaf indices}`` (indices into ``jax.tree.leaves(params)``),
    in order of first appearance.

    ``layers``:

    * ``None``: one group per top-level module, the first component of the leaf's path
      (:func:`tr_jax.models.path_str`, e.g. ``'layer1_0'`` for ``'layer1_0/conv1/kernel'``);
    * a regex string, searched (``re.search``) in each path: the group is the regex's first
      capturing group if it has one, else the whole match; leaves without a match are left out
      (e.g. ``r'^layer(\\d)'`` groups the three PreResNet stages and leaves out the stem and head);
    * a callable ``path_str -> name | None`` (None: left out);
    * a mapping ``{name: leaf indices}``, used as it is (checked).
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = [models.path_str(p) for p, _ in flat]
    if isinstance(layers, Mapping):
        groups = {str(k): tuple(int(i) for i in v) for k, v in layers.items()}
        bad = sorted({i for v in groups.values() for i in v if not 0 <= i < len(paths)})
        if bad:
            raise ValueError(f"layer groups name leaf indices {bad} outside [0, {len(paths)})")
    else:
        if layers is None:
            def name_of(s):
                return s.split("/", 1)[0] or "params"
        elif isinstance(layers, str):
            try:
                rx = re.compile(layers)
            except re.error as e:
                raise ValueError(f"layers={layers!r} is not a valid regex: {e}") from e

            def name_of(s):
                m = rx.search(s)
                return None if m is None else (m.group(1) if rx.groups else m.group(0))
        elif callable(layers):
            name_of = layers
        else:
            raise ValueError(f"layers must be None, a regex, a callable or a mapping; got {layers!r}")
        found: dict[str, list[int]] = {}
        for i, s in enumerate(paths):
            name = name_of(s)
            if name is not None:
                found.setdefault(str(name), []).append(i)
        groups = {k: tuple(v) for k, v in found.items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        raise ValueError(f"layers={layers!r} selects no parameter leaf (paths such as "
                         f"{paths[:3]})")
    return groups


def _leaf_group(params: Any, groups: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Per leaf, the index of its group (-1: in none); a leaf in two groups is refused."""
    owner = [-1] * len(jax.tree.leaves(params))
    for g, idx in enumerate(groups.values()):
        for i in idx:
            if owner[i] >= 0:
                raise ValueError(f"leaf {i} is in two layer groups")
            owner[i] = g
    return tuple(owner)


# ---------------------------------------------------------------- per-layer traces ----------------

def _layer_step(static, hv, params, key, mask, tol, state):
    chunk, probes, leaf_group = static
    i, buf = state
    onehot = np.zeros((len(leaf_group), buf.shape[1]), np.float32)
    for leaf, g in enumerate(leaf_group):
        if g >= 0:
            onehot[leaf, g] = 1.0

    def sample(j):
        v = hs.rademacher_like(jax.random.fold_in(key, j), params, mask)
        per_leaf = jnp.stack([jnp.vdot(a, b).astype(buf.dtype)
                              for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(hv(v)))])
        return per_leaf @ jnp.asarray(onehot, buf.dtype)  # [groups]

    vals = jax.vmap(sample)(i * chunk + jnp.arange(chunk, dtype=jnp.int32))  # [chunk, groups]
    return i + 1, lax.dynamic_update_slice(buf, vals, (i * chunk, 0))


def _layer_cond(static, state):
    chunk, probes, _ = static
    return state[0] * chunk < probes


def _layer_setup(params, layers, probes, chunk):
    groups = layer_groups(params, layers)
    chunk = min(chunk, probes)
    static = (chunk, probes, _leaf_group(params, groups))
    size = -(-probes // chunk) * chunk
    init = (jnp.zeros((), jnp.int32), jnp.zeros((size, len(groups)), hs.params_dtype(params)))
    return groups, static, init


def _layer_summary(groups, buf, probes):
    vals = buf[:probes]
    mean = jnp.mean(vals, axis=0)
    se = (jnp.std(vals, axis=0, ddof=1) / math.sqrt(probes) if probes > 1
          else jnp.full_like(mean, jnp.nan))
    return {name: (mean[g], se[g]) for g, name in enumerate(groups)}


def block_traces(hvp_fn: HvpFn, params: Any, key: jax.Array, layers: Layers = None, *,
                 probes: int = 100, chunk: int = 10, mask: Any | None = None
                 ) -> dict[str, tuple[jnp.ndarray, jnp.ndarray]]:
    """Hutchinson estimates of the diagonal-block traces tr(H_bb), one Rademacher probe over all
    entries per HVP for every block (module docstring).

    Args:
      hvp_fn: ``v -> H v`` on pytrees shaped like ``params`` (linear and symmetric).
      params: a pytree giving the shapes and the leaves that :func:`layer_groups` groups.
      key: PRNG key; probe j is ``rademacher_like(fold_in(key, j), params, mask)``.
      layers: the groups (:func:`layer_groups`).
      probes: number of probes (static). chunk: probes per vmapped HVP (static).
      mask: optional 0/1 pytree like params restricting the probes.

    Returns:
      ``{layer: (trace, stderr)}`` of float scalars. One ``lax.while_loop``: jittable, vmappable.
    """
    ck.check_args("tr_jax.landscape.block_traces", probes=(probes, ck.POS_INT),
                  chunk=(chunk, ck.POS_INT))
    groups, static, init = _layer_setup(params, layers, probes, chunk)
    _, buf = lax.while_loop(lambda s: _layer_cond(static, s),
                            lambda s: _layer_step(static, hvp_fn, params, key, mask, 0.0, s), init)
    return _layer_summary(groups, buf, probes)


def layer_traces(model: Any, variables: dict, mask: Any, images: jnp.ndarray,
                 labels: jnp.ndarray, key: jax.Array, *, mean, std, layers: Layers = None,
                 probes: int = 100, chunk: int = 10, loop: str = "auto"
                 ) -> dict[str, tuple[jnp.ndarray, jnp.ndarray]]:
    """Per-layer Hessian traces of one member's loss (:func:`~tr_jax.landscape.hessian.member_loss`:
    eval mode, mean cross-entropy of the masked network on ``images``).

    ``{layer: (trace, stderr)}``, the layers of :func:`layer_groups` (default: one per top-level
    module). Probes restricted to the unpruned weights when ``mask`` is given, as
    :func:`~tr_jax.landscape.hessian.member_hessian`; with the same key and number of probes the
    layers' traces add up to the trace of ``hessian_trace(member_loss(...), params, key,
    max_probes=probes, tol=0, mask=mask)``. ``loop`` as in :mod:`tr_jax.landscape.hessian`
    (``"auto"``: a host loop eagerly, a while loop under jit / vmap).
    """
    ck.check_args("tr_jax.landscape.layer_traces", probes=(probes, ck.POS_INT),
                  chunk=(chunk, ck.POS_INT))
    loss_fn = hs.member_loss(model, variables, mask, images, labels, mean, std)
    params = variables["params"]
    groups, static, init = _layer_setup(params, layers, probes, chunk)
    _, buf = hs.run_loop(loop, _layer_step, _layer_cond, static, loss_fn, params, key, mask, 0.0, init)
    return _layer_summary(groups, buf, probes)


# ---------------------------------------------------------------- stochastic Lanczos quadrature ---

def _slq_step(static, hv, params, key, mask, tol, state):
    j, basis, alphas, betas = state  # basis [probes, k + 1, P]; alphas, betas [probes, k]
    unravel = ravel_pytree(params)[1]

    def one(b):
        v = b[j]
        w = ravel_pytree(hs.apply_mask(hv(unravel(v)), mask))[0].astype(b.dtype)
        alpha = jnp.vdot(w, v)
        scale = jnp.linalg.norm(w)
        for _ in range(2):  # rows > j are zero: this projects out exactly the earlier vectors
            w = w - b.T @ (b @ w)
        beta = jnp.linalg.norm(w)
        ok = beta > _BREAKDOWN * scale
        return jnp.where(ok, w / jnp.where(ok, beta, 1.0), 0.0), alpha, jnp.where(ok, beta, 0.0)

    nxt, a, b = jax.vmap(one)(basis)
    return (j + 1, basis.at[:, j + 1].set(nxt), alphas.at[:, j].set(a),
            betas.at[:, j].set(b))


def _slq_cond(static, state):
    (steps,) = static
    return state[0] < steps


@functools.partial(jax.jit, static_argnums=(3, 4))
def _slq_setup(params, key, mask, num_probes, lanczos_steps):
    """The initial Lanczos state: every probe's unit start vector (one compiled call)."""
    flat = ravel_pytree(params)[0]

    def start(p):
        v = ravel_pytree(hs.rademacher_like(jax.random.fold_in(key, p), params, mask))[0]
        norm = jnp.linalg.norm(v)
        return v / jnp.where(norm > 0, norm, 1.0)

    v0 = jax.vmap(start)(jnp.arange(num_probes, dtype=jnp.int32))  # [probes, P]
    basis = jnp.zeros((num_probes, lanczos_steps + 1, flat.size), flat.dtype).at[:, 0].set(v0)
    zeros = jnp.zeros((num_probes, lanczos_steps), flat.dtype)
    return (jnp.zeros((), jnp.int32), basis, zeros, zeros)


def _ritz(alphas: jnp.ndarray, betas: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Nodes (ascending Ritz values) and weights (squared first eigenvector components) of the
    tridiagonal matrices of [probes, k] coefficients."""
    def one(a, b):
        off = b[:-1]
        tri = jnp.diag(a) + jnp.diag(off, 1) + jnp.diag(off, -1)
        evals, evecs = jnp.linalg.eigh(tri)
        return evals, evecs[0] ** 2
    return jax.vmap(one)(alphas, betas)


def _check_slq(source, num_probes, lanczos_steps):
    ck.check_args(source, num_probes=(num_probes, ck.POS_INT),
                  lanczos_steps=(lanczos_steps, ck.POS_INT))


def slq(hvp_fn: HvpFn, params: Any, key: jax.Array, *, num_probes: int = 4,
        lanczos_steps: int = 30, mask: Any | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Stochastic Lanczos quadrature of the symmetric map ``hvp_fn`` (module docstring).

    Probe p starts from the normalised ``rademacher_like(fold_in(key, p), params, mask)``; every
    Lanczos iterate is masked. Returns ``(nodes, weights)``, each [num_probes, lanczos_steps]:
    per probe the ascending Ritz values and their weights (summing to 1). One
    ``lax.while_loop`` over the steps (all probes in one vmapped HVP per step): jittable and
    vmappable.
    """
    _check_slq("tr_jax.landscape.slq", num_probes, lanczos_steps)
    init = _slq_setup(params, key, mask, num_probes, lanczos_steps)
    static = (lanczos_steps,)
    _, _, alphas, betas = lax.while_loop(
        lambda s: _slq_cond(static, s),
        lambda s: _slq_step(static, hvp_fn, params, key, mask, 0.0, s), init)
    return _ritz(alphas, betas)


def _gaussian_density(nodes, weights, grid, sigma):
    z = (grid[None, None, :] - nodes[..., None]) / sigma
    dens = jnp.exp(-0.5 * z * z) / (math.sqrt(2.0 * math.pi) * sigma)
    return jnp.mean(jnp.sum(weights[..., None] * dens, axis=1), axis=0)


def esd_density(nodes: jnp.ndarray, weights: jnp.ndarray, grid: jnp.ndarray | None = None,
                sigma: float | jnp.ndarray | None = None, num_points: int = DEFAULT_POINTS
                ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The Gaussian-smoothed ESD ``phi(t) = mean_p sum_i w_pi N(t; theta_pi, sigma^2)`` on a grid.

    ``nodes, weights``: [probes, k] (:func:`slq`). ``sigma`` (the kernel's standard deviation)
    defaults to 1 % of the span of the weighted nodes (or of 1e-3 of their largest magnitude when
    they all coincide, 1 if that is 0). ``grid`` defaults to ``num_points`` (static) equally spaced
    points from 5 sigma below the smallest weighted node to 5 sigma above the largest (spacing
    ~sigma / 9: the density's Riemann sum on it is 1 to ~1e-6). Give a fixed ``grid`` (and
    ``sigma``) to compare or average densities across members. Not renormalised: mass outside the
    grid is lost. (PyHessian's ``density_generate`` uses a kernel *variance* of 1e-5 max(1, span)
    on 10000 points and renormalises.) Returns ``(grid [G], density [G])``; jittable.
    """
    nodes, weights = jnp.asarray(nodes), jnp.asarray(weights)
    live = weights > 0
    lo = jnp.min(jnp.where(live, nodes, jnp.inf))
    hi = jnp.max(jnp.where(live, nodes, -jnp.inf))
    if sigma is None:
        span = jnp.maximum(hi - lo, 1e-3 * jnp.maximum(jnp.abs(lo), jnp.abs(hi)))
        sigma = 0.01 * jnp.where(span > 0, span, 1.0)
    sigma = jnp.asarray(sigma, nodes.dtype)
    if grid is None:
        grid = jnp.linspace(lo - 5.0 * sigma, hi + 5.0 * sigma, num_points, dtype=nodes.dtype)
    grid = jnp.asarray(grid, nodes.dtype)
    return grid, _gaussian_density(nodes, weights, grid, sigma)


def esd_summary(nodes: jnp.ndarray, weights: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Scalars of an SLQ result ([probes, k] nodes and weights), each a float scalar:

    * ``top`` / ``bottom``: the largest / smallest weighted Ritz value over the probes (Ritz values
      lie in [lambda_min, lambda_max], and the extreme ones converge first);
    * ``negative_mass``: the ESD's mass below 0, mean_p sum_{theta_pi < 0} w_pi (Ghorbani,
      Krishnan & Xiao 2019: the negative eigenvalues' share);
    * ``moment1`` / ``moment2``: mean_p sum_i w_pi theta_pi^m, estimates of tr(H_S^m) / n.
    """
    nodes, weights = jnp.asarray(nodes), jnp.asarray(weights)
    live = weights > 0
    return {"top": jnp.max(jnp.where(live, nodes, -jnp.inf)),
            "bottom": jnp.min(jnp.where(live, nodes, jnp.inf)),
            "negative_mass": jnp.mean(jnp.sum(jnp.where(nodes < 0, weights, 0.0), axis=1)),
            "moment1": jnp.mean(jnp.sum(weights * nodes, axis=1)),
            "moment2": jnp.mean(jnp.sum(weights * nodes ** 2, axis=1))}


@functools.partial(jax.jit, static_argnums=(4,))
def _finish(alphas, betas, grid, sigma, num_points):
    """Nodes, weights, grid and density from the Lanczos coefficients (one compiled call)."""
    nodes, weights = _ritz(alphas, betas)
    return (nodes, weights) + esd_density(nodes, weights, grid, sigma, num_points)


def hessian_esd(model: Any, variables: dict, mask: Any, images: jnp.ndarray,
                labels: jnp.ndarray, key: jax.Array, *, mean, std, num_probes: int = 4,
                lanczos_steps: int = 30, grid: jnp.ndarray | None = None,
                sigma: float | jnp.ndarray | None = None, num_points: int = DEFAULT_POINTS,
                loop: str = "auto") -> dict[str, jnp.ndarray]:
    """The Hessian ESD of one member's loss (:func:`~tr_jax.landscape.hessian.member_loss`) by
    stochastic Lanczos quadrature (module docstring).

    Lanczos iterates restricted to the unpruned weights when ``mask`` is given: the ESD of the
    sub-Hessian of the unpruned entries. ``grid`` / ``sigma`` / ``num_points`` as in
    :func:`esd_density` (pass a fixed grid to average members). ``loop`` as in
    :mod:`tr_jax.landscape.hessian` (``"while"`` under jit / vmap: one program per member, so a
    ``jax.vmap`` over ``(variables, mask, key)`` measures many members).

    Returns ``{'nodes': [num_probes, lanczos_steps], 'weights': [num_probes, lanczos_steps],
    'grid': [G], 'density': [G]}``.
    """
    _check_slq("tr_jax.landscape.hessian_esd", num_probes, lanczos_steps)
    ck.check_args("tr_jax.landscape.hessian_esd", num_points=(num_points, ck.POS_INT))
    loss_fn = hs.member_loss(model, variables, mask, images, labels, mean, std)
    params = variables["params"]
    init = _slq_setup(params, key, mask, num_probes, lanczos_steps)
    _, _, alphas, betas = hs.run_loop(loop, _slq_step, _slq_cond, (lanczos_steps,), loss_fn, params,
                                  key, mask, 0.0, init)
    nodes, weights, grid, density = _finish(alphas, betas, grid, sigma, num_points)
    return {"nodes": nodes, "weights": weights, "grid": grid, "density": density}
