"""On-device augmentation: one random view per sample, seen by the student and all teachers alike;
`cutout`, the stronger noise a student sees against targets computed on clean views."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_unit(images: jax.Array) -> jax.Array:
    return images.astype(jnp.float32) / 255.0


def augment(rng: jax.Array, images: jax.Array, *, crop_padding: int = 0, flip: bool = False) -> jax.Array:
    """uint8 NHWC -> float [0, 1]: random translation by up to `crop_padding` px, optional h-flip."""
    x = to_unit(images)
    b, h, w, _ = x.shape
    crop_rng, flip_rng = jax.random.split(rng)
    if crop_padding:
        p = crop_padding
        padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode='reflect')
        offsets = jax.random.randint(crop_rng, (b, 2), 0, 2 * p + 1)
        x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1])))(
            padded, offsets)
    if flip:
        do_flip = jax.random.bernoulli(flip_rng, 0.5, (b, 1, 1, 1))
        x = jnp.where(do_flip, x[:, :, ::-1, :], x)
    return x


def cutout(rng: jax.Array, x: jax.Array, *, fraction: float, fill) -> jax.Array:
    """float NHWC -> the same with one square per sample, of side `fraction` x the image's, set to
    `fill` (per channel; the student's input mean, so it normalises to zero): its centre uniform over
    the image, the square clipped at the borders (DeVries & Taylor, 2017)."""
    b, h, w, _ = x.shape
    side_h, side_w = max(1, round(fraction * h)), max(1, round(fraction * w))
    centres = jax.random.randint(rng, (b, 2), 0, jnp.array([h, w]))
    top, left = centres[:, 0] - side_h // 2, centres[:, 1] - side_w // 2
    rows, cols = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
    inside_h = (rows >= top[:, None]) & (rows < top[:, None] + side_h)
    inside_w = (cols >= left[:, None]) & (cols < left[:, None] + side_w)
    mask = (inside_h[:, :, None] & inside_w[:, None, :])[..., None]
    return jnp.where(mask, jnp.asarray(fill, x.dtype).reshape(1, 1, 1, -1), x)
