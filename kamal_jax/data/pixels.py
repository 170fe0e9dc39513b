"""The one resize every image path uses: centre crop to the target aspect, then antialiased bilinear.

The TFDS loader (`datasets`) calls `resize` inside its tf.data map; an image folder (`folder`) and
`kamal_jax.predict` call `resize_array` on a Pillow-decoded image, which runs the same TensorFlow
ops, so a JPEG gives the same pixels whichever way it arrives.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

__all__ = ['resize', 'resize_array']


def resize(image, size: Sequence[int], crop_to_aspect: bool):
    """Center-crops `image` (a uint8 HWC tensor) to the aspect of `size` (if asked), then
    antialiased bilinear resize to `size`, rounded back to uint8."""
    import tensorflow as tf
    th, tw = int(size[0]), int(size[1])
    if crop_to_aspect:
        shape = tf.shape(image)
        h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
        # Too tall: h * tw > w * th -> keep width, crop height; else keep height, crop width.
        new_h = tf.where(h * tw > w * th, tf.round(w * th / tw), h)
        new_w = tf.where(h * tw > w * th, w, tf.round(h * tw / th))
        new_h, new_w = tf.cast(tf.maximum(new_h, 1), tf.int32), tf.cast(tf.maximum(new_w, 1), tf.int32)
        off_h, off_w = (shape[0] - new_h) // 2, (shape[1] - new_w) // 2
        image = image[off_h:off_h + new_h, off_w:off_w + new_w]
    out = tf.image.resize(image, (th, tw), method='bilinear', antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


@functools.lru_cache(maxsize=8)
def _compiled(size: tuple[int, int], crop_to_aspect: bool):
    """`resize` as one traced function per target size (any input size): an eager call per image
    would cost several times the decode."""
    import tensorflow as tf
    return tf.function(lambda image: resize(image, size, crop_to_aspect),
                       input_signature=[tf.TensorSpec((None, None, 3), tf.uint8)])


def resize_array(image: np.ndarray, size: Sequence[int], crop_to_aspect: bool = True) -> np.ndarray:
    """`resize` on one (H, W, 3) uint8 numpy image; returns (h, w, 3) uint8 numpy."""
    return _compiled((int(size[0]), int(size[1])), bool(crop_to_aspect))(image).numpy()
