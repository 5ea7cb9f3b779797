"""Figure 2's sweep on another architecture: VGG-16 with BN (default) or DenseNet-40
(docs/fidelity.md, Architectures).

    tr-jax run configs/vgg_densenet.py --workdir runs/vgg16            # VGG-16-BN
    tr-jax run configs/vgg_densenet.py --set model.arch=densenet --set model.depth=40 --workdir ...
"""
import pathlib

from tr_jax.config import config_of


def get_config():
    c = config_of(pathlib.Path(__file__).with_name("figure2.py"))
    c.name = "vgg_densenet"
    c.model.arch, c.model.depth = "vgg_bn", 16
    return c
