"""Figure 2 of the paper (Zhou et al. 2023), with the settings of docs/fidelity.md: PreResNet-20 on
CIFAR-10, the epochs knob.

Dense: 160 epochs, batch 64, SGD lr 0.1 momentum 0.9 wd 1e-4 (x0.1 at epochs 80, 120), seeds 1-3,
pruned at epochs 10, 20, ..., 160 (16 temperatures); uniform magnitude pruning to densities
5/6/7/8/10/14/20/40/80 %; LR-rewinding retraining (the dense schedule again), retrain seeds 1-3:
16 x 9 x 3 x 3 = 1 296 retrained members. LMC (11 points, BN recalibrated on the 50 000 training
images, batch 64) and CKA of softmax outputs on the first 6 464 training images, as the reference.
The Hessian (200 images, as the predecessor) is measured too; the trained Bezier curves (not in the
reference's Figure 2) are off: switch them on with --set measure.bezier.enabled=True.
Needs CIFAR-10 in a TFDS data_dir (see README, "CIFAR data").
"""
from tr_jax.config import default_config


def get_config():
    c = default_config()  # the defaults are the paper's settings
    c.name = "figure2"
    c.dataset = "cifar10"
    c.model.arch, c.model.depth, c.model.width = "preresnet", 20, 1.0
    c.knob = "epochs"
    c.temperatures = tuple(range(10, 161, 10))
    c.measure.bezier.enabled = False
    return c
