"""The embedded default with every depth measure on: where in the network the pruned models part.

``configs/quick.py`` (PreResNet-8 on scikit-learn's digits, 5 temperatures x 5 densities x 2
retrain seeds) plus

* layer-wise CKA of every pair (biased and unbiased HSIC) at the output of every conv layer and
  of the classifier (8 layers) on 256 training images;
* per-layer Hessian traces of every member (the same 8 layers' weights, 20 Hutchinson probes on
  200 training images, the whole-network trace's probe keys);
* the Hessian's eigenvalue spectral density of every member (stochastic Lanczos quadrature, 2
  probes x 20 Lanczos steps);
* a Bezier curve of order 3 (2 trained bends) in place of the quadratic one.

Its tables gain the per-layer rows (``layer_cka@conv1`` ...), ``layers.csv`` (each cell's layer
profile with intervals) and the figures ``layers_*.png`` and ``hessian_esd.png``. Measured on a
2-core CPU: see the README, "Landscape depth".
"""
import pathlib

from tr_jax.config import config_of


#: every conv layer and the classifier of PreResNet-8 (module paths; the block outputs are
#: ``layer{s}_0``, the default of a built-in architecture)
CONV_LAYERS = r"^(conv1|layer\d+_\d+/conv\d|fc)$"
#: the same layers' weights (the first group of the regex names the layer)
CONV_WEIGHTS = r"^(conv1|layer\d+_\d+/conv\d|fc)/"


def get_config():
    c = config_of(pathlib.Path(__file__).with_name("quick.py"))
    c.name = "digits_depth"
    c.measure.layer_cka.enabled = True
    c.measure.layer_cka.layers = CONV_LAYERS
    c.measure.layer_hessian.enabled = True
    c.measure.layer_hessian.layers = CONV_WEIGHTS
    c.measure.hessian_esd.enabled = True
    c.measure.bezier.bends = 2
    return c
