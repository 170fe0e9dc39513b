"""`kamal_digits`: scikit-learn's bundled handwritten digits as a TFDS dataset.

Source: `sklearn.datasets.load_digits()` (the UCI "Optical Recognition of Handwritten Digits" test
set, 1797 real 8x8 images with values 0..16, ten classes); it ships inside scikit-learn, so building
needs no download and no manual files.

Features:
  image: (8, 8, 3) uint8; value v in 0..16 is scaled to round(v * 255 / 16) and the grey value is
         replicated to three channels (so RGB models take it unchanged).
  label: ClassLabel with names '0'..'9'.
  index: int32, row of the image in `load_digits()` (for tracing back).

Splits: 'train' (75 %, 1347 images) and 'test' (25 %, 450 images), made by
`sklearn.model_selection.train_test_split(test_size=0.25, stratify=labels, random_state=SPLIT_SEED)`
with `SPLIT_SEED = 20240101` fixed here, so every build gives the same split.
"""
import numpy as np
import tensorflow_datasets as tfds

from kamal_jax.data.builders._common import KamalBuilder

SPLIT_SEED = 20240101
TEST_FRACTION = 0.25
NUM_IMAGES = 1797


def split_indices(labels, seed=SPLIT_SEED, test_fraction=TEST_FRACTION):
    """Returns `(train_idx, test_idx)`, sorted int arrays of a seeded stratified split."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, stratify=labels, random_state=seed, shuffle=True)
    return np.sort(train_idx), np.sort(test_idx)


def digits_to_rgb(images):
    """(N, 8, 8) values 0..16 -> (N, 8, 8, 3) uint8 0..255."""
    grey = np.rint(np.asarray(images, np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


class KamalDigits(KamalBuilder):
    """scikit-learn's 8x8 handwritten digits, 3-channel uint8, seeded stratified 75/25 split."""

    name = 'kamal_digits'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release: stratified 75/25 split, seed 20240101.'}
    EXPECTED_COUNTS = {'train': 1347, 'test': 450}

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(8, 8, 3), dtype=np.uint8),
                'label': tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
                'index': np.int32,
            }),
            supervised_keys=('image', 'label'),
            homepage='https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html',
        )

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits
        data = load_digits()
        images, labels = digits_to_rgb(data.images), np.asarray(data.target, np.int64)
        if len(labels) != NUM_IMAGES:
            raise ValueError(f'kamal_digits: load_digits() gave {len(labels)} images, expected {NUM_IMAGES}')
        train_idx, test_idx = split_indices(labels)
        self._check_count('train', len(train_idx))
        self._check_count('test', len(test_idx))
        return {
            'train': self._generate_examples(images, labels, train_idx),
            'test': self._generate_examples(images, labels, test_idx),
        }

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            yield int(i), {'image': images[i], 'label': int(labels[i]), 'index': int(i)}
