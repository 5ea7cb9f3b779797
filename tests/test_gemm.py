"""The ``gemm`` conv layout: im2col + batched matmul equals the plain conv per member,
forward and gradient, for every architecture; no grouped convolution under vmap; the ``gemm``
members strategy; bfloat16 compute for every architecture."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tr_jax as tj
from tr_jax.models.conv import conv_gemm, grouped_convolutions, im2col
from tr_jax import members as mem

M = 2
ARCH_CASES = {  # tiny: 8x8 inputs, small widths / depths (every conv kind: stride 2, 1x1, bias)
    "preresnet": lambda impl: tj.models.build("preresnet", 8, 10, 0.25, conv_impl=impl),
    "vgg": lambda impl: tj.models.build("vgg", 11, 10, conv_impl=impl),
    "densenet": lambda impl: tj.models.build("densenet", 7, 10, conv_impl=impl),
}


def _members(model, shape=(8, 8, 3)):
    """M members' variables [M, ...]: one init, the second member's leaves scaled by 1.5."""
    v = tj.models.init(model, jax.random.key(0), shape)
    return jax.tree.map(lambda a: jnp.stack([a, 1.5 * a]), v)


def _loss(model):
    def loss(params, batch_stats, x):
        logits, _ = tj.models.apply(model, {"params": params, "batch_stats": batch_stats}, x,
                                    train=True)
        return jnp.sum(logits ** 2) / logits.shape[0]
    return loss


@pytest.mark.parametrize("stride,pad,k", [(1, 1, 3), (2, 1, 3), (2, 0, 1), (1, 0, 1)])
def test_conv_gemm_equals_lax_conv(stride, pad, k):
    x = jax.random.normal(jax.random.key(1), (2, 7, 8, 3))
    w = jax.random.normal(jax.random.key(2), (k, k, 3, 5))
    p = ((pad, pad), (pad, pad))
    want = jax.lax.conv_general_dilated(x, w, (stride, stride), p,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv_gemm(x, w, (stride, stride), p), want, atol=1e-5, rtol=1e-5)
    assert im2col(x, (k, k), (stride, stride), p).shape == (*want.shape[:3], k * k * 3)


@pytest.mark.parametrize("k,stride,pad,bias", [(3, 2, 1, True), (1, 2, 0, False)])
def test_gemm_conv_init_identical(k, stride, pad, bias):
    """Both impls of ``models.conv.conv`` make the same parameters (names, shapes, values)."""
    from tr_jax.models.conv import conv
    from tr_jax.models.preresnet import conv_init
    x = jnp.zeros((1, 8, 8, 3))
    v = {impl: conv(5, k, stride, pad, name="c", kernel_init=conv_init, use_bias=bias,
                    conv_impl=impl).init(jax.random.key(0), x) for impl in ("xla", "gemm")}
    assert jax.tree.structure(v["xla"]) == jax.tree.structure(v["gemm"])
    jax.tree.map(np.testing.assert_array_equal, v["xla"], v["gemm"])


@pytest.mark.parametrize("arch", sorted(ARCH_CASES))
def test_gemm_model_equals_xla_per_member(arch):
    """Forward and gradient of vmap over the gemm model = the plain conv model per member, and no
    grouped convolution under vmap with gemm (there is one with the plain conv: the check bites)."""
    xla, gemm = ARCH_CASES[arch]("xla"), ARCH_CASES[arch]("gemm")
    shapes = {impl: jax.eval_shape(lambda m=m: m.init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 3)), mode="eval")) for impl, m in
        (("xla", xla), ("gemm", gemm))}
    assert jax.tree.structure(shapes["xla"]) == jax.tree.structure(shapes["gemm"])
    assert jax.tree.leaves(shapes["xla"]) == jax.tree.leaves(shapes["gemm"])
    v = _members(xla)
    x = jax.random.normal(jax.random.key(3), (M, 2, 8, 8, 3))
    vgrad = {impl: jax.vmap(jax.value_and_grad(_loss(m))) for impl, m in
             (("xla", xla), ("gemm", gemm))}
    assert grouped_convolutions(vgrad["xla"], v["params"], v["batch_stats"], x)
    assert grouped_convolutions(vgrad["gemm"], v["params"], v["batch_stats"], x) == []
    grad_fn = jax.jit(jax.value_and_grad(_loss(xla)))
    want = [grad_fn(jax.tree.map(lambda a, i=i: a[i], v["params"]),
                    jax.tree.map(lambda a, i=i: a[i], v["batch_stats"]), x[i]) for i in range(M)]
    got = jax.jit(vgrad["gemm"])(v["params"], v["batch_stats"], x)
    for i in range(M):
        np.testing.assert_allclose(got[0][i], want[i][0], rtol=1e-4, atol=1e-5)
        jax.tree.map(lambda g, w, i=i: np.testing.assert_allclose(g[i], w, rtol=2e-3, atol=2e-4),
                     got[1], want[i][1])


def test_bad_conv_impl_raises():
    with pytest.raises(ValueError, match="'im2col'.*not one of"):
        tj.models.build("preresnet", 8, conv_impl="im2col")


def test_gemm_strategy_in_trainer():
    """``Trainer`` runs ``gemm`` as vmap over the gemm model: its train program has no grouped
    convolution (the vmap one has), and its evaluation equals the per-member program's."""
    from tr_jax.training import StepConfig, Trainer, init_state, stack
    assert mem.resolve("gemm") == "gemm" and not mem.per_member("gemm")
    model = tj.models.preresnet(8, 10, 0.25)
    v = tj.models.init(model, jax.random.key(0), (8, 8, 1))
    ones = jax.tree.map(jnp.ones_like, v["params"])
    state = stack([init_state(v, ones, jax.random.key(i), 0.1, 5e-4) for i in range(M)])
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8))
    Y = jnp.asarray(rng.integers(0, 10, (32,)), jnp.int32)
    cfg = StepConfig(mean=(0.5,), std=(0.25,), batch_size=32, pad=1, flip=False)
    args = (state, X, Y, jnp.int32(0), jnp.int32(0), jnp.ones((1,), jnp.float32))
    trainers = {s: Trainer(model, cfg, s, chunk_steps=1, eval_batch_size=32, milestones=())
                for s in ("gemm", "vmap", "loop")}
    assert grouped_convolutions(trainers["vmap"].train_fn(1, 32), *args)
    assert grouped_convolutions(trainers["gemm"].train_fn(1, 32), *args) == []
    err = {s: trainers[s].evaluate(mem.split_groups(state, s), X, Y) for s in ("gemm", "loop")}
    np.testing.assert_allclose(err["gemm"][1], err["loop"][1], rtol=1e-4)
    np.testing.assert_array_equal(err["gemm"][0], err["loop"][0])


@pytest.mark.parametrize("arch", sorted(ARCH_CASES))
def test_bfloat16_compute_every_arch(arch):
    from tr_jax.training.steps import compute_model
    model = ARCH_CASES[arch]("xla")
    v = tj.models.init(model, jax.random.key(0), (8, 8, 3))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    (f32, _), (bf16, new16) = jax.jit(lambda v: [tj.models.apply(m, v, x, train=True) for m in (
        model, compute_model(model, "bfloat16"))])(v)
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(bf16, f32, atol=0.05 + 0.05 * float(jnp.abs(f32).max()))
    for leaf in jax.tree.leaves(new16):
        assert leaf.dtype == jnp.float32
    jaxpr = str(jax.make_jaxpr(lambda p: tj.models.apply(
        compute_model(model, "bfloat16"), {"params": p, "batch_stats": v["batch_stats"]}, x))(
        v["params"]))
    assert "bf16" in jaxpr
