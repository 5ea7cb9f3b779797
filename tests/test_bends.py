"""Curves with k trained bends: Bezier of order k + 1 and polygonal chains (Garipov et al. 2018,
§3.2), and the one-bend quadratic Bezier curve reproduced bit for bit."""
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tr_jax import members as mem
from tr_jax import models
from tr_jax.data.augment import normalize
from tr_jax.landscape.lmc import lerp, pair_curves
from tr_jax.pruning import apply_masks, magnitude_masks, masked_update
from tr_jax.training import optim
from tr_jax.training.loop import epoch_chunks
from tr_jax.training.steps import cross_entropy

bz = importlib.import_module("tr_jax.landscape.bezier")  # the package re-exports a function bezier

N_TRAIN, BATCH, CHUNK = 64, 16, 1


# ------------------------------------------------------------------ the one-bend reference
# The quadratic Bezier curve's training and evaluation as they were before bends were added,
# kept verbatim (checks and docstrings left out) as the oracle for k = 1.
def _ref_bezier(t, a, mid, b):
    s = 1.0 - t
    return jax.tree.map(lambda x, m, y: (s * s) * x + (2.0 * t * s) * m + (t * t) * y, a, mid, b)


def _ref_curve_step(model, momentum, state, a, b, mask, batch_stats, x, y, t, lr, weight_decay):
    def loss_fn(mid):
        phi = apply_masks(_ref_bezier(t, a, mid, b), mask)
        logits = models.apply(model, {"params": phi, "batch_stats": batch_stats}, x, mode="frozen")
        return cross_entropy(logits, y) + 0.5 * weight_decay * bz._sq_norm(phi)

    loss, grads = jax.value_and_grad(loss_fn)(state.mid)
    opt_state = optim.with_learning_rate(state.opt_state, lr)
    updates, opt_state = optim.sgd(momentum=momentum).update(grads, opt_state, state.mid)
    mid = masked_update(state.mid, updates, mask)
    return state._replace(mid=mid, opt_state=opt_state), loss


def _ref_curve_steps(model, mean, std, momentum, state, a, b, mask, batch_stats, images, labels,
                     step0, epoch, lr, weight_decay, *, n_steps, batch_size, full_batch_size,
                     unroll):
    k_epoch = jax.random.fold_in(jax.random.wrap_key_data(state.key), epoch)
    perm = jax.random.permutation(jax.random.fold_in(k_epoch, 0), images.shape[0])

    def body(st, s):
        idx = jax.lax.dynamic_slice(perm, (s * full_batch_size,), (batch_size,))
        t = jax.random.uniform(jax.random.fold_in(k_epoch, s + 1), ())
        x = normalize(images[idx], mean, std)
        return _ref_curve_step(model, momentum, st, a, b, mask, batch_stats, x, labels[idx], t, lr,
                               weight_decay)

    steps = step0 + jnp.arange(n_steps, dtype=jnp.int32)
    if not unroll:
        return jax.lax.scan(body, state, steps)
    losses = []
    for i in range(n_steps):
        state, loss = body(state, steps[i])
        losses.append(loss)
    return state, jnp.stack(losses)


@functools.lru_cache(maxsize=None)
def _ref_compiled_steps(model, mean, std, momentum, strategy, n_steps, batch_size, full_batch_size,
                        unroll):
    fn = functools.partial(_ref_curve_steps, model, mean, std, momentum, n_steps=n_steps,
                           batch_size=batch_size, full_batch_size=full_batch_size, unroll=unroll)
    in_axes = (0, 0, 0, 0) + (None,) * 7
    return mem.over_members(fn, strategy, in_axes, donate_argnums=(0,))


@functools.partial(jax.jit, static_argnums=4)
def _ref_start_bends(params_a, params_b, mask, mid, momentum, lr):
    if mid is None:
        mid = jax.tree.map(lambda x, y: 0.5 * (x + y), params_a, params_b)
    mid = apply_masks(mid, mask)
    opt = optim.sgd(lr, momentum, 0.0)
    return mid, jax.vmap(opt.init)(mid)


def _ref_train_curves(model, params_a, params_b, mask, batch_stats, images, labels, *, key, mean,
                      std, epochs=50, batch_size=128, lr=0.01, weight_decay=5e-4, momentum=0.9,
                      mid=None, chunk_steps=4, unroll=True, drop_last=False, strategy="vmap"):
    mean, std = tuple(map(float, mean)), tuple(map(float, std))
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    strategy = mem.resolve(strategy)
    n_pairs = bz._n_pairs(params_a)
    mid, opt_state = _ref_start_bends(params_a, params_b, mask, mid, float(momentum),
                                      jnp.float32(lr))
    state = bz.CurveState(mid, opt_state, bz._pair_keys(key, n_pairs))
    pieces = [mem.split_groups(x, strategy) for x in (state, params_a, params_b, mask)]
    groups = [list(g) for g in zip(*pieces)]
    n = images.shape[0]
    plan = epoch_chunks(n, batch_size, chunk_steps or n, drop_last)
    n_seen = sum(steps * bs for _, steps, bs in plan)
    wd = jnp.asarray(weight_decay, jnp.float32)
    history = []
    for epoch in range(epochs):
        lr_e = jnp.asarray(lr * bz.curve_lr_scale(epoch, epochs), jnp.float32)
        ep = jnp.asarray(epoch, jnp.int32)
        totals = []
        for g in groups:
            total = 0.0
            for step0, steps, bs in plan:
                fn = _ref_compiled_steps(model, mean, std, float(momentum), strategy, steps, bs,
                                         batch_size, unroll)
                g[0], loss = fn(g[0], g[1], g[2], g[3], batch_stats, images, labels,
                                jnp.asarray(step0, jnp.int32), ep, lr_e, wd)
                total = total + bs * jnp.sum(loss, axis=-1)
            totals.append(total / n_seen)
        history.append(jnp.stack(totals) if mem.per_member(strategy) else totals[0])
    final = mem.join_groups([g[0] for g in groups], strategy)
    return final.mid, np.asarray(jnp.stack(history, axis=-1))


@jax.jit
def _ref_curve_points(params_a, mid, params_b, ts):
    ts = jnp.asarray(ts, jnp.float32)
    return jax.vmap(lambda a, m, b: jax.vmap(lambda t: _ref_bezier(t, a, m, b))(ts))(
        params_a, mid, params_b)


def _ref_curve_errors(model, params_a, mid, params_b, images, labels, *, mean, std,
                      ts=bz.CURVE_TS, bn_batch_size=64, test=None, eval_batch_size=0,
                      points_per_call=None):
    points_fn = lambda a, b, t: _ref_curve_points(a, mid, b, t)  # noqa: E731
    return pair_curves(model, params_a, params_b,
                       bz._batch_stats_template(model, tuple(images.shape[1:])), images, labels,
                       points_fn, mean=mean, std=std, ts=np.asarray(ts, np.float32),
                       bn_batch_size=bn_batch_size, test=test, eval_batch_size=eval_batch_size,
                       points_per_call=points_per_call)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def setup():
    """Two PreResNet-8s (width 0.25) from different seeds, 64 random 8x8x1 images, a 30 % mask."""
    model = models.build("preresnet", depth=8, num_classes=10, width=0.25)
    vs = [models.init(model, jax.random.key(i), (8, 8, 1)) for i in range(2)]
    kx, ky = jax.random.split(jax.random.key(42))
    X = jax.random.randint(kx, (N_TRAIN, 8, 8, 1), 0, 256).astype(jnp.uint8)
    Y = jax.random.randint(ky, (N_TRAIN,), 0, 10).astype(jnp.int32)
    a = jax.tree.map(lambda x: x[None], vs[0]["params"])  # [P=1, ...]
    b = jax.tree.map(lambda x: x[None], vs[1]["params"])
    mask = jax.vmap(lambda p: magnitude_masks(p, 0.3))(a)
    a, b = (apply_masks(p, mask) for p in (a, b))
    return dict(model=model, X=X, Y=Y, a=a, b=b, mask=mask, bs=vs[0]["batch_stats"],
                mean=(0.5,), std=(0.25,))


def _kw(**kw):
    return {"epochs": 2, "batch_size": BATCH, "lr": 0.05, "chunk_steps": CHUNK, "strategy": "loop",
            **kw}


def _train(fn, e, key, **kw):
    return fn(e["model"], e["a"], e["b"], e["mask"], e["bs"], e["X"], e["Y"], key=key,
              mean=e["mean"], std=e["std"], **_kw(**kw))


def _errors(fn, e, mid, **kw):
    return fn(e["model"], e["a"], mid, e["b"], e["X"], e["Y"], mean=e["mean"], std=e["std"], **kw)


def _leaves_equal(x, y):
    for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _tree(key):
    k = jax.random.split(key, 2)
    return {"w": jax.random.normal(k[0], (3, 4)), "b": {"c": jax.random.normal(k[1], (5,))}}


# ------------------------------------------------------------------ geometry
@pytest.mark.parametrize("kind", bz.KINDS)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_curve_geometry(kind, k):
    keys = jax.random.split(jax.random.key(k), k + 2)
    a, b = _tree(keys[0]), _tree(keys[1])
    bends = tuple(_tree(kk) for kk in keys[2:])
    # the ends are exactly a and b, whatever the bends
    _leaves_equal(bz.curve_point(jnp.float32(0.0), a, bends, b, kind), a)
    _leaves_equal(bz.curve_point(jnp.float32(1.0), a, bends, b, kind), b)
    # the weights are a partition of unity
    for t in np.linspace(0, 1, 11, dtype=np.float32):
        np.testing.assert_allclose(float(sum(bz.curve_weights(jnp.float32(t), k, kind))), 1.0,
                                   rtol=1e-6)
    if kind == "polychain":
        # through bend i at t = i / (k + 1), and linear between consecutive points
        pts = (a,) + bends + (b,)
        for i, t in enumerate(bz.bend_ts(k), start=1):
            got = bz.curve_point(jnp.float32(t), a, bends, b, kind)
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(bends[i - 1])):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
        for i in range(k + 1):
            t, u = (i + 0.3) / (k + 1), 0.3
            got = bz.curve_point(jnp.float32(t), a, bends, b, kind)
            want = lerp(u, pts[i], pts[i + 1])
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    # with every bend on the line at its t, the curve is the straight line
    line_bends = tuple(lerp(t, a, b) for t in bz.bend_ts(k))
    for t in np.linspace(0, 1, 9, dtype=np.float32):
        got = bz.curve_point(jnp.float32(t), a, line_bends, b, kind)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(lerp(jnp.float32(t), a, b))):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_general_bezier_formula_at_one_bend_is_the_quadratic():
    keys = jax.random.split(jax.random.key(3), 3)
    a, m, b = (_tree(k) for k in keys)
    for t in np.linspace(0, 1, 7, dtype=np.float32):
        t = jnp.float32(t)
        w = bz.curve_weights(t, 1, "bezier")
        general = jax.tree.map(lambda x, y, z, w=w: w[0] * x + w[1] * y + w[2] * z, a, m, b)
        for g, q in zip(jax.tree.leaves(general), jax.tree.leaves(bz.bezier(t, a, m, b))):
            np.testing.assert_allclose(g, q, rtol=1e-6, atol=1e-6)
        # one Bezier bend, bare or as a 1-tuple, runs the quadratic formula itself
        _leaves_equal(bz.curve_point(t, a, m, b), bz.bezier(t, a, m, b))
        _leaves_equal(bz.curve_point(t, a, (m,), b), _ref_bezier(t, a, m, b))
    # a cubic: Bernstein weights of order 3
    w = [float(x) for x in bz.curve_weights(jnp.float32(0.25), 2, "bezier")]
    np.testing.assert_allclose(w, [0.75 ** 3, 3 * 0.25 * 0.75 ** 2, 3 * 0.25 ** 2 * 0.75, 0.25 ** 3],
                               rtol=1e-6)
    w = [float(x) for x in bz.curve_weights(jnp.float32(0.25), 2, "polychain")]
    np.testing.assert_allclose(w, [0.25, 0.75, 0.0, 0.0], atol=1e-6)


def test_bad_arguments_are_refused(setup):
    e = setup
    with pytest.raises(ValueError, match="kind"):
        bz.curve_weights(0.5, 2, "spline")
    with pytest.raises(ValueError, match="bends"):
        _train(bz.train_curves, e, jax.random.key(0), bends=0)
    with pytest.raises(ValueError, match="kind"):
        _train(bz.train_curves, e, jax.random.key(0), kind="spline")
    with pytest.raises(ValueError, match="bend"):
        _train(bz.train_curves, e, jax.random.key(0), bends=2, mid=(e["a"],))


# ------------------------------------------------------------------ k = 1 unchanged
def test_one_bezier_bend_reproduces_the_quadratic_curve_bit_for_bit(setup):
    e = setup
    key = jax.random.key(7)[None]
    ref_mid, ref_losses = _train(_ref_train_curves, e, key)
    mid, losses = _train(bz.train_curves, e, key)
    explicit, _ = _train(bz.train_curves, e, key, bends=1, kind="bezier")
    _leaves_equal(mid, ref_mid)
    _leaves_equal(explicit, ref_mid)
    np.testing.assert_array_equal(losses, ref_losses)
    assert not isinstance(mid, tuple)  # one bend stays a bare pytree
    ts = np.linspace(0, 1, 5)
    ref = _errors(_ref_curve_errors, e, ref_mid, ts=ts)
    got = _errors(bz.curve_errors, e, mid, ts=ts)
    got_tuple = _errors(bz.curve_errors, e, (mid,), ts=ts, kind="bezier")
    assert set(got) == set(ref)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name])
        np.testing.assert_array_equal(got_tuple[name], ref[name])


# ------------------------------------------------------------------ k bends train
@pytest.mark.parametrize("kind", bz.KINDS)
def test_two_bends_train_masked_and_lower_the_objective(setup, kind):
    e = setup
    start = tuple(apply_masks(lerp(t, e["a"], e["b"]), e["mask"]) for t in bz.bend_ts(2))
    line = _errors(bz.curve_errors, e, start, kind=kind, ts=(0.0, 0.5, 1.0))
    plain = pair_curves(e["model"], e["a"], e["b"], e["bs"], e["X"], e["Y"], mean=e["mean"],
                        std=e["std"], ts=line["t"])
    np.testing.assert_allclose(line["train_loss"], plain["train_loss"], rtol=1e-4)  # the line
    mid, losses = _train(bz.train_curves, e, jax.random.key(5)[None], bends=2, kind=kind,
                         epochs=4, lr=0.1)
    assert isinstance(mid, tuple) and len(mid) == 2 and losses.shape == (1, 4)
    assert np.all(np.isfinite(losses)) and losses[0, -1] < losses[0, 0]
    keep = [np.asarray(k).astype(bool) for k in jax.tree.leaves(e["mask"])]
    assert sum(int((~k).sum()) for k in keep) > 0
    for bend, s in zip(mid, start):
        bend, s = [np.asarray(x) for x in jax.tree.leaves(bend)], jax.tree.leaves(s)
        assert all(np.all(m[~k] == 0.0) for m, k in zip(bend, keep))  # pruned entries stay 0
        assert not all(np.allclose(m[k], np.asarray(x)[k]) for m, x, k in zip(bend, s, keep))
    curve = _errors(bz.curve_errors, e, mid, kind=kind, ts=(0.0, 0.5, 1.0))
    # the curve still ends at the endpoints, and trained its middle
    np.testing.assert_array_equal(curve["train_loss"][:, [0, -1]], line["train_loss"][:, [0, -1]])
    assert curve["train_loss"][0, 1] < line["train_loss"][0, 1]
