"""The SAM-rho temperature (docs/fidelity.md, Temperature knobs; README of the reference: rho 0.1 ... 0.8).

Dense: SAM around SGD (global-norm perturbation, BN running stats frozen on the second pass, wd only
in the base step), 160 epochs at the Figure-2 schedule; every rho is a member of one program (rho is
a per-member array). Retraining is plain SGD, as in the reference. Larger rho = hotter [UNVERIFIED].
"""
from tr_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "sam_rho"
    c.dataset = "cifar10"
    c.knob = "sam_rho"
    c.temperatures = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    c.measure.bezier.enabled = False
    return c
