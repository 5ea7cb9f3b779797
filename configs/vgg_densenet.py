"""Figure 2's sweep on another architecture: VGG-16 with BN (default) or DenseNet-40 (SPEC §1.2, §5).

    tr-jax run configs/vgg_densenet.py --workdir runs/vgg16            # VGG-16-BN
    tr-jax run configs/vgg_densenet.py --set model.arch=densenet --set model.depth=40 --workdir ...
"""
import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("figure2", pathlib.Path(__file__).with_name("figure2.py"))
_figure2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_figure2)


def get_config():
    c = _figure2.get_config()
    c.name = "vgg_densenet"
    c.model.arch, c.model.depth = "vgg_bn", 16
    return c
