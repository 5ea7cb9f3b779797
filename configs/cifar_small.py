"""A small CIFAR-10 sweep a GPU finishes in minutes: PreResNet-20, the epochs knob at 2/4/6/8 epochs
of an 8-epoch schedule (x0.1 at 4 and 6), 3 densities, 1 dense seed x 2 retrain seeds, 4 retrain
epochs; every measure on (Bezier: 2 epochs). Variants: --set knob=lr --set temperatures=(0.2,0.1,0.05).
"""
from tr_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "cifar_small"
    c.dataset = "cifar10"
    c.temperatures = (2, 4, 6, 8)
    c.dense.epochs, c.dense.milestones, c.dense.seeds = 8, (4, 6), (1,)
    c.prune.densities = (0.05, 0.2, 0.8)
    c.retrain.epochs, c.retrain.milestones, c.retrain.seeds = 4, (2, 3), (1, 2)
    c.measure.bezier.epochs = 2
    c.measure.hessian.max_probes = 20
    return c
