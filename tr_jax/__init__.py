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
from tr_jax import (casestudies, data, distributed, hooks, landscape, measures,  # noqa: F401
                    members, models, pruning, regimes, sharding, training)

__version__ = "0.3.0"

_LAZY = ("autotune", "config", "plots", "report", "stats", "sweep")

__all__ = ["__version__", "autotune", "casestudies", "config", "data", "distributed", "hooks",
           "landscape", "measures", "members", "models", "plots", "pruning", "regimes", "report",
           "sharding", "stats", "sweep", "training"]


def __getattr__(name: str):
    """``tj.sweep``, ``tj.plots``, ``tj.report``, ``tj.config``, ``tj.autotune``, ``tj.stats``:
    imported on first use (they bring orbax / matplotlib, which a notebook may not need)."""
    if name in _LAZY:
        import importlib
        return importlib.import_module(f"tr_jax.{name}")
    raise AttributeError(f"module 'tr_jax' has no attribute {name!r}")
