"""The embedded default: the whole pipeline on scikit-learn's digits, on a 2-core CPU in minutes.

PreResNet-8 (n = 1, width 1: 76 432 conv weights) on 8x8x1 digits (1 437 train / 360 test).
Dense: 40 epochs, batch 64, lr 0.1 (x0.1 at epochs 20 and 30), pruned at epochs 5/10/20/30/40
(the temperature grid: fewer epochs = hotter); 5 densities; LR-rewinding retraining for 20 epochs
(x0.1 at 10 and 15) with 2 retrain seeds; LMC (11 points), CKA, a trained Bezier curve (4 epochs,
5 points) and the Hessian trace / top eigenvalue (at most 20 probes / 20 iterations on 200 images)
on every cell.
Augmentation: 1-pixel zero-pad-then-crop, no flip (digits are not mirror-symmetric).
"""
from tr_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "quick"
    c.dataset = "digits"
    c.model.depth = 8
    c.model.width = 1.0
    c.temperatures = (5, 10, 20, 30, 40)
    c.dense.epochs = 40
    c.dense.milestones = (20, 30)
    c.dense.seeds = (1,)
    c.augment.pad = 1
    c.augment.flip = False
    c.prune.densities = (0.02, 0.05, 0.1, 0.2, 0.5)
    c.retrain.epochs = 20
    c.retrain.milestones = (10, 15)
    c.retrain.seeds = (1, 2)
    c.measure.bezier.epochs = 4
    c.measure.hessian.max_probes = 20
    c.measure.hessian.chunk = 5
    c.measure.hessian.eig_iters = 20
    return c
