"""Trained quadratic Bezier curves between pairs of members (docs/fidelity.md, Bezier curves)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tr_jax as tj
from tr_jax.landscape.bezier import (bezier, curve_errors, curve_lr_scale, mode_connectivity,
                                     train_curves)
from tr_jax.landscape.lmc import lerp, lmc, pair_curves
from tr_jax.training import StepConfig, Trainer, init_state, stack

N_TRAIN, BATCH, CHUNK = 256, 32, 1  # one compiled chunk shape, shared by the curve runs below


@pytest.fixture(scope="module")
def endpoints():
    """Two tiny PreResNet-8s trained from different seeds on 256 digits (a barrier between them)."""
    ds = tj.data.load_dataset("digits")
    X, Y = jnp.asarray(ds.train_images[:N_TRAIN]), jnp.asarray(ds.train_labels[:N_TRAIN])
    model = tj.models.preresnet(8, 10, width=0.25)
    vs = [tj.models.init(model, jax.random.key(i), (8, 8, 1)) for i in range(2)]
    ones = jax.tree.map(jnp.ones_like, vs[0]["params"])
    state = stack([init_state(v, ones, jax.random.key(10 + i), 0.1, 5e-4) for i, v in enumerate(vs)])
    cfg = StepConfig(mean=ds.mean, std=ds.std, batch_size=BATCH, pad=0, flip=False)
    final, _ = Trainer(model, cfg, "loop", chunk_steps=CHUNK, milestones=()).fit(state, X, Y, 3)
    a = jax.tree.map(lambda x: x[:1], final.params)  # [P=1, ...]
    b = jax.tree.map(lambda x: x[1:], final.params)
    return dict(model=model, X=X, Y=Y, a=a, b=b, bs=vs[0]["batch_stats"], mean=ds.mean, std=ds.std)


def _train(e, a, b, mask, key, **kw):
    kw = {"epochs": 1, "batch_size": BATCH, "lr": 0.05, "chunk_steps": CHUNK, "strategy": "loop",
          **kw}
    return train_curves(e["model"], a, b, mask, e["bs"], e["X"], e["Y"], key=key, mean=e["mean"],
                        std=e["std"], **kw)


def _midpoint(a, b):
    return jax.tree.map(lambda x, y: 0.5 * (x + y), a, b)


def _ones(tree):
    return jax.tree.map(jnp.ones_like, tree)


def test_bezier_with_midpoint_bend_is_the_line():
    k = jax.random.split(jax.random.key(0), 3)
    a = {"w": jax.random.normal(k[0], (3, 4)), "b": {"c": jax.random.normal(k[1], (5,))}}
    b = jax.tree.map(lambda x: 2.0 * x + 1.0, a)
    for t in (0.0, 0.1, 0.5, 0.8, 1.0):
        got, want = bezier(jnp.float32(t), a, _midpoint(a, b), b), lerp(jnp.float32(t), a, b)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    # endpoints are exactly the end bends whatever the middle bend; a bent curve leaves the line
    mid = jax.tree.map(lambda x: x + jax.random.normal(k[2], x.shape), a)
    for t, end in ((0.0, a), (1.0, b)):
        for g, w in zip(jax.tree.leaves(bezier(jnp.float32(t), a, mid, b)), jax.tree.leaves(end)):
            np.testing.assert_array_equal(g, w)
    half = bezier(jnp.float32(0.5), a, mid, b)["w"]
    np.testing.assert_allclose(half, lerp(0.5, a, b)["w"] + 0.5 * (mid["w"] - _midpoint(a, b)["w"]),
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(half, lerp(0.5, a, b)["w"])


def test_untrained_curve_errors_equal_the_line(endpoints):
    e = endpoints
    kw = dict(mean=e["mean"], std=e["std"])
    curve = curve_errors(e["model"], e["a"], _midpoint(e["a"], e["b"]), e["b"], e["X"], e["Y"], **kw)
    line = pair_curves(e["model"], e["a"], e["b"], e["bs"], e["X"], e["Y"], ts=curve["t"], **kw)
    np.testing.assert_array_equal(curve["t"], [0, 0.25, 0.5, 0.75, 1])
    assert curve["train_error"].shape == (1, 5)
    np.testing.assert_allclose(curve["train_error"], line["train_error"], atol=1 / N_TRAIN + 1e-9)
    np.testing.assert_allclose(curve["train_loss"], line["train_loss"], rtol=1e-4)
    # the endpoints trained from different seeds have a barrier between them
    assert float(mode_connectivity(curve["train_error"])[0]) < -0.1


def test_training_lowers_the_midpoint_loss_and_keeps_the_endpoints(endpoints):
    e = endpoints
    a0, b0 = jax.tree.map(np.array, e["a"]), jax.tree.map(np.array, e["b"])
    kw = dict(mean=e["mean"], std=e["std"])
    line = curve_errors(e["model"], e["a"], _midpoint(e["a"], e["b"]), e["b"], e["X"], e["Y"], **kw)
    mid, losses = _train(e, e["a"], e["b"], _ones(e["a"]), jax.random.key(7)[None], epochs=3)
    assert losses.shape == (1, 3) and np.all(np.isfinite(losses))
    curve = curve_errors(e["model"], e["a"], mid, e["b"], e["X"], e["Y"], **kw)
    assert curve["train_loss"][0, 2] < 0.8 * line["train_loss"][0, 2]
    assert curve["train_error"][0, 2] < line["train_error"][0, 2]
    assert mode_connectivity(curve["train_error"])[0] > mode_connectivity(line["train_error"])[0]
    # endpoints: the caller's arrays are untouched (not donated) and the curve still ends at them
    for x, x0 in zip(jax.tree.leaves((e["a"], e["b"])), jax.tree.leaves((a0, b0))):
        np.testing.assert_array_equal(x, x0)
    for name in ("train_error", "train_loss"):
        np.testing.assert_array_equal(curve[name][:, [0, -1]], line[name][:, [0, -1]])


def test_mask_keeps_pruned_entries_of_the_middle_bend_zero(endpoints):
    e = endpoints
    mask = jax.vmap(lambda p: tj.pruning.magnitude_masks(p, 0.3))(e["a"])
    a, b = (jax.tree.map(jnp.multiply, p, mask) for p in (e["a"], e["b"]))
    mid, _ = _train(e, a, b, mask, jax.random.key(3)[None])
    start = _midpoint(a, b)
    pruned = 0
    for m, s, k in zip(jax.tree.leaves(mid), jax.tree.leaves(start), jax.tree.leaves(mask)):
        k = np.asarray(k).astype(bool)
        assert np.all(np.asarray(m)[~k] == 0.0)
        assert not np.allclose(np.asarray(m)[k], np.asarray(s)[k])  # kept entries were trained
        pruned += int((~k).sum())
    assert pruned > 0


def test_pairs_trained_together_equal_each_pair_alone(endpoints):
    """vmap over pairs with a whole-epoch scan == each pair alone, unrolled one step a call."""
    e = endpoints
    cat = lambda x, y: jnp.concatenate([x, y])  # noqa: E731
    A = jax.tree.map(cat, e["a"], e["b"])  # pair 0: a -> b, pair 1: b -> a
    B = jax.tree.map(cat, e["b"], e["a"])
    mask = _ones(A)
    keys = jax.random.split(jax.random.key(1), 2)
    whole_epoch = dict(strategy="vmap", chunk_steps=None, unroll=False)  # one lax.scan per epoch
    together, losses = _train(e, A, B, mask, keys, **whole_epoch)
    assert losses.shape == (2, 1)
    for i in range(2):
        sl = lambda x, i=i: x[i:i + 1]  # noqa: E731
        alone, _ = _train(e, jax.tree.map(sl, A), jax.tree.map(sl, B), jax.tree.map(sl, mask),
                          keys[i:i + 1])
        for x, y in zip(jax.tree.leaves(alone), jax.tree.leaves(together)):
            np.testing.assert_allclose(x[0], y[i], rtol=1e-4, atol=1e-5)
    # the two pairs (same segment, reversed, other keys) do train to different bends
    w = jax.tree.leaves(together)[0]
    assert not np.allclose(w[0], w[1], atol=1e-4)
    # one root key = per-pair keys fold_in(root, pair index)
    root = jax.random.key(4)
    by_root, _ = _train(e, A, B, mask, root, **whole_epoch)
    folded = jnp.stack([jax.random.fold_in(root, p) for p in range(2)])
    by_pair, _ = _train(e, A, B, mask, folded, **whole_epoch)
    for x, y in zip(jax.tree.leaves(by_root), jax.tree.leaves(by_pair)):
        np.testing.assert_array_equal(x, y)


def test_curve_lr_scale_is_the_predecessor_schedule():
    # 0-indexed epoch e of 50 is the predecessor's epoch e + 1: alpha = (e + 1) / 50
    got = [curve_lr_scale(e, 50) for e in (0, 24, 25, 34, 43, 44, 49)]
    np.testing.assert_allclose(got, [1.0, 1.0, 1 - 0.05 * 0.99, 1 - 0.5 * 0.99,
                                     1 - 0.95 * 0.99, 0.01, 0.01], rtol=1e-12)
    assert curve_lr_scale(0, 2) == 1.0 and curve_lr_scale(1, 2) == 0.01


def test_mode_connectivity_is_lmc_on_the_curve_points():
    e = np.array([[10.0, 30.0, 60.0, 25.0, 12.0],   # barrier: 11 - 60
                  [40.0, 20.0, 10.0, 30.0, 50.0],   # curve beats the endpoints: 45 - 10
                  [5.0, 5.0, 5.0, 5.0, 5.0]])
    np.testing.assert_allclose(mode_connectivity(e), [-49.0, 35.0, 0.0])
    np.testing.assert_array_equal(mode_connectivity(e), lmc(e))
