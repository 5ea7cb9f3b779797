"""Tests for tr_jax.data: digits / TFDS loaders and on-device augmentation."""

from __future__ import annotations

import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tr_jax.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    DATASETS,
    SVHN_MEAN,
    SVHN_STD,
    Dataset,
    augment,
    load_dataset,
    load_digits,
    load_tfds,
    normalize,
    random_crop,
    random_flip,
)

# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


def test_digits_shapes_dtypes_ranges(digits: Dataset) -> None:
    assert digits.name == "digits"
    assert digits.train_images.shape == (1437, 8, 8, 1)
    assert digits.test_images.shape == (360, 8, 8, 1)
    assert digits.image_shape == (8, 8, 1)
    assert (digits.num_train, digits.num_test, digits.num_classes) == (1437, 360, 10)
    assert digits.train_images.dtype == np.uint8 and digits.test_images.dtype == np.uint8
    assert digits.train_labels.dtype == np.int32 and digits.test_labels.dtype == np.int32
    assert digits.train_labels.shape == (1437,) and digits.test_labels.shape == (360,)
    all_images = np.concatenate([digits.train_images, digits.test_images])
    assert all_images.max() == 255 and all_images.min() == 0
    for labels in (digits.train_labels, digits.test_labels):
        assert labels.min() >= 0 and labels.max() <= 9
        assert set(np.unique(labels).tolist()) == set(range(10))  # every class in both splits


def test_digits_pixels_match_sklearn(digits: Dataset) -> None:
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    expected = np.rint(raw.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    both = np.concatenate([digits.train_images, digits.test_images])
    # The two splits together are a permutation of the full set of 1797 (unique) images.
    key = lambda a: sorted(map(bytes, a.reshape(a.shape[0], -1)))  # noqa: E731
    assert key(both) == key(expected)
    # Each split is in original dataset order: labels of the split follow sklearn's order.
    index = {bytes(img.tobytes()): i for i, img in enumerate(expected)}
    for images, labels in ((digits.train_images, digits.train_labels),
                           (digits.test_images, digits.test_labels)):
        idx = np.array([index[bytes(img.tobytes())] for img in images])
        assert np.all(np.diff(idx) > 0)
        np.testing.assert_array_equal(labels, raw.target[idx])


def test_digits_split_deterministic_and_disjoint(digits: Dataset) -> None:
    again = load_digits()
    for a, b in zip(digits[1:5], again[1:5]):
        np.testing.assert_array_equal(a, b)
    train_rows = set(map(bytes, digits.train_images.reshape(digits.num_train, -1)))
    test_rows = set(map(bytes, digits.test_images.reshape(digits.num_test, -1)))
    assert len(train_rows) == digits.num_train and len(test_rows) == digits.num_test
    assert not train_rows & test_rows
    other = load_digits(test_fraction=0.2, split_seed=1)
    assert not np.array_equal(other.test_images, digits.test_images)  # the seed matters


def test_digits_stratified(digits: Dataset) -> None:
    counts_train = np.bincount(digits.train_labels, minlength=10)
    counts_test = np.bincount(digits.test_labels, minlength=10)
    frac = counts_test / (counts_train + counts_test)
    assert np.all(np.abs(frac - 0.2) < 0.02)


def test_digits_mean_std(digits: Dataset) -> None:
    x = digits.train_images.astype(np.float64) / 255.0
    assert len(digits.mean) == 1 and len(digits.std) == 1
    assert all(isinstance(v, float) for v in digits.mean + digits.std)
    np.testing.assert_allclose(digits.mean, [x.mean()], rtol=1e-12)
    np.testing.assert_allclose(digits.std, [x.std()], rtol=1e-12)
    assert 0.2 < digits.mean[0] < 0.4  # sanity: digits are mostly background


def test_load_dataset_dispatch_digits() -> None:
    ds = load_dataset("digits", test_fraction=0.25, split_seed=3)
    assert ds.num_test == 450 and ds.num_train == 1347
    assert DATASETS == ("digits", "cifar10", "cifar100", "svhn_cropped")


def test_unknown_dataset_name() -> None:
    with pytest.raises(ValueError) as exc:
        load_dataset("cifar11")
    msg = str(exc.value)
    assert "cifar11" in msg
    assert "Did you mean 'cifar10'" in msg
    for name in DATASETS:
        assert name in msg
    with pytest.raises(ValueError, match="mnist"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="digits"):
        load_tfds("digits")  # not a TFDS dataset here


def test_import_does_not_pull_tensorflow() -> None:
    code = "import sys, tr_jax.data; assert 'tensorflow' not in sys.modules, 'tf imported eagerly'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr[-2000:]


# ----------------------------------------------------------------------------- TFDS


@pytest.mark.parametrize(
    "name,num_classes,mean,std",
    [
        ("cifar10", 10, CIFAR_MEAN, CIFAR_STD),
        ("cifar100", 100, CIFAR_MEAN, CIFAR_STD),
        ("svhn_cropped", 10, SVHN_MEAN, SVHN_STD),
    ],
)
def test_tfds_mock(name: str, num_classes: int, mean: tuple, std: tuple) -> None:
    pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    n = 37
    # No metadata files ship with tfds offline, so the mock must generate from the feature specs.
    with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset(name)
    assert ds.name == name and ds.num_classes == num_classes
    assert ds.train_images.shape == (n, 32, 32, 3) and ds.test_images.shape == (n, 32, 32, 3)
    assert ds.image_shape == (32, 32, 3)
    assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    assert ds.train_labels.shape == (n,) and ds.test_labels.shape == (n,)
    for labels in (ds.train_labels, ds.test_labels):
        assert labels.min() >= 0 and labels.max() < num_classes
    assert ds.mean == tuple(mean) and ds.std == tuple(std)


def test_tfds_missing_data_dir_clear_error(tmp_path) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("tensorflow_datasets")
    empty = tmp_path / "tfds_empty"
    empty.mkdir()
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as exc:
        load_dataset("cifar10", data_dir=str(empty))
    elapsed = time.perf_counter() - t0
    msg = str(exc.value)
    assert "cifar10" in msg and str(empty) in msg
    assert "download_and_prepare()" in msg and "tfds.builder('cifar10')" in msg
    assert elapsed < 60, f"took {elapsed:.1f}s: something tried to download"


# ----------------------------------------------------------------------------- augment


def _images(key: int, shape=(16, 6, 7, 3)) -> jnp.ndarray:
    # Values 1..255 so that a 0 in an output can only come from the padding.
    rng = np.random.default_rng(key)
    return jnp.asarray(rng.integers(1, 256, size=shape, dtype=np.uint8))


def _crop_offsets(out: np.ndarray, images: np.ndarray, pad: int) -> list[tuple[int, int]]:
    """For each output image, the unique (dy, dx) window of the zero-padded input it equals."""
    _, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    found = []
    for b in range(images.shape[0]):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.array_equal(out[b], padded[b, dy:dy + h, dx:dx + w])
        ]
        assert len(hits) == 1, f"image {b}: matches {hits}"
        found.append(hits[0])
    return found


def test_augment_identity() -> None:
    x = _images(0)
    key = jax.random.PRNGKey(0)
    assert augment(key, x, pad=0, flip=False) is x
    np.testing.assert_array_equal(random_crop(key, x, 0), x)
    np.testing.assert_array_equal(jax.jit(augment, static_argnums=(2, 3))(key, x, 0, False), x)


def test_random_crop_windows_and_zero_fill() -> None:
    pad = 2
    x = _images(1, (512, 6, 7, 3))
    out = np.asarray(random_crop(jax.random.PRNGKey(3), x, pad))
    assert out.shape == x.shape and out.dtype == np.uint8
    offsets = _crop_offsets(out, np.asarray(x), pad)
    # Pixels shifted in from the padding are exactly 0, all others are nonzero input pixels.
    h, w = x.shape[1:3]
    for b, (dy, dx) in enumerate(offsets):
        rows = np.arange(h) + dy - pad
        cols = np.arange(w) + dx - pad
        inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        assert np.all(out[b][~inside] == 0) and np.all(out[b][inside] > 0)
    # Offsets are per image and cover the whole range {0..2*pad}^2.
    assert set(offsets) == {(dy, dx) for dy in range(5) for dx in range(5)}


def test_random_crop_hand_computed() -> None:
    # Reproduce the documented offset draw and compare against a numpy crop.
    pad, key = 4, jax.random.PRNGKey(11)
    x = _images(2, (8, 32, 32, 3))
    out = np.asarray(random_crop(key, x, pad))
    offs = np.asarray(jax.random.randint(key, (8, 2), 0, 2 * pad + 1))
    padded = np.pad(np.asarray(x), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for b, (dy, dx) in enumerate(offs):
        np.testing.assert_array_equal(out[b], padded[b, dy:dy + 32, dx:dx + 32])


def test_random_flip() -> None:
    x = _images(3, (256, 5, 6, 2))
    key = jax.random.PRNGKey(5)
    out = np.asarray(random_flip(key, x))
    assert out.dtype == np.uint8
    xs = np.asarray(x)
    mirrored = xs[:, :, ::-1, :]
    is_same = np.array([np.array_equal(o, a) for o, a in zip(out, xs)])
    is_flip = np.array([np.array_equal(o, m) for o, m in zip(out, mirrored)])
    assert np.all(is_same ^ is_flip)  # each output is exactly one of the two
    assert 64 < is_flip.sum() < 192  # both happen, roughly half each
    bits = np.asarray(jax.random.bernoulli(key, 0.5, (256,)))
    np.testing.assert_array_equal(is_flip, bits)


def test_augment_composition_and_keys() -> None:
    x = _images(4, (32, 8, 8, 3))
    key = jax.random.PRNGKey(7)
    out = augment(key, x, pad=2, flip=True)
    k_crop, k_flip = jax.random.split(key)
    np.testing.assert_array_equal(out, random_flip(k_flip, random_crop(k_crop, x, 2)))
    assert out.dtype == jnp.uint8 and out.shape == x.shape
    other = augment(jax.random.PRNGKey(8), x, pad=2, flip=True)
    assert not np.array_equal(out, other)
    # flip only
    flip_only = np.asarray(augment(key, x, pad=0, flip=True))
    np.testing.assert_array_equal(flip_only, random_flip(k_flip, x))


def test_augment_jit_and_vmap_members() -> None:
    m, b = 3, 10
    x = jnp.stack([_images(10 + i, (b, 8, 8, 3)) for i in range(m)])  # [M, B, H, W, C]
    keys = jax.random.split(jax.random.PRNGKey(0), m)
    jitted = jax.jit(augment, static_argnums=(2, 3))
    single = jitted(keys[0], x[0], 2, True)
    np.testing.assert_array_equal(single, augment(keys[0], x[0], 2, True))
    vm = jax.jit(jax.vmap(augment, in_axes=(0, 0, None, None)), static_argnums=(2, 3))
    out = vm(keys, x, 2, True)
    assert out.shape == x.shape and out.dtype == jnp.uint8
    for i in range(m):
        np.testing.assert_array_equal(out[i], augment(keys[i], x[i], 2, True))
    assert not np.array_equal(out[0], out[1])
    # typed (new-style) keys work too, also vmapped
    typed = jax.random.split(jax.random.key(0), m)
    out_typed = jax.vmap(augment, in_axes=(0, 0, None, None))(typed, x, 2, True)
    assert out_typed.shape == x.shape and out_typed.dtype == jnp.uint8


def test_normalize_matches_numpy() -> None:
    x = np.asarray(_images(5, (4, 5, 5, 3)))
    got = normalize(jnp.asarray(x), CIFAR_MEAN, CIFAR_STD)
    want = (x.astype(np.float64) / 255.0 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
    assert got.dtype == jnp.float32 and got.shape == x.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # float input on the 0..255 scale, extra leading axis, jit
    got2 = jax.jit(normalize)(jnp.asarray(x, jnp.float32)[None], jnp.asarray(SVHN_MEAN),
                              jnp.asarray(SVHN_STD))
    want2 = (x / 255.0 - np.array(SVHN_MEAN)) / np.array(SVHN_STD)
    np.testing.assert_allclose(np.asarray(got2)[0], want2, rtol=1e-5, atol=1e-5)
    # single channel (digits)
    d = np.array([[[[0]], [[255]]]], np.uint8)  # [1, 2, 1, 1]
    np.testing.assert_allclose(np.asarray(normalize(d, (0.5,), (0.25,))).ravel(), [-2.0, 2.0])


# ----------------------------------------------------------------------------- record order


def test_original_order_hand_computed() -> None:
    from tr_jax.data import original_order
    ids = [b"train_10", b"train_2", b"train_0", b"train_16399", b"train_1"]
    np.testing.assert_array_equal(original_order(ids), [2, 4, 1, 0, 3])
    assert original_order(None) is None and original_order([]) is None
    assert original_order([b"train_1", b"no number here"]) is None  # mixed: keep record order


def _tfds_with_ids(ids_by_split: dict):
    """``as_dataset_fn`` for ``tfds.testing.mock_data``: CIFAR-like records whose image pixels
    and label encode the id's number, in the (shuffled) order given."""
    import tensorflow as tf

    def as_dataset(self, split, *args, **kwargs):
        ids = ids_by_split[str(split)]

        def gen():
            for s in ids:
                k = int(s.split("_")[1])
                yield {"id": s, "image": np.full((32, 32, 3), k % 256, np.uint8), "label": k % 10}
        return tf.data.Dataset.from_generator(gen, output_types=self.info.features.dtype,
                                              output_shapes=self.info.features.shape)
    return as_dataset


def test_tfds_cifar_restores_the_original_order_by_id() -> None:
    pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    train = [f"train_{k}" for k in (7, 3, 12, 0, 5, 11, 1)]
    test = [f"test_{k}" for k in (4, 2, 9)]
    fn = _tfds_with_ids({"train": train, "test": test})
    with tfds.testing.mock_data(as_dataset_fn=fn, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset("cifar10")
    np.testing.assert_array_equal(ds.train_images[:, 0, 0, 0], [0, 1, 3, 5, 7, 11, 12])
    np.testing.assert_array_equal(ds.train_labels, [0, 1, 3, 5, 7, 1, 2])
    np.testing.assert_array_equal(ds.test_images[:, 0, 0, 0], [2, 4, 9])
    assert ds.mean == tuple(CIFAR_MEAN)


def test_tfds_generic_name_mock() -> None:
    pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset("tfds:mnist")
    assert ds.name == "tfds:mnist" and ds.num_classes == 10
    assert ds.train_images.shape == (12, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (12, 28, 28, 1)
    assert len(ds.mean) == 1 and ds.std[0] > 0  # computed from the train split


# ----------------------------------------------------------------------------- your arrays


def test_from_arrays_round_trip_uint8_and_float() -> None:
    from tr_jax.data import from_arrays
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 5, 4, 2), dtype=np.uint8)
    xt = rng.integers(0, 256, (3, 5, 4, 2), dtype=np.uint8)
    y, yt = np.array([0, 1, 2, 0, 1, 2]), np.array([2, 1, 0])
    ds = from_arrays(x, y, xt, yt, name="mine")
    assert ds.name == "mine" and ds.num_classes == 3 and ds.image_shape == (5, 4, 2)
    np.testing.assert_array_equal(ds.train_images, x)
    np.testing.assert_array_equal(ds.test_labels, yt)
    assert ds.train_labels.dtype == np.int32
    np.testing.assert_allclose(ds.mean, (x / 255.0).mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(ds.std, (x / 255.0).std(axis=(0, 1, 2)), rtol=1e-12)
    # float pixels on the [0, 1] scale: normalize() gives back (x - mean) / std exactly
    xf = x / 255.0
    dsf = from_arrays(xf, y, xt / 255.0, yt, mean=(0.5, 0.25), std=(0.2, 0.1), num_classes=5)
    assert dsf.num_classes == 5 and dsf.mean == (0.5, 0.25) and dsf.std == (0.2, 0.1)
    out = np.asarray(normalize(dsf.train_images, dsf.mean, dsf.std))
    np.testing.assert_allclose(out, (xf - np.array([0.5, 0.25])) / np.array([0.2, 0.1]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(normalize(ds.train_images, ds.mean, ds.std)),
                               out * np.array([0.2, 0.1]) / np.array(ds.std)
                               + (np.array([0.5, 0.25]) - np.array(ds.mean)) / np.array(ds.std),
                               rtol=1e-4, atol=1e-4)


def test_npz_dataset(tmp_path) -> None:
    rng = np.random.default_rng(1)
    arrays = dict(x_train=rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8),
                  y_train=np.arange(8) % 4, x_test=rng.integers(0, 256, (2, 6, 6, 3), dtype=np.uint8),
                  y_test=np.array([3, 0]))
    np.savez(tmp_path / "mine.npz", **arrays)
    ds = load_dataset(f"npz:{tmp_path / 'mine.npz'}")
    assert ds.name == "mine" and ds.num_classes == 4 and ds.num_train == 8
    np.testing.assert_array_equal(ds.test_images, arrays["x_test"])
    np.savez(tmp_path / "bad.npz", x_train=arrays["x_train"], y_train=arrays["y_train"])
    with pytest.raises(ValueError, match=r"lacks \['x_test', 'y_test'\]"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    with pytest.raises(ValueError, match="supplied in Python"):
        load_dataset("arrays:mine")


_X = np.zeros((4, 3, 3, 1), np.uint8)
_Y = np.array([0, 1, 0, 1])


@pytest.mark.parametrize("args, message", [
    ((np.zeros((4, 3, 3), np.uint8), _Y, _X, _Y), r"x_train has rank 3 .*NHWC.*x\[\.\.\., None\]"),
    ((_X, _Y, _X, np.array([0, 1, 2, 0])), r"y_test has label 2 \(at index 2\), out of range"),
    ((_X, np.array([0, -1, 0, 1]), _X, _Y), r"y_train has negative label -1"),
    ((_X, _Y, np.zeros((4, 3, 4, 1), np.uint8), _Y), r"train images are \(3, 3, 1\) but test "
                                                      r"images \(3, 4, 1\)"),
    ((np.where(np.arange(36).reshape(4, 3, 3, 1) == 7, np.nan, 0.5), _Y, _X, _Y),
     r"x_train has 1 NaN or infinite pixel value\(s\), the first at index \(0, 2, 1, 0\)"),
    ((_X, _Y, _X[:0], _Y[:0]), r"the test split is empty"),
    ((_X, _Y[:3], _X, _Y), r"x_train holds 4 images but y_train 3 labels"),
    ((_X, _Y + 0.5, _X, _Y), r"y_train has dtype float64; labels must be integer"),
])
def test_bad_data_is_named(args, message) -> None:
    from tr_jax.data import from_arrays
    with pytest.raises(ValueError, match=message):
        from_arrays(*args, std=(0.5,), name="bad")


def test_bad_mean_std_named() -> None:
    from tr_jax.data import from_arrays
    with pytest.raises(ValueError, match=r"mean=\(0.5, 0.5\) has 2 value\(s\) but the images have 1"):
        from_arrays(_X, _Y, _X, _Y, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"std \(0.0,\) has a value <= 0"):
        from_arrays(_X, _Y, _X, _Y)  # constant images: computed std 0
