"""Magnitude masks (SPEC §1.5): counts, ties, reference masks, traced densities."""
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
