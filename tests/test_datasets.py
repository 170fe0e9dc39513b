"""kamal_jax.data datasets: builders and loader, offline, on tiny generated archives."""
import io
import tarfile

import numpy as np
import pytest

from kamal_jax.data import datasets as kd

tfds = pytest.importorskip('tensorflow_datasets')
PIL_Image = pytest.importorskip('PIL.Image')


# ------------------------------------------------------------------------------------------ helpers
def _jpeg(rng, h, w):
    buf = io.BytesIO()
    PIL_Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, 'JPEG', quality=90)
    return buf.getvalue()


def _write_tar_gz(path, members):
    """members: [(name, bytes)] -> gzip'd ustar archive of regular files only (no directories)."""
    with tarfile.open(path, 'w:gz', format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1704067200
            tar.addfile(info, io.BytesIO(data))


def _read_split(builder, split, keys):
    return [{k: ex[k] for k in keys} for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))]


# ------------------------------------------------------------------------------------------- digits
@pytest.fixture(scope='module')
def digits_dirs(tmp_path_factory):
    return tmp_path_factory.mktemp('tfds_a'), tmp_path_factory.mktemp('tfds_b')


@pytest.fixture(scope='module')
def digits(digits_dirs):
    return {s: kd.load('kamal_digits', s, data_dir=digits_dirs[0]) for s in ('train', 'test')}


def test_digits_counts_and_features(digits):
    tr, te = digits['train'], digits['test']
    assert len(tr) + len(te) == 1797 and len(tr) > 0 and len(te) > 0
    assert (len(tr), len(te)) == (1347, 450)
    for s in (tr, te):
        assert isinstance(s, kd.ArraySplit)
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (8, 8, 3)
        assert s.labels['label'].dtype == np.int64 and s.labels['label'].shape == (len(s),)
        assert s.label_names == {'label': [str(i) for i in range(10)]}
        assert s.name == 'kamal_digits'
        # Grey replicated to 3 channels, 0..16 scaled to the full 0..255 range.
        assert np.array_equal(s.images[..., 0], s.images[..., 2])
        assert s.images.max() == 255 and s.images.min() == 0
    assert tr.split == 'train' and te.split == 'test'
    assert tr.num_classes() == 10


def test_digits_split_is_stratified(digits):
    tr = np.bincount(digits['train'].labels['label'], minlength=10)
    te = np.bincount(digits['test'].labels['label'], minlength=10)
    frac = te / (tr + te)
    assert np.all(np.abs(frac - 0.25) < 0.02), frac


def test_digits_split_matches_sklearn_images(digits):
    from sklearn.datasets import load_digits
    from kamal_jax.data.builders.digits import digits_to_rgb, split_indices
    data = load_digits()
    _, test_idx = split_indices(data.target)
    ref = digits_to_rgb(data.images[test_idx])
    # Same multiset of (image, label) pairs, whatever order TFDS stores them in.
    key = lambda imgs, labs: sorted(im.tobytes() + bytes([int(l)]) for im, l in zip(imgs, labs))
    assert key(ref, data.target[test_idx]) == key(digits['test'].images, digits['test'].labels['label'])


def test_digits_deterministic_across_builds(digits, digits_dirs):
    other = kd.load('kamal_digits', 'test', data_dir=digits_dirs[1])
    assert np.array_equal(other.images, digits['test'].images)
    assert np.array_equal(other.labels['label'], digits['test'].labels['label'])


def test_load_resizes(digits, digits_dirs):
    big = kd.load('kamal_digits', 'test', data_dir=digits_dirs[0], image_size=(16, 12))
    assert big.images.shape == (450, 16, 12, 3) and big.images.dtype == np.uint8
    assert np.array_equal(big.labels['label'], digits['test'].labels['label'])


def test_load_errors(digits_dirs, tmp_path):
    with pytest.raises(ValueError, match='kamal_digits') as e:
        kd.load('no_such_dataset_kamal_xyz', 'train', data_dir=tmp_path)
    assert 'kamal_utkface' in str(e.value)
    with pytest.raises(ValueError, match="'val'"):
        kd.load('kamal_digits', 'val', data_dir=digits_dirs[0])


def test_registry_is_lazy_mapping():
    assert set(kd.BUILDERS) >= {'kamal_digits', 'kamal_cifar10', 'kamal_imagewoof', 'kamal_utkface'}
    assert kd.BUILDERS['kamal_digits'].name == 'kamal_digits'
    with pytest.raises(KeyError):
        kd.BUILDERS['nope']


# ------------------------------------------------------------------------------- missing archives
@pytest.mark.parametrize('name,archive', [('kamal_cifar10', 'cifar10.tar.gz'),
                                          ('kamal_imagewoof', 'imagewoof.tar.gz'),
                                          ('kamal_utkface', 'utkface.tar.gz')])
def test_missing_archive_error(tmp_path, name, archive):
    empty = tmp_path / 'manual'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match='manual_dir') as e:
        kd.load(name, 'train', data_dir=tmp_path / 'data', manual_dir=empty)
    assert archive in str(e.value)
    # The builder itself says the same when driven through TFDS directly.
    (empty / 'unrelated.txt').write_text('x')  # TFDS rejects an empty manual dir by itself.
    b = kd.builder(name, data_dir=tmp_path / 'data2')
    with pytest.raises(FileNotFoundError, match='manual_dir') as e:
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(empty)))
    assert archive in str(e.value)


# ---------------------------------------------------------------------------------------- cifar10
@pytest.fixture
def no_count_check(monkeypatch):
    def off(name):
        monkeypatch.setattr(kd.BUILDERS[name], 'EXPECTED_COUNTS', None)
    return off


def _cifar_members(rng, per_class):
    from kamal_jax.data.builders.cifar10 import CLASS_NAMES
    members = []
    for split, n in (('train', per_class), ('test', 1)):
        for c in CLASS_NAMES:
            members += [(f'cifar10/{split}/{c}/{i:04d}.jpg', _jpeg(rng, 32, 32)) for i in range(n)]
    return members


def test_cifar10_tiny_archive(tmp_path, no_count_check):
    rng = np.random.default_rng(0)
    manual = tmp_path / 'manual'
    manual.mkdir()
    members = dict(_cifar_members(rng, 2))
    _write_tar_gz(manual / 'cifar10.tar.gz', sorted(members.items()))
    no_count_check('kamal_cifar10')
    tr = kd.load('kamal_cifar10', 'train', data_dir=tmp_path / 'data', manual_dir=manual)
    te = kd.load('kamal_cifar10', 'test', data_dir=tmp_path / 'data', manual_dir=manual)
    assert tr.images.shape == (20, 32, 32, 3) and te.images.shape == (10, 32, 32, 3)
    assert np.array_equal(np.bincount(tr.labels['label']), [2] * 10)
    assert tr.label_names['label'] == ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                                       'horse', 'ship', 'truck']
    # Labels follow the directory names.
    b = kd.builder('kamal_cifar10', data_dir=tmp_path / 'data')
    for ex in _read_split(b, 'test', ['label', 'file_name']):
        assert ex['file_name'].decode().split('/')[2] == tr.label_names['label'][ex['label']]
    # Pixels are exactly Pillow's decoding of the stored JPEG bytes (same order as the TFDS records).
    names = [ex['file_name'].decode() for ex in _read_split(b, 'train', ['file_name'])]
    ref = np.stack([np.asarray(PIL_Image.open(io.BytesIO(members[n])).convert('RGB')) for n in names])
    assert np.array_equal(tr.images, ref)


def test_cifar10_count_check_fails_loudly(tmp_path):
    manual = tmp_path / 'manual'
    manual.mkdir()
    _write_tar_gz(manual / 'cifar10.tar.gz', _cifar_members(np.random.default_rng(1), 1))
    with pytest.raises(Exception, match='expected 50000'):
        kd.load('kamal_cifar10', 'train', data_dir=tmp_path / 'data', manual_dir=manual)


# -------------------------------------------------------------------------------------- imagewoof
def test_imagewoof_tiny_archive(tmp_path, no_count_check):
    from kamal_jax.data.builders.imagewoof import BREEDS, WNIDS
    rng = np.random.default_rng(2)
    members = []
    for split in ('train', 'val'):
        for k, wnid in enumerate(WNIDS[:3]):
            h, w = [(20, 30), (30, 20), (20, 20)][k]
            members.append((f'imagewoof/{split}/{wnid}/{wnid}_{k}.jpg', _jpeg(rng, h, w)))
    manual = tmp_path / 'manual'
    manual.mkdir()
    _write_tar_gz(manual / 'imagewoof.tar.gz', members)
    no_count_check('kamal_imagewoof')
    with pytest.raises(ValueError, match='image_size'):
        kd.load('kamal_imagewoof', 'val', data_dir=tmp_path / 'data', manual_dir=manual)
    val = kd.load('kamal_imagewoof', 'val', data_dir=tmp_path / 'data', manual_dir=manual, image_size=(16, 16))
    assert val.images.shape == (3, 16, 16, 3) and val.images.dtype == np.uint8
    assert sorted(val.labels['label'].tolist()) == [0, 1, 2]
    assert val.label_names['label'] == list(BREEDS) and BREEDS[4] == 'Border terrier'
    with pytest.raises(ValueError, match="'test'"):
        kd.load('kamal_imagewoof', 'test', data_dir=tmp_path / 'data', manual_dir=manual, image_size=(8, 8))


def test_resize_center_crops_to_aspect():
    import tensorflow as tf
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 10:30] = 200  # Center square bright, side bands dark.
    out = kd._resize(tf.constant(img), (10, 10), crop_to_aspect=True).numpy()
    assert out.shape == (10, 10, 3) and out.min() == 200
    out = kd._resize(tf.constant(img), (10, 10), crop_to_aspect=False).numpy()
    assert out.min() < 100


# ---------------------------------------------------------------------------------------- utkface
def test_utkface_name_parsing_and_age_groups():
    from kamal_jax.data.builders import utkface as u
    assert u.parse_name('utkface/100_0_0_20170112213500903.jpg.chip.jpg') == (100, 0, 0)
    assert u.parse_name('utkface/24_0_1_20170116220224657 .jpg.chip.jpg') == (24, 0, 1)
    assert u.parse_name('utkface/55_0_0_20170116232725357jpg.chip.jpg') == (55, 0, 0)
    assert u.parse_name('utkface/39_1_20170116174525125.jpg.chip.jpg') is None
    assert [u.age_group(a) for a in (0, 19, 20, 39, 40, 59, 60, 116)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert u.AGE_GROUPS == ('0-19', '20-39', '40-59', '60+')


def test_utkface_split_keeps_duplicate_groups_together():
    from kamal_jax.data.builders.utkface import split_by_content
    rng = np.random.default_rng(3)
    hashes = {}
    for i in range(1000):  # ~1/3 of the files share their content with 1-3 others.
        hashes[f'f{i}'] = f'h{rng.integers(0, 800)}' if i % 3 == 0 else f'u{i}'
    a = split_by_content(hashes)
    assert a == split_by_content(dict(reversed(list(hashes.items()))))  # Order-independent.
    sides = {}
    for name, h in hashes.items():
        sides.setdefault(h, set()).add(a[name])
    assert all(len(s) == 1 for s in sides.values())
    n_test = sum(v == 'test' for v in a.values())
    assert 200 <= n_test <= 204
    assert split_by_content(hashes, seed=1) != a


def test_utkface_tiny_archive(tmp_path, no_count_check):
    rng = np.random.default_rng(4)
    dup = _jpeg(rng, 96, 96)
    names = [f'{age}_{g}_{r}_2017011{i:010d}.jpg.chip.jpg'
             for i, (age, g, r) in enumerate([(1, 0, 0), (25, 1, 1), (45, 0, 2), (70, 1, 3), (19, 0, 4),
                                              (20, 1, 0), (33, 0, 1), (59, 1, 2), (60, 0, 3), (8, 1, 4)])]
    names += ['24_0_1_20170116220224657 .jpg.chip.jpg', '55_0_0_20170116232725357jpg.chip.jpg']
    members = [(f'utkface/{n}', _jpeg(rng, 96, 96)) for n in names]
    dups = ['30_0_0_20170101000000001.jpg.chip.jpg', '31_1_1_20170101000000002.jpg.chip.jpg',
            '90_0_2_20170101000000003.jpg.chip.jpg']
    members += [(f'utkface/{n}', dup) for n in dups]
    members.append(('utkface/39_1_20170116174525125.jpg.chip.jpg', _jpeg(rng, 96, 96)))  # Skipped.
    members.sort()
    manual = tmp_path / 'manual'
    manual.mkdir()
    _write_tar_gz(manual / 'utkface.tar.gz', members)
    no_count_check('kamal_utkface')
    data = tmp_path / 'data'
    tr = kd.load('kamal_utkface', 'train', data_dir=data, manual_dir=manual)
    te = kd.load('kamal_utkface', 'test', data_dir=data, manual_dir=manual)
    assert len(tr) + len(te) == 15 and len(te) >= 3 and len(tr) > 0
    assert tr.images.shape[1:] == (96, 96, 3)
    assert set(tr.labels) == {'gender', 'race', 'age_group', 'age'}
    assert tr.label_names['gender'] == ['male', 'female']
    assert tr.label_names['race'] == ['White', 'Black', 'Asian', 'Indian', 'Others']
    assert tr.label_names['age_group'] == ['0-19', '20-39', '40-59', '60+']
    assert tr.label_names['age'] == []
    b = kd.builder('kamal_utkface', data_dir=data)
    side = {}
    for split in ('train', 'test'):
        for ex in _read_split(b, split, ['file_name', 'age', 'gender', 'race', 'age_group']):
            name = ex['file_name'].decode().split('/')[1]
            side[name] = split
            age, g, r = (int(x) for x in name.split('_')[:3])
            assert (ex['age'], ex['gender'], ex['race']) == (age, g, r)
            assert ex['age_group'] == min(age // 20, 3)
    assert len(side) == 15 and '39_1_20170116174525125.jpg.chip.jpg' not in side
    assert len({side[n] for n in dups}) == 1  # The byte-identical group stays on one side.


def test_utkface_count_check_fails_loudly(tmp_path):
    rng = np.random.default_rng(5)
    manual = tmp_path / 'manual'
    manual.mkdir()
    _write_tar_gz(manual / 'utkface.tar.gz', [(f'utkface/{i}_0_0_2017.jpg.chip.jpg', _jpeg(rng, 96, 96)) for i in range(3)])
    with pytest.raises(Exception, match='expected 23705'):
        kd.load('kamal_utkface', 'train', data_dir=tmp_path / 'data', manual_dir=manual)


def test_import_is_cheap():
    import subprocess
    import sys
    code = 'import sys, kamal_jax.data.datasets; print("tensorflow" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'
