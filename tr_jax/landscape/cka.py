"""Linear CKA of network outputs (docs/fidelity.md, CKA).

Biased-HSIC linear CKA, <HKH, HLH>_F / (||HKH||_F ||HLH||_F) with K = X X^T, L = Y Y^T, computed
in feature space (O(n d^2)): centre the columns of X [n, d] and Y [n, e], then
||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F). Leading batch axes broadcast (all pairs in one call).

Wide features (layer activations, d >> n) go through n x n Gram matrices instead (O(n^2 d),
``gram``): ``cka_gram`` is the same biased CKA from Grams, ``cka_unbiased`` / ``cka_unbiased_gram``
the CKA of the unbiased estimator HSIC_1 (Song et al. 2012, JMLR; used for the minibatch CKA of
Nguyen, Raghu & Kornblith 2021, ICLR). For Grams K~, L~ with zeroed diagonals,

    HSIC_1(K, L) = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)),
    CKA_1 = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)),     n >= 4.

The biased CKA of independent features is far from 0 when n is small against d (about 0.9 for
n = 32 Gaussian examples of 256 features); the unbiased one is near 0. HSIC_1 is invariant to
translating the features, so ``gram`` centres them first, which keeps the correction terms small
(less cancellation in float32).

Precision: everything is float32; the Gram products use ``Precision.HIGHEST`` (no TF32 / bf16
passes on GPUs and TPUs). Against a float64 computation both CKAs were within 1e-6 (absolute)
on Gaussian features with n = 32..256 and d = 10..4096, including CKA_1 near 0 (a difference of
float32 sums); tests/test_layer_cka.py checks 1e-4 relative.
"""
from __future__ import annotations

import jax
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


_HI = jax.lax.Precision.HIGHEST


def gram(x: jnp.ndarray) -> jnp.ndarray:
    """Linear Gram matrix [..., n, n] of the column-centred features x [..., n, d] (= H K H, H the
    centring matrix), in float32."""
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 2:
        raise ValueError(f"gram needs features [..., n, d], got shape {x.shape}")
    x = x - jnp.mean(x, axis=-2, keepdims=True)
    return jnp.einsum("...nd,...md->...nm", x, x, precision=_HI)


def _center(k: jnp.ndarray) -> jnp.ndarray:
    """H K H (a no-op up to rounding on a Gram from ``gram``)."""
    k = k - jnp.mean(k, axis=-1, keepdims=True)
    return k - jnp.mean(k, axis=-2, keepdims=True)


def cka_gram(k: jnp.ndarray, l: jnp.ndarray) -> jnp.ndarray:  # noqa: E741
    """Biased linear CKA from Grams k, l [..., n, n] (centred here): <HKH, HLH> / (||HKH|| ||HLH||).
    Equals ``cka(x, y)`` for k = gram(x), l = gram(y)."""
    k = _center(jnp.asarray(k, jnp.float32))
    l = _center(jnp.asarray(l, jnp.float32))  # noqa: E741
    num = jnp.sum(k * l, axis=(-2, -1))
    return num / (jnp.sqrt(jnp.sum(k * k, axis=(-2, -1))) * jnp.sqrt(jnp.sum(l * l, axis=(-2, -1))))


def _check_n(n: int) -> int:
    if n < 4:
        raise ValueError(f"unbiased CKA needs n >= 4 examples (HSIC_1 divides by n(n-3)); got n={n}")
    return n


def hsic_unbiased(k: jnp.ndarray, l: jnp.ndarray) -> jnp.ndarray:  # noqa: E741
    """The unbiased HSIC_1 estimator (Song et al. 2012) of Grams k, l [..., n, n] (symmetric;
    their diagonals are ignored), float32. Needs n >= 4."""
    n = _check_n(k.shape[-1])
    eye = jnp.eye(n, dtype=bool)
    k = jnp.where(eye, 0.0, jnp.asarray(k, jnp.float32))
    l = jnp.where(eye, 0.0, jnp.asarray(l, jnp.float32))  # noqa: E741
    tr_kl = jnp.sum(k * l, axis=(-2, -1))  # tr(K L) for symmetric K, L
    k1, l1 = jnp.sum(k, axis=-1), jnp.sum(l, axis=-1)  # K 1, L 1
    sum_k, sum_l = jnp.sum(k1, axis=-1), jnp.sum(l1, axis=-1)
    kl1 = jnp.sum(k1 * l1, axis=-1)  # 1' K L 1
    return (tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl1) / (n * (n - 3))


def cka_unbiased_gram(k: jnp.ndarray, l: jnp.ndarray) -> jnp.ndarray:  # noqa: E741
    """Linear CKA of the unbiased HSIC_1 from Grams k, l [..., n, n]; n >= 4."""
    return hsic_unbiased(k, l) / jnp.sqrt(hsic_unbiased(k, k) * hsic_unbiased(l, l))


def cka_unbiased(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Linear CKA with the unbiased HSIC_1 estimator of x [..., n, d1] and y [..., n, d2] (rows
    are the same n >= 4 examples; see the module doc). O(n^2 d) through n x n Grams, so wide
    layer activations are fine; jit-able. Raises ValueError when n < 4."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    if x.ndim < 2 or y.ndim < 2 or x.shape[-2] != y.shape[-2]:
        raise ValueError(f"cka_unbiased needs x [..., n, d1] and y [..., n, d2] with the same n; "
                         f"got shapes {x.shape} and {y.shape}")
    _check_n(x.shape[-2])
    return cka_unbiased_gram(gram(x), gram(y))
