"""Linear CKA (biased and unbiased HSIC) and layer-wise CKA of members (tr_jax.landscape.layers)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tr_jax import landscape, models
from tr_jax import members as mem
from tr_jax.data.augment import normalize
from tr_jax.landscape import layers as lc
from tr_jax.landscape.cka import cka, cka_unbiased

MEAN, STD = (0.3,), (0.25,)
N = 32


# ------------------------------------------------------------------ float64 references
def np_cka(x, y):
    """Biased linear CKA: HSIC_0 = tr(K H L H) / (n-1)^2 (the normalisation cancels)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, lm = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)
    return hsic(k, lm) / np.sqrt(hsic(k, k) * hsic(lm, lm))


def np_hsic1(k, lm):
    """Song et al. (2012)'s unbiased HSIC_1, literally (no centring of the features)."""
    n = k.shape[0]
    k, lm = k.copy(), lm.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(lm, 0.0)
    one = np.ones(n)
    return (np.trace(k @ lm) + (one @ k @ one) * (one @ lm @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ k @ lm @ one)) / (n * (n - 3))


def np_cka_unbiased(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    k, lm = x @ x.T, y @ y.T
    return np_hsic1(k, lm) / np.sqrt(np_hsic1(k, k) * np_hsic1(lm, lm))


def related(seed, n=40, d1=12, d2=20):
    """x [n, d1], y [n, d2] with a nonzero mean and a partly shared signal."""
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, d1)) + 2.0
    y = x @ r.normal(size=(d1, d2)) + 1.5 * r.normal(size=(n, d2)) - 1.0
    return x.astype(np.float32), y.astype(np.float32)


# ------------------------------------------------------------------ CKA numerics
@pytest.mark.parametrize("seed", [0, 1])
def test_cka_matches_numpy(seed):
    x, y = related(seed)
    np.testing.assert_allclose(float(cka(x, y)), np_cka(x, y), rtol=1e-4)
    np.testing.assert_allclose(float(cka_unbiased(x, y)), np_cka_unbiased(x, y), rtol=1e-4)
    k, lm = landscape.gram(x), landscape.gram(y)
    np.testing.assert_allclose(float(landscape.cka_gram(k, lm)), np_cka(x, y), rtol=1e-4)
    # leading batch axes broadcast, and it jits
    xb, yb = np.stack([x, y[:, :12]]), np.stack([y[:, :12], x])
    got = jax.jit(cka_unbiased)(xb, yb)
    np.testing.assert_allclose(np.asarray(got), [np_cka_unbiased(x, y[:, :12])] * 2, rtol=1e-4)


def test_unbiased_near_zero_on_independent_features():
    for seed in range(5):
        r = np.random.default_rng(100 + seed)
        x = r.normal(size=(32, 256)).astype(np.float32)
        y = r.normal(size=(32, 256)).astype(np.float32)
        assert float(cka(x, y)) > 0.2
        assert abs(float(cka_unbiased(x, y))) < 0.1


def test_identity_and_invariances():
    x, y = related(3, n=30, d1=16, d2=16)
    q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(16, 16)))
    xq = (x @ q.astype(np.float32)) * np.float32(3.7)
    for f in (cka, cka_unbiased):
        np.testing.assert_allclose(float(f(x, x)), 1.0, atol=1e-5)
        np.testing.assert_allclose(float(f(x, 0.5 * x)), 1.0, atol=1e-5)
        np.testing.assert_allclose(float(f(xq, y)), float(f(x, y)), atol=1e-5)
        np.testing.assert_allclose(float(f(x, y)), float(f(y, x)), atol=1e-6)


def test_unbiased_needs_four_examples():
    x = np.ones((3, 5), np.float32)
    with pytest.raises(ValueError, match="n=3"):
        cka_unbiased(x, x)


# ------------------------------------------------------------------ layer features
@pytest.fixture(scope="module")
def net():
    model = models.build("preresnet", depth=8, num_classes=10, width=0.25)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    stacked = jax.vmap(lambda k: models.init(model, k, (8, 8, 1)))(keys)
    images = jax.random.randint(jax.random.PRNGKey(1), (N, 8, 8, 1), 0, 256).astype(jnp.uint8)
    return model, stacked, mem.unstack(stacked), images


def test_default_layers_of_builtins():
    assert lc.default_layers(models.build("preresnet", depth=8)) == (
        "layer1_0", "layer2_0", "layer3_0", "fc")
    assert lc.default_layers(models.build("preresnet", depth=20)) == (
        "layer1_1", "layer1_2", "layer2_1", "layer2_2", "layer3_1", "layer3_2", "fc")
    assert lc.default_layers(models.build("vgg_bn", depth=16)) == (
        "features_4", "features_11", "features_21", "features_31", "features_41", "classifier")
    assert lc.default_layers(models.build("vgg", depth=11)) == (
        "features_0", "features_3", "features_8", "features_13", "features_18", "classifier")
    assert lc.default_layers(models.build("densenet", depth=40)) == (
        "dense1_11", "trans1", "dense2_11", "trans2", "dense3_11", "fc")


def test_layer_features(net):
    model, _, (v, *_), images = net
    f = lc.layer_features(model, v, images, mean=MEAN, std=STD)
    assert list(f) == ["layer1_0", "layer2_0", "layer3_0", "fc"]
    assert [a.shape for a in f.values()] == [(N, 8 * 8 * 4), (N, 4 * 4 * 8), (N, 2 * 2 * 16),
                                              (N, 10)]
    logits = models.apply(model, v, normalize(images, MEAN, STD))
    np.testing.assert_allclose(np.asarray(f["fc"]), np.asarray(logits), rtol=1e-5, atol=1e-5)
    # a regex over module paths, in batches (the last one padded): the same activations
    g = lc.layer_features(model, v, images, mean=MEAN, std=STD, layers="layer[0-9]+_[0-9]+$",
                          batch_size=12)
    assert list(g) == ["layer1_0", "layer2_0", "layer3_0"]
    for k in g:
        np.testing.assert_allclose(np.asarray(g[k]), np.asarray(f[k]), rtol=1e-5, atol=1e-5)
    h = lc.layer_features(model, v, images[:4], mean=MEAN, std=STD, layers=("conv1", "layer2_0/conv2"))
    assert list(h) == ["conv1", "layer2_0/conv2"]
    with pytest.raises(ValueError, match="no module path"):
        lc.layer_features(model, v, images[:4], mean=MEAN, std=STD, layers="nothing_here")
    with pytest.raises(ValueError, match="not module paths"):
        lc.layer_features(model, v, images[:4], mean=MEAN, std=STD, layers=("layer9_0",))


class UserNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(16, name="block1")(x))
        x = nn.relu(nn.Dense(12, name="block2")(x))
        return nn.Dense(10, name="head")(x)


def test_user_model_regex(net):
    images = net[3]
    user = UserNet()
    v = models.init(user, jax.random.PRNGKey(2), (8, 8, 1))
    f = lc.layer_features(user, v, images, mean=MEAN, std=STD, layers="^(block[0-9]|head)$")
    assert [(k, a.shape) for k, a in f.items()] == [("block1", (N, 16)), ("block2", (N, 12)),
                                                   ("head", (N, 10))]
    np.testing.assert_allclose(np.asarray(f["head"]),
                               np.asarray(models.apply(user, v, normalize(images, MEAN, STD))),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not a built-in"):
        lc.layer_features(user, v, images, mean=MEAN, std=STD)


# ------------------------------------------------------------------ layer-wise CKA of members
def test_pair_layer_cka(net):
    model, _, (v0, v1, _), images = net
    for unbiased in (False, True):
        same = lc.pair_layer_cka(model, v0, v0, images, mean=MEAN, std=STD, unbiased=unbiased)
        assert list(same) == ["layer1_0", "layer2_0", "layer3_0", "fc"]
        np.testing.assert_allclose(list(same.values()), 1.0, atol=1e-5)
    # Gram-form CKA == feature-form CKA of the activations
    fa = lc.layer_features(model, v0, images, mean=MEAN, std=STD)
    fb = lc.layer_features(model, v1, images, mean=MEAN, std=STD)
    for unbiased, f in ((False, cka), (True, cka_unbiased)):
        got = lc.pair_layer_cka(model, v0, v1, images, mean=MEAN, std=STD, unbiased=unbiased)
        for k in got:
            np.testing.assert_allclose(got[k], float(f(fa[k], fb[k])), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="n=3"):
        lc.pair_layer_cka(model, v0, v1, images[:3], mean=MEAN, std=STD, unbiased=True)


def test_layer_cka_pairs_match_pair_layer_cka(net):
    model, stacked, vs, images = net
    a, b = np.array([0, 1, 2, 0]), np.array([1, 2, 0, 0])
    names, biased, unbiased = lc.layer_cka_pairs(model, stacked, images, a, b, mean=MEAN,
                                                 std=STD, members_per_call=2)
    assert names == ("layer1_0", "layer2_0", "layer3_0", "fc")
    assert biased.shape == unbiased.shape == (4, 4)
    np.testing.assert_allclose(biased[3], 1.0, atol=1e-5)
    for p in range(3):
        for flag, arr in ((False, biased), (True, unbiased)):
            ref = lc.pair_layer_cka(model, vs[a[p]], vs[b[p]], images, mean=MEAN, std=STD,
                                    unbiased=flag)
            np.testing.assert_allclose(arr[p], list(ref.values()), rtol=1e-5, atol=1e-6)
    # independent inits: the unbiased CKA is below the biased one at every layer
    assert np.all(unbiased[:3] < biased[:3])
