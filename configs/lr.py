"""The learning-rate temperature (tr_jax's fourth knob; the predecessor swept lr as a temperature).

Dense: SGD at each lr of the grid (per-member lr in one program), 160 epochs with the Figure-2
schedule (x0.1 at 80 and 120); retraining as Figure 2 (lr 0.1). Larger lr = hotter.
"""
from tr_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "lr"
    c.dataset = "cifar10"
    c.knob = "lr"
    c.temperatures = (0.4, 0.2, 0.1, 0.05, 0.025, 0.0125)
    c.measure.bezier.enabled = False
    return c
