"""On-device normalisation and data augmentation (docs/fidelity.md, Data), pure ``jax.numpy``.

Images are NHWC. Augmentation works on the *raw* uint8 pixels and keeps their dtype; it is
applied before normalisation, exactly as the reference (``RandomCrop(32, padding=4)`` on the
PIL image, then ``RandomHorizontalFlip()``, then ``ToTensor`` + ``Normalize(mean, std)``):

* :func:`random_crop` zero-pads H and W by ``pad`` pixels (pad value 0 on the raw pixel scale)
  and cuts each image back to ``H x W`` at its own uniformly random offset
  ``(dy, dx) in {0, ..., 2*pad}^2``;
* :func:`random_flip` mirrors each image along W independently with probability 0.5;
* :func:`augment` does crop then flip with ``k_crop, k_flip = jax.random.split(key)``;
* :func:`normalize` maps to float32 ``(x / 255 - mean) / std`` per channel.

``pad`` and ``flip`` are Python values (static under ``jax.jit``); every function is jit- and
vmap-friendly, e.g. ``jax.vmap(augment, in_axes=(0, 0, None, None))`` over a leading members axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["augment", "normalize", "random_crop", "random_flip"]


def normalize(
    images: jax.Array, mean: Sequence[float] | jax.Array, std: Sequence[float] | jax.Array
) -> jax.Array:
    """Per-channel normalisation ``(images / 255 - mean) / std``.

    Args:
      images: uint8 or float ``[..., H, W, C]`` raw pixels on the 0..255 scale.
      mean: ``[C]`` channel means on the [0, 1] scale.
      std: ``[C]`` channel stds on the [0, 1] scale.

    Returns:
      float32 ``[..., H, W, C]``.
    """
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    mean = jnp.asarray(mean, dtype=jnp.float32)
    std = jnp.asarray(std, dtype=jnp.float32)
    return (x - mean) / std


def random_crop(key: jax.Array, images: jax.Array, pad: int) -> jax.Array:
    """Random crop with zero padding, one independent offset per image.

    Args:
      key: PRNG key.
      images: ``[B, H, W, C]`` raw pixels (any dtype, typically uint8).
      pad: static padding in pixels on each side of H and W; ``0`` returns ``images`` unchanged.

    Returns:
      ``[B, H, W, C]``, same dtype: ``padded[b, dy:dy+H, dx:dx+W]`` with
      ``(dy, dx) ~ randint(key, (B, 2), 0, 2*pad + 1)``.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return images
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # zeros on raw scale
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)  # [B, 2] = (dy, dx)

    def crop_one(img: jax.Array, off: jax.Array) -> jax.Array:
        zero = jnp.zeros((), dtype=off.dtype)
        return jax.lax.dynamic_slice(img, (off[0], off[1], zero), (h, w, c))

    return jax.vmap(crop_one)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Flip each image left-right (W axis) independently with probability 0.5.

    Args:
      key: PRNG key.
      images: ``[B, H, W, C]``.

    Returns:
      ``[B, H, W, C]``, same dtype; image ``b`` is mirrored iff
      ``jax.random.bernoulli(key, 0.5, (B,))[b]``.
    """
    do_flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(do_flip[:, None, None, None], images[:, :, ::-1, :], images)


def augment(key: jax.Array, images: jax.Array, pad: int, flip: bool) -> jax.Array:
    """Reference train-time augmentation: random crop (``pad``) then random flip (``flip``).

    Args:
      key: PRNG key; split as ``k_crop, k_flip = jax.random.split(key)``.
      images: ``[B, H, W, C]`` raw pixels (uint8), dtype preserved.
      pad: static crop padding (``0`` disables cropping).
      flip: static; whether to apply the random horizontal flip.

    Returns:
      ``[B, H, W, C]``; the input itself when ``pad == 0 and not flip``.
    """
    if pad == 0 and not flip:
        return images
    k_crop, k_flip = jax.random.split(key)
    out = random_crop(k_crop, images, pad)
    if flip:
        out = random_flip(k_flip, out)
    return out
