"""A smoke-test config (the test suite's): the quick config shrunk to 2 temperatures
x 2 densities, a PreResNet-8 of width 0.25 and batches of 256, one step per compiled call (a
tiny model's run is mostly compiling: one step compiles far faster than an unrolled chunk of 8;
measured 79 s against 186 s for the whole run), the last partial batch of each epoch dropped
(5 steps an epoch: one batch shape, so one training program to compile, not two), and no
autotuning of the members layout."""
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
    c.dense.batch_size = 256
    c.dense.drop_last = True
    c.augment.pad = 1
    c.augment.flip = False
    c.prune.densities = (0.1, 0.5)
    c.retrain.epochs = 2
    c.retrain.milestones = (1,)
    c.retrain.seeds = (1, 2)
    c.retrain.batch_size = 256
    c.retrain.drop_last = True
    c.measure.lmc_points = 3
    c.measure.cka_images = 256
    c.measure.bn_batch_size = 479  # BN recalibration in 3 whole batches: one compiled shape
    c.measure.test_error_last_epochs = 2
    c.measure.bezier.enabled = False   # tests/test_cli.py's run switches both on
    c.measure.hessian.enabled = False
    c.measure.bezier.epochs = 1
    c.measure.bezier.points = 3
    c.measure.bezier.batch_size = 479  # 1437 = 3 x 479: whole batches, one compiled shape
    c.measure.hessian.images = 64
    c.measure.hessian.max_probes = 4
    c.measure.hessian.chunk = 2
    c.measure.hessian.eig_iters = 5
    c.run.chunk_steps = 1
    # the backend default layout, nothing timed: the autotuner's choice depends on how busy the
    # machine is, and the test suite (which runs this config) compares tables across runs
    c.run.autotune = False
    return c
