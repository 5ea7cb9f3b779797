"""Retraining modes (docs/fidelity.md, Retraining): LR rewinding, fine-tuning, weight rewinding."""
import pathlib

import jax
import numpy as np
import pytest

from tr_jax.config import load_config
from tr_jax.sweep import setup
from tr_jax.sweep.train import dense, retrain, retrain_section

TINY = str(pathlib.Path(__file__).parents[1] / "configs" / "tiny.py")


def _pipeline(tmp_path, *sets):
    cfg = load_config(TINY, ["temperatures=(1,)", "dense.epochs=1", "retrain.epochs=1",
                             "measure.test_error_last_epochs=1", *sets])
    return setup(cfg, str(tmp_path), progress=False, echo=lambda s: None)


def _pruned_start(dense_params, masks_like):
    return jax.tree.map(lambda p, m: p * m, dense_params, masks_like)


def test_finetune_uses_the_constant_finetune_lr(tmp_path):
    # finetune_lr = 0: retraining must leave the pruned trained weights exactly where they were
    p = _pipeline(tmp_path, "retrain.mode=finetune", "retrain.finetune_lr=0.0")
    dense_out = dense(p)
    out = retrain(p, dense_out)
    start = jax.tree.map(lambda x: x[0, 0], dense_out["variables"]["params"])
    for i in range(p.grid.num_members):
        got = jax.tree.map(lambda x, i=i: x[i], out["variables"]["params"])
        mask = jax.tree.map(lambda g: (g != 0).astype(np.float32), got)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(_pruned_start(start, mask))):
            np.testing.assert_array_equal(a, b)
    assert retrain_section(p.cfg).milestones == ()


def test_weight_rewinding_starts_from_the_rewound_weights(tmp_path):
    # lr 0 and rewind epoch 0: the retrained members are the *initial* dense weights, masked
    p = _pipeline(tmp_path, "retrain.mode=weight_rewinding", "retrain.rewind_epoch=0",
                  "retrain.lr=0.0")
    dense_out = dense(p)
    init = jax.tree.map(lambda x: x[0], dense_out["rewind_variables"]["params"])
    trained = jax.tree.map(lambda x: x[0, 0], dense_out["variables"]["params"])
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(trained)))
    out = retrain(p, dense_out)
    got = jax.tree.map(lambda x: x[0], out["variables"]["params"])
    mask = jax.tree.map(lambda g: (g != 0).astype(np.float32), got)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(_pruned_start(init, mask))):
        np.testing.assert_array_equal(a, b)


def test_bad_retrain_mode_and_rewind_epoch_are_named(tmp_path):
    with pytest.raises(ValueError, match="'weight_rewind'.*Did you mean 'weight_rewinding'"):
        load_config(TINY, ["retrain.mode=weight_rewind"])
    with pytest.raises(ValueError, match="rewind_epoch=5"):
        load_config(TINY, ["retrain.mode=weight_rewinding", "retrain.rewind_epoch=5"])
