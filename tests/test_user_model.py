"""A user's own Flax model (Linen or NNX, flax BatchNorm or none) through tr_jax:
exact BN recalibration against hand-computed statistics, the four modes, and the
training / pruning / landscape stages on a tiny model."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tr_jax as tj
from tr_jax.landscape import recalibrate


class LinenBN(nn.Module):
    """conv -> flax BN -> relu -> conv -> flax BN -> mean -> dense, with any BN momentum."""

    momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train: bool = False):
        for c in (3, 4):
            x = nn.Conv(c, (3, 3))(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x))
        return nn.Dense(3)(x.mean((1, 2)))


class LinenPlain(nn.Module):
    @nn.compact
    def __call__(self, x):  # no BN, no train flag
        return nn.Dense(3)(nn.relu(nn.Conv(3, (3, 3))(x)).mean((1, 2)))


class NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, momentum: float = 0.3):
        self.conv = nnx.Conv(1, 3, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(3, momentum=momentum, rngs=rngs)
        self.fc = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(nnx.relu(self.bn(self.conv(x))).mean((1, 2)))


MEAN, STD = (0.5,), (0.25,)


def _images(n=10, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 6, 6, 1), dtype=np.uint8))


def _hand_stats(per_batch_inputs):
    """BN recalibration by hand: size-weighted averages of per-batch means and unbiased variances of
    one layer's inputs (a list of [b, H, W, C] arrays)."""
    n = sum(a.shape[0] for a in per_batch_inputs)
    mean = sum(a.shape[0] * a.mean((0, 1, 2)) for a in per_batch_inputs) / n
    var = sum(a.shape[0] * a.reshape(-1, a.shape[-1]).var(0, ddof=1) for a in per_batch_inputs) / n
    return mean, var


@pytest.mark.parametrize("momentum", [0.37, 0.99])
def test_linen_batchnorm_recalibration_equals_hand_computed(momentum):
    model = LinenBN(momentum)
    x = _images()
    v = tj.models.init(model, jax.random.key(0), (6, 6, 1))
    v = {"params": v["params"], "batch_stats": jax.tree.map(lambda s: s + 7.0, v["batch_stats"])}
    got = recalibrate(model, v, x, MEAN, STD, batch_size=4)["batch_stats"]  # batches 4, 4, 2
    # by hand: each BN's input is its conv's output in train mode, captured per batch
    inputs = {"Conv_0": [], "Conv_1": []}
    for s in range(0, 10, 4):
        xb = tj.data.normalize(x[s:s + 4], MEAN, STD)
        _, st = model.apply(v, xb, train=True, mutable=["batch_stats", "intermediates"],
                            capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Conv))
        for k in inputs:
            inputs[k].append(np.asarray(st["intermediates"][k]["__call__"][0], np.float64))
    for conv, bn in (("Conv_0", "BatchNorm_0"), ("Conv_1", "BatchNorm_1")):
        mean, var = _hand_stats(inputs[conv])
        np.testing.assert_allclose(got[bn]["mean"], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[bn]["var"], var, rtol=1e-5, atol=1e-6)


def test_linen_modes_train_frozen_eval():
    model = LinenBN(0.9)
    v = tj.models.init(model, jax.random.key(1), (6, 6, 1))
    x = tj.data.normalize(_images(4), MEAN, STD)
    logits, new = tj.models.apply(model, v, x, train=True)
    frozen = tj.models.apply(model, v, x, mode="frozen")
    np.testing.assert_allclose(frozen, logits, rtol=1e-6)  # batch statistics both times
    _, coll = tj.models.apply(model, v, x, mode="collect")
    bm = coll["BatchNorm_0"]["mean"]  # flax rule: 0.9 * running (0) + 0.1 * batch mean
    np.testing.assert_allclose(new["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * bm, rtol=1e-5,
                               atol=1e-7)
    assert tj.models.apply(model, v, x).shape == (4, 3)


def test_nnx_model_collect_train_and_recalibrate():
    net = tj.models.from_nnx(lambda rngs: NNXNet(rngs))
    v = tj.models.init(net, jax.random.key(0), (6, 6, 1))
    v2 = tj.models.init(net, jax.random.key(1), (6, 6, 1))
    assert not np.allclose(v["params"]["conv"]["kernel"], v2["params"]["conv"]["kernel"])
    x = _images()
    got = recalibrate(net, v, x, MEAN, STD, batch_size=4)["batch_stats"]
    conv = nnx.Conv(1, 3, (3, 3), rngs=nnx.Rngs(0))
    conv.kernel[...] = v["params"]["conv"]["kernel"]
    conv.bias[...] = v["params"]["conv"]["bias"]
    per = [np.asarray(conv(tj.data.normalize(x[s:s + 4], MEAN, STD)), np.float64)
           for s in range(0, 10, 4)]
    mean, var = _hand_stats(per)
    np.testing.assert_allclose(got["bn"]["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bn"]["var"], var, rtol=1e-5, atol=1e-6)
    xb = tj.data.normalize(x[:4], MEAN, STD)
    _, new = jax.jit(lambda v, x: tj.models.apply(net, v, x, train=True))(v, xb)
    np.testing.assert_allclose(new["batch_stats"]["bn"]["mean"], 0.7 * np.asarray(per[0].mean(
        (0, 1, 2)), np.float32), rtol=1e-5, atol=1e-6)  # nnx: 0.3 * running (0) + 0.7 * batch
    with pytest.raises(TypeError, match="from_nnx"):
        tj.models.init(NNXNet(nnx.Rngs(0)), jax.random.key(0), (6, 6, 1))


def test_model_without_bn():
    model = LinenPlain()
    v = tj.models.init(model, jax.random.key(0), (6, 6, 1))
    assert v["batch_stats"] == {}
    assert recalibrate(model, v, _images(), MEAN, STD, batch_size=4)["batch_stats"] == {}
    logits, new = tj.models.apply(model, v, tj.data.normalize(_images(2), MEAN, STD), train=True)
    assert logits.shape == (2, 3) and new["batch_stats"] == {}


def test_linen_model_trains_prunes_and_is_measured():
    """Dense SAM training (train + frozen modes), conv+dense pruning, retraining, LMC with
    recalibration and the Hessian on a user's Linen model with flax BatchNorm."""
    from tr_jax.training import StepConfig, Trainer, init_state, stack, unstack
    model = LinenBN(0.9)
    x, y = _images(32), jnp.asarray(np.arange(32) % 3, jnp.int32)
    cfg = StepConfig(mean=MEAN, std=STD, batch_size=16, pad=1, flip=True, sam=True)
    v = tj.models.init(model, jax.random.key(0), (6, 6, 1))
    ones = jax.tree.map(jnp.ones_like, v["params"])
    trainer = Trainer(model, cfg, "loop", chunk_steps=2)
    dense, _ = trainer.fit(stack([init_state(v, ones, jax.random.key(1), 0.05, 1e-4, rho=0.05)]),
                           x, y, 1)
    d = unstack(dense)[0]
    assert not np.allclose(d.batch_stats["BatchNorm_0"]["mean"], 0.0)
    prune = jax.jit(tj.pruning.magnitude_masks, static_argnames=("scope", "leaves"))
    masks = prune(d.params, 0.5, leaves="conv+dense")
    assert float(tj.pruning.mask_density(masks, "conv+dense")) == pytest.approx(0.5, abs=0.02)
    np.testing.assert_array_equal(masks["Dense_0"]["bias"], 1.0)
    vd = {"params": d.params, "batch_stats": d.batch_stats}
    retrain = stack([init_state(vd, masks, jax.random.key(s), 0.05, 1e-4, rho=0.05)
                     for s in (2, 3)])
    retrain, _ = trainer.fit(retrain, x, y, 1)
    a, b = ({"params": s.params, "batch_stats": s.batch_stats} for s in unstack(retrain))
    assert float(jnp.sum(a["params"]["Dense_0"]["kernel"] == 0)) >= 6  # pruned stay zero
    curve = tj.landscape.interpolation_errors(model, a, b, x, y, mean=MEAN, std=STD,
                                              ts=np.linspace(0, 1, 3), bn_batch_size=16)
    assert np.all(np.isfinite(curve["train_error"])) and curve["train_error"].shape == (3,)
    loss = tj.landscape.member_loss(model, a, masks, x[:8], y[:8], MEAN, STD)
    hv = jax.jit(tj.landscape.hvp)(loss, a["params"], masks)  # forward-over-reverse, eval mode
    assert all(np.all(np.isfinite(h)) for h in jax.tree.leaves(hv))
