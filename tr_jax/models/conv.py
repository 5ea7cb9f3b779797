"""The models' convolution, computed one of two ways (``conv_impl``: ``xla`` or the ``gemm`` layout).

* ``"xla"``  (default) Flax's ``nn.Conv``: one ``lax.conv_general_dilated``. Under ``jax.vmap``
  over members with per-member kernels it becomes a *grouped* convolution
  (``feature_group_count = M``), whose backward pass is slow on some backends (jax#13800).
* ``"gemm"`` im2col then one matmul: the input's ``kh x kw`` patches are gathered by strided
  slices (data movement only: no convolution at all, so no TF32/bf16 rounding of the patches and
  no grouped convolution anywhere, forward or backward) into ``[N, Ho, Wo, kh*kw*C]``, then
  multiplied by the kernel reshaped to ``[kh*kw*C, O]`` (HWIO's own order, no transpose). Under
  ``jax.vmap`` over members the slices just carry the members axis and the matmul becomes one
  batched ``dot_general`` (``einsum('mnpk,mko->mnpo')``); its backward passes are batched GEMMs.

Both create the very same parameters (``kernel`` [kh, kw, C, O] with the given init, ``bias`` [O]
when ``use_bias``) under the same module name, so checkpoints, pruning masks and the PyTorch import
do not depend on ``conv_impl``. ``dtype`` is the compute dtype (inputs, kernel and bias cast to it,
as ``nn.Conv`` does); the output is in ``dtype``.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("xla", "gemm")


def check_conv_impl(conv_impl: str) -> str:
    """``conv_impl`` if it is one of ``CONV_IMPLS``; raises naming the bad value otherwise."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl {conv_impl!r} is not one of {CONV_IMPLS}")
    return conv_impl


def im2col(x: jnp.ndarray, kernel_size: tuple[int, int], strides: tuple[int, int],
           padding: tuple[tuple[int, int], tuple[int, int]]) -> jnp.ndarray:
    """Patches of x [N, H, W, C] -> [N, Ho, Wo, kh*kw*C], features ordered (kh, kw, C) like a
    flattened HWIO kernel, by zero padding and ``kh*kw`` strided slices (a 1x1 kernel is one
    strided slice)."""
    (kh, kw), (sh, sw) = kernel_size, strides
    x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    n, h, w, c = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    cols = [lax.slice(x, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                      (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def conv_gemm(x: jnp.ndarray, kernel: jnp.ndarray, strides: tuple[int, int],
              padding: tuple[tuple[int, int], tuple[int, int]]) -> jnp.ndarray:
    """The convolution of x [N, H, W, C] with kernel [kh, kw, C, O] as im2col + one matmul
    (``dot_general`` over the patch features) -> [N, Ho, Wo, O]."""
    kh, kw, c, o = kernel.shape
    cols = im2col(x, (kh, kw), strides, padding)
    return lax.dot_general(cols, kernel.reshape(kh * kw * c, o), (((3,), (0,)), ((), ())))


class GemmConv(nn.Module):
    """``nn.Conv``'s parameters and semantics (NHWC, HWIO kernel, explicit padding), computed by
    ``conv_gemm``."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features),
                            jnp.float32)
        bias = (self.param("bias", self.bias_init, (self.features,), jnp.float32)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv_gemm(x, kernel, tuple(self.strides), tuple(map(tuple, self.padding)))
        return y if bias is None else y + bias


def conv(features: int, kernel_size: int, stride: int, pad: int, *, name: str,
         kernel_init: Callable, use_bias: bool = False, dtype: Any = jnp.float32,
         conv_impl: str = "xla") -> nn.Module:
    """A square ``kernel_size`` conv, stride ``stride``, zero padding ``pad`` on each side, with
    ``kernel_init`` (bias zeros), computed as ``conv_impl`` says (module docstring). The ``xla``
    module is exactly the ``nn.Conv`` the models always built."""
    k, s, p = (kernel_size, kernel_size), (stride, stride), ((pad, pad), (pad, pad))
    if check_conv_impl(conv_impl) == "xla":
        return nn.Conv(features, k, strides=s, padding=p if pad else "VALID", use_bias=use_bias,
                       kernel_init=kernel_init, dtype=dtype, name=name)
    return GemmConv(features, k, s, p, use_bias=use_bias, kernel_init=kernel_init, dtype=dtype,
                    name=name)


def grouped_convolutions(fn: Callable, *args) -> list[int]:
    """``feature_group_count`` of every convolution in the jaxpr of ``fn(*args)`` greater than 1
    (sub-jaxprs included): ``[]`` when ``fn`` computes no grouped convolution. ``fn`` may be a
    jitted function (traced, not compiled)."""
    found: list[int] = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                g = max(eqn.params["feature_group_count"], eqn.params["batch_group_count"])
                if g > 1:
                    found.append(int(g))
            for v in eqn.params.values():
                for sub in v if isinstance(v, (tuple, list)) else (v,):
                    sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                    if hasattr(sub, "eqns"):
                        walk(sub)

    traced = fn.trace(*args).jaxpr if hasattr(fn, "trace") else jax.make_jaxpr(fn)(*args)
    walk(traced.jaxpr)
    return found
