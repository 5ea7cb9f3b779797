"""Hessian trace / top eigenvalue against dense Hessians of tiny problems."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import tr_jax as tj
from tr_jax.landscape.hessian import rademacher_like

# A symmetric 5x5 matrix on a two-leaf pytree {'a': [2], 'b': [3]} (flattened order a, b).
A = np.array([[4.0, 1.0, 0.5, 0.0, -1.0],
              [1.0, 3.0, 0.0, 2.0, 0.0],
              [0.5, 0.0, -2.0, 1.0, 0.5],
              [0.0, 2.0, 1.0, 5.0, 1.5],
              [-1.0, 0.0, 0.5, 1.5, 1.0]], np.float32)
QPARAMS = {"a": jnp.ones((2,), jnp.float32), "b": jnp.ones((3,), jnp.float32)}


def quadratic(matrix):
    mat = jnp.asarray(matrix)

    def loss(p):
        z = ravel_pytree(p)[0]
        return 0.5 * z @ mat @ z
    return loss


def mlp_problem(seed):
    """A 3-4-3 tanh MLP (31 params), CE on 12 random points; returns (loss_fn, params)."""
    kp, kx, ky, k1, k2 = jax.random.split(jax.random.key(seed), 5)
    params = {"w1": jax.random.normal(k1, (3, 4)), "b1": 0.1 * jax.random.normal(kp, (4,)),
              "w2": jax.random.normal(k2, (4, 3)), "b2": jnp.zeros((3,), jnp.float32)}
    x = jax.random.normal(kx, (12, 3))
    y = jax.random.randint(ky, (12,), 0, 3)

    def loss(p):
        h = jnp.tanh(x @ p["w1"] + p["b1"])
        logits = h @ p["w2"] + p["b2"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(12), y])
    return loss, params


def dense_hessian(loss, params):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda z: loss(unravel(z))))(flat), np.float64)


@pytest.fixture(scope="module")
def mlp():
    loss, params = mlp_problem(0)
    return loss, params, dense_hessian(loss, params)


def test_hvp_matches_dense_hessian(mlp):
    loss, params, h = mlp
    v = rademacher_like(jax.random.key(3), params)
    hv = ravel_pytree(tj.landscape.hvp(loss, params, v))[0]
    np.testing.assert_allclose(hv, h @ np.asarray(ravel_pytree(v)[0]), rtol=1e-4, atol=1e-5)


def test_trace_exact_for_diagonal_quadratic():
    # Rademacher probes: v^T D v = tr D exactly, so mean = trace and stderr = 0 for any probes.
    d = np.diag(np.array([1.0, -2.0, 3.5, 0.25, 7.0], np.float32))
    mean, se, n = tj.landscape.hessian_trace(quadratic(d), QPARAMS, jax.random.key(0),
                                             max_probes=7, tol=0.0, chunk=3)
    assert int(n) == 7
    np.testing.assert_allclose(mean, np.trace(d), rtol=1e-6)
    assert float(se) < 1e-5


def test_trace_quadratic_within_standard_errors():
    # Var(v^T A v) = 2 sum_{i != j} A_ij^2 for Rademacher v: the reported stderr must match it.
    mean, se, n = jax.jit(functools.partial(tj.landscape.hessian_trace, quadratic(A),
                                            max_probes=2000, tol=0.0, chunk=500))(
        QPARAMS, jax.random.key(1))
    off = A - np.diag(np.diag(A))
    expected_se = np.sqrt(2.0 * np.sum(off ** 2) / 2000)
    assert int(n) == 2000
    assert abs(float(se) / expected_se - 1.0) < 0.1
    assert abs(float(mean) - np.trace(A)) < 4.0 * float(se)
    assert abs(float(mean) - np.trace(A)) > 1e-4  # a genuine random estimate, not a shortcut


def test_stopping_rule_replayed_from_per_probe_values(mlp):
    loss, params, _ = mlp
    key, chunk, max_probes, tol = jax.random.key(5), 4, 40, 0.05
    mean, se, n = tj.landscape.hessian_trace(loss, params, key, max_probes, tol, chunk)
    # Replay PyHessian's rule per chunk from independently computed probe values.
    vals = []
    for j in range(max_probes):
        v = rademacher_like(jax.random.fold_in(key, j), params)
        vals.append(float(ravel_pytree(v)[0] @ ravel_pytree(tj.landscape.hvp(loss, params, v))[0]))
    prev, used = 0.0, max_probes
    for c in range(1, max_probes // chunk + 1):
        m = np.mean(vals[:c * chunk])
        if abs(m - prev) / (abs(prev) + 1e-6) < tol:
            used = c * chunk
            break
        prev = m
    assert chunk < used < max_probes  # the rule fired, and not at the first chunk
    assert int(n) == used
    np.testing.assert_allclose(mean, np.mean(vals[:used]), rtol=1e-5)
    np.testing.assert_allclose(se, np.std(vals[:used], ddof=1) / np.sqrt(used), rtol=1e-4)


def test_tol_zero_runs_all_probes_including_partial_chunk(mlp):
    loss, params, _ = mlp
    _, _, n = tj.landscape.hessian_trace(loss, params, jax.random.key(0), max_probes=25, tol=0.0,
                                         chunk=10)
    assert int(n) == 25
    _, _, n = tj.landscape.hessian_trace(loss, params, jax.random.key(0), max_probes=100, tol=0.5)
    assert int(n) < 100


def test_trace_and_spectrum_of_tiny_mlp(mlp):
    loss, params, h = mlp
    eigs = np.linalg.eigvalsh(h)
    mean, se, n = jax.jit(functools.partial(tj.landscape.hessian_trace, loss, max_probes=600,
                                            tol=0.0, chunk=200))(params, jax.random.key(2))
    assert int(n) == 600
    assert abs(float(mean) - np.trace(h)) < 4.0 * float(se)
    assert 0.0 < float(se) < 0.2 * abs(np.trace(h))

    top = eigs[np.argmax(np.abs(eigs))]  # power iteration: largest magnitude
    eig, iters = tj.landscape.top_eigenvalue(loss, params, jax.random.key(3), max_iters=1000,
                                             tol=1e-7)
    np.testing.assert_allclose(eig, top, rtol=1e-3)
    assert 1 < int(iters) < 1000

    ritz = tj.landscape.lanczos(loss, params, jax.random.key(4), k=3, num_iters=eigs.size)
    np.testing.assert_allclose(ritz, eigs[::-1][:3], rtol=1e-3, atol=1e-4)
    ritz = tj.landscape.lanczos(loss, params, jax.random.key(4), k=1, num_iters=12)
    np.testing.assert_allclose(ritz, eigs[-1:], rtol=1e-3)


def test_power_iteration_stops_early_with_loose_tol(mlp):
    loss, params, _ = mlp
    _, iters = tj.landscape.top_eigenvalue(loss, params, jax.random.key(3), max_iters=100, tol=0.1)
    assert 1 < int(iters) < 100
    _, iters = tj.landscape.top_eigenvalue(loss, params, jax.random.key(3), max_iters=17, tol=0.0)
    assert int(iters) == 17


def test_masked_measures_are_those_of_the_sub_hessian(mlp):
    loss, params, h = mlp
    mask = jax.tree.map(lambda p: (jax.random.uniform(jax.random.key(p.size), p.shape) < 0.6)
                        .astype(jnp.float32), params)
    keep = np.asarray(ravel_pytree(mask)[0]) > 0
    sub = h[np.ix_(keep, keep)]
    # Masked probes: v_j^T M H M v_j, so the replay below is exact per probe.
    mean, se, n = tj.landscape.hessian_trace(loss, params, jax.random.key(6), max_probes=600,
                                             tol=0.0, chunk=200, mask=mask)
    assert abs(float(mean) - np.trace(sub)) < 4.0 * float(se)
    assert abs(np.trace(sub) - np.trace(h)) > 8.0 * float(se)  # the mask matters here
    sub_eigs = np.linalg.eigvalsh(sub)
    eig, _ = tj.landscape.top_eigenvalue(loss, params, jax.random.key(7), max_iters=1000, tol=1e-7,
                                         mask=mask)
    np.testing.assert_allclose(eig, sub_eigs[np.argmax(np.abs(sub_eigs))], rtol=1e-3)
    ritz = tj.landscape.lanczos(loss, params, jax.random.key(8), k=2, num_iters=int(keep.sum()),
                                mask=mask)
    np.testing.assert_allclose(ritz, sub_eigs[::-1][:2], rtol=1e-3, atol=1e-4)


def test_vmap_over_members_equals_separate_calls():
    # vmapped (traced: while loop) against one eager call per member (host loop).
    problems = [mlp_problem(s) for s in (10, 11)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *[p for _, p in problems])
    keys = jax.random.split(jax.random.key(9), 2)
    kw_trace, kw_eig = dict(max_probes=60, tol=0.02, chunk=3), dict(max_iters=200, tol=1e-4)

    def measure(member, params, key):  # the data differ per member, captured via the index
        loss = lambda p: jax.lax.switch(member, [problems[0][0], problems[1][0]], p)  # noqa: E731
        return (tj.landscape.hessian_trace(loss, params, key, **kw_trace),
                tj.landscape.top_eigenvalue(loss, params, key, **kw_eig))

    (mean, se, n), (eig, iters) = jax.jit(jax.vmap(measure))(jnp.arange(2), stacked, keys)
    assert int(n[0]) != int(n[1]) or int(iters[0]) != int(iters[1])  # members stop apart
    for m, (loss, params) in enumerate(problems):
        one_mean, one_se, one_n = tj.landscape.hessian_trace(loss, params, keys[m], **kw_trace,
                                                             loop="host")
        one_eig, one_iters = tj.landscape.top_eigenvalue(loss, params, keys[m], **kw_eig)
        assert int(n[m]) == int(one_n) and int(iters[m]) == int(one_iters)
        np.testing.assert_allclose([mean[m], se[m], eig[m]], [one_mean, one_se, one_eig],
                                   rtol=1e-5)


def test_lanczos_host_loop_equals_while_loop_and_loop_is_checked(mlp):
    loss, params, _ = mlp
    host = tj.landscape.lanczos(loss, params, jax.random.key(4), k=2, num_iters=8, loop="host")
    traced = jax.jit(lambda p, k: tj.landscape.lanczos(loss, p, k, k=2, num_iters=8))(
        params, jax.random.key(4))  # auto -> while under jit
    np.testing.assert_allclose(host, traced, rtol=1e-5)
    with pytest.raises(ValueError, match="host"):
        jax.jit(lambda p: tj.landscape.top_eigenvalue(loss, p, jax.random.key(0), loop="host"))(
            params)
    with pytest.raises(ValueError, match="loop"):
        tj.landscape.hessian_trace(loss, params, jax.random.key(0), loop="scan")


def test_member_loss_and_member_hessian_on_masked_preresnet():
    model = tj.models.preresnet(depth=8, num_classes=10, width=0.25)
    variables = tj.models.init(model, jax.random.key(0), (8, 8, 1))
    params = variables["params"]
    rng = np.random.default_rng(0)  # conv kernels 30 % dense, everything else kept
    mask = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.3 if p.ndim == 4
                                              else np.ones(p.shape), jnp.float32), params)
    images = jnp.asarray(rng.integers(0, 256, (6, 8, 8, 1)), jnp.uint8)
    labels = jnp.arange(6) % 10
    mean, std = (0.3,), (0.2,)
    key = jax.random.key(3)

    @jax.jit
    def run(variables, mask):  # one compile: loss, direct forward, HVPs, member_hessian
        loss = tj.landscape.member_loss(model, variables, mask, images, labels, mean, std)
        eff = jax.tree.map(lambda p, m: p * m, variables["params"], mask)
        logits = tj.models.apply(model, {"params": eff, "batch_stats": variables["batch_stats"]},
                                 tj.data.normalize(images, mean, std))
        expected = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), labels])
        k_trace = jax.random.split(key)[0]
        probes = jax.vmap(lambda j: rademacher_like(jax.random.fold_in(k_trace, j), params))(
            jnp.arange(2))  # unmasked
        hvs = jax.vmap(functools.partial(tj.landscape.hvp, loss, variables["params"]))(probes)
        vhv = jax.vmap(lambda v, hv: ravel_pytree(v)[0] @ ravel_pytree(hv)[0])(probes, hvs)
        pruned = jax.tree.map(lambda x, m: jnp.max(jnp.abs(x * (1.0 - m))), hvs, mask)
        out = tj.landscape.member_hessian(model, variables, mask, images, labels, key, mean=mean,
                                          std=std, max_probes=2, chunk=2, max_iters=2)
        return (loss(variables["params"]), expected, jnp.max(jnp.stack(jax.tree.leaves(pruned))),
                jnp.sum(jnp.abs(ravel_pytree(hvs)[0])), vhv, out)

    value, expected, pruned, total, vhv, out = run(variables, mask)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert 1.0 < float(value) < 10.0
    # H = M H_w M: pruned directions are flat, so masked and unmasked probes agree probe by probe.
    assert float(pruned) == 0.0 and float(total) > 0.0
    assert int(out["trace_probes"]) == 2 and int(out["eig_iters"]) == 2
    np.testing.assert_allclose(out["trace"], jnp.mean(vhv), rtol=1e-4)
    np.testing.assert_allclose(out["trace_stderr"], jnp.std(vhv, ddof=1) / np.sqrt(2), rtol=1e-3)
    assert np.isfinite(float(out["top_eigenvalue"]))
