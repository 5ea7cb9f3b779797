"""Per-layer Hessian traces and the SLQ spectral density against exact Hessians of small problems."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import tr_jax as tj
from tr_jax.landscape.hessian import rademacher_like

DIM = 20
SPLIT = {"a": 7, "b": 8, "c": 5}  # three "layers" of a 20-vector (flattened order a, b, c)
EIGS = np.linspace(-2.0, 6.0, DIM)  # distinct, none 0


def _params():
    return {k: jnp.zeros((n,), jnp.float32) for k, n in SPLIT.items()}


def _matrix(seed=0):
    q = np.linalg.qr(np.random.default_rng(seed).normal(size=(DIM, DIM)))[0]
    return (q * EIGS) @ q.T


def _hvp(h, params):
    mat = jnp.asarray(h, jnp.float32)
    unravel = ravel_pytree(params)[1]
    return lambda v: unravel(mat @ ravel_pytree(v)[0])


def _blocks(diag, params):
    """Sums of ``diag`` (flattened like params) per leaf, as a {leaf name: value} dict."""
    return {k: float(np.sum(v)) for k, v in ravel_pytree(params)[1](jnp.asarray(diag)).items()}


def _dense_hessian(loss, params):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda z: loss(unravel(z))))(flat), np.float64)


# ------------------------------------------------------------------ quadratic: per-layer traces

def test_block_traces_quadratic_within_standard_errors():
    h, params = _matrix(), _params()
    probes = 2000
    out = jax.jit(lambda k: tj.landscape.block_traces(_hvp(h, params), params, k, probes=probes,
                                                      chunk=500))(jax.random.key(1))
    assert list(out) == ["a", "b", "c"]
    exact = _blocks(np.diag(h), params)
    # Var(v_b^T (H v)_b) = 2 sum_{i != j in b} H_ij^2 + sum_{i in b, j not in b} H_ij^2: the
    # reported stderr must match it
    block = np.repeat(np.arange(len(SPLIT)), list(SPLIT.values()))
    same = block[:, None] == block[None, :]
    off = (h - np.diag(np.diag(h))) ** 2
    var = _blocks(np.sum(np.where(same, 2.0 * off, off), axis=1), params)
    for name, (tr, se) in out.items():
        assert abs(float(tr) - exact[name]) < 5.0 * float(se), (name, float(tr), exact[name])
        assert 0.85 < float(se) / np.sqrt(var[name] / probes) < 1.15
    # the block traces add up to hessian_trace's estimate probe by probe (same probes), and tr H
    def loss(p):
        z = ravel_pytree(p)[0]
        return 0.5 * z @ jnp.asarray(h, jnp.float32) @ z

    full, full_se, _ = tj.landscape.hessian_trace(loss, params, jax.random.key(1),
                                                  max_probes=probes, tol=0.0, chunk=500)
    total = sum(float(tr) for tr, _ in out.values())
    np.testing.assert_allclose(total, float(full), rtol=1e-4, atol=1e-4)
    assert abs(total - np.trace(h)) < 5.0 * float(full_se)


def test_block_traces_exact_for_diagonal_and_masked():
    params = _params()
    d = np.diag(np.arange(1.0, DIM + 1.0))  # Rademacher probes: v_b^T (D v)_b = tr D_bb exactly
    out = tj.landscape.block_traces(_hvp(d, params), params, jax.random.key(0), probes=5, chunk=2)
    for name, ex in _blocks(np.diag(d), params).items():
        np.testing.assert_allclose(out[name][0], ex, rtol=1e-6)
        assert float(out[name][1]) < 1e-5
    # mask: the block traces of the sub-Hessian of the unpruned entries
    h = _matrix(1)
    keep = (np.random.default_rng(2).random(DIM) < 0.6).astype(np.float32)
    mask = ravel_pytree(params)[1](jnp.asarray(keep))
    out = tj.landscape.block_traces(_hvp(h, params), params, jax.random.key(3), probes=2000,
                                    chunk=1000, mask=mask)
    for name, ex in _blocks(np.diag(h) * keep, params).items():
        assert abs(float(out[name][0]) - ex) < 5.0 * float(out[name][1]) + 1e-5, name


def test_layer_groups():
    params = {"conv1": {"kernel": jnp.zeros((3, 3, 1, 2))},
              "layer1_0": {"bn1": {"scale": jnp.zeros(2), "bias": jnp.zeros(2)},
                           "conv1": {"kernel": jnp.zeros((3, 3, 2, 2))}},
              "layer2_0": {"conv1": {"kernel": jnp.zeros((3, 3, 2, 4))}},
              "fc": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}}
    leaves = [tj.models.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    groups = tj.landscape.layer_groups(params)
    assert list(groups) == ["conv1", "fc", "layer1_0", "layer2_0"]  # the flattening order
    assert {leaves[i] for i in groups["layer1_0"]} == {"layer1_0/bn1/scale", "layer1_0/bn1/bias",
                                                       "layer1_0/conv1/kernel"}
    assert tj.landscape.layer_groups(params, r"^layer(\d)") == {"1": groups["layer1_0"],
                                                               "2": groups["layer2_0"]}
    assert set(tj.landscape.layer_groups(params, r"kernel$")) == {"kernel"}
    by_kind = tj.landscape.layer_groups(params, lambda s: "conv" if "conv" in s else None)
    assert [leaves[i] for i in by_kind["conv"]] == [s for s in leaves if "conv" in s]
    with pytest.raises(ValueError, match="selects no parameter"):
        tj.landscape.layer_groups(params, "nothing")
    with pytest.raises(ValueError, match="regex"):
        tj.landscape.layer_groups(params, "(")
    with pytest.raises(ValueError, match="two layer groups"):
        tj.landscape.block_traces(lambda v: v, params, jax.random.key(0), {"x": (0, 1), "y": (1,)})


# ------------------------------------------------------------------ quadratic: SLQ

def test_slq_moments_and_density():
    h, params = _matrix(), _params()
    key, probes = jax.random.key(4), 256
    nodes, weights = jax.jit(lambda k: tj.landscape.slq(_hvp(h, params), params, k,
                                                        num_probes=probes, lanczos_steps=6))(key)
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    assert nodes.shape == weights.shape == (probes, 6)
    assert np.all(np.diff(nodes, axis=1) >= 0) and np.all(weights >= 0)
    # Gauss quadrature is exact to degree 2k - 1: sum_i w_i theta_i^m = v^T H^m v, probe by probe
    starts = np.asarray(jax.vmap(lambda p: ravel_pytree(rademacher_like(
        jax.random.fold_in(key, p), params))[0])(jnp.arange(probes)), np.float64)
    starts /= np.linalg.norm(starts, axis=1, keepdims=True)
    for m in range(4):
        quad = np.sum(weights * nodes ** m, axis=1)
        np.testing.assert_allclose(quad, np.einsum("pi,ij,pj->p", starts,
                                                   np.linalg.matrix_power(h, m), starts),
                                   rtol=2e-4, atol=2e-4 * np.abs(EIGS).max() ** m)
        # ... whose mean over probes estimates tr(H^m) / n
        exact = np.sum(EIGS ** m) / DIM
        assert abs(quad.mean() - exact) <= 5.0 * quad.std(ddof=1) / np.sqrt(probes) + 1e-5, m
    summary = tj.landscape.esd_summary(nodes, weights)
    np.testing.assert_allclose(summary["moment1"], np.mean(np.sum(weights * nodes, axis=1)),
                               rtol=1e-5)
    assert EIGS[0] - 1e-3 <= float(summary["bottom"]) and float(summary["top"]) <= EIGS[-1] + 1e-3
    assert abs(float(summary["negative_mass"]) - np.mean(EIGS < 0)) < 0.1
    # the smoothed density integrates to 1: default grid, and a fixed grid wider than the nodes
    grid, dens = tj.landscape.esd_density(nodes, weights)
    assert grid.shape == dens.shape == (tj.landscape.spectrum.DEFAULT_POINTS,)
    np.testing.assert_allclose(np.trapezoid(dens, grid), 1.0, atol=1e-4)
    fixed = np.linspace(-5.0, 10.0, 3001)
    grid, dens = tj.landscape.esd_density(nodes, weights, fixed, sigma=0.1)
    np.testing.assert_allclose(grid, fixed, rtol=1e-6)
    np.testing.assert_allclose(np.trapezoid(dens, grid), 1.0, atol=1e-4)


@pytest.mark.parametrize("steps", [DIM, DIM + 5])
def test_slq_full_lanczos_recovers_the_eigenvalues(steps):
    h, params = _matrix(), _params()
    nodes, weights = tj.landscape.slq(_hvp(h, params), params, jax.random.key(5), num_probes=3,
                                      lanczos_steps=steps)
    for nd, w in zip(np.asarray(nodes), np.asarray(weights)):
        live = w > 1e-7
        # after the breakdown at step n, the extra nodes are 0 with weight 0
        assert live.sum() == DIM and np.all(w[~live] == 0.0)
        np.testing.assert_allclose(np.sort(nd[live]), EIGS, atol=2e-4 * np.abs(EIGS).max())
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)


def test_slq_with_mask_is_the_sub_hessian_spectrum():
    h, params = _matrix(), _params()
    keep = np.arange(DIM) % 3 != 0
    mask = ravel_pytree(params)[1](jnp.asarray(keep, jnp.float32))
    nodes, weights = tj.landscape.slq(_hvp(h, params), params, jax.random.key(6), num_probes=2,
                                      lanczos_steps=int(keep.sum()), mask=mask)
    sub = np.linalg.eigvalsh(h[np.ix_(keep, keep)])
    for nd, w in zip(np.asarray(nodes), np.asarray(weights)):
        np.testing.assert_allclose(np.sort(nd[w > 1e-7]), sub, atol=2e-4 * np.abs(sub).max())


# ------------------------------------------------------------------ a tiny network: exact Hessian

class Tiny(nn.Module):
    """A conv -> BN -> ReLU -> pool -> dense network with 98 parameters (called with ``train``)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(10, name="fc")(jnp.mean(nn.relu(x), axis=(1, 2)))


MEAN, STD = (0.4,), (0.25,)


@pytest.fixture(scope="module")
def tiny():
    model = Tiny()
    variables = tj.models.init(model, jax.random.key(0), (8, 8, 1))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (16, 8, 8, 1)), jnp.uint8)
    labels = jnp.asarray(rng.integers(0, 10, 16))
    mask = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.5 if p.ndim == 4
                                              else np.ones(p.shape), jnp.float32),
                        variables["params"])
    out = {}
    for name, m in (("dense", None), ("masked", mask)):
        loss = tj.landscape.member_loss(model, variables, m, images, labels, MEAN, STD)
        out[name] = (m, _dense_hessian(loss, variables["params"]))
    return model, variables, images, labels, out


@pytest.mark.parametrize("which", ["dense", "masked"])
def test_layer_traces_tiny_network(tiny, which):
    model, variables, images, labels, hess = tiny
    mask, h = hess[which]
    out = tj.landscape.layer_traces(model, variables, mask, images, labels, jax.random.key(7),
                                    mean=MEAN, std=STD, probes=1000, chunk=250)
    assert list(out) == ["bn", "conv", "fc"]
    diag = ravel_pytree(variables["params"])[1](jnp.asarray(np.diag(h)))
    exact = {k: float(sum(np.sum(x) for x in jax.tree.leaves(diag[k]))) for k in out}
    for name, (tr, se) in out.items():
        assert abs(float(tr) - exact[name]) < 5.0 * float(se) + 1e-6, (name, float(tr), exact[name])
    np.testing.assert_allclose(sum(exact.values()), np.trace(h), rtol=1e-5)


def test_hessian_esd_tiny_network_and_vmap(tiny):
    model, variables, images, labels, hess = tiny
    mask, h = hess["masked"]
    keep = np.asarray(ravel_pytree(mask)[0]) > 0
    eigs = np.linalg.eigvalsh(h[np.ix_(keep, keep)])
    out = tj.landscape.hessian_esd(model, variables, mask, images, labels, jax.random.key(8),
                                   mean=MEAN, std=STD, num_probes=2, lanczos_steps=40)
    nodes, weights = np.asarray(out["nodes"]), np.asarray(out["weights"])
    assert nodes.shape == (2, 40) and out["density"].shape == out["grid"].shape
    span = eigs[-1] - eigs[0]
    live = nodes[weights > 1e-7]
    assert eigs[0] - 1e-3 * span <= live.min() and live.max() <= eigs[-1] + 1e-3 * span
    np.testing.assert_allclose(live.max(), eigs[-1], rtol=1e-3)  # the extremes converge first
    np.testing.assert_allclose(live.min(), eigs[0], atol=0.02 * span)
    np.testing.assert_allclose(np.trapezoid(out["density"], out["grid"]), 1.0, atol=1e-4)

    # a members axis: jit(vmap) over (variables, mask, key) runs the while loops; same numbers
    two = jax.tree.map(lambda x: jnp.stack([x, x]), (variables, mask))
    keys = jnp.stack([jax.random.key(8), jax.random.key(9)])

    @jax.jit
    def members(v, m, k):
        esd = tj.landscape.hessian_esd(model, v, m, images, labels, k, mean=MEAN, std=STD,
                                       num_probes=2, lanczos_steps=40, grid=jnp.linspace(-1, 1, 5),
                                       sigma=0.1)
        tr = tj.landscape.layer_traces(model, v, m, images, labels, k, mean=MEAN, std=STD,
                                       probes=20, chunk=10)
        return esd["nodes"], tr

    nodes2, tr2 = jax.vmap(members)(*two, keys)
    np.testing.assert_allclose(nodes2[0], nodes, rtol=1e-4, atol=1e-5 * span)
    eager = tj.landscape.layer_traces(model, variables, mask, images, labels, jax.random.key(9),
                                      mean=MEAN, std=STD, probes=20, chunk=10)
    for name, (tr, se) in eager.items():
        np.testing.assert_allclose(tr2[name][0][1], tr, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(tr2[name][1][1], se, rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------ PreResNet: the sweep's model

def test_preresnet_layers_add_up_to_hessian_trace():
    # (SLQ on a network is checked against the exact spectrum of the tiny one above)
    model = tj.models.build("preresnet", depth=8, num_classes=10, width=0.25)
    variables = tj.models.init(model, jax.random.key(0), (8, 8, 1))
    params = variables["params"]
    rng = np.random.default_rng(1)
    mask = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.3 if p.ndim == 4
                                              else np.ones(p.shape), jnp.float32), params)
    images = jnp.asarray(rng.integers(0, 256, (16, 8, 8, 1)), jnp.uint8)
    labels = jnp.arange(16) % 10
    key = jax.random.key(2)
    out = tj.landscape.layer_traces(model, variables, mask, images, labels, key, mean=MEAN,
                                    std=STD, probes=20, chunk=10)
    assert set(out) == {"conv1", "layer1_0", "layer2_0", "layer3_0", "bn", "fc"}
    loss = tj.landscape.member_loss(model, variables, mask, images, labels, MEAN, STD)
    full, _, _ = tj.landscape.hessian_trace(loss, params, key, max_probes=20, tol=0.0, chunk=10,
                                            mask=mask)
    np.testing.assert_allclose(sum(float(tr) for tr, _ in out.values()), float(full), rtol=1e-4)
    stages = tj.landscape.layer_groups(params, r"^layer(\d)_")  # the three stages
    assert stages == {s: tj.landscape.layer_groups(params)[f"layer{s}_0"] for s in "123"}
