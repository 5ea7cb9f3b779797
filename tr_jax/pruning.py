"""One-shot magnitude pruning masks as pytrees (docs/fidelity.md, Magnitude pruning).

A mask is a pytree shaped like ``params`` with 1.0 (kept) / 0.0 (pruned) float leaves; every leaf
that is not prunable is all ones (so ``params * mask`` needs no special case). Which leaves are
prunable is the declarative ``leaves`` argument (config ``prune.leaves``, see
``tr_jax.models.is_prunable``): ``"conv"`` (default, the reference: every conv kernel; classifier, BN
and biases never), ``"conv+dense"`` (also Dense kernels), or a regex over the parameter path
(``"Conv_1/kernel|Dense_0/kernel"``). Every scope below works on the chosen leaves alike: "layer"
means one prunable leaf, and ``density`` is the kept fraction of all prunable weights.

* ``scope="uniform"`` (the reference's ``unif``): every conv layer independently loses
  ``round((1 - density) * numel)`` of its weights with the smallest |w| (PyTorch's
  ``l1_unstructured`` count; ``jnp.round`` is half-to-even like Python's ``round``).
* ``scope="global"``: one magnitude ranking over the concatenation of all conv weights.

Beyond the reference (layer-wise sparsity allocations from the literature):

* ``scope="lamp"`` (Lee et al., ICLR 2021): each weight's LAMP score w_u^2 / sum_{|w_v| >= |w_u|}
  w_v^2 within its layer (weights sorted by magnitude), then one global ranking of the scores.
  The largest weight of every layer scores 1, so no layer is ever emptied.
* ``scope="erk"`` (Erdos-Renyi-Kernel, Evci et al., ICML 2020): layer density proportional to
  (sum of the kernel's dimensions) / (its number of weights), scaled so that the conv weights as a
  whole keep ``density``; layers that would exceed 1 are kept dense and the rest rescaled. Within
  a layer, magnitude pruning as ``uniform``.

Ties are broken by a stable sort (lower flat index pruned first). ``density`` may be a traced
scalar, so masks can be ``vmap``-ed over a list of densities.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tr_jax.models import check_leaves, is_prunable, path_str

SCOPES = ("uniform", "global", "lamp", "erk")


def check_density(density: float) -> float:
    """Raise a clear error unless 0 < density <= 1 (fraction of surviving conv weights)."""
    d = float(density)
    if not (0.0 < d <= 1.0):
        raise ValueError(f"density must be in (0, 1] (fraction of conv weights kept); got {density!r}")
    return d


def _keep_largest(scores: jnp.ndarray, density: jnp.ndarray) -> jnp.ndarray:
    """Flat bool mask keeping all but the round((1-density)*n) smallest scores."""
    n = scores.size
    n_prune = jnp.round((1.0 - density) * n).astype(jnp.int32)
    order = jnp.argsort(scores, stable=True)
    rank = jnp.empty((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return rank >= n_prune


def lamp_scores(w: jnp.ndarray) -> jnp.ndarray:
    """Flat LAMP scores of one layer: w_u^2 / sum of w_v^2 over the weights at least as large
    (in the stable magnitude order), so that the largest weight scores exactly 1."""
    sq = jnp.square(w.ravel())
    order = jnp.argsort(sq, stable=True)
    s = sq[order]
    tail = jnp.cumsum(s[::-1])[::-1]  # sum over v >= u in the sorted order
    return jnp.empty_like(sq).at[order].set(s / jnp.maximum(tail, jnp.finfo(sq.dtype).tiny))


def erk_densities(kernels: list, density: jnp.ndarray) -> list[jnp.ndarray]:
    """ERK layer densities of kernels (conv [kh, kw, in, out], Dense [in, out]) whose weighted mean
    is ``density``.

    raw_l = (kh + kw + in + out) / (kh kw in out); d_l = min(1, eps * raw_l) with eps chosen so
    that sum_l d_l n_l = density * sum_l n_l. The capping is resolved by a fixed number of
    rescaling rounds (one per layer), so ``density`` may be traced."""
    n = jnp.asarray([x.size for x in kernels], jnp.float32)
    raw = jnp.asarray([sum(x.shape) / x.size for x in kernels], jnp.float32)
    dense = jnp.zeros(n.shape, bool)
    for _ in range(len(kernels)):
        budget = density * jnp.sum(n) - jnp.sum(jnp.where(dense, n, 0.0))
        eps = budget / jnp.maximum(jnp.sum(jnp.where(dense, 0.0, raw * n)), 1e-12)
        dense = dense | (eps * raw > 1.0)
    d = jnp.where(dense, 1.0, jnp.clip(eps * raw, 0.0, 1.0))
    return [d[i] for i in range(len(kernels))]


def prunable_paths(params, leaves: str = "conv") -> list[str]:
    """The paths (``'Conv_0/kernel'``) of the leaves of ``params`` that ``leaves`` prunes."""
    return [path_str(p) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
            if is_prunable(p, x, leaves)]


def magnitude_masks(params, density, scope: str = "uniform", leaves: str = "conv"):
    """Magnitude masks for ``params`` at ``density`` (Python float or traced scalar), pruning the
    leaves that ``leaves`` names (``"conv"``, ``"conv+dense"`` or a path regex)."""
    if scope not in SCOPES:
        raise ValueError(f"pruning scope {scope!r} is not one of {SCOPES}")
    if not isinstance(density, jax.core.Tracer):
        check_density(density)
    density = jnp.asarray(density, jnp.float32)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    flags = [is_prunable(p, x, check_leaves(leaves)) for p, x in paths_leaves]
    if not any(flags):
        raise ValueError(f"prune.leaves={leaves!r} selects no parameter; the parameters are "
                         f"{[path_str(p) for p, _ in paths_leaves]}")
    leaves = [x for _, x in paths_leaves]
    pr = [x for x, f in zip(leaves, flags) if f]
    if scope == "uniform":
        kept = [_keep_largest(jnp.abs(x).ravel(), density) for x in pr]
    elif scope == "erk":
        kept = [_keep_largest(jnp.abs(x).ravel(), d) for x, d in zip(pr, erk_densities(pr, density))]
    else:
        scores = [jnp.abs(x).ravel() if scope == "global" else lamp_scores(x) for x in pr]
        keep = _keep_largest(jnp.concatenate(scores), density)
        bounds = np.cumsum([0] + [x.size for x in pr])
        kept = [keep[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    it = iter(kept)
    masks = [next(it).reshape(x.shape).astype(x.dtype) if f else jnp.ones_like(x)
             for x, f in zip(leaves, flags)]
    return jax.tree_util.tree_unflatten(treedef, masks)


def apply_masks(params, masks):
    """Pruned params: ``params * masks`` leaf by leaf (the effective weights of masked training)."""
    return jax.tree.map(lambda p, m: p * m, params, masks)


def masked_update(params, updates, masks):
    """``params + updates * masks`` leaf by leaf: an optimiser update that leaves pruned entries
    where they are (zero, after ``apply_masks``)."""
    return jax.tree.map(lambda p, u, m: p + u * m, params, updates, masks)


def mask_density(masks, leaves: str = "conv") -> jnp.ndarray:
    """Fraction of prunable entries kept (prunable as ``leaves`` says)."""
    pl = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(masks)[0]
          if is_prunable(p, x, leaves)]
    return sum(jnp.sum(x) for _, x in pl) / sum(x.size for _, x in pl)


def mask_density_stacked(masks, leaves: str = "conv") -> jnp.ndarray:
    """``mask_density`` of every member of a stacked mask pytree [M, ...] -> [M]."""
    return jax.vmap(lambda m: mask_density(m, leaves))(masks)
