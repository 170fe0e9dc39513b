"""Image folders as splits: decoding rules, skipped files, records reuse (the TFDS path's batches from an
unpacked archive: tests/test_own_images.py)."""
import json
import os

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
    assert sorted(found.paths) == good and len(found.split.images) == len(good)
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
    white = found.split.images[found.paths.index(photos.TRANSPARENT)]
    assert (white == 255).all()  # transparent composited on white
    # The stored row is the decoded image through the shared resize.
    from kamal_jax.data.pixels import resize_array
    row = found.paths.index(photos.ROTATED)
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
    # Records of another row order (those written in sorted path order say none) are rewritten.
    info_path = os.path.join(folder.records_dir(str(root), str(data), SIZE, True, False), 'info.json')
    info = json.load(open(info_path))
    del info['source']['order']
    json.dump(info, open(info_path, 'w'))
    reordered = folder.load(str(root), image_size=SIZE, data_dir=str(data))
    assert not reordered.reused and reordered.paths == found.paths


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
