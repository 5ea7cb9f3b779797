"""tr_jax: the three-regime model of network pruning (Zhou et al., ICML 2023) in JAX.

A sweep is a stack of *members* (networks that share shapes) on a leading axis, advanced together
by compiled steps. Public API (see README):

    import tr_jax as tj
    model = tj.models.preresnet(depth=20, num_classes=10, width=1)
    variables = tj.models.init(model, key, input_shape=(32, 32, 3))
    masks = tj.pruning.magnitude_masks(variables["params"], density=0.05)
    curve = tj.landscape.interpolation_errors(model, va, vb, images, labels, mean=..., std=...)
    tj.landscape.lmc(curve["train_error"]); tj.landscape.cka(x, y)
"""
from tr_jax import casestudies, data, landscape, models, pruning, regimes, training  # noqa: F401

__version__ = "0.2.0"
