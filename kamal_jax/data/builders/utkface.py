"""`kamal_utkface`: UTKFace (aligned and cropped faces, 96x96) read in place from `utkface.tar.gz`
in the manual dir.

Archive layout: `utkface/<original file name>`; the labels come from the file name
`[age]_[gender]_[race]_[date&time].jpg.chip.jpg`, parsed with `^(\\d+)_([01])_([0-4])_`. Members whose
name does not parse are skipped (3 in the archive, their race field is missing).

Features / label keys:
  gender    ClassLabel: 0 male, 1 female
  race      ClassLabel: 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others
  age_group ClassLabel: 0 '0-19', 1 '20-39', 2 '40-59', 3 '60+' (age in years; bins AGE_BINS)
  age       int32, years (numeric label: `load` returns it with `label_names['age'] == []`)
  file_name member path, sha256 hex of the JPEG bytes (`content_sha256`)

Split (UTKFace has no official one): 'train' ~80 % / 'test' ~20 %, made here with a fixed seed
(SPLIT_SEED). Byte-identical images (375 groups, 765 files, often with different labels) are kept on
one side: members are grouped by the sha256 of their bytes, the groups (sorted by hash) are permuted
with `numpy.random.default_rng(SPLIT_SEED)` and taken into 'test' in that order until it holds
round(0.2 * N) images (the last group may overshoot by its size - 1); the rest is 'train'. The split is
a function of the archive contents only. The total must be 23705, else the build fails.
"""
import hashlib
import re

import numpy as np
import tensorflow_datasets as tfds

from kamal_jax.data.builders._common import KamalBuilder

NAME_RE = re.compile(r'^(\d+)_([01])_([0-4])_')
GENDERS = ('male', 'female')
RACES = ('White', 'Black', 'Asian', 'Indian', 'Others')
AGE_BINS = (0, 20, 40, 60)  # Lower edges: 0-19, 20-39, 40-59, 60+.
AGE_GROUPS = ('0-19', '20-39', '40-59', '60+')
SPLIT_SEED = 20240101
TEST_FRACTION = 0.2


def parse_name(member_name):
    """`utkface/25_1_3_2017....jpg.chip.jpg` -> (age, gender, race), or None if it does not parse."""
    m = NAME_RE.match(member_name.rsplit('/', 1)[-1])
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def age_group(age):
    return int(np.searchsorted(AGE_BINS, age, side='right') - 1)


def split_by_content(hashes, test_fraction=TEST_FRACTION, seed=SPLIT_SEED):
    """{name: content hash} -> {name: 'train' | 'test'}; equal hashes always land on the same side."""
    groups = {}
    for name in sorted(hashes):
        groups.setdefault(hashes[name], []).append(name)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    target = int(round(test_fraction * len(hashes)))
    assign, n_test = {}, 0
    for i in order:
        side = 'test' if n_test < target else 'train'
        for name in groups[keys[i]]:
            assign[name] = side
        if side == 'test':
            n_test += len(groups[keys[i]])
    return assign


class KamalUtkface(KamalBuilder):
    """UTKFace 96x96 faces with gender / race / age_group / age labels, seeded 80/20 split."""

    name = 'kamal_utkface'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release: duplicate-aware 80/20 split, seed 20240101.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = 'Place utkface.tar.gz (docs/DATA.md, "The benchmark archives", says what it holds) in manual_dir.'
    ARCHIVE = 'utkface.tar.gz'
    PREFIX = 'utkface'
    EXPECTED_COUNTS = {'total': 23705}
    NUMERIC_LABELS = ('age',)

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(96, 96, 3), encoding_format='jpeg'),
                'gender': tfds.features.ClassLabel(names=list(GENDERS)),
                'race': tfds.features.ClassLabel(names=list(RACES)),
                'age_group': tfds.features.ClassLabel(names=list(AGE_GROUPS)),
                'age': np.int32,
                'file_name': tfds.features.Text(),
                'content_sha256': tfds.features.Text(),
            }),
            homepage='https://susanqq.github.io/UTKFace/',
        )

    def _members(self, dl_manager, archive):
        for name, fobj in dl_manager.iter_archive(archive):
            parts = name.split('/')
            if len(parts) != 2 or parts[0] != self.PREFIX:
                raise ValueError(f'{self.name}: unexpected member {name!r} in {self.ARCHIVE!r} '
                                 f'(expected {self.PREFIX}/<file name>)')
            yield name, fobj

    def _split_generators(self, dl_manager):
        archive = self._archive_path(dl_manager)
        hashes = {}  # First pass: content hash of every parseable member.
        for name, fobj in self._members(dl_manager, archive):
            if parse_name(name) is not None:
                hashes[name] = hashlib.sha256(fobj.read()).hexdigest()
        self._check_count('total', len(hashes))
        assign = split_by_content(hashes)
        return {split: self._generate_examples(dl_manager, archive, split, assign, hashes)
                for split in ('train', 'test')}

    def _generate_examples(self, dl_manager, archive, split, assign, hashes):
        expected = sum(1 for s in assign.values() if s == split)
        count = 0
        for name, fobj in self._members(dl_manager, archive):
            if assign.get(name) != split:
                continue
            data = fobj.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest != hashes[name]:
                raise ValueError(f'{self.name}: {name!r} changed between two reads of {self.ARCHIVE!r}')
            age, gender, race = parse_name(name)
            count += 1
            yield name, {'image': data, 'gender': gender, 'race': race, 'age_group': age_group(age),
                         'age': age, 'file_name': name, 'content_sha256': digest}
        if count != expected:
            raise ValueError(f'{self.name}: split {split!r} has {count} examples, expected {expected}')
