"""SGD with PyTorch semantics, the members strategies, masked retraining."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tr_jax as tj
from tr_jax.training import StepConfig, Trainer, epoch_chunks, init_state, stack, unstack


def test_sgd_matches_torch(fidelity):
    d = fidelity["sgd"]
    names = sorted({k.split("/", 2)[2] for k in d if k.startswith("first/param/")})
    opt = tj.training.sgd(float(d["lr"]), float(d["momentum"]), float(d["weight_decay"]))
    p = {n: jnp.asarray(d[f"first/param/{n}"]) for n in names}
    g = {n: jnp.asarray(d[f"first/grad/{n}"]) for n in names}
    state = opt.init(p)
    upd, state = opt.update(g, state, p)
    for n in names:
        np.testing.assert_allclose(p[n] + upd[n], d[f"first/param_after/{n}"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state.inner_state[1].trace[n], d[f"first/buf_after/{n}"],
                                   rtol=1e-5, atol=1e-7)
    p = {n: jnp.asarray(d[f"next/param/{n}"]) for n in names}
    g = {n: jnp.asarray(d[f"next/grad/{n}"]) for n in names}
    buf = {n: jnp.asarray(d[f"next/buf/{n}"]) for n in names}
    state = opt.init(p)
    inner = list(state.inner_state)
    inner[1] = inner[1]._replace(trace=buf)
    state = state._replace(inner_state=tuple(inner))
    upd, state = opt.update(g, state, p)
    for n in names:
        np.testing.assert_allclose(p[n] + upd[n], d[f"next/param_after/{n}"], rtol=1e-5, atol=1e-7)


def test_multistep_reference_schedule():
    f = tj.training.multistep([0, 79, 80, 119, 120, 159], (80, 120))
    np.testing.assert_allclose(f, [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_epoch_chunks():
    assert epoch_chunks(150, 64, 4) == [(0, 2, 64), (2, 1, 22)]
    assert epoch_chunks(150, 64, 4, drop_last=True) == [(0, 2, 64)]
    assert epoch_chunks(640, 64, 4) == [(0, 4, 64), (4, 4, 64), (8, 2, 64)]
    with pytest.raises(ValueError, match="batch_size=64"):
        epoch_chunks(10, 64, 4)


def _members(M, density=None, n=150):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, (n,)), jnp.int32)
    model = tj.models.preresnet(8, 10, width=0.5)
    states = []
    for i in range(M):
        v = tj.models.init(model, jax.random.key(i), (8, 8, 1))
        mask = (tj.pruning.magnitude_masks(v["params"], density) if density
                else jax.tree.map(jnp.ones_like, v["params"]))
        states.append(init_state(v, mask, jax.random.key(10 + i), 0.05 * (i + 1), 1e-4))
    cfg = StepConfig(mean=(0.5,), std=(0.25,), batch_size=32, pad=1, flip=True)
    return model, cfg, stack(states), images, labels


def test_stacked_members_equal_separate_runs():
    """vmap and lax.map over a members stack == M separate single-member loops (tolerance).
    128 images in steps of one call: whole batches, so each strategy compiles one small program
    (test_chunking covers a partial last batch and longer chunks)."""
    model, cfg, state, X, Y = _members(3, n=128)
    results = {}
    for strategy in ("vmap", "map_chunked:2"):  # ("loop": the runs alone below)
        tr = Trainer(model, cfg, strategy, chunk_steps=1, milestones=(1,))
        final, _ = tr.fit(jax.tree.map(jnp.copy, state), X, Y, 2)
        results[strategy] = final
    # a truly separate run per member: a one-member stack trained alone
    alone = [Trainer(model, cfg, "loop", chunk_steps=1, milestones=(1,)).fit(
        stack([s]), X, Y, 2)[0] for s in unstack(state)]
    for strategy, final in results.items():
        for i, one in enumerate(alone):
            for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(final.params)):
                np.testing.assert_allclose(a[0], b[i], rtol=2e-4, atol=2e-5, err_msg=strategy)
    # members really differ (different lr and keys), so the comparison is not vacuous
    p = jax.tree.leaves(results["vmap"].params)[0]
    assert not np.allclose(p[0], p[1])


def test_chunking_does_not_change_results():
    model, cfg, state, X, Y = _members(1)
    a = Trainer(model, cfg, "loop", chunk_steps=1).fit(jax.tree.map(jnp.copy, state), X, Y, 1)[0]
    b = Trainer(model, cfg, "loop", chunk_steps=4).fit(jax.tree.map(jnp.copy, state), X, Y, 1)[0]
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_pruned_weights_stay_exactly_zero_and_training_learns():
    model, cfg, state, X, Y = _members(2, density=0.3, n=128)  # one batch shape: one compile
    tr = Trainer(model, cfg, "vmap", chunk_steps=1, milestones=())
    err0 = tr.evaluate([state], X, Y)[1]
    final, hist = tr.fit(state, X, Y, 3, test=(X, Y), eval_epochs=[3])
    for p, m in zip(jax.tree.leaves(final.params), jax.tree.leaves(final.mask)):
        p, m = np.asarray(p), np.asarray(m)
        assert np.all(p[m == 0] == 0)
        if p.ndim == 5:  # members axis + HWIO: some kept weights did move
            assert np.any(p[m == 1] != 0)
    assert hist[3].shape == (2,)
    assert np.all(tr.evaluate([final], X, Y)[1] < err0)  # train loss went down


def test_unknown_strategy():
    with pytest.raises(ValueError, match="'vmapp'"):
        tj.training.resolve("vmapp")
