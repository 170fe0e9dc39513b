"""Shared pieces of the kamal_jax TFDS builders."""
import sys
from pathlib import Path

import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils


class KamalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of our builders.

    `code_path` is overridden: TFDS's default resolves the builder's package with
    `importlib_resources` (a backport that is not a dependency here and is not needed on Python >= 3.9);
    we simply point at the module file.

    `EXPECTED_COUNTS` (split -> number of examples, or a total under the key 'total'): the generated
    counts are checked against it and the build fails loudly on a mismatch. Set it to None (e.g. in
    tests on tiny archives) to skip the check.
    """

    EXPECTED_COUNTS = None
    ARCHIVE = None  # File name of the archive in the manual dir (archive builders only).
    NUMERIC_LABELS = ()  # Scalar int features that `kamal_jax.data.datasets.load` returns as labels.

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls):
        module = sys.modules.get(cls.__module__)
        path = getattr(module, '__file__', None)
        return epath.Path(path) if path else None

    # ---------------------------------------------------------------- helpers for archive builders
    def _archive_path(self, dl_manager) -> Path:
        """`<manual_dir>/<ARCHIVE>`, or a FileNotFoundError naming the file and `manual_dir`."""
        hint = f'pass load(..., manual_dir=<folder holding {self.ARCHIVE}>) ' \
               f'(tfds: DownloadConfig(manual_dir=...))'
        try:
            manual_dir = dl_manager.manual_dir
        except AssertionError as e:  # TFDS: manual dir not given / missing / empty.
            raise FileNotFoundError(
                f'{self.name} needs the archive {self.ARCHIVE!r} in manual_dir: {e}; {hint}') from None
        path = Path(manual_dir) / self.ARCHIVE
        if not path.is_file():
            raise FileNotFoundError(
                f'{self.name} needs the archive {self.ARCHIVE!r} in manual_dir, but {str(path)!r} '
                f'does not exist; {hint}')
        return path

    def _check_count(self, split, count):
        expected = self.EXPECTED_COUNTS
        if expected is None or split not in expected:
            return
        if count != expected[split]:
            raise ValueError(
                f'{self.name}: split {split!r} has {count} examples, expected {expected[split]} '
                f'(wrong or truncated archive {self.ARCHIVE!r}?)')


class ClassFolderArchiveBuilder(KamalBuilder, skip_registration=True):
    """Reads `<PREFIX>/<split>/<class_dir>/<file>.jpg` members of `<manual_dir>/<ARCHIVE>` in place
    (`dl_manager.iter_archive`, streamed, nothing unpacked); the JPEG bytes are stored unchanged.

    Subclasses set ARCHIVE, PREFIX, SPLITS, CLASS_DIRS (directory names in label-id order),
    CLASS_NAMES (label names, same order), IMAGE_SHAPE, EXPECTED_COUNTS and `_info`.
    """

    PREFIX = None
    SPLITS = ()
    CLASS_DIRS = ()
    CLASS_NAMES = ()
    IMAGE_SHAPE = (None, None, 3)

    def _features(self):
        return tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=self.IMAGE_SHAPE, encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
            'file_name': tfds.features.Text(),  # Member path inside the archive.
        })

    def _split_generators(self, dl_manager):
        archive = self._archive_path(dl_manager)
        return {split: self._generate_examples(dl_manager, archive, split) for split in self.SPLITS}

    def _generate_examples(self, dl_manager, archive, split):
        class_ids = {d: i for i, d in enumerate(self.CLASS_DIRS)}
        count = 0
        for name, fobj in dl_manager.iter_archive(archive):
            parts = name.split('/')
            if len(parts) != 4 or parts[0] != self.PREFIX or parts[1] not in self.SPLITS:
                raise ValueError(f'{self.name}: unexpected member {name!r} in {self.ARCHIVE!r} '
                                 f'(expected {self.PREFIX}/<split>/<class>/<file>.jpg)')
            if parts[1] != split:
                continue
            if parts[2] not in class_ids:
                raise ValueError(f'{self.name}: unknown class directory {parts[2]!r} in member {name!r}')
            count += 1
            yield name, {'image': fobj.read(), 'label': class_ids[parts[2]], 'file_name': name}
        self._check_count(split, count)
