"""Image-classification datasets as host-side uint8 numpy arrays.

Every loader returns a :class:`Dataset` holding *raw* pixels (uint8, NHWC, 0..255) in a fixed,
deterministic dataset order (nothing is shuffled here; shuffling and augmentation happen on the
device, see :mod:`tr_jax.data.augment`), integer labels (int32) and the per-channel mean/std on the
[0, 1] pixel scale that :func:`tr_jax.data.augment.normalize` uses (docs/fidelity.md, Data).

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
``tfds:NAME`` (any prepared TFDS image-classification dataset)
    Features from the builder's ``supervised_keys`` (else ``image`` and ``label``); the number of
    classes from the label feature. Test split ``test``; a dataset without one uses
    ``validation``; one with neither holds out the last 10 % of ``train`` (``train[:90%]`` /
    ``train[90%:]``, in record order). ``mean``/``std`` are those of the train images.
``npz:PATH`` and numpy arrays
    See :mod:`tr_jax.data.arrays` (``load_npz``, ``from_arrays``).

Record order (TFDS)
    TFDS stores CIFAR in a shuffled record order, not torchvision's; the reference's CKA images (the
    first 6 464 training images), BN-recalibration order and Hessian images follow torchvision's
    order. When every record has an ``id`` feature ending in an integer (CIFAR: ``train_16399``,
    ``test_42``), each split is sorted by (prefix, integer): the original file order. Datasets
    without an ``id`` feature (SVHN), or with ids of another form, keep TFDS' record order
    (:func:`original_order`).
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Sequence

import numpy as np

from tr_jax.data.arrays import Dataset, from_arrays, load_npz, quiet_small_test_split

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

# Reference implementation's normalisation constants (docs/fidelity.md, Data), on the [0, 1] pixel scale.
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


def _unknown_name_error(name: str, choices: tuple[str, ...]) -> ValueError:
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"Unknown dataset {name!r}.{hint} Available datasets: {', '.join(choices)}.")


#: dataset-name prefixes: ``npz:PATH`` (tr_jax.data.arrays.load_npz), ``tfds:NAME`` (any TFDS
#: image-classification dataset), ``arrays:NAME`` (supplied in Python or by a config's
#: ``get_dataset()``, never loaded by name)
PREFIXES: tuple[str, ...] = ("npz:", "tfds:", "arrays:")


def check_name(name: str) -> str:
    """``name`` if it is a known dataset or ``npz:PATH`` / ``tfds:NAME`` / ``arrays:NAME``."""
    name = str(name)
    if name in DATASETS or (name.startswith(PREFIXES) and name.split(":", 1)[1]):
        return name
    close = difflib.get_close_matches(name, DATASETS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown dataset {name!r}.{hint} Known: {DATASETS}, or 'npz:PATH' (arrays "
                     "x_train, y_train, x_test, y_test), 'tfds:NAME' (a prepared TFDS dataset), "
                     "'arrays:NAME' (passed as dataset= / a config's get_dataset())")


def load_dataset(name: str, data_dir: str | None = None, **kw: Any) -> Dataset:
    """Load dataset ``name``.

    Args:
      name: ``"digits"`` (embedded, ``data_dir`` ignored), a TFDS name (``"cifar10"``,
        ``"cifar100"``, ``"svhn_cropped"``), ``"tfds:NAME"`` (any TFDS image-classification
        dataset) or ``"npz:PATH"`` (a file of arrays, :func:`tr_jax.data.arrays.load_npz`).
      data_dir: TFDS data directory; ``None`` means the TFDS default.
      **kw: forwarded to the specific loader (e.g. ``test_fraction``/``split_seed`` for digits).

    Raises:
      ValueError: unknown ``name`` (the message lists :data:`DATASETS` and a close match), or
        bad data (named); ``arrays:NAME`` cannot be loaded by name.
    """
    if name == "digits":
        return load_digits(**kw)
    if name in TFDS_DATASETS:
        return load_tfds(name, data_dir=data_dir, **kw)
    if str(name).startswith("npz:"):
        with quiet_small_test_split():  # a sweep says it once in its log when it starts
            return load_npz(name[4:], **kw)
    if str(name).startswith("tfds:"):
        return load_tfds(name[5:], data_dir=data_dir, **kw)
    if str(name).startswith("arrays:"):
        raise ValueError(f"dataset {name!r} is supplied in Python: pass dataset=tj.data.from_arrays"
                         "(...) to tj.sweep.run, or define get_dataset() in the config file")
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


def original_order(ids: Sequence[Any] | None) -> np.ndarray | None:
    """The permutation that sorts records by their ``id`` (``b'train_16399'``): by prefix, then by
    the trailing integer (so ``train_2`` < ``train_10``). None (keep the record order) when there
    are no ids or any id does not end in an integer: see the module doc, "Record order"."""
    if ids is None or len(ids) == 0:
        return None
    prefixes, numbers = [], []
    for raw in ids:
        text = raw.decode() if isinstance(raw, (bytes, np.bytes_)) else str(raw)
        m = re.fullmatch(r"(.*?)(\d+)", text)
        if m is None:
            return None
        prefixes.append(m.group(1))
        numbers.append(int(m.group(2)))
    return np.lexsort((np.asarray(numbers), np.asarray(prefixes)))


def _tfds_test_split(builder: Any) -> tuple[str, str]:
    """(train split, test split): ``test``, else ``validation``, else the last 10 % of ``train``
    (a builder without split metadata, e.g. under ``tfds.testing.mock_data``, uses ``test``)."""
    splits = set(getattr(builder.info, "splits", None) or ())
    if not splits or "test" in splits:
        return "train", "test"
    if "validation" in splits:
        return "train", "validation"
    return "train[:90%]", "train[90%:]"


def load_tfds(name: str, data_dir: str | None = None) -> Dataset:
    """Load a prepared TFDS image-classification dataset (``cifar10``/``cifar100``/
    ``svhn_cropped`` with the reference's constants, or any other ``name`` as ``tfds:NAME``).

    Iterates ``tfds.load(name, split=s, data_dir=data_dir, shuffle_files=False,
    download=False).batch(4096)`` with ``tfds.as_numpy`` over the train and test splits and
    concatenates (``batch_size=-1`` is avoided on purpose: it crashes under
    ``tfds.testing.mock_data`` with tensorflow 2.21 / tfds 4.9.10). Records are put back in their
    original order by ``id`` where they have one (module doc, "Record order"). Images uint8
    ``[N, H, W, C]``, labels int32. TensorFlow is imported here (lazily) with GPUs hidden.

    Raises:
      ImportError: tensorflow / tensorflow_datasets are not installed.
      FileNotFoundError: the dataset is not prepared in ``data_dir`` (no download is attempted);
        the message says how to prepare it.
      ValueError: the dataset is not image classification (no image/label features) or its
        arrays fail :func:`tr_jax.data.arrays.from_arrays`' checks.
    """
    if name == "digits":
        raise ValueError("'digits' is embedded, not a TFDS dataset: use load_digits() or "
                         "load_dataset('digits')")
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

    try:  # a registered dataset's builder needs no prepared data; an unknown name fails here
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - tfds raises several types for an unknown name
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"TFDS has no dataset {name!r} ({first}). Built-in names: {DATASETS}; "
                         "any other TFDS image-classification dataset as 'tfds:NAME'") from e
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    features = builder.info.features
    if not isinstance(image_key, str) or image_key not in features or label_key not in features:
        raise ValueError(f"TFDS dataset {name!r} is not image classification: tr_jax needs image "
                         f"and label features, it has {list(features.keys())}")
    splits = _tfds_test_split(builder)

    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in splits:
        try:
            ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False,
                           download=False)
        except not_found as e:
            raise FileNotFoundError(_prepare_instructions(name, data_dir)) from e
        images, labels, ids = [], [], []
        for ex in tfds.as_numpy(ds.batch(_TFDS_BATCH)):
            images.append(np.asarray(ex[image_key], dtype=np.uint8))
            labels.append(np.asarray(ex[label_key], dtype=np.int32))
            if "id" in ex:
                ids.extend(ex["id"])
        if images:
            x, y = np.concatenate(images, axis=0), np.concatenate(labels, axis=0)
        else:
            shape = tuple(ds.element_spec[image_key].shape)
            x, y = np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int32)
        order = original_order(ids if len(ids) == len(y) else None)
        arrays[split] = (x, y) if order is None else (x[order], y[order])

    (xtr, ytr), (xte, yte) = arrays[splits[0]], arrays[splits[1]]
    if name in _TFDS_META:
        num_classes, mean, std = _TFDS_META[name]
        return Dataset(name=name, train_images=xtr, train_labels=ytr, test_images=xte,
                       test_labels=yte, num_classes=num_classes, mean=tuple(mean), std=tuple(std))
    k = getattr(features[label_key], "num_classes", None)
    return from_arrays(xtr, ytr, xte, yte, name=f"tfds:{name}", num_classes=k)
