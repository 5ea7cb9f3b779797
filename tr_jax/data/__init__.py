"""Datasets (embedded digits, TFDS) and on-device augmentation (SPEC §1.1)."""

from tr_jax.data.augment import augment, normalize, random_crop, random_flip
from tr_jax.data.datasets import (
    CIFAR_MEAN,
    CIFAR_STD,
    DATASETS,
    SVHN_MEAN,
    SVHN_STD,
    TFDS_DATASETS,
    Dataset,
    load_dataset,
    load_digits,
    load_tfds,
)

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "SVHN_MEAN",
    "SVHN_STD",
    "TFDS_DATASETS",
    "Dataset",
    "augment",
    "load_dataset",
    "load_digits",
    "load_tfds",
    "normalize",
    "random_crop",
    "random_flip",
]
