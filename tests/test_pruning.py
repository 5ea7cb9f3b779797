"""Magnitude masks (docs/fidelity.md, Magnitude pruning): counts, ties, reference masks, traced densities."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tr_jax as tj
from tr_jax.models.torch_import import from_torch
from conftest import torch_state_dict


def _flat(tree):
    return dict(jax.tree_util.tree_flatten_with_path(tree)[0])


@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.8, 1.0])
def test_uniform_keeps_the_largest_per_layer(density):
    m = tj.models.preresnet(8, 10)
    params = tj.models.init(m, jax.random.key(3), (8, 8, 1))["params"]
    masks = tj.pruning.magnitude_masks(params, density)
    for path, w in _flat(params).items():
        k = np.asarray(_flat(masks)[path])
        if not tj.models.is_prunable(path, w):
            assert np.all(k == 1)
            continue
        n = w.size
        kept = n - int(round((1 - density) * n))
        assert int(k.sum()) == kept, (path, density)
        a = np.abs(np.asarray(w)).ravel()
        kk = k.ravel().astype(bool)
        if 0 < kept < n:
            assert a[kk].min() >= a[~kk].max()


def test_ties_and_hand_computed_tree():
    params = {"conv": {"kernel": jnp.asarray([0.1, -0.9, 0.2, 0.5, 0.2, -0.1, 0.3, 0.0]
                                             ).reshape(1, 1, 2, 4)},
              "fc": {"kernel": jnp.ones((2, 2))}}
    m = tj.pruning.magnitude_masks(params, 0.5)
    # prune round(0.5 * 8) = 4 smallest: 0.0, 0.1, -0.1 (tie: lower index first), then 0.2 @ 2
    np.testing.assert_array_equal(np.asarray(m["conv"]["kernel"]).ravel(),
                                  [0, 1, 0, 1, 1, 0, 1, 0])
    assert np.all(np.asarray(m["fc"]["kernel"]) == 1)


def test_masks_match_reference(fidelity):
    params = from_torch(torch_state_dict(fidelity["preresnet20"]))["params"]
    p = fidelity["prune"]
    for name, scope, density in [("uniform_0.2", "uniform", 0.8), ("uniform_0.8", "uniform", 0.2),
                                 ("uniform_0.95", "uniform", 0.05), ("global_0.9", "global", 0.1)]:
        ref = from_torch({k: v.astype(np.float32) for k, v in torch_state_dict(p, name).items()})
        ours = _flat(tj.pruning.magnitude_masks(params, density, scope))
        for path, want in _flat(ref["params"]).items():
            np.testing.assert_array_equal(np.asarray(ours[path]), want, err_msg=f"{name} {path}")
    kept = np.asarray([[int(np.asarray(x).sum()) for x in jax.tree.leaves(
        tj.pruning.magnitude_masks(params, d)) if x.ndim == 4] for d in (0.8, 0.2, 0.05)])
    np.testing.assert_array_equal(np.sort(kept, 1), np.sort(p["uniform_counts_kept"], 1))


def test_density_vmapped_equals_loop():
    params = tj.models.init(tj.models.preresnet(8, 10), jax.random.key(1), (8, 8, 1))["params"]
    dens = jnp.asarray([0.05, 0.3, 0.9])
    batched = jax.jit(jax.vmap(tj.pruning.magnitude_masks, in_axes=(None, 0)))(params, dens)
    for i, d in enumerate([0.05, 0.3, 0.9]):
        one = tj.pruning.magnitude_masks(params, d)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(batched)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b[i]))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_bad_density_names_value(bad):
    with pytest.raises(ValueError, match=f"got {bad}"):
        tj.pruning.magnitude_masks({"w": jnp.ones((1, 1, 1, 4))}, bad)


def test_lamp_scores_hand_computed():
    w = jnp.asarray([0.1, 0.9, -0.2, 0.5], jnp.float32)
    # sorted squares 0.01, 0.04, 0.25, 0.81; tails 1.11, 1.10, 1.06, 0.81
    expected = [0.01 / 1.11, 0.81 / 0.81, 0.04 / 1.10, 0.25 / 1.06]
    np.testing.assert_allclose(tj.pruning.lamp_scores(w), expected, rtol=1e-6)


def test_lamp_masks_global_count_and_no_empty_layer():
    params = {"a": {"kernel": jnp.asarray(np.linspace(-1, 1, 36), jnp.float32).reshape(3, 3, 1, 4)},
              "b": {"kernel": 10.0 * jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 4, 8)),
                                                 jnp.float32)},
              "fc": {"kernel": jnp.ones((8, 10)), "bias": jnp.zeros((10,))}}
    for d in (0.02, 0.1, 0.5):
        masks = tj.pruning.magnitude_masks(params, d, "lamp")
        total = 36 + 288
        kept = int(masks["a"]["kernel"].sum() + masks["b"]["kernel"].sum())
        assert kept == total - int(round((1 - d) * total))
        assert masks["a"]["kernel"].sum() >= 1 and masks["b"]["kernel"].sum() >= 1
        assert bool(jnp.all(masks["fc"]["kernel"] == 1))
        # within a layer, LAMP keeps the largest magnitudes
        for k in ("a", "b"):
            w, m = np.abs(np.asarray(params[k]["kernel"])).ravel(), np.asarray(masks[k]["kernel"]).ravel()
            if 0 < m.sum() < m.size:
                assert w[m == 1].min() >= w[m == 0].max()


def test_erk_densities_budget_and_capping():
    small = jnp.ones((3, 3, 1, 4))      # raw = 11/36, would exceed 1 at 50 %
    big = jnp.ones((3, 3, 64, 64))      # raw = 134/36864
    mid = jnp.ones((1, 1, 32, 64))
    ks = [small, big, mid]
    n = np.asarray([x.size for x in ks], np.float64)
    for d in (0.05, 0.5):
        dl = np.asarray([float(x) for x in tj.pruning.erk_densities(ks, jnp.float32(d))])
        assert np.all(dl <= 1.0) and np.all(dl > 0)
        np.testing.assert_allclose((dl * n).sum(), d * n.sum(), rtol=1e-5)
        raw = np.asarray([sum(x.shape) / x.size for x in ks])
        free = dl < 1.0
        np.testing.assert_allclose(dl[free] / raw[free], (dl[free] / raw[free])[0], rtol=1e-5)
    assert float(tj.pruning.erk_densities(ks, jnp.float32(0.5))[0]) == 1.0


@pytest.mark.parametrize("scope", ["lamp", "erk"])
def test_new_scopes_are_vmappable_over_densities(scope):
    m = tj.models.preresnet(8, 10, width=0.5)
    params = tj.models.init(m, jax.random.key(1), (8, 8, 1))["params"]
    dens = jnp.asarray([0.05, 0.3], jnp.float32)
    stacked = jax.vmap(lambda d: tj.pruning.magnitude_masks(params, d, scope))(dens)
    for i, d in enumerate((0.05, 0.3)):
        one = tj.pruning.magnitude_masks(params, d, scope)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(stacked)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b[i]))
        assert float(tj.pruning.mask_density(one)) == pytest.approx(d, abs=0.01)


def _tiny_params():
    return {"Conv_0": {"kernel": jnp.arange(1.0, 9.0).reshape(1, 1, 2, 4), "bias": jnp.ones(4)},
            "Conv_1": {"kernel": -jnp.arange(1.0, 9.0).reshape(1, 1, 4, 2), "bias": jnp.ones(2)},
            "Dense_0": {"kernel": jnp.arange(1.0, 5.0).reshape(2, 2), "bias": jnp.ones(2)}}


@pytest.mark.parametrize("leaves, pruned", [
    ("conv", {"Conv_0/kernel", "Conv_1/kernel"}),
    ("conv+dense", {"Conv_0/kernel", "Conv_1/kernel", "Dense_0/kernel"}),
    (r"Conv_1/kernel|Dense_0/kernel", {"Conv_1/kernel", "Dense_0/kernel"}),
    (r"^Dense_0/bias$", {"Dense_0/bias"}),
])
@pytest.mark.parametrize("scope", ["uniform", "lamp", "erk"])
def test_leaves_prune_exactly_the_named_leaves(leaves, pruned, scope):
    params = _tiny_params()
    masks = tj.pruning.magnitude_masks(params, 0.5, scope, leaves=leaves)
    assert set(tj.pruning.prunable_paths(params, leaves)) == pruned
    for path, m in _flat(masks).items():
        name = tj.models.path_str(path)
        m = np.asarray(m)
        if name in pruned:
            assert m.sum() < m.size, (name, scope)
        else:
            assert np.all(m == 1), (name, scope)
    if scope == "uniform":  # per layer: the smaller |w| half goes (hand-computed for the regex)
        if leaves.startswith("Conv_1"):
            np.testing.assert_array_equal(np.asarray(masks["Dense_0"]["kernel"]),
                                          [[0.0, 0.0], [1.0, 1.0]])
            np.testing.assert_array_equal(np.asarray(masks["Conv_1"]["kernel"]).ravel(),
                                          [0, 0, 0, 0, 1, 1, 1, 1])
        d = tj.pruning.mask_density(masks, leaves)
        assert float(d) == 0.5


def test_bad_leaves_name_the_problem():
    with pytest.raises(ValueError, match=r"prune.leaves='\(conv'.*regex"):
        tj.pruning.magnitude_masks(_tiny_params(), 0.5, leaves="(conv")
    with pytest.raises(ValueError, match="selects no parameter.*Dense_0/kernel"):
        tj.pruning.magnitude_masks(_tiny_params(), 0.5, leaves="nothing_here")
