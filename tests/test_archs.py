"""PreResNet, VGG and DenseNet structure, init, forward shapes and BN modes
(docs/fidelity.md, Architectures)."""
import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tr_jax as tj
from tr_jax.models.densenet import avg_pool2
from tr_jax.models.torch_import import expected_shapes
from tr_jax.models.vgg import max_pool2

# VGG-16 conv weights: 3x3 kernels over config D's (in, out) channel pairs
VGG16_CONV = 9 * (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 2 * 256 * 256 + 256 * 512
                  + 5 * 512 * 512)
VGG16_BIAS = 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512  # conv biases; BN adds 2x this


def _counts(arch, depth, num_classes=10):
    """(#conv layers, conv weights, total params, classifier params) from shapes only."""
    params = expected_shapes(arch, depth, num_classes)["params"]
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    convs = [x for p, x in leaves if tj.models.is_prunable(p, x)]
    head = [x for p, x in leaves if p[0].key in ("fc", "classifier")]
    return (len(convs), sum(x.size for x in convs), sum(x.size for _, x in leaves),
            sum(x.size for x in head))


# expected values: docs/fidelity.md, Architectures, for PreResNet-20; the others counted on
# the reference's PyTorch modules (models/cifar/vgg.py, densenet.py) with 10 classes
@pytest.mark.parametrize("arch,depth,want", [
    ("preresnet", 20, (21, 270_256, 272_282, 650)),
    ("vgg", 16, (13, VGG16_CONV, VGG16_CONV + VGG16_BIAS + 5130, 5130)),
    ("vgg_bn", 16, (13, 14_710_464, 14_728_266, 5130)),  # = VGG16_CONV + 3 * VGG16_BIAS + 5130
    ("vgg", 11, (8, 9_217_728, 9_225_610, 5130)),
    ("vgg_bn", 19, (16, 20_018_880, 20_040_522, 5130)),
    ("densenet", 40, (39, 1_036_008, 1_059_298, 456 * 10 + 10)),
    ("densenet", 10, (9, 43_128, 45_178, 96 * 10 + 10)),
])
def test_parameter_counts(arch, depth, want):
    assert _counts(arch, depth) == want


@functools.lru_cache(maxsize=None)
def _digits_model(arch, depth):
    """A model with 7 classes and its real init for 8x8x1 inputs (one jitted init per arch)."""
    m = tj.models.build(arch, depth=depth, num_classes=7)
    return m, tj.models.init(m, jax.random.key(0), (8, 8, 1))


def test_vgg_init_is_fan_in_with_zero_biases():
    p = _digits_model("vgg_bn", 11)[1]["params"]
    k = np.asarray(p["features_4"]["kernel"])  # 3x3x64x128: fan-in 576 (fan-out would be 1152)
    assert k.shape == (3, 3, 64, 128)
    assert abs(k.std() - np.sqrt(2 / (9 * 64))) < 0.02 * np.sqrt(2 / (9 * 64))
    assert abs(k.mean()) < 0.003
    assert np.all(np.asarray(p["features_4"]["bias"]) == 0)
    assert np.all(np.asarray(p["features_5"]["scale"]) == 1)  # BN right after the conv
    assert np.all(np.asarray(p["features_5"]["bias"]) == 0)
    fc = np.asarray(p["classifier"]["kernel"])
    assert fc.shape == (512, 7) and abs(fc.std() - 0.01) < 0.0005
    assert np.all(np.asarray(p["classifier"]["bias"]) == 0)


def test_densenet_init_is_fan_out_and_torch_linear():
    p = _digits_model("densenet", 10)[1]["params"]
    k = np.asarray(p["dense2_0"]["conv1"]["kernel"])  # 3x3x48x12: fan-out 108 (fan-in 432)
    assert k.shape == (3, 3, 48, 12)
    assert abs(k.std() - np.sqrt(2 / (9 * 12))) < 0.03 * np.sqrt(2 / (9 * 12))
    t = np.asarray(p["trans2"]["conv1"]["kernel"])  # 1x1x72x72
    assert t.shape == (1, 1, 72, 72)
    assert abs(t.std() - np.sqrt(2 / 72)) < 0.03 * np.sqrt(2 / 72)
    bound = 1 / np.sqrt(96)  # PyTorch's Linear default, fan_in = 96 channels for DenseNet-10
    for leaf in (p["fc"]["kernel"], p["fc"]["bias"]):
        assert np.abs(np.asarray(leaf)).max() <= bound
    assert abs(np.asarray(p["fc"]["kernel"]).std() - bound / np.sqrt(3)) < 0.1 * bound / np.sqrt(3)
    assert np.all(np.asarray(p["bn"]["scale"]) == 1)


def test_conv_biases_are_never_prunable():
    params = expected_shapes("vgg_bn", 11, 10)["params"]
    flags = {"/".join(k.key for k in p): tj.models.is_prunable(p, x)
             for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert {k for k, f in flags.items() if f} == {
        f"features_{i}/kernel" for i in (0, 4, 8, 11, 15, 18, 22, 25)}


@pytest.mark.parametrize("arch,depth", [("vgg", 11), ("vgg_bn", 11), ("densenet", 10),
                                        ("preresnet", 8)])
def test_cifar_forward_shape(arch, depth):
    m = tj.models.build(arch, depth=depth, num_classes=7)
    v = expected_shapes(arch, depth, 7)
    out = jax.eval_shape(lambda v, x: tj.models.apply(m, v, x, train=True), v,
                         jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert out[0].shape == (2, 7)
    assert jax.tree.structure(out[1]) == jax.tree.structure(v)


@pytest.mark.parametrize("arch,depth", [("vgg_bn", 11), ("densenet", 10)])
def test_digits_forward_and_bn_modes(arch, depth):
    m, v = _digits_model(arch, depth)
    x = 3.0 + jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    out = tj.models.apply(m, v, x)
    assert out.shape == (4, 7) and bool(jnp.all(jnp.isfinite(out)))
    logits, v2 = tj.models.apply(m, v, x, train=True)
    assert jax.tree.structure(v2) == jax.tree.structure(v)
    np.testing.assert_allclose(tj.models.apply(m, v, x, mode="frozen"), logits, atol=1e-5)
    collected, stats = tj.models.apply(m, v, x, mode="collect")
    np.testing.assert_allclose(collected, logits, atol=1e-5)
    assert jax.tree.structure(stats) == jax.tree.structure(v["batch_stats"])
    # one train step from the fresh stats (0, 1): running = 0.9 * fresh + 0.1 * batch (unbiased)
    fresh = jax.tree.map(lambda r: 0.9 * r, v["batch_stats"])
    for after, start, batch in zip(jax.tree.leaves(v2["batch_stats"]), jax.tree.leaves(fresh),
                                   jax.tree.leaves(stats)):
        np.testing.assert_allclose(after, start + 0.1 * batch, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tj.models.apply(m, v2, x), out)


def test_vgg_without_bn_has_no_batch_stats():
    m, v = _digits_model("vgg", 11)
    assert v["batch_stats"] == {} and "features_1" not in v["params"]
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    logits, v2 = tj.models.apply(m, v, x, train=True)
    assert v2["batch_stats"] == {} and logits.shape == (2, 7)
    np.testing.assert_allclose(logits, tj.models.apply(m, v, x), atol=1e-6)


def test_small_input_pooling():
    x = jnp.arange(2 * 3 * 5 * 1, dtype=jnp.float32).reshape(2, 3, 5, 1)
    y = max_pool2(x)  # floor mode, like PyTorch: 3x5 -> 1x2
    np.testing.assert_array_equal(y[0, :, :, 0], [[6.0, 8.0]])
    np.testing.assert_array_equal(avg_pool2(x)[0, :, :, 0], [[3.0, 5.0]])
    one = jnp.ones((1, 1, 1, 4))  # 1-pixel maps pass through instead of vanishing
    assert max_pool2(one).shape == avg_pool2(one).shape == (1, 1, 1, 4)
    with pytest.raises(ValueError, match="4x4"):  # 64x64 would not give 512 features
        jax.eval_shape(
            lambda: tj.models.vgg(11).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))


@pytest.mark.parametrize("build_call,match", [
    (lambda: tj.models.vgg(12), "depth=12"),
    (lambda: tj.models.build("vgg_bn", depth=20), "depth=20"),
    (lambda: tj.models.densenet(41), "depth=41"),
    (lambda: tj.models.build("densenet", depth=6), "3n\\+4.*depth=6"),
    (lambda: tj.models.build("vgg", depth=16, width=0.5), "width=0.5"),
    (lambda: tj.models.build("densenet", depth=40, width=2.0), "width=2.0"),
    (lambda: tj.models.build("presnet", depth=20), "Did you mean 'preresnet'"),
    (lambda: tj.models.build("vgg16_bn"), "arch='vgg_bn' with depth=16"),
])
def test_bad_arch_arguments_raise_clearly(build_call, match):
    with pytest.raises(ValueError, match=match):
        build_call()


def test_registry():
    assert set(tj.models.ARCHS) == {"preresnet", "vgg", "vgg_bn", "densenet"}
    assert tj.models.build("densenet", depth=40).depth == 40
    vgg = tj.models.build("vgg", depth=16, num_classes=100)
    assert (vgg.depth, vgg.num_classes, vgg.batch_norm) == (16, 100, False)
    assert tj.models.build("vgg_bn", depth=16).batch_norm
    assert tj.models.build("preresnet", depth=8, width=0.5).width == 0.5
