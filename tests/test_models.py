"""PreResNet structure, init and forward passes against the PyTorch reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tr_jax as tj
from tr_jax.models.torch_import import from_torch
from conftest import assert_bn_stats, torch_state_dict


def _conv_count(params):
    return sum(x.size for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
               if tj.models.is_prunable(p, x))


def test_preresnet20_counts_and_init():
    m = tj.models.preresnet(20, 10)
    v = tj.models.init(m, jax.random.key(0), (32, 32, 3))
    assert _conv_count(v["params"]) == 270_256
    total = sum(x.size for x in jax.tree.leaves(v["params"]))
    assert 0.27e6 < total < 0.275e6
    k = np.asarray(v["params"]["layer3_1"]["conv1"]["kernel"])  # 3x3x64x64, fan-out std
    assert abs(k.std() - np.sqrt(2 / (9 * 64))) < 0.02 * np.sqrt(2 / (9 * 64))
    assert abs(k.mean()) < 0.005
    fc = np.asarray(v["params"]["fc"]["kernel"])
    assert np.abs(fc).max() <= 1 / 8 and fc.std() > 0.05  # U(-1/sqrt(64), 1/sqrt(64))
    bn = v["params"]["layer1_0"]["bn1"]
    assert np.all(bn["scale"] == 1) and np.all(bn["bias"] == 0)


def test_width_and_input_channels():
    m = tj.models.preresnet(8, 10, width=0.5)
    v = tj.models.init(m, jax.random.key(0), (8, 8, 1))
    assert v["params"]["conv1"]["kernel"].shape == (3, 3, 1, 8)
    assert v["params"]["fc"]["kernel"].shape == (32, 10)
    out = tj.models.apply(m, v, jnp.zeros((2, 8, 8, 1)))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("depth", [9, 21, 2, 0])
def test_bad_depth_names_value(depth):
    with pytest.raises(ValueError, match=f"depth={depth}"):
        tj.models.preresnet(depth)


def test_forward_matches_reference(fidelity):
    d = fidelity["preresnet20"]
    v = from_torch(torch_state_dict(d))
    m = tj.models.preresnet(20, 10)
    ref = tj.models.init(m, jax.random.key(0), (32, 32, 3))
    assert jax.tree.structure(ref) == jax.tree.structure(v)
    x = jnp.asarray(d["x"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(tj.models.apply(m, v, x), d["logits_eval"], atol=1e-4)
    logits, v2 = tj.models.apply(m, v, x, train=True)
    np.testing.assert_allclose(logits, d["logits_train"], atol=1e-4)
    # running stats: 0.9 old + 0.1 batch, unbiased batch variance (PyTorch)
    assert_bn_stats(v2["batch_stats"], d, "after_train", ("layer1_0/bn1", "layer2_0/bn2", "bn"))

def test_bn_modes(fidelity):
    d = fidelity["preresnet20"]
    v = from_torch(torch_state_dict(d))
    m = tj.models.preresnet(20, 10)
    x = jnp.asarray(d["x"].transpose(0, 2, 3, 1))
    frozen = tj.models.apply(m, v, x, mode="frozen")  # batch stats, nothing updated
    np.testing.assert_allclose(frozen, d["logits_train"], atol=1e-4)
    logits, stats = tj.models.apply(m, v, x, mode="collect")
    np.testing.assert_allclose(logits, d["logits_train"], atol=1e-4)
    # collected stats are the batch's own: 0.9 * old + 0.1 * collected == after_train
    old = np.asarray(d["layer1.0.bn1.running_var"])
    np.testing.assert_allclose(0.9 * old + 0.1 * np.asarray(stats["layer1_0"]["bn1"]["var"]),
                               d["after_train/layer1.0.bn1.running_var"], rtol=1e-5)
    with pytest.raises(ValueError, match="'bogus'"):
        tj.models.apply(m, v, x, mode="bogus")


def _plain_bn(x, scale, bias, eps=1e-5):
    """Textbook batch-statistics BatchNorm with jnp reductions (the reference for the dot form)."""
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


def _bn(x, scale, bias, mode="train"):
    v = {"params": {"scale": scale, "bias": bias},
         "batch_stats": {"mean": jnp.zeros_like(scale), "var": jnp.ones_like(scale)}}
    out, _ = tj.models.BatchNorm().apply(v, x, mode, mutable=["batch_stats", "bn_stats"])
    return out


def test_batchnorm_dot_sums_match_plain_reductions_in_value_gradient_and_hvp():
    """The dot-product channel sums give textbook BatchNorm's outputs, gradients and
    Hessian-vector products (forward-over-reverse through the custom_jvp broadcast), also
    under vmap over members; and neither the forward nor the backward pass keeps a
    ``reduce_sum`` over the activations (XLA CPU runs those as a slow reduce-window)."""
    ks = jax.random.split(jax.random.key(3), 4)
    x = 2.0 * jax.random.normal(ks[0], (6, 5, 5, 7)) + 1.0
    scale, bias = jax.random.normal(ks[1], (7,)), jax.random.normal(ks[2], (7,))
    ct = jax.random.normal(ks[3], x.shape)

    def loss(f):
        return lambda x, s, b: jnp.vdot(jnp.tanh(f(x, s, b)), ct)

    np.testing.assert_allclose(_bn(x, scale, bias), _plain_bn(x, scale, bias), rtol=1e-5, atol=1e-5)
    g_new = jax.grad(loss(_bn), (0, 1, 2))(x, scale, bias)
    g_ref = jax.grad(loss(_plain_bn), (0, 1, 2))(x, scale, bias)
    for a, b in zip(g_new, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    tangent = (ct, bias, scale)
    h_new = jax.jvp(jax.grad(loss(_bn), (0, 1, 2)), (x, scale, bias), tangent)[1]
    h_ref = jax.jvp(jax.grad(loss(_plain_bn), (0, 1, 2)), (x, scale, bias), tangent)[1]
    for a, b in zip(h_new, h_ref):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    xs = jnp.stack([x, 0.5 * x - 1.0])
    np.testing.assert_allclose(jax.vmap(lambda x: _bn(x, scale, bias))(xs)[1],
                               _plain_bn(xs[1], scale, bias), rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss(_bn), (0, 1, 2)))(x, scale, bias))
    assert "reduce_sum" not in jaxpr and "dot_general" in jaxpr
    eval_grad = jax.grad(loss(lambda x, s, b: _bn(x, s, b, "eval")), (0, 1, 2))
    assert "reduce_sum" not in str(jax.make_jaxpr(eval_grad)(x, scale, bias))
