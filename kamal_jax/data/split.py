"""One split of a dataset: images (in memory, or `records.RecordImages` read from disk) and labels.

Its own module so that the loader (`datasets`) and the records on disk (`records`) both build it
without importing each other.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ['ArraySplit']


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySplit:
    """One split of a dataset.

    images: (N, H, W, C) uint8, a numpy array or `records.RecordImages` (read from disk by row,
    indexed the same way). labels: label key -> (N,) int64. label_names: label key -> class
    names (index = label id); an empty list marks a numeric label (e.g. UTKFace `age`).
    """
    images: np.ndarray
    labels: dict
    label_names: dict
    name: str
    split: str

    def __len__(self):
        return int(self.images.shape[0])

    def num_classes(self, key='label'):
        return len(self.label_names[key])
