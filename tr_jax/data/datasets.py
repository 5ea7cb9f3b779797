"""Image-classification datasets as host-side uint8 numpy arrays.

Every loader returns a :class:`Dataset` holding *raw* pixels (uint8, NHWC, 0..255) in a fixed,
deterministic dataset order (nothing is shuffled here; shuffling and augmentation happen on the
device, see :mod:`tr_jax.data.augment`), integer labels (int32) and the per-channel mean/std on the
[0, 1] pixel scale that :func:`tr_jax.data.augment.normalize` uses (SPEC §1.1).

Datasets
--------
``digits`` (default, embedded, no download)
    scikit-learn's ``sklearn.datasets.load_digits``: 1 797 real 8x8 grey-scale hand-written digits
    with integer intensities 0..16 and 10 classes. Images are shaped ``[N, 8, 8, 1]`` uint8 with
    ``pixel = rint(v * 255 / 16)`` (so 16 -> 255; ``np.rint`` rounds the single half case 127.5 to
    128). Split: ``sklearn.model_selection.train_test_split(arange(N), test_size=test_fraction,
    random_state=split_seed, stratify=labels)``, i.e. stratified by class, giving 1 437 train /
    360 test images for the defaults (``test_fraction=0.2``, ``split_seed=0``); each split is then
    sorted by original index so its order is fixed. ``mean``/``std`` are the (population) mean and
    std of the TRAIN images on the [0, 1] scale, computed from the uint8 pixels.
``cifar10``, ``cifar100``, ``svhn_cropped`` (TensorFlow Datasets)
    Read with ``tfds.load(name, split=..., as_supervised=True, download=False)`` from ``data_dir``
    (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``), splits ``train`` and ``test``,
    images ``[N, 32, 32, 3]`` uint8. ``mean``/``std`` are the reference implementation's constants
    (:data:`CIFAR_MEAN`/:data:`CIFAR_STD` for both CIFARs, :data:`SVHN_MEAN`/:data:`SVHN_STD`).
    TensorFlow and tensorflow_datasets are imported lazily, only when such a dataset is loaded.
    No download is ever attempted; prepare the data on a connected machine with
    ``python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10').download_and_prepare()"``
    and copy ``~/tensorflow_datasets/cifar10`` into ``data_dir``.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "SVHN_MEAN",
    "SVHN_STD",
    "TFDS_DATASETS",
    "Dataset",
    "load_dataset",
    "load_digits",
    "load_tfds",
]

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "svhn_cropped")
TFDS_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "svhn_cropped")
#: name -> (train images, image shape, classes): what a plan needs without loading the data
DATASET_SHAPES: dict[str, tuple[int, tuple[int, int, int], int]] = {
    "digits": (1437, (8, 8, 1), 10), "cifar10": (50000, (32, 32, 3), 10),
    "cifar100": (50000, (32, 32, 3), 100), "svhn_cropped": (73257, (32, 32, 3), 10)}

# Reference implementation's normalisation constants (SPEC §1.1), on the [0, 1] pixel scale.
CIFAR_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR_STD: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
SVHN_MEAN: tuple[float, float, float] = (0.4377, 0.4438, 0.4728)
SVHN_STD: tuple[float, float, float] = (0.1980, 0.2010, 0.1970)

# name -> (num_classes, mean, std)
_TFDS_META: dict[str, tuple[int, tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (10, CIFAR_MEAN, CIFAR_STD),
    "cifar100": (100, CIFAR_MEAN, CIFAR_STD),
    "svhn_cropped": (10, SVHN_MEAN, SVHN_STD),
}

_TFDS_BATCH = 4096


class Dataset(NamedTuple):
    """A fully materialised train/test image-classification dataset (host memory).

    Attributes:
      name: dataset name (one of :data:`DATASETS`).
      train_images: uint8 ``[N, H, W, C]`` raw pixels 0..255, dataset order (never shuffled).
      train_labels: int32 ``[N]``.
      test_images: uint8 ``[N_test, H, W, C]``.
      test_labels: int32 ``[N_test]``.
      num_classes: number of classes ``K``; labels lie in ``0..K-1``.
      mean: per-channel mean on the [0, 1] pixel scale, length ``C``.
      std: per-channel std on the [0, 1] pixel scale, length ``C``.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        h, w, c = self.train_images.shape[1:]
        return (int(h), int(w), int(c))

    @property
    def num_train(self) -> int:
        """Number of training examples ``N``."""
        return int(self.train_images.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test examples ``N_test``."""
        return int(self.test_images.shape[0])


def _unknown_name_error(name: str, choices: tuple[str, ...]) -> ValueError:
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"Unknown dataset {name!r}.{hint} Available datasets: {', '.join(choices)}.")


def load_dataset(name: str, data_dir: str | None = None, **kw: Any) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`).

    Args:
      name: ``"digits"`` (embedded, ``data_dir`` ignored) or a TFDS name
        (``"cifar10"``, ``"cifar100"``, ``"svhn_cropped"``).
      data_dir: TFDS data directory; ``None`` means the TFDS default.
      **kw: forwarded to the specific loader (e.g. ``test_fraction``/``split_seed`` for digits).

    Raises:
      ValueError: unknown ``name`` (the message lists :data:`DATASETS` and a close match).
    """
    if name == "digits":
        return load_digits(**kw)
    if name in TFDS_DATASETS:
        return load_tfds(name, data_dir=data_dir, **kw)
    raise _unknown_name_error(name, DATASETS)


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits as ``[N, 8, 8, 1]`` uint8 images, stratified train/test split.

    See the module docstring for the exact pixel mapping and split. Defaults give 1 437 train and
    360 test images; ``mean``/``std`` (length 1) are those of the train images on the [0, 1] scale.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    raw = _sk_load_digits()
    values = np.asarray(raw.images, dtype=np.float64)  # [N, 8, 8], integers 0..16
    labels = np.asarray(raw.target, dtype=np.int32)  # [N]
    images = np.rint(values * 255.0 / 16.0).astype(np.uint8)[..., None]  # [N, 8, 8, 1]

    idx = np.arange(images.shape[0])
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, random_state=split_seed, stratify=labels
    )
    train_idx = np.sort(train_idx)
    test_idx = np.sort(test_idx)

    train_images = np.ascontiguousarray(images[train_idx])
    scaled = train_images.astype(np.float64) / 255.0
    mean = tuple(float(m) for m in scaled.mean(axis=(0, 1, 2)))
    std = tuple(float(s) for s in scaled.std(axis=(0, 1, 2)))
    return Dataset(
        name="digits",
        train_images=train_images,
        train_labels=labels[train_idx],
        test_images=np.ascontiguousarray(images[test_idx]),
        test_labels=labels[test_idx],
        num_classes=10,
        mean=mean,
        std=std,
    )


def _prepare_instructions(name: str, data_dir: str | None) -> str:
    where = (
        repr(data_dir)
        if data_dir is not None
        else "the default TFDS data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets, "
        f"currently {os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))!r})"
    )
    dest = (
        f"{data_dir}/{name}"
        if data_dir is not None
        else "this machine's TFDS data_dir (or any directory passed as data_dir=...)"
    )
    return (
        f"TFDS dataset {name!r} is not prepared in {where} and downloads are disabled. "
        "Prepare it on a machine with internet access:\n"
        f"  python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{name}').download_and_prepare()\"\n"
        f"then copy the folder ~/tensorflow_datasets/{name} from that machine to {dest}."
    )


def load_tfds(name: str, data_dir: str | None = None) -> Dataset:
    """Load ``cifar10``/``cifar100``/``svhn_cropped`` from a prepared TFDS directory.

    Iterates ``tfds.load(name, split=s, data_dir=data_dir, shuffle_files=False,
    as_supervised=True, download=False).batch(4096)`` with ``tfds.as_numpy`` for ``s`` in
    ``train``/``test`` and concatenates (``batch_size=-1`` is avoided on purpose: it crashes under
    ``tfds.testing.mock_data`` with tensorflow 2.21 / tfds 4.9.10). Images ``[N, 32, 32, 3]`` uint8,
    labels int32, in TFDS file order. TensorFlow is imported here (lazily) with GPUs hidden.

    Raises:
      ValueError: ``name`` is not a supported TFDS dataset.
      ImportError: tensorflow / tensorflow_datasets are not installed.
      FileNotFoundError: the dataset is not prepared in ``data_dir`` (no download is attempted);
        the message says how to prepare it.
    """
    if name not in TFDS_DATASETS:
        raise _unknown_name_error(name, TFDS_DATASETS)
    num_classes, mean, std = _TFDS_META[name]

    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"Loading {name!r} needs TensorFlow Datasets: pip install tensorflow-cpu "
            "tensorflow-datasets (or `pip install tr_jax[tfds]`)."
        ) from e
    try:  # keep TF off the accelerators that JAX uses
        tf.config.set_visible_devices([], "GPU")
    except Exception:  # noqa: BLE001 - already initialised / no GPU support: harmless
        pass

    not_found: tuple[type[BaseException], ...] = (AssertionError, FileNotFoundError)
    not_found += (tf.errors.NotFoundError,)
    dataset_not_found = getattr(getattr(tfds, "core", None), "DatasetNotFoundError", None)
    if isinstance(dataset_not_found, type):
        not_found += (dataset_not_found,)

    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "test"):
        try:
            ds = tfds.load(
                name,
                split=split,
                data_dir=data_dir,
                shuffle_files=False,
                as_supervised=True,
                download=False,
            )
        except not_found as e:
            raise FileNotFoundError(_prepare_instructions(name, data_dir)) from e
        images, labels = [], []
        for x, y in tfds.as_numpy(ds.batch(_TFDS_BATCH)):
            images.append(np.asarray(x, dtype=np.uint8))
            labels.append(np.asarray(y, dtype=np.int32))
        if images:
            arrays[split] = (np.concatenate(images, axis=0), np.concatenate(labels, axis=0))
        else:
            shape = tuple(ds.element_spec[0].shape)
            arrays[split] = (np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int32))

    return Dataset(
        name=name,
        train_images=arrays["train"][0],
        train_labels=arrays["train"][1],
        test_images=arrays["test"][0],
        test_labels=arrays["test"][1],
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
    )
