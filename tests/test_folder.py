"""Image folders as splits: decoding rules, skipped files, records reuse, the TFDS path's pixels."""
import os
import tarfile

import numpy as np
import pytest

import photos
from kamal_jax.data import folder

SIZE = (16, 16)


@pytest.fixture(scope='module')
def mixed(tmp_path_factory):
    base = tmp_path_factory.mktemp('photos')
    root = base / 'photos'
    good = photos.write_mixed(str(root))
    found = folder.load(str(root), image_size=SIZE, data_dir=str(base / 'data'), workers=2)
    return root, base / 'data', good, found


def test_every_readable_image_is_a_row_and_the_rest_are_listed_with_a_reason(mixed):
    root, _, good, found = mixed
    assert len(good) + len(photos.BAD) == 300
    assert found.paths == good and len(found.split.images) == len(good)
    assert found.split.images.shape == (len(good), *SIZE, 3)
    assert sorted(p for p, _ in found.skipped) == sorted(photos.BAD)
    reasons = dict(found.skipped)
    assert 'truncated' in reasons['broken/truncated.jpg'].lower()
    assert reasons['notes.txt'].startswith('UnidentifiedImageError')
    assert reasons['phone/IMG_0001.heic'].startswith('UnidentifiedImageError')
    assert not found.reused


def test_orientation_alpha_and_modes(mixed):
    root, _, good, found = mixed
    from PIL import Image
    rotated = folder.decode(str(root / photos.ROTATED))
    assert rotated.shape == photos.upright().shape  # tall again, not the stored wide one
    assert rotated[:20, :, 0].mean() > 200 and rotated[:20, :, 2].mean() < 50  # red on top
    assert rotated[20:, :, 2].mean() > 200 and rotated[20:, :, 0].mean() < 50  # blue below
    white = found.split.images[good.index(photos.TRANSPARENT)]
    assert (white == 255).all()  # transparent composited on white
    # The stored row is the decoded image through the shared resize.
    from kamal_jax.data.pixels import resize_array
    row = good.index(photos.ROTATED)
    np.testing.assert_array_equal(found.split.images[row], resize_array(rotated, SIZE))
    cmyk = next(p for p in good if p.endswith('.jpg') and Image.open(root / p).mode == 'CMYK')
    assert folder.decode(str(root / cmyk)).shape[-1] == 3


def test_a_second_load_reuses_the_records_without_decoding_and_a_change_rewrites_them(mixed, monkeypatch):
    root, data, good, found = mixed
    def fail(path):
        raise AssertionError(f'decoded {path} again')
    monkeypatch.setattr(folder, 'decode', fail)
    again = folder.load(str(root), image_size=SIZE, data_dir=str(data))
    assert again.reused and again.paths == found.paths and again.skipped == found.skipped
    np.testing.assert_array_equal(again.split.images[:5], found.split.images[:5])
    monkeypatch.undo()
    other = folder.load(str(root), image_size=(8, 8), data_dir=str(data))  # another size: written anew
    assert not other.reused and other.split.images.shape[1:] == (8, 8, 3)
    first = root / good[0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    changed = folder.load(str(root), image_size=SIZE, data_dir=str(data))
    assert not changed.reused and changed.paths == found.paths


def test_an_empty_or_unreadable_folder_is_one_sentence(tmp_path):
    (tmp_path / 'empty' / 'sub').mkdir(parents=True)
    with pytest.raises(folder.FolderError, match=r"data.train_folder = '.*empty' holds no files"):
        folder.load(str(tmp_path / 'empty'), image_size=SIZE, data_dir=str(tmp_path), field='data.train_folder')
    with pytest.raises(folder.FolderError, match='is not a folder'):
        folder.load(str(tmp_path / 'absent'), image_size=SIZE, data_dir=str(tmp_path))
    (tmp_path / 'text').mkdir()
    (tmp_path / 'text' / 'a.txt').write_text('hello')
    with pytest.raises(folder.FolderError, match=r"holds no readable image: all 1 files were skipped \(first: 'a.txt'"):
        folder.load(str(tmp_path / 'text'), image_size=SIZE, data_dir=str(tmp_path))


def test_class_sub_folders_are_labels(tmp_path):
    good = photos.write_mixed(str(tmp_path / 'eval'), count=20, classes=photos.CLASSES)
    (tmp_path / 'eval' / 'loose.jpg').write_bytes((tmp_path / 'eval' / good[0]).read_bytes())
    found = folder.load(str(tmp_path / 'eval'), image_size=SIZE, data_dir=str(tmp_path / 'data'), labelled=True)
    assert found.split.label_names == {'label': list(photos.CLASSES)}
    assert [photos.CLASSES[i] for i in found.split.labels['label']] == [p.split('/')[0] for p in found.paths]
    assert found.skipped == [('loose.jpg', 'not in a class sub-folder')]


def test_an_unpacked_cifar_folder_gives_the_tfds_path_pixels_at_another_size(tmp_path):
    """The kamal_cifar10 builder's archive, unpacked: the same images at 40x40, row for row."""
    tfds = pytest.importorskip('tensorflow_datasets')
    import test_datasets as td
    from kamal_jax.data import datasets as kd
    from kamal_jax.data.builders.cifar10 import KamalCifar10
    from kamal_jax.train.input import EpochBatches
    rng = np.random.default_rng(0)
    manual = tmp_path / 'manual'
    manual.mkdir()
    members = dict(td._cifar_members(rng, 3))
    td._write_tar_gz(manual / 'cifar10.tar.gz', sorted(members.items()))
    old = KamalCifar10.EXPECTED_COUNTS
    KamalCifar10.EXPECTED_COUNTS = None
    try:
        tf_split = kd.load('kamal_cifar10', 'train', data_dir=tmp_path / 'data', manual_dir=manual, image_size=(40, 40))
        builder = kd.builder('kamal_cifar10', data_dir=tmp_path / 'data')
        order = [ex['file_name'].decode() for ex in tfds.as_numpy(builder.as_dataset('train', shuffle_files=False))]
    finally:
        KamalCifar10.EXPECTED_COUNTS = old
    with tarfile.open(manual / 'cifar10.tar.gz') as tar:
        tar.extractall(tmp_path / 'unpacked', filter='data')
    found = folder.load(str(tmp_path / 'unpacked' / 'cifar10' / 'train'), image_size=(40, 40),
                        data_dir=str(tmp_path / 'data'), labelled=True)
    rows = [found.paths.index(name.split('/', 2)[2]) for name in order]  # the TFDS order
    assert found.split.label_names == tf_split.label_names
    np.testing.assert_array_equal(found.split.images[rows], tf_split.images)
    np.testing.assert_array_equal(found.split.labels['label'][rows], tf_split.labels['label'])
    a = EpochBatches({'image': tf_split.images}, 8, seed=1)
    b = EpochBatches({'image': found.split.images.subset(rows)}, 8, seed=1)
    for step in range(2 * a.steps_per_epoch):
        np.testing.assert_array_equal(a.batch(step)['image'], b.batch(step)['image'])


