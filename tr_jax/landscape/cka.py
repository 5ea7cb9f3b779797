"""Linear CKA of network outputs (docs/fidelity.md, CKA).

Biased-HSIC linear CKA, <HKH, HLH>_F / (||HKH||_F ||HLH||_F) with K = X X^T, L = Y Y^T, computed
in feature space (O(n d^2)): centre the columns of X [n, d] and Y [n, e], then
||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F). Leading batch axes broadcast (all pairs in one call).
"""
from __future__ import annotations

import jax.numpy as jnp


def cka(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Linear CKA of x [..., n, d] and y [..., n, e] (rows are the same n examples)."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    x = x - jnp.mean(x, axis=-2, keepdims=True)
    y = y - jnp.mean(y, axis=-2, keepdims=True)
    xy = jnp.einsum("...nd,...ne->...de", x, y)
    xx = jnp.einsum("...nd,...ne->...de", x, x)
    yy = jnp.einsum("...nd,...ne->...de", y, y)
    num = jnp.sum(xy * xy, axis=(-2, -1))
    den = jnp.sqrt(jnp.sum(xx * xx, axis=(-2, -1))) * jnp.sqrt(jnp.sum(yy * yy, axis=(-2, -1)))
    return num / den
