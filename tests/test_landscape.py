"""LMC and CKA (docs/fidelity.md, LMC and CKA) against the reference and their defining properties."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tr_jax as tj
from tr_jax.models.torch_import import from_torch
from conftest import assert_bn_stats, torch_state_dict

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _lmc_endpoints(fidelity):
    d = fidelity["lmc"]
    m = tj.models.preresnet(20, 10)
    template = tj.models.init(m, jax.random.key(0), (32, 32, 3))["batch_stats"]
    a, b = (from_torch(torch_state_dict(d, k)) for k in ("A", "B"))
    a["batch_stats"] = b["batch_stats"] = template
    # the vectors are already normalised: feed x * 255 with mean 0 / std 1 (normalize divides by 255)
    x = jnp.asarray(d["x"].transpose(0, 2, 3, 1) * 255.0)
    return m, a, b, x, jnp.asarray(d["y"], jnp.int32), d


def test_interpolation_curve_matches_reference(fidelity):
    m, a, b, x, y, d = _lmc_endpoints(fidelity)
    curve = tj.landscape.interpolation_errors(m, a, b, x, y, mean=ZERO, std=ONE, ts=d["ts"])
    # allow a flip only where the reference's top-2 margin is tiny
    tol = (np.abs(d["margins"]) < 1e-4).sum(1) / 256
    assert np.all(np.abs(curve["train_error"] - d["train_err"]) <= tol + 1e-9)
    assert abs(float(tj.landscape.lmc(curve["train_error"])) - float(d["lmc"])) <= tol.max() + 1e-9
    v = tj.landscape.recalibrate(m, {"params": tj.landscape.lerp(0.5, a["params"], b["params"]),
                                     "batch_stats": a["batch_stats"]}, x, ZERO, ONE)
    assert_bn_stats(v["batch_stats"], d, "recal_t0.5", ("layer1_0/bn1", "layer3_2/bn2", "bn"),
                    atol=2e-5, rtol=2e-4)

def test_lmc_of_a_model_with_itself_is_zero_and_endpoints_reproduce(fidelity):
    m, a, b, x, y, d = _lmc_endpoints(fidelity)
    x, y = x[:128], y[:128]
    curve = tj.landscape.interpolation_errors(m, a, a, x, y, mean=ZERO, std=ONE,
                                              ts=np.linspace(0, 1, 3), test=(x, y))
    assert float(tj.landscape.lmc(curve["train_error"])) == 0.0
    np.testing.assert_allclose(curve["train_error"], curve["train_error"][0])
    # endpoint t=1 equals the model B evaluated alone after the same recalibration
    cb = tj.landscape.interpolation_errors(m, a, b, x, y, mean=ZERO, std=ONE, ts=[1.0])
    vb = tj.landscape.recalibrate(m, b, x, ZERO, ONE)
    assert cb["train_error"][0] == pytest.approx(
        float(tj.landscape.evaluate(m, vb, x, y, ZERO, ONE)["error"]))


def test_lmc_sign_convention():
    barrier = np.asarray([0.1, 0.3, 0.6, 0.3, 0.1])       # worse in the middle
    dip = np.asarray([0.3, 0.2, 0.1, 0.2, 0.3])           # better in the middle
    flat = np.asarray([0.2, 0.2, 0.2, 0.2, 0.2])
    out = tj.landscape.lmc(np.stack([barrier, dip, flat]))
    np.testing.assert_allclose(out, [-0.5, 0.2, 0.0], atol=1e-7)
    # argmax of |deviation| keeps its sign: a small dip next to a large barrier -> barrier
    np.testing.assert_allclose(tj.landscape.lmc(np.asarray([0.2, 0.15, 0.5, 0.2])), -0.3, atol=1e-7)


def test_cka_matches_reference(fidelity):
    c = fidelity["cka"]
    np.testing.assert_allclose(tj.landscape.cka(c["softmax1"], c["softmax2"]), c["cka_softmax"],
                               atol=1e-5)
    np.testing.assert_allclose(tj.landscape.cka(c["logits1"], c["logits2"]), c["cka_logits"],
                               atol=1e-5)


def test_cka_properties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10)).astype(np.float32)
    y = (x @ rng.normal(size=(10, 10)) + rng.normal(size=(300, 10))).astype(np.float32)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    assert float(tj.landscape.cka(x, x)) == pytest.approx(1.0, abs=1e-6)
    base = float(tj.landscape.cka(x, y))
    assert 0.0 < base < 0.999
    assert float(tj.landscape.cka(x @ q.astype(np.float32), y)) == pytest.approx(base, abs=1e-5)
    assert float(tj.landscape.cka(3.7 * x, y)) == pytest.approx(base, abs=1e-5)
    assert float(tj.landscape.cka(x + 5.0, y)) == pytest.approx(base, abs=1e-5)  # centring
    # independent features -> CKA near 0
    z = rng.normal(size=(300, 10)).astype(np.float32)
    assert float(tj.landscape.cka(x, z)) < 0.1
    # batched: all pairs in one call
    both = tj.landscape.cka(np.stack([x, x]), np.stack([x, y]))
    np.testing.assert_allclose(both, [1.0, base], atol=1e-5)


def test_pair_curves_batched_equals_one_point_per_call_and_single_pairs():
    """Two pairs x 5 points in calls of 3 points (padded last call) == one point per call ==
    each pair alone; the endpoints reproduce each endpoint model after recalibration."""
    ds = tj.data.load_dataset("digits")
    m = tj.models.preresnet(8, 10, width=0.25)
    keys = jax.random.split(jax.random.key(3), 4)
    vs = [tj.models.init(m, k, ds.image_shape) for k in keys]
    pa = jax.tree.map(lambda *x: jnp.stack(x), vs[0]["params"], vs[2]["params"])
    pb = jax.tree.map(lambda *x: jnp.stack(x), vs[1]["params"], vs[3]["params"])
    X, Y = jnp.asarray(ds.train_images[:200]), jnp.asarray(ds.train_labels[:200])
    kw = dict(mean=ds.mean, std=ds.std, ts=np.linspace(0, 1, 5), bn_batch_size=64,
              test=(X[:50], Y[:50]), eval_batch_size=64)
    bs = vs[0]["batch_stats"]
    batched = tj.landscape.pair_curves(m, pa, pb, bs, X, Y, points_per_call=3, **kw)
    looped = tj.landscape.pair_curves(m, pa, pb, bs, X, Y, points_per_call=1, **kw)
    assert batched["train_error"].shape == (2, 5)
    for k in ("train_error", "train_loss", "test_error", "test_loss"):
        np.testing.assert_allclose(batched[k], looped[k], rtol=1e-5, atol=1e-6)
    one = tj.landscape.interpolation_errors(m, vs[2], vs[3], X, Y, **kw)
    np.testing.assert_allclose(one["train_loss"], batched["train_loss"][1], rtol=1e-5)
    for end, v in ((0, vs[2]), (-1, vs[3])):
        own = tj.landscape.evaluate(m, tj.landscape.recalibrate(m, v, X, ds.mean, ds.std), X, Y,
                                    ds.mean, ds.std)
        assert batched["train_error"][1, end] == pytest.approx(float(own["error"]), abs=1e-7)
        assert batched["train_loss"][1, end] == pytest.approx(float(own["loss"]), rel=1e-5)


def test_loss_barrier():
    curves = np.asarray([[1.0, 2.0, 3.0, 2.0, 1.0], [1.0, 1.5, 2.0, 2.5, 3.0], [2.0, 1.0, 0.5, 1.0, 2.0]])
    np.testing.assert_allclose(tj.landscape.loss_barrier(curves), [2.0, 0.0, 0.0], atol=1e-12)


def test_lmc_is_exact_when_t_star_is_an_endpoint():
    """Flat interior at the endpoints' mean: both endpoints deviate by |c0 - c1| / 2 and the
    first one (t = 0) wins, as numpy's argmax in the reference; float32 used to let rounding
    decide (and so the sign) in about a third of these curves."""
    n = 1437
    for c0 in range(0, 200, 3):
        for c1 in range(0, 200, 7):
            if c0 == c1 or (c0 + c1) % 2:
                continue
            mid = (c0 + c1) // 2
            e32 = (np.asarray([c0, mid, mid, c1]) / n).astype(np.float32)  # as measured
            want = -(c0 - mid) / n  # t* = 0
            assert float(tj.landscape.lmc(e32, n=n)) == want
            assert float(tj.landscape.lmc(e32)) == pytest.approx(want, abs=1e-7)
            assert np.sign(tj.landscape.lmc(e32)) == np.sign(want)
    # batched, float64 out
    out = tj.landscape.lmc(np.asarray([[0.1, 0.3, 0.1], [0.2, 0.1, 0.2]]), n=10)
    assert out.dtype == np.float64 and out.tolist() == [-0.2, 0.1]
    with pytest.raises(ValueError, match="n"):
        tj.landscape.lmc([0.1, 0.2], n=0)
