"""One-shot magnitude pruning masks as pytrees (SPEC §1.5).

A mask is a pytree shaped like ``params`` with 1.0 (kept) / 0.0 (pruned) float leaves; every leaf
that is not prunable (classifier, BN, biases: see ``tr_jax.models.is_prunable``) is all ones.

* ``scope="uniform"`` (the reference's ``unif``): every conv layer independently loses
  ``round((1 - density) * numel)`` of its weights with the smallest |w| (PyTorch's
  ``l1_unstructured`` count; ``jnp.round`` is half-to-even like Python's ``round``).
* ``scope="global"``: one magnitude ranking over the concatenation of all conv weights.

Ties are broken by a stable sort (lower flat index pruned first). ``density`` may be a traced
scalar, so masks can be ``vmap``-ed over a list of densities.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tr_jax.models import is_prunable

SCOPES = ("uniform", "global")


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


def magnitude_masks(params, density, scope: str = "uniform"):
    """Magnitude masks for ``params`` at ``density`` (Python float or traced scalar)."""
    if scope not in SCOPES:
        raise ValueError(f"pruning scope {scope!r} is not one of {SCOPES}")
    if not isinstance(density, jax.core.Tracer):
        check_density(density)
    density = jnp.asarray(density, jnp.float32)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    flags = [is_prunable(p, x) for p, x in paths_leaves]
    leaves = [x for _, x in paths_leaves]
    if scope == "uniform":
        masks = [(_keep_largest(jnp.abs(x).ravel(), density).reshape(x.shape).astype(x.dtype)
                  if f else jnp.ones_like(x)) for x, f in zip(leaves, flags)]
    else:
        pr = [x for x, f in zip(leaves, flags) if f]
        keep = _keep_largest(jnp.concatenate([jnp.abs(x).ravel() for x in pr]), density)
        masks, offset = [], 0
        for x, f in zip(leaves, flags):
            if f:
                masks.append(keep[offset:offset + x.size].reshape(x.shape).astype(x.dtype))
                offset += x.size
            else:
                masks.append(jnp.ones_like(x))
    return jax.tree_util.tree_unflatten(treedef, masks)


def apply_masks(params, masks):
    """Pruned params: ``params * masks`` leaf by leaf."""
    return jax.tree.map(lambda p, m: p * m, params, masks)


def mask_density(masks) -> jnp.ndarray:
    """Fraction of prunable entries kept."""
    pl = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(masks)[0] if is_prunable(p, x)]
    return sum(jnp.sum(x) for _, x in pl) / sum(x.size for _, x in pl)


def mask_density_stacked(masks) -> jnp.ndarray:
    """``mask_density`` of every member of a stacked mask pytree [M, ...] -> [M]."""
    return jax.vmap(mask_density)(masks)
