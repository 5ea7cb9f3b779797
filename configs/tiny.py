"""A smoke-test config (seconds on a CPU): the quick config shrunk to 2 temperatures x 2 densities."""
from tr_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "tiny"
    c.dataset = "digits"
    c.model.depth = 8
    c.model.width = 0.25
    c.temperatures = (1, 2)
    c.dense.epochs = 2
    c.dense.milestones = (1,)
    c.dense.seeds = (1,)
    c.augment.pad = 1
    c.augment.flip = False
    c.prune.densities = (0.1, 0.5)
    c.retrain.epochs = 2
    c.retrain.milestones = (1,)
    c.retrain.seeds = (1, 2)
    c.measure.lmc_points = 3
    c.measure.test_error_last_epochs = 2
    c.measure.bezier.enabled = False   # tests/test_cli.py switches both on in a test of its own
    c.measure.hessian.enabled = False
    c.measure.bezier.epochs = 1
    c.measure.bezier.points = 3
    c.measure.hessian.images = 64
    c.measure.hessian.max_probes = 4
    c.measure.hessian.chunk = 2
    c.measure.hessian.eig_iters = 5
    c.run.chunk_steps = 8
    return c
