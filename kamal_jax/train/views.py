"""K pre-drawn augmented views per training image (`data.views = K`).

On-the-fly augmentation draws a new view every step, so frozen nets must run every step. With
`data.views = K > 0` every training image gets K views drawn once, from the run's seed, with the
same random translation and flip as on the fly (`data.crop_padding`, `data.flip`); each epoch
shows every image once, in one of its K views picked at random. The views are fixed, so the
teacher and component caches can hold the frozen nets' outputs on all of them: K trades cache
size (and build time: K forward passes of the frozen nets) for augmentation variety.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kamal_jax.train.augment import augment

CHUNK = 1024  # images per augmentation call; part of what fixes the views for a seed


def count(data: Any) -> int:
    """The number of pre-drawn views per image; 0 means a fresh view every step."""
    return data.views


def step_augmentation(data: Any) -> dict:
    """A job's augmentation settings (`job.Settings`): pre-drawn views are shown as they are."""
    k = count(data)
    if k:
        return dict(crop_padding=0, flip=False, views=k)
    return dict(crop_padding=data.crop_padding, flip=data.flip, views=1)


def predraw(images: np.ndarray, k: int, *, crop_padding: int, flip: bool, seed: int) -> np.ndarray:
    """(N, H, W, C) uint8 -> (K * N, H, W, C) uint8, view-major: row v * N + i is view v of image i.

    Translation and flip only move pixels, so the views are exact uint8 copies of the image's pixels.
    """
    fn = jax.jit(lambda rng, x: jnp.round(augment(rng, x, crop_padding=crop_padding, flip=flip) * 255.0)
                 .astype(jnp.uint8))
    base = jax.random.fold_in(jax.random.key(seed), 0x5f1e)
    out = np.empty((k * len(images), *images.shape[1:]), np.uint8)
    for v in range(k):
        for c, start in enumerate(range(0, len(images), CHUNK)):
            chunk = images[start:start + CHUNK]
            rng = jax.random.fold_in(jax.random.fold_in(base, v), c)
            out[v * len(images) + start:v * len(images) + start + len(chunk)] = np.asarray(fn(rng, chunk))
    return out


def expand_split(split: Any, data: Any, seed: int) -> Any:
    """The training split as K pre-drawn views of each image (labels repeated); as it is when K = 0."""
    k = count(data)
    if not k:
        return split
    images = predraw(split.images, k, crop_padding=data.crop_padding, flip=data.flip, seed=seed)
    return dataclasses.replace(split, images=images,
                               labels={key: np.tile(v, k) for key, v in split.labels.items()})


def with_views(data: Any, k: int) -> Any:
    """`data`'s augmentation fields with `k` pre-drawn views (what a cache built on them is keyed by)."""
    return types.SimpleNamespace(views=k, crop_padding=data.crop_padding, flip=data.flip)


def cache_key(data: Any, image_shape) -> dict:
    """How the frozen nets see the training images: part of every cache's key."""
    k = count(data)
    if not k:
        return {'crop_padding': 0, 'flip': False, 'shape': list(image_shape)}
    return {'crop_padding': data.crop_padding, 'flip': data.flip,
            'shape': list(image_shape), 'views': k, 'chunk': CHUNK}
