"""The :class:`Dataset` every loader returns, and your own image-classification data as one
(docs/fidelity.md, Data).

``from_arrays(x_train, y_train, x_test, y_test, mean=None, std=None, name=...)`` wraps numpy
arrays; ``load_npz(path)`` reads them from an ``.npz`` file (keys ``x_train, y_train, x_test,
y_test``; optional ``mean``, ``std``), which is what a config's ``dataset = "npz:PATH"`` does.

Images are NHWC of any size and channel count:

* ``uint8``: raw pixels on the 0..255 scale, stored as they are (like the built-in datasets);
* float: pixel values on the [0, 1] scale (what ``ToTensor`` makes), stored as float32 times 255,
  so that the pipeline's ``normalize`` (``x / 255``, then mean/std) gives them back. Values outside
  [0, 1] are allowed (already-standardised data); the crop's zero padding is a 0 on this scale.

``mean`` / ``std`` are per channel on the [0, 1] scale; when not given they are the population
mean and std of the *train* images (as for the digits). Labels are integers ``0..K-1``;
``num_classes`` defaults to the largest train label + 1.

Everything is checked before any work, and each problem raises a ``ValueError`` that names it:
wrong rank, an empty split, images and labels of different lengths, a train/test image-shape
mismatch, non-integer, negative or too large labels, NaN or infinite pixels, a mean/std of the
wrong length or a zero std. Augmentation (crop padding, flip) stays the config's ``augment`` keys.

A test split of fewer than :data:`SMALL_TEST_SPLIT` images is allowed but warned about
(:func:`small_test_split_note`): one image is then more than one point of test error, coarser than
the differences between neighbouring cells that the regimes and the best temperature are read
from (a 1-image split can only score 0 % or 100 %). ``from_arrays`` / ``load_npz`` warn with a
:class:`SmallTestSplitWarning`; a sweep says it once in its log when it starts.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, NamedTuple, Sequence

import numpy as np

__all__ = ["NPZ_KEYS", "SMALL_TEST_SPLIT", "Dataset", "SmallTestSplitWarning", "check_dataset",
           "from_arrays", "load_npz", "quiet_small_test_split", "small_test_split_note"]

#: the arrays an npz dataset file must hold
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
#: test splits of fewer images are warned about: below 100 images one image moves the test
#: error by more than one percentage point
SMALL_TEST_SPLIT = 100


class Dataset(NamedTuple):
    """A fully materialised train/test image-classification dataset (host memory).

    Attributes:
      name: dataset name (one of :data:`~tr_jax.data.datasets.DATASETS`, ``npz:PATH``, ...).
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


class SmallTestSplitWarning(UserWarning):
    """A test split so small that one image is more than a point of test error."""


def small_test_split_note(n_test: int) -> str | None:
    """The warning for a test split of ``n_test`` images, ``"test split of N image(s): one image
    = X points of test error; ..."``, or None from :data:`SMALL_TEST_SPLIT` images on."""
    n = int(n_test)
    if n <= 0 or n >= SMALL_TEST_SPLIT:
        return None
    return (f"test split of {n} image(s): one image = {100.0 / n:.3g} points of test error; "
            f"test errors move in steps that coarse, so differences between cells smaller "
            f"than that are not resolved ({SMALL_TEST_SPLIT}+ test images resolve 1 point)")


def _warn_small_test_split(n_test: int) -> None:
    note = small_test_split_note(n_test)
    if note:
        warnings.warn(note, SmallTestSplitWarning, stacklevel=3)


@contextlib.contextmanager
def quiet_small_test_split() -> Iterator[None]:
    """No :class:`SmallTestSplitWarning` inside (a sweep says it once in its log instead)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallTestSplitWarning)
        yield


def _images(x, split: str, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        hint = (" (grey-scale images [N, H, W]: add a channel axis, x[..., None])"
                if x.ndim == 3 else "")
        raise ValueError(f"dataset {name!r}: x_{split} has rank {x.ndim} (shape {x.shape}); "
                         f"images must be NHWC [N, H, W, C]{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"dataset {name!r}: the {split} split is empty (x_{split} shape {x.shape})")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"dataset {name!r}: x_{split} has dtype {x.dtype}; give uint8 pixels "
                         "0..255 or float pixels on the [0, 1] scale")
    if np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise ValueError(f"dataset {name!r}: x_{split} is {x.dtype} with values "
                             f"{x.min()}..{x.max()}; integer pixels must lie in 0..255")
        return x.astype(np.uint8)
    bad = ~np.isfinite(x)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"dataset {name!r}: x_{split} has {int(bad.sum())} NaN or infinite "
                         f"pixel value(s), the first at index {where}")
    return (x.astype(np.float32) * np.float32(255.0))


def _labels(y, n: int, split: str, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"dataset {name!r}: y_{split} has shape {y.shape}; labels must be "
                         "integers of shape [N] (not one-hot)")
    if y.shape[0] != n:
        raise ValueError(f"dataset {name!r}: x_{split} holds {n} images but y_{split} "
                         f"{y.shape[0]} labels")
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.rint(y)):
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"dataset {name!r}: y_{split} has dtype {y.dtype}; labels must be "
                         "integer class indices 0..K-1")
    if y.min() < 0:
        raise ValueError(f"dataset {name!r}: y_{split} has negative label {int(y.min())} (at "
                         f"index {int(np.argmin(y))}); labels must lie in 0..K-1")
    return y.astype(np.int32)


def _channel_stats(x: np.ndarray, given, what: str, name: str) -> tuple[float, ...]:
    c = x.shape[-1]
    if given is None:
        scaled = x.astype(np.float64) / 255.0
        value = scaled.mean(axis=(0, 1, 2)) if what == "mean" else scaled.std(axis=(0, 1, 2))
    else:
        value = np.asarray(given, np.float64).reshape(-1)
        if value.shape[0] != c:
            shown = tuple(float(v) for v in value)
            raise ValueError(f"dataset {name!r}: {what}={shown} has {value.shape[0]} value(s) but "
                             f"the images have {c} channel(s)")
    if what == "std" and np.any(value <= 0):
        raise ValueError(f"dataset {name!r}: std {tuple(float(v) for v in value)} has a value "
                         "<= 0 (a constant channel?); give std= explicitly")
    return tuple(float(v) for v in value)


def from_arrays(x_train, y_train, x_test, y_test, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, name: str = "arrays",
                num_classes: int | None = None) -> Dataset:
    """A checked :class:`Dataset` from NHWC image arrays and integer labels (module doc).

    Args:
      x_train, x_test: ``[N, H, W, C]`` uint8 (0..255) or float ([0, 1] scale) images.
      y_train, y_test: ``[N]`` integer labels in ``0..num_classes-1``.
      mean, std: per-channel normalisation on the [0, 1] scale; None = from the train images.
      name: the dataset's name (results tables, figures).
      num_classes: K; None = ``max(y_train) + 1``.
    """
    xtr, xte = _images(x_train, "train", name), _images(x_test, "test", name)
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"dataset {name!r}: train images are {xtr.shape[1:]} but test images "
                         f"{xte.shape[1:]} (H, W, C must match)")
    if xtr.dtype != xte.dtype:  # one is uint8, the other float: store both as float32
        xtr, xte = xtr.astype(np.float32), xte.astype(np.float32)
    ytr = _labels(y_train, xtr.shape[0], "train", name)
    yte = _labels(y_test, xte.shape[0], "test", name)
    k = int(ytr.max()) + 1 if num_classes is None else int(num_classes)
    for split, y in (("train", ytr), ("test", yte)):
        if y.max() >= k:
            why = (f"num_classes={k}" if num_classes is not None
                   else f"the train labels span 0..{k - 1}; pass num_classes=")
            raise ValueError(f"dataset {name!r}: y_{split} has label {int(y.max())} (at index "
                             f"{int(np.argmax(y))}), out of range: {why}")
    ds = Dataset(name=name, train_images=xtr, train_labels=ytr, test_images=xte,
                 test_labels=yte, num_classes=k,
                 mean=_channel_stats(xtr, mean, "mean", name),
                 std=_channel_stats(xtr, std, "std", name))
    _warn_small_test_split(ds.num_test)  # allowed, but see small_test_split_note
    return ds


def check_dataset(ds: Dataset) -> Dataset:
    """``ds`` re-checked by ``from_arrays``' rules (for datasets made some other way, e.g. a
    config's ``get_dataset()``); raises a ValueError naming the first problem."""
    if not isinstance(ds, Dataset):
        raise ValueError(f"expected a tr_jax.data.Dataset (e.g. from tj.data.from_arrays), got "
                         f"{type(ds).__name__}")
    x_tr, x_te = ds.train_images, ds.test_images
    for split, x in (("train", x_tr), ("test", x_te)):
        x = np.asarray(x)
        if x.ndim == 4 and x.size and np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise ValueError(f"dataset {ds.name!r}: {split} images have NaN or infinite values")
    if np.asarray(x_tr).dtype != np.uint8:  # stored on the 0..255 scale already
        x_tr, x_te = np.asarray(x_tr) / 255.0, np.asarray(x_te) / 255.0
    with quiet_small_test_split():  # a re-check: the caller (a sweep) says it itself
        from_arrays(x_tr, ds.train_labels, x_te, ds.test_labels, ds.mean, ds.std, ds.name,
                    ds.num_classes)
    return ds


def load_npz(path: str, name: str | None = None) -> Dataset:
    """A dataset from an ``.npz`` file with arrays ``x_train, y_train, x_test, y_test`` (and
    optionally ``mean``, ``std``, ``num_classes``), checked by ``from_arrays``."""
    import pathlib
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"dataset file {str(p)!r} does not exist (dataset = 'npz:PATH')")
    with np.load(p, allow_pickle=False) as f:
        missing = [k for k in NPZ_KEYS if k not in f.files]
        if missing:
            raise ValueError(f"dataset file {str(p)!r} lacks {missing}; it holds {f.files} and "
                             f"needs {list(NPZ_KEYS)}")
        arrays = {k: f[k] for k in f.files}
    k = arrays.get("num_classes")
    with quiet_small_test_split():  # warned below, pointing at load_npz's caller
        ds = from_arrays(arrays["x_train"], arrays["y_train"], arrays["x_test"],
                         arrays["y_test"], mean=arrays.get("mean"), std=arrays.get("std"),
                         name=name or p.stem, num_classes=None if k is None else int(k))
    _warn_small_test_split(ds.num_test)
    return ds
