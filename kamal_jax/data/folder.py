"""A folder of your own image files as a split: every image under it, decoded once into a records folder.

    from kamal_jax.data import folder
    found = folder.load('~/photos', image_size=(64, 64), data_dir='~/tensorflow_datasets')
    found.split          # an ArraySplit whose images are read from the records on disk
    found.skipped        # [(relative path, why)] of the files that are not readable images

Every file under the folder (recursively) is tried with Pillow: its EXIF
orientation is applied, it is converted to RGB, and it is resized by `pixels.resize_array`, the
function the TFDS path resizes with. Alpha is composited on white: a transparent background is
most often meant as the page's, and dropping alpha would show whatever colour the transparent pixels
happen to hold (often black). CMYK is converted by Pillow's formula (embedded ICC profiles are not
applied); 16-bit images are scaled to 8 bits. Files Pillow cannot open (unsupported formats such as
HEIC, text files), truncated or corrupt ones are skipped and reported, never fatal.

The rows come in `tfds_order`: a fixed pseudo-random order that does not depend on the file
system (only on the files' names and the folder's own and its parent's names), and equals the order
of the split TFDS stores when the project's archive builders (`kamal_cifar10`, `kamal_imagewoof`)
read the same files from their archive. So a folder unpacked from `cifar10.tar.gz`
(`.../cifar10/train`) feeds a run exactly the batches `data.name = 'kamal_cifar10'` does.

The pixels are written once as a records folder (`kamal_jax.data.records`) under
DATA_DIR/kamal_jax_records/folders/, and reused while the folder's listing (paths, sizes,
modification times), the image size and the row order are what they were when it was written.

`labelled=True` reads the class-per-subfolder layout (`eval/cat/1.jpg`): the first sub-folder of a
file names its class (label key 'label', the classes in sorted order); files at the top are skipped.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import zlib
from typing import NamedTuple, Sequence

import numpy as np

from kamal_jax.data import pixels
from kamal_jax.data.split import ArraySplit

__all__ = ['FolderError', 'Found', 'load', 'check_folder', 'list_files', 'tfds_order', 'decode', 'to_rgb', 'read_image',
           'records_dir', 'write_skipped']

CHUNK = 256  # images decoded together (their pixels are in memory at once), then written
LABEL_KEY = 'label'
# Recorded with the records: records written in another row order (before it was this) are rewritten.
ORDER = 'tfds: md5(folder name + parent/folder/path)'


class FolderError(ValueError):
    """The folder cannot give a split (missing, empty, no readable image); the message says which."""


class Found(NamedTuple):
    split: ArraySplit
    skipped: list  # [(relative path, reason)]
    paths: list  # relative path of each row
    reused: bool  # read from records written before: nothing was decoded


def list_files(root: str) -> list[str]:
    """Every regular file under `root`, as sorted '/'-joined paths relative to it."""
    found = []
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(directory, root)
        for name in files:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                found.append(name if rel == '.' else f'{rel}/{name}'.replace(os.sep, '/'))
    return sorted(found)


def tfds_order(root: str, paths: Sequence[str]) -> list[str]:
    """`paths` (relative to `root`) in the order TFDS stores a split built from an archive of
    `root`'s parent, with each file's archive member name as its key.

    TFDS writes a split sorted by a salted hash of the keys its builder yields
    (`tfds.core.shuffle.Shuffler`: md5(salt + key) as a 128-bit integer, the salt being the split's
    name). The project's archive builders yield key = member name (`cifar10/train/cat/0001.jpg`) for
    the split named by its second part. Here the key is the file's path from the folder's parent's
    parent (`cifar10/train/cat/0001.jpg` for the folder `.../cifar10/train`) and the salt the folder's
    name (`train`), so the same files come in the same order. Ties (none in practice) go by path.
    """
    root = os.path.abspath(os.path.expanduser(root))
    name, parent = os.path.basename(root), os.path.basename(os.path.dirname(root))
    salted = hashlib.md5(name.encode('utf-8', 'surrogateescape'))

    def key(rel: str) -> tuple[bytes, str]:
        h = salted.copy()
        h.update('/'.join(p for p in (parent, name, rel) if p).encode('utf-8', 'surrogateescape'))
        return h.digest(), rel  # big-endian digest bytes sort as TFDS's integer hash does

    return sorted(paths, key=key)


def listing_digest(root: str, paths: Sequence[str]) -> str:
    """What the records are reused for: each file's path, size and modification time."""
    h = hashlib.sha256()
    for rel in paths:
        st = os.stat(os.path.join(root, rel))
        h.update(f'{rel}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
    return h.hexdigest()


def to_rgb(image) -> np.ndarray:
    """A Pillow image as (H, W, 3) uint8 RGB: alpha composited on white, 16 bits scaled to 8."""
    from PIL import Image
    mode = image.mode
    if mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (mode == 'P' and 'transparency' in image.info):
        rgba = image.convert('RGBA')
        page = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        page.alpha_composite(rgba)
        return np.asarray(page.convert('RGB'))
    if mode.startswith('I;16') or mode == 'I':
        grey = np.asarray(image, np.float64)
        grey = np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image if mode == 'RGB' else image.convert('RGB'))


def decode(path: str) -> np.ndarray:
    """The file's pixels, upright (EXIF orientation applied), as (H, W, 3) uint8 RGB. Raises on a
    file that is not an image Pillow reads, or that is truncated or corrupt."""
    from PIL import Image, ImageOps
    with Image.open(path) as image:
        image.load()  # a truncated or corrupt file fails here, not later
        upright = ImageOps.exif_transpose(image)
        return np.ascontiguousarray(to_rgb(upright))


def read_image(path: str, image_size: Sequence[int], crop_to_aspect: bool = True):
    """(pixels at `image_size`, None) or (None, why the file was skipped)."""
    try:
        return pixels.resize_array(decode(path), image_size, crop_to_aspect), None
    except Exception as e:  # noqa: BLE001 (a bad file is skipped and reported, whatever Pillow raises)
        return None, f'{type(e).__name__}: {" ".join(str(e).split())}'


def records_dir(root: str, data_dir: str, image_size: Sequence[int], crop_to_aspect: bool, labelled: bool) -> str:
    """DATA_DIR/kamal_jax_records/folders/<name>-<hash of its absolute path>/<H>x<W>[c][-labelled]."""
    root = os.path.abspath(os.path.expanduser(root))
    name = re.sub(r'[^A-Za-z0-9_.+-]+', '_', os.path.basename(root.rstrip(os.sep)) or 'root')
    size = f'{int(image_size[0])}x{int(image_size[1])}' + ('c' if crop_to_aspect else '')
    return os.path.join(os.path.expanduser(data_dir), 'kamal_jax_records', 'folders',
                        f'{name}-{zlib.crc32(root.encode()):08x}', size + ('-labelled' if labelled else ''))


def check_folder(root: str, field: str) -> list[str]:
    """The folder's files, or one sentence naming `field` when it is missing or holds none."""
    if not os.path.isdir(root):
        raise FolderError(f'{field} = {root!r} is not a folder.')
    files = list_files(root)
    if not files:
        raise FolderError(f'{field} = {root!r} holds no files; put the images there (sub-folders are read too).')
    return files


def _class_of(rel: str) -> str | None:
    parts = rel.split('/')
    return parts[0] if len(parts) > 1 else None


def _stored(out: str, source: dict) -> Found | None:
    """The records at `out` when they were written from this `source`; None when they are missing,
    incomplete or of another listing (to be written again)."""
    from kamal_jax.data import records
    try:
        kept = dict(records.read_info(out).get('source') or {})
        if {k: kept.get(k) for k in source} == source:
            return Found(records.open_split(out), [tuple(s) for s in kept['skipped']], list(kept['paths']), True)
    except ValueError:
        pass
    return None


def load(root: str, *, image_size: Sequence[int], data_dir: str, crop_to_aspect: bool = True,
         labelled: bool = False, workers: int = 0, field: str = 'folder') -> Found:
    """The folder's images as a split read from records, written first when the folder changed.

    workers: threads decoding at once (0: one per CPU core, at most 8). `field` names the folder
    in error messages (the config field it came from).
    """
    from kamal_jax.data import records
    root = os.path.abspath(os.path.expanduser(root))
    files = check_folder(root, field)
    out = records_dir(root, data_dir, image_size, crop_to_aspect, labelled)
    source = {'folder': root, 'listing': listing_digest(root, files), 'image_size': [int(s) for s in image_size],
              'crop_to_aspect': bool(crop_to_aspect), 'labelled': bool(labelled), 'order': ORDER}
    files = tfds_order(root, files)
    stored = _stored(out, source)
    if stored is not None:
        return stored
    skipped, candidates = [], []
    for rel in files:
        if labelled and _class_of(rel) is None:
            skipped.append((rel, 'not in a class sub-folder'))
        else:
            candidates.append(rel)
    classes = sorted({_class_of(rel) for rel in candidates}) if labelled else []
    paths = []
    workers = workers or min(8, os.cpu_count() or 1)
    from kamal_jax.progress import Progress
    progress = Progress(f'decoding the images of {root}', len(candidates), 'files')

    def chunks():
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for i in range(0, len(candidates), CHUNK):
                part = candidates[i:i + CHUNK]
                results = list(pool.map(lambda rel: read_image(os.path.join(root, rel), image_size, crop_to_aspect),
                                        part))
                progress.update(len(part))
                good = [(rel, img) for rel, (img, _) in zip(part, results) if img is not None]
                skipped.extend((rel, why) for rel, (img, why) in zip(part, results) if img is None)
                if not good:
                    continue
                paths.extend(rel for rel, _ in good)
                labels = {LABEL_KEY: [classes.index(_class_of(rel)) for rel, _ in good]} if labelled else {}
                yield np.stack([img for _, img in good]), labels

    source_out = dict(source)  # records.write reads it after the last chunk, when the lists are complete
    try:
        records.write(out, _with_lists(chunks(), source_out, paths, skipped),
                      shape=(int(image_size[0]), int(image_size[1]), 3),
                      label_names={LABEL_KEY: classes} if labelled else {}, name=os.path.basename(root),
                      split='folder', source=source_out)
    except ValueError as e:
        if paths:
            raise
        raise FolderError(f'{field} = {root!r} holds no readable image: all {len(files)} files were skipped '
                          f'(first: {skipped[0][0]!r}, {skipped[0][1]}).') from e
    skipped.sort()
    return Found(records.open_split(out), skipped, paths, False)


def _with_lists(chunks, source: dict, paths: list, skipped: list):
    """Yields the chunks, then puts the row paths and skipped files into `source` (which
    `records.write` reads only after the last chunk)."""
    yield from chunks
    source['paths'] = list(paths)
    source['skipped'] = sorted([list(s) for s in skipped])


def write_skipped(path: str, skipped: Sequence[tuple[str, str]]) -> None:
    """The skipped files as 'relative path<TAB>reason' lines."""
    with open(path, 'w') as f:
        f.write('path\treason\n')
        for rel, why in skipped:
            f.write(f'{rel}\t{why}\n')
