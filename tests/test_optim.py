"""Optimisers, SAM and schedules with PyTorch semantics (docs/fidelity.md).

Expected values are computed by hand in numpy (and, where torch is installed, by torch.optim and a
torch re-enactment of the reference's SAM step) on tiny trees and a tiny Dense-BN-Dense model.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tr_jax as tj
from tr_jax._jax_compat import compiled_count
from tr_jax.models.batchnorm import BatchNorm
from tr_jax.training import StepConfig, Trainer, init_state, optim, stack, train_step, unstack

WD, LR, RHO = 1e-2, 0.1, 0.3


# -- tiny trees: SGD and Adam against numpy and torch ----------------------------------------------
def _tree_and_grads(n_steps=3):
    rng = np.random.default_rng(0)
    p = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    gs = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in p.items()} for _ in range(n_steps)]
    return p, gs


LRS = (0.1, 0.1, 0.01)  # the lr changes between steps, as a schedule does


def _run_optax(opt, p, gs):
    p = {k: jnp.asarray(v) for k, v in p.items()}
    state = opt.init(p)
    for lr, g in zip(LRS, gs):
        state = optim.with_learning_rate(state, jnp.asarray(lr, jnp.float32))
        upd, state = opt.update({k: jnp.asarray(v) for k, v in g.items()}, state, p)
        p = jax.tree.map(jnp.add, p, upd)
    return {k: np.asarray(v) for k, v in p.items()}


def _numpy_sgd(p, gs, momentum=0.9):
    p = {k: v.astype(np.float64) for k, v in p.items()}
    buf = {}
    for lr, g in zip(LRS, gs):
        for k in p:
            d = g[k] + WD * p[k]
            buf[k] = d if k not in buf else momentum * buf[k] + d  # first buffer = gradient
            p[k] = p[k] - lr * buf[k]
    return p


def _numpy_adam(p, gs, b1=0.9, b2=0.999, eps=1e-8):
    p = {k: v.astype(np.float64) for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (lr, g) in enumerate(zip(LRS, gs), start=1):
        for k in p:
            d = g[k] + WD * p[k]  # coupled L2 before the moments
            m[k] = b1 * m[k] + (1 - b1) * d
            v[k] = b2 * v[k] + (1 - b2) * d * d
            denom = np.sqrt(v[k]) / np.sqrt(1 - b2 ** t) + eps  # eps outside the sqrt
            p[k] = p[k] - lr / (1 - b1 ** t) * m[k] / denom
    return p


def _torch_run(opt_cls, p, gs, **kw):
    torch = pytest.importorskip("torch")
    tp = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in p.items()}
    opt = opt_cls(list(tp.values()), lr=LRS[0], weight_decay=WD, **kw)
    for lr, g in zip(LRS, gs):
        for group in opt.param_groups:
            group["lr"] = lr
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        opt.step()
    return {k: t.detach().numpy() for k, t in tp.items()}


def test_sgd_matches_hand_computed_and_make():
    p, gs = _tree_and_grads()
    want = _numpy_sgd(p, gs)
    for opt in (optim.sgd(0.5, 0.9, WD), optim.make("sgd", 0.5, WD, 0.9)):
        got = _run_optax(opt, p, gs)
        for k in p:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_adam_matches_hand_computed_and_make():
    p, gs = _tree_and_grads()
    want = _numpy_adam(p, gs)
    for opt in (optim.adam(0.5, WD), optim.make("adam", 0.5, WD)):
        got = _run_optax(opt, p, gs)
        for k in p:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    # the weight decay is coupled (in the moments): without it the result differs
    no_wd = _run_optax(optim.adam(0.5, 0.0), p, gs)
    assert not np.allclose(no_wd["w"], want["w"], rtol=1e-5, atol=1e-6)


def test_sgd_and_adam_match_torch():
    torch = pytest.importorskip("torch")
    p, gs = _tree_and_grads()
    cases = [(optim.sgd(0.5, 0.9, WD), _torch_run(torch.optim.SGD, p, gs, momentum=0.9)),
             (optim.adam(0.5, WD), _torch_run(torch.optim.Adam, p, gs))]
    for opt, want in cases:
        got = _run_optax(opt, p, gs)
        for k in p:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_make_rejects_unknown_optimizer():
    with pytest.raises(ValueError, match="'adamw'"):
        optim.make("adamw", 0.1)


def test_sam_perturbation_uses_the_global_norm():
    g = {"a": jnp.asarray([3.0, 0.0]), "b": jnp.asarray([0.0, 4.0])}
    e = optim.sam_perturbation(g, jnp.asarray(1.0, jnp.float32))
    # global norm 5 (per-layer norms would give [1, 0] and [0, 1])
    np.testing.assert_allclose(e["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(e["b"], [0.0, 0.8], rtol=1e-6)
    zero = optim.sam_perturbation(jax.tree.map(jnp.zeros_like, g), jnp.asarray(1.0, jnp.float32))
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(zero))  # 1e-12: no NaN


# -- a tiny Dense-BN-Dense model: the SAM step against numpy and torch ------------------------------
class Toy(nn.Module):
    """Flatten -> Dense(4) -> BatchNorm (tr_jax's, with modes) -> ReLU -> Dense(3)."""

    @nn.compact
    def __call__(self, x, mode: str = "eval"):
        h = nn.Dense(4, name="fc1")(x.reshape(x.shape[0], -1))
        h = BatchNorm(name="bn")(h, mode)
        return nn.Dense(3, name="fc2")(nn.relu(h))


def _toy(seed=0, n=6, d=5):
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    params = {"fc1": {"kernel": f32(d, 4), "bias": f32(4)}, "bn": {"scale": 1 + 0.3 * f32(4),
              "bias": f32(4)}, "fc2": {"kernel": f32(4, 3), "bias": f32(3)}}
    stats = {"bn": {"mean": f32(4), "var": np.abs(f32(4)) + 0.5}}
    x, y = f32(n, d), rng.integers(0, 3, n).astype(np.int32)
    return params, stats, x, y


def _toy_loss(p, x, y):
    """Train-mode forward written out by hand (independent of flax and tr_jax.models)."""
    h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    mu = h.mean(0)
    var = ((h - mu) ** 2).mean(0)
    h = (h - mu) / jnp.sqrt(var + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]
    logits = jnp.maximum(h, 0.0) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _toy_state(params, stats, mask, optimizer="sgd", rho=RHO):
    v = {"params": jax.tree.map(jnp.asarray, params), "batch_stats": jax.tree.map(jnp.asarray, stats)}
    m = jax.tree.map(jnp.asarray, mask)
    return init_state(v, m, jax.random.key(0), LR, WD, 0.9, optimizer=optimizer, rho=rho)


def _cfg(**kw):
    return StepConfig(mean=(0.5,), std=(0.25,), **kw)


def _step(cfg, state, x, y):
    return jax.jit(train_step, static_argnums=(0, 1))(Toy(), cfg, state, jnp.asarray(x), jnp.asarray(y),
                                                       jnp.asarray(LR, jnp.float32))


def test_sam_step_matches_hand_computed_with_mask():
    params, stats, x, y = _toy()
    mask = jax.tree.map(np.ones_like, params)
    mask["fc1"]["kernel"][[0, 2, 4], [1, 3, 0]] = 0.0  # three pruned weights
    params = jax.tree.map(lambda p, m: p * m, params, mask)
    state, loss = _step(_cfg(sam=True), _toy_state(params, stats, mask), x, y)

    # by hand: g1 at w, e = rho g1 / ||g1||_global, g2 at w + e, SGD (first step) with wd at w
    fx = lambda p: _toy_loss(jax.tree.map(lambda a, m: a * m, p, mask), x, y)  # noqa: E731
    g1 = _np(jax.grad(fx)(params))
    norm = np.sqrt(sum(np.sum(g ** 2) for g in jax.tree.leaves(g1)))
    e = jax.tree.map(lambda g: RHO * g / (norm + 1e-12), g1)
    g2 = _np(jax.grad(fx)(jax.tree.map(lambda p, d: (p + d).astype(np.float32), params, e)))
    want = jax.tree.map(lambda p, g, m: p - LR * (g + WD * p) * m, _np(params), g2, _np(mask))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, fx(params), rtol=1e-6)  # the first-pass loss is reported
    assert np.all(np.asarray(state.params["fc1"]["kernel"])[mask["fc1"]["kernel"] == 0] == 0)
    # the perturbed gradient is not the plain one (else the test above could not tell SAM from SGD)
    plain = jax.tree.map(lambda p, g, m: p - LR * (g + WD * p) * m, _np(params), g1, _np(mask))
    assert not np.allclose(plain["fc2"]["kernel"], want["fc2"]["kernel"], rtol=1e-4)

    # running stats: one train-mode update at w (PyTorch momentum 0.1, unbiased var), not two
    h = x.astype(np.float64) @ params["fc1"]["kernel"] + params["fc1"]["bias"]
    n = h.shape[0]
    np.testing.assert_allclose(state.batch_stats["bn"]["mean"],
                               0.9 * stats["bn"]["mean"] + 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.batch_stats["bn"]["var"],
                               0.9 * stats["bn"]["var"] + 0.1 * h.var(0) * n / (n - 1), rtol=1e-5)


def test_sam_step_matches_torch_reference_semantics():
    """The reference's train_sam: first pass (BN momentum 0.1), SAM.first_step (global norm),
    disable_running_stats (momentum 0), second pass, SAM.second_step (restore, SGD step)."""
    torch = pytest.importorskip("torch")
    params, stats, x, y = _toy()
    mask = jax.tree.map(np.ones_like, params)
    state, _ = _step(_cfg(sam=True), _toy_state(params, stats, mask), x, y)

    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                              torch.nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(params["fc1"]["kernel"].T))
        net[0].bias.copy_(torch.tensor(params["fc1"]["bias"]))
        net[1].weight.copy_(torch.tensor(params["bn"]["scale"]))
        net[1].bias.copy_(torch.tensor(params["bn"]["bias"]))
        net[1].running_mean.copy_(torch.tensor(stats["bn"]["mean"]))
        net[1].running_var.copy_(torch.tensor(stats["bn"]["var"]))
        net[3].weight.copy_(torch.tensor(params["fc2"]["kernel"].T))
        net[3].bias.copy_(torch.tensor(params["fc2"]["bias"]))
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=WD)
    tx, ty = torch.tensor(x), torch.tensor(y.astype(np.int64))
    ce = torch.nn.CrossEntropyLoss()
    net.train()
    ce(net(tx), ty).backward()
    ps = list(net.parameters())
    grad_norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in ps]), p=2)
    old = [p.detach().clone() for p in ps]
    with torch.no_grad():
        for p in ps:
            p.add_(p.grad * (RHO / (grad_norm + 1e-12)))
    opt.zero_grad()
    net[1].momentum = 0.0
    ce(net(tx), ty).backward()
    with torch.no_grad():
        for p, o in zip(ps, old):
            p.copy_(o)
    opt.step()

    got = state.params
    pairs = [(got["fc1"]["kernel"], net[0].weight.T), (got["fc1"]["bias"], net[0].bias),
             (got["bn"]["scale"], net[1].weight), (got["bn"]["bias"], net[1].bias),
             (got["fc2"]["kernel"], net[3].weight.T), (got["fc2"]["bias"], net[3].bias),
             (state.batch_stats["bn"]["mean"], net[1].running_mean),
             (state.batch_stats["bn"]["var"], net[1].running_var)]
    for a, b in pairs:
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_adam_train_step_matches_hand_computed():
    params, stats, x, y = _toy(seed=1)
    mask = jax.tree.map(np.ones_like, params)
    state, _ = _step(_cfg(optimizer="adam"), _toy_state(params, stats, mask, optimizer="adam"), x, y)
    g = _np(jax.grad(_toy_loss)(params, x, y))
    # first Adam step: m = 0.1 d, v = 0.001 d^2, bias-corrected: p - lr * d / (|d| + eps)
    want = jax.tree.map(lambda p, g: p - LR * (g + WD * p) / (np.abs(g + WD * p) + 1e-8), _np(params), g)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_optimizer_mismatch_is_reported():
    params, stats, x, y = _toy()
    state = _toy_state(params, stats, jax.tree.map(np.ones_like, params), optimizer="sgd")
    with pytest.raises(ValueError, match="optimizer='adam'"):
        _step(_cfg(optimizer="adam"), state, x, y)


def test_sam_rho_per_member_vmapped_equals_separate_runs():
    params, stats, x, y = _toy(seed=2)
    mask = jax.tree.map(np.ones_like, params)
    rhos = (0.05, 0.5)
    states = [_toy_state(params, stats, mask, rho=r) for r in rhos]
    cfg = _cfg(sam=True)
    step = jax.jit(jax.vmap(lambda s: train_step(Toy(), cfg, s, jnp.asarray(x), jnp.asarray(y),
                                                 jnp.asarray(LR, jnp.float32))))
    together, _ = step(stack(states))
    for one, s in zip(unstack(together), states):
        alone, _ = _step(cfg, s, x, y)
        for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    k = np.asarray(together.params["fc2"]["kernel"])
    assert not np.allclose(k[0], k[1], rtol=1e-4)  # the two rho really differ


def test_sam_with_rho_zero_equals_plain_sgd():
    params, stats, x, y = _toy(seed=3)
    state = _toy_state(params, stats, jax.tree.map(np.ones_like, params), rho=0.0)
    sam, _ = _step(_cfg(sam=True), state, x, y)
    sgd, _ = _step(_cfg(), state, x, y)
    for a, b in zip(jax.tree.leaves((sam.params, sam.batch_stats)),
                    jax.tree.leaves((sgd.params, sgd.batch_stats))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(sgd.params),
                                                   jax.tree.leaves(state.params))]
    assert all(moved)


def test_pruned_weights_stay_zero_under_sam_preresnet():
    model = tj.models.preresnet(8, 10, width=0.25)
    v = tj.models.init(model, jax.random.key(0), (8, 8, 1))
    rng = np.random.default_rng(4)  # prune 70 % of every conv kernel at random
    mask = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.3 if p.ndim == 4
                                              else np.ones(p.shape), jnp.float32), v["params"])
    state = init_state(v, mask, jax.random.key(1), LR, 1e-4, rho=0.5)
    cfg = _cfg(sam=True, batch_size=16, pad=1)
    images = jnp.asarray(np.random.default_rng(3).integers(0, 256, (32, 8, 8, 1), dtype=np.uint8))
    labels = jnp.asarray(np.arange(32) % 10, jnp.int32)
    zero = jnp.asarray(0, jnp.int32)
    fn = jax.jit(lambda s: tj.training.train_steps(model, cfg, s, images, labels, zero, zero,
                                                   jnp.ones((1,), jnp.float32), n_steps=1,
                                                   batch_size=16))
    final, _ = fn(state)
    n_pruned = 0
    for p, p0, m in zip(jax.tree.leaves(final.params), jax.tree.leaves(state.params),
                        jax.tree.leaves(final.mask)):
        p, p0, m = np.asarray(p), np.asarray(p0), np.asarray(m)
        assert np.all(p[m == 0] == 0)
        n_pruned += int(np.sum(m == 0))
        if p.ndim == 4:
            assert np.any(p[m == 1] != p0[m == 1])
    assert n_pruned > 0


# -- schedules: per-iteration MultiStepLR, max_steps, no recompiles --------------------------------
def test_per_step_lr_multipliers_scan_and_unrolled():
    """train_steps applies lr_scale[i] at step i: one 3-step rolled scan with [1, 0.1, 0.01] equals
    three unrolled 1-step calls (data order depends on (key, epoch, step) only)."""
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.integers(0, 256, (48, 8, 8, 1), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 3, 48), jnp.int32)
    model = Toy()
    v = tj.models.init(model, jax.random.key(0), (8, 8, 1))
    state = init_state(v, jax.tree.map(jnp.ones_like, v["params"]), jax.random.key(1), 0.5, 1e-4)
    scales = np.asarray([1.0, 0.1, 0.01], np.float32)
    ep = jnp.asarray(0, jnp.int32)

    @functools.partial(jax.jit, static_argnums=1)
    def run(st, unroll, s0, sc):
        cfg = _cfg(batch_size=16, pad=1, unroll=unroll)
        return tj.training.train_steps(model, cfg, st, images, labels, s0, ep, sc,
                                       n_steps=sc.shape[0], batch_size=16)[0]

    whole = run(state, False, jnp.asarray(0, jnp.int32), jnp.asarray(scales))  # one rolled scan
    st = state
    for s0 in range(3):  # three unrolled one-step calls
        st = run(st, True, jnp.asarray(s0, jnp.int32), jnp.asarray(scales[s0:s0 + 1]))
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(st.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole.opt_state.hyperparams["learning_rate"], 0.005, rtol=1e-6)
    flat = run(state, False, jnp.asarray(0, jnp.int32), jnp.ones((3,), jnp.float32))
    assert not np.allclose(flat.params["fc2"]["kernel"], whole.params["fc2"]["kernel"])


def test_iteration_schedule_of_the_batch_size_knob():
    ms = optim.iteration_milestones(62400)
    assert ms == (31200, 46800)
    steps = np.array([0, 31198, 31199, 31200, 31201, 46799, 46800, 46801, 62399])
    np.testing.assert_allclose(tj.training.lr_scales("iteration", ms, 0.1, 0, steps),
                               [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01], rtol=1e-6)
    # the epoch schedule ignores the step: decay at the start of 0-indexed epochs 80 and 120
    np.testing.assert_allclose(tj.training.lr_scales("epoch", (80, 120), 0.1, 80, steps[:2]),
                               [0.1, 0.1], rtol=1e-6)
    # batch 64 with drop_last: 781 steps/epoch, iteration 31 200 is step 741 of epoch 39
    tr = Trainer(Toy(), _cfg(batch_size=64), "loop", chunk_steps=781, drop_last=True,
                 milestones=ms, schedule="iteration", max_steps=62400)
    assert tr.steps_per_epoch(50000) == 781
    (scales,) = tr.lr_plan(50000, 39)
    assert scales.shape == (781,) and scales[740] == 1 and scales[741] == np.float32(0.1)


def test_epochs_of_the_batch_size_knob():
    # batch-size knob: epochs = ceil(62400 / floor(50000 / B))
    want = {16: 20, 32: 40, 64: 80, 128: 160, 256: 320, 512: 644}
    for b, epochs in want.items():
        tr = Trainer(Toy(), _cfg(batch_size=b), "loop", chunk_steps=8, drop_last=True,
                     schedule="iteration", max_steps=62400)
        assert tr.epochs_needed(50000) == epochs
        last = tr.epoch_plan(50000, epochs - 1)
        assert (epochs - 1) * tr.steps_per_epoch(50000) + sum(n for _, n, _ in last) == 62400
        assert tr.epoch_plan(50000, epochs) == []


def test_truncate_chunks():
    plan = tj.training.epoch_chunks(1437, 128, 4, drop_last=True)
    assert plan == [(0, 4, 128), (4, 4, 128), (8, 3, 128)]
    assert tj.training.truncate_chunks(plan, 3) == [(0, 3, 128)]
    assert tj.training.truncate_chunks(plan, 6) == [(0, 4, 128), (4, 2, 128)]
    assert tj.training.truncate_chunks(plan, 11) == plan
    assert tj.training.truncate_chunks(plan, 0) == []


def test_max_steps_stops_exactly_and_nothing_recompiles():
    """1437 images, batch 128, drop_last: 11 steps/epoch; max_steps=25 -> 3 epochs, the last with 3
    steps. Per-iteration MultiStepLR at steps 12 and 24; SAM on, two members with their own rho."""
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.integers(0, 256, (1437, 8, 8, 1), dtype=np.uint8))
    Y = jnp.asarray(rng.integers(0, 3, (1437,)), jnp.int32)
    model = Toy()
    # a StepConfig of its own, so the compile cache holds nothing from other tests
    cfg = StepConfig(mean=(0.37,), std=(0.21,), batch_size=128, pad=1, sam=True)
    states = []
    for i, rho in enumerate((0.05, 0.2)):
        v = tj.models.init(model, jax.random.key(i), (8, 8, 1))
        states.append(init_state(v, jax.tree.map(jnp.ones_like, v["params"]), jax.random.key(5 + i),
                                 0.1 * (i + 1), 1e-4, rho=rho))
    tr = Trainer(model, cfg, "vmap", chunk_steps=4, drop_last=True, milestones=(12, 24),
                 schedule="iteration", max_steps=25)
    assert tr.epochs_needed(1437) == 3 and tr.epoch_plan(1437, 2) == [(0, 3, 128)]
    done = []
    final, _ = tr.fit(stack(states), X, Y, 10, on_epoch=lambda e, get: done.append(e))
    assert done == [1, 2, 3]
    np.testing.assert_array_equal(final.opt_state.count, [25, 25])  # optimiser steps taken
    # the lr of the last step (global step 24 >= both milestones): base * 0.01
    np.testing.assert_allclose(final.opt_state.hyperparams["learning_rate"], [0.001, 0.002],
                               rtol=1e-6)
    # one compile per chunk shape (4 and 3 steps) over 3 epochs of changing lr multipliers
    for n in (4, 3):
        assert compiled_count(tr.train_fn(n, 128)) == 1
    # the epoch schedule through fit: decay at the start of epoch 1, lr of the last step = base/10
    tr_e = Trainer(model, cfg, "vmap", chunk_steps=4, drop_last=True, milestones=(1,))
    final_e, _ = tr_e.fit(stack(states), X, Y, 2)
    np.testing.assert_array_equal(final_e.opt_state.count, [22, 22])
    np.testing.assert_allclose(final_e.opt_state.hyperparams["learning_rate"], [0.01, 0.02],
                               rtol=1e-6)
    assert compiled_count(tr_e.train_fn(4, 128)) == 1


def test_unknown_schedule():
    with pytest.raises(ValueError, match="'cosine'"):
        Trainer(Toy(), _cfg(), "loop", schedule="cosine")
