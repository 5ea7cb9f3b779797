"""Datasets (embedded digits, TFDS, your own arrays) and on-device augmentation (docs/fidelity.md, Data)."""

from tr_jax.data.arrays import (NPZ_KEYS, SMALL_TEST_SPLIT, Dataset, SmallTestSplitWarning,
                                check_dataset, from_arrays, load_npz, small_test_split_note)
from tr_jax.data.augment import augment, normalize, random_crop, random_flip
from tr_jax.data.datasets import (
    CIFAR_MEAN,
    CIFAR_STD,
    DATASETS,
    PREFIXES,
    SVHN_MEAN,
    SVHN_STD,
    TFDS_DATASETS,
    check_name,
    load_dataset,
    load_digits,
    load_tfds,
    original_order,
)

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "NPZ_KEYS",
    "PREFIXES",
    "SMALL_TEST_SPLIT",
    "SVHN_MEAN",
    "SVHN_STD",
    "SmallTestSplitWarning",
    "TFDS_DATASETS",
    "Dataset",
    "augment",
    "check_dataset",
    "check_name",
    "from_arrays",
    "load_dataset",
    "load_digits",
    "load_npz",
    "load_tfds",
    "normalize",
    "original_order",
    "small_test_split_note",
    "random_crop",
    "random_flip",
]
