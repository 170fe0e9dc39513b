"""Whole-split, in-memory dataset loading on top of TFDS.

    from kamal_jax.data.datasets import load
    ds = load('kamal_digits', 'train')                       # ArraySplit
    ds.images        # (N, H, W, C) uint8 numpy, NHWC
    ds.labels        # {'label': int64 (N,)}
    ds.label_names   # {'label': ['0', ..., '9']}

`load` builds the dataset first if needed (`download_and_prepare` into `data_dir`, default
`~/tensorflow_datasets`), reads the whole split with `tfds.as_numpy` and optionally resizes. uint8 images are decoded from
the stored bytes with `tf.io.decode_jpeg(dct_method='INTEGER_ACCURATE')` (PNG: `decode_image`), which
gives exactly Pillow's pixels; TF's default JPEG decoding differs by a few levels.

Names:
  * our builders, `BUILDERS` (name -> builder class, imported lazily on first access):
    `kamal_digits` (no files needed), `kamal_cifar10`, `kamal_imagewoof`, `kamal_utkface`
    (these three read archives from a manual dir, see `default_manual_dir`);
  * any other name falls through to the TFDS catalogue (`tfds.builder(name)`), e.g. `cifar100`,
    `stanford_dogs`, `celeb_a`; those download through TFDS as usual (needs network on first build).

Labels are found generically from the dataset's features (nested dicts are walked, the leaf name is the
label key unless two leaves share it, then the '/'-joined path is used); only scalar features count:
  * every `ClassLabel` -> label key with its class names;
  * a scalar bool tensor (e.g. celeb_a attributes) -> label key with names ['false', 'true'];
  * a scalar integer tensor named in the builder's `NUMERIC_LABELS` (e.g. UTKFace `age`) -> numeric
    label key with `label_names[key] == []`.
Images: the top-level feature `image` if present, else the first top-level `Image` feature.

Importing this module is cheap: TensorFlow / TFDS are imported inside the functions.
"""
from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from kamal_jax.data.pixels import resize as _resize
from kamal_jax.data.split import ArraySplit

__all__ = ['ArraySplit', 'BUILDERS', 'load', 'builder', 'prepared_builder', 'split_bytes', 'default_manual_dir',
           'DEFAULT_DATA_DIR']

DEFAULT_DATA_DIR = '~/tensorflow_datasets'
MANUAL_DIR_ENV = 'KAMAL_DATASETS_DIR'

_BUILDER_PATHS = {
    'kamal_digits': 'kamal_jax.data.builders.digits:KamalDigits',
    'kamal_cifar10': 'kamal_jax.data.builders.cifar10:KamalCifar10',
    'kamal_imagewoof': 'kamal_jax.data.builders.imagewoof:KamalImagewoof',
    'kamal_utkface': 'kamal_jax.data.builders.utkface:KamalUtkface',
}


class _LazyRegistry(Mapping):
    """name -> builder class; the builder module (and with it TFDS) is imported on first access."""

    def __init__(self, paths):
        self._paths = dict(paths)
        self._cache = {}

    def __getitem__(self, name):
        if name not in self._paths:
            raise KeyError(name)
        if name not in self._cache:
            module, attr = self._paths[name].split(':')
            self._cache[name] = getattr(importlib.import_module(module), attr)
        return self._cache[name]

    def __iter__(self):
        return iter(self._paths)

    def __len__(self):
        return len(self._paths)

    def __repr__(self):
        return f'BUILDERS({sorted(self._paths)})'


BUILDERS = _LazyRegistry(_BUILDER_PATHS)


def default_manual_dir() -> Optional[Path]:
    """The folder holding the dataset archives, or None if none is found.

    Order: the `KAMAL_DATASETS_DIR` environment variable; `shared/datasets` inside the repository
    checkout holding this package; `shared/datasets` beside that checkout (`../shared/datasets`).
    """
    env = os.environ.get(MANUAL_DIR_ENV)
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    for cand in (repo_root / 'shared' / 'datasets', repo_root.parent / 'shared' / 'datasets'):
        if cand.is_dir():
            return cand
    return None


def _unknown_name_error(name):
    ours = ', '.join(sorted(BUILDERS))
    return ValueError(f'Unknown dataset {name!r}. kamal_jax builders: {ours}; '
                      f'any other name must be in the TFDS catalogue (tfds.list_builders()).')


def builder(name: str, *, data_dir=None):
    """Returns the (not yet prepared) TFDS builder for `name` (ours first, then the TFDS catalogue)."""
    import tensorflow_datasets as tfds
    data_dir = os.path.expanduser(os.fspath(data_dir or DEFAULT_DATA_DIR))
    if name in BUILDERS:
        return BUILDERS[name](data_dir=data_dir)
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise _unknown_name_error(name) from e
    except ValueError as e:  # Malformed names ('a/b:c:d') are ValueErrors in TFDS.
        raise _unknown_name_error(name) from e


def _check_manual_archive(b, manual_dir):
    """Our archive builders declare `ARCHIVE`; fail early and clearly when it is missing."""
    archive = getattr(type(b), 'ARCHIVE', None)
    if archive is None:
        return
    if manual_dir is None:
        raise FileNotFoundError(
            f'{b.name} needs the archive {archive!r} in a manual dir, and none was found: pass '
            f'load(..., manual_dir=<folder holding {archive}>) (or set ${MANUAL_DIR_ENV}).')
    path = Path(manual_dir) / archive
    if not path.is_file():
        raise FileNotFoundError(
            f'{b.name} needs the archive {archive!r} in manual_dir, but {str(path)!r} does not exist; '
            f'pass load(..., manual_dir=<folder holding {archive}>) (or set ${MANUAL_DIR_ENV}).')


def _is_prepared(b):
    try:
        return b.is_prepared()
    except AttributeError:  # Older TFDS.
        return os.path.isdir(b.data_dir) and bool(getattr(b.info, 'splits', None))


def _walk_features(feature, path=()):
    import tensorflow_datasets as tfds
    if isinstance(feature, tfds.features.FeaturesDict):
        for k, v in feature.items():
            yield from _walk_features(v, path + (k,))
    else:
        yield path, feature


def _label_specs(features, numeric=()):
    """[(path, key, names)] of the scalar label-like features, see the module docstring."""
    import tensorflow_datasets as tfds
    found = []
    for path, f in _walk_features(features):
        if isinstance(f, tfds.features.ClassLabel):
            found.append((path, list(f.names)))
        elif type(f) is tfds.features.Tensor and tuple(f.shape) == ():
            dt = np.dtype(f.np_dtype)
            if dt == np.bool_:
                found.append((path, ['false', 'true']))
            elif np.issubdtype(dt, np.integer) and '/'.join(path) in numeric:
                found.append((path, []))
    leaves = [p[-1] for p, _ in found]
    return [(p, p[-1] if leaves.count(p[-1]) == 1 else '/'.join(p), names) for p, names in found]


def _image_key(features):
    import tensorflow_datasets as tfds
    if 'image' in features and isinstance(features['image'], tfds.features.Image):
        return 'image'
    for k, f in features.items():
        if isinstance(f, tfds.features.Image):
            return k
    raise ValueError(f'No image feature among {list(features.keys())}')


def _base_splits(split):
    """'train[:10%]+test' -> ['train', 'test']."""
    return [re.sub(r'\[.*\]$', '', s.strip()) for s in str(split).split('+')]


def _decode_accurate(data, shape):
    """Decodes image bytes like Pillow does: JPEG with the accurate integer IDCT (TF's default fast
    IDCT differs from Pillow/libjpeg by up to ~5 levels and biases the red/blue channel means)."""
    import tensorflow as tf
    channels = int(shape[-1] or 0) if shape else 0
    img = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=channels, dct_method='INTEGER_ACCURATE'),
        lambda: tf.io.decode_image(data, channels=channels, expand_animations=False))
    img.set_shape(tuple(shape) if shape else (None, None, None))
    return img


def _split_records(name, split, image_size, crop_to_aspect, data_dir) -> str:
    """Where the records of one split at one size live: under the TFDS data dir, beside the builds."""
    size = 'native' if image_size is None else f'{int(image_size[0])}x{int(image_size[1])}' + ('c' if crop_to_aspect else '')
    safe = re.sub(r'[^A-Za-z0-9_.%+-]+', '_', f'{split}__{size}')
    return os.path.join(os.path.expanduser(os.fspath(data_dir or DEFAULT_DATA_DIR)), 'kamal_jax_records', name, safe)


def prepared_builder(name: str, *, data_dir=None, manual_dir=None):
    """The TFDS builder of `name`, built first (`download_and_prepare`) if it is not yet."""
    import tensorflow_datasets as tfds
    b = builder(name, data_dir=data_dir)
    if manual_dir is None and getattr(type(b), 'ARCHIVE', None) is not None:
        manual_dir = default_manual_dir()
    if not _is_prepared(b):
        _check_manual_archive(b, manual_dir)
        cfg = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir) if manual_dir else None)
        b.download_and_prepare(download_config=cfg)
    return b


def _tf_examples(name: str, split: str, *, data_dir, manual_dir, image_size, crop_to_aspect):
    """(the builder, a tf.data pipeline of (uint8 image, {label key: int64}), label specs)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    b = prepared_builder(name, data_dir=data_dir, manual_dir=manual_dir)
    known = dict(b.info.splits)
    for s in _base_splits(split):
        if s not in known:
            raise ValueError(f'{name} has no split {s!r} (requested {split!r}); splits: {sorted(known)}')
        if known[s].num_examples == 0:
            raise ValueError(f'Split {s!r} of {name} is empty')

    features = b.info.features
    img_key = _image_key(features)
    specs = _label_specs(features, numeric=tuple(getattr(type(b), 'NUMERIC_LABELS', ())))

    img_feature = features[img_key]
    # uint8 images: decode the stored bytes ourselves (JPEG decoded exactly as Pillow/torchvision do).
    own_decode = np.dtype(img_feature.np_dtype) == np.uint8
    decoders = {img_key: tfds.decode.SkipDecoding()} if own_decode else None

    def to_arrays(ex):
        img = ex[img_key]
        if own_decode:
            img = _decode_accurate(img, img_feature.shape)
        if image_size is not None:
            img = _resize(img, image_size, crop_to_aspect)
        labs = {}
        for path, key, _ in specs:
            v = ex
            for p in path:
                v = v[p]
            labs[key] = tf.cast(v, tf.int64)
        return img, labs

    ds = b.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    return b, ds.map(to_arrays, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), specs


def split_bytes(name: str, split: str, *, data_dir=None, manual_dir=None,
                image_size: Optional[Sequence[int]] = None) -> Optional[int]:
    """The decoded pixels of a split in bytes, from the builder's metadata (the builder is built
    first if needed): what `load` would hold in memory. None when the images have no fixed size."""
    b = prepared_builder(name, data_dir=data_dir, manual_dir=manual_dir)
    try:
        n = b.info.splits[split].num_examples
    except Exception:  # unknown or odd split specs: `load` reports them
        return None
    shape = b.info.features[_image_key(b.info.features)].shape
    h, w = (image_size or shape[:2])
    if h is None or w is None or shape[-1] is None:
        return None
    return int(n) * int(h) * int(w) * int(shape[-1])


def load(name: str, split: str, *, data_dir=None, manual_dir=None,
         image_size: Optional[Sequence[int]] = None, crop_to_aspect: bool = True,
         streaming: bool = False) -> ArraySplit:
    """Builds (if needed) and reads one split of dataset `name` into memory.

    name: one of `BUILDERS` or a TFDS catalogue name. split: a split name of that dataset (TFDS
    slicing like 'train[:10%]' works too). data_dir: TFDS data dir (default ~/tensorflow_datasets).
    manual_dir: folder with the archives for our archive builders (default `default_manual_dir()`);
    passed to TFDS as `DownloadConfig(manual_dir=...)`. image_size: (h, w) to resize to, antialiased
    bilinear; with `crop_to_aspect` (default) the image is first center-cropped to the target aspect
    ratio, so nothing is distorted (a no-op for square images resized to a square). Variable-size
    datasets (e.g. kamal_imagewoof) need `image_size`.

    streaming: instead of holding the split in memory, write its decoded, resized pixels once as
    ArrayRecord files under DATA_DIR/kamal_jax_records/ (`kamal_jax.data.records`) and return a
    split whose `images` read rows from them on demand; the pixels are the in-memory path's exactly.
    """
    if streaming:
        return _load_records(name, split, data_dir=data_dir, manual_dir=manual_dir, image_size=image_size,
                             crop_to_aspect=crop_to_aspect)
    import tensorflow_datasets as tfds
    _, ds, specs = _tf_examples(name, split, data_dir=data_dir, manual_dir=manual_dir,
                                image_size=image_size, crop_to_aspect=crop_to_aspect)
    img_shape = ds.element_spec[0].shape
    images, labels = [], {key: [] for _, key, _ in specs}
    if img_shape.is_fully_defined():
        for img, labs in tfds.as_numpy(ds.batch(1024)):
            images.append(img)
            for k, v in labs.items():
                labels[k].append(v)
        if not images:
            raise ValueError(f'Split {split!r} of {name} is empty')
        images = np.concatenate(images)
        labels = {k: np.concatenate(v).astype(np.int64) for k, v in labels.items()}
    else:
        for img, labs in tfds.as_numpy(ds):
            if images and img.shape != images[0].shape:
                raise ValueError(
                    f'{name} has images of different sizes ({images[0].shape} and {img.shape}); '
                    f'pass image_size=(h, w) to load().')
            images.append(img)
            for k, v in labs.items():
                labels[k].append(v)
        if not images:
            raise ValueError(f'Split {split!r} of {name} is empty')
        images = np.stack(images)
        labels = {k: np.asarray(v, np.int64) for k, v in labels.items()}
    if images.dtype != np.uint8:
        images = images.astype(np.uint8)
    return ArraySplit(images=images, labels=labels,
                      label_names={key: names for _, key, names in specs}, name=name, split=split)


def _load_records(name, split, *, data_dir, manual_dir, image_size, crop_to_aspect) -> ArraySplit:
    """The split's records folder, written first (one chunk in memory at a time) if missing or of
    another size. Reading existing records needs no TensorFlow: only writing them decodes and
    resizes (the builder's version is recorded then; delete the folder to rewrite it)."""
    from kamal_jax.data import records
    out = _split_records(name, split, image_size, crop_to_aspect, data_dir)
    source = {'name': name, 'split': split, 'image_size': list(image_size) if image_size else None,
              'crop_to_aspect': bool(crop_to_aspect)}
    try:
        found = dict(records.read_info(out).get('source') or {})
        found.pop('version', None)
        if found == source:
            return records.open_split(out)
    except ValueError:
        pass  # missing or incomplete: (re)write it
    import tensorflow_datasets as tfds
    b, ds, specs = _tf_examples(name, split, data_dir=data_dir, manual_dir=manual_dir,
                                image_size=image_size, crop_to_aspect=crop_to_aspect)
    source['version'] = str(b.version)
    shape = ds.element_spec[0].shape
    if not shape.is_fully_defined():
        raise ValueError(f'{name} has images of different sizes; streaming needs image_size=(h, w).')
    from kamal_jax.progress import Progress
    progress = Progress(f'writing records of {name} {split}', b.info.splits[split].num_examples, 'images')

    def chunks():
        for img, labs in tfds.as_numpy(ds.batch(1024)):
            progress.update(len(img))
            yield img.astype(np.uint8), labs
    records.write(out, chunks(), shape=tuple(shape), label_names={key: names for _, key, names in specs},
                  name=name, split=split, source=source)
    return records.open_split(out)
