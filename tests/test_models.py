"""PreResNet structure, init and forward passes against the PyTorch reference (SPEC §1.2)."""
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
