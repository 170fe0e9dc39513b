"""A split on disk as ArrayRecord files of ready pixels, read lazily by row: data past host memory.

    from kamal_jax.data import records
    records.write(out_dir, chunks, shape=(32, 32, 3), label_names={'label': [...]})
    split = records.open_split(out_dir)     # an ArraySplit whose `images` are a RecordImages
    split.images[[3, 1, 4]]                 # (3, 32, 32, 3) uint8, read from disk now

Why this format: each record is one image's already-decoded, already-resized uint8 pixels, stored
losslessly, so training reads exactly the pixels the in-memory loader gives, without TensorFlow
(it is needed only to decode and resize when the records are written). Records are read by index
(random access), so the seed-determined batch order of the in-memory path carries over unchanged,
and resuming is exact. Labels are small (one int64 per image and label key) and stay in memory.

A folder holds `images-NNNNN-of-MMMMM.array_record` shards, `labels.npz` and `info.json`; it is
written to a temporary folder and renamed into place, so a half-written folder is never read. One
run writes a folder at a time (the OS lock `FOLDER.lock` beside it; another run is refused naming
the holder), and a folder being replaced is renamed aside whole before the new one takes its name.
A write that fails (a full disk) raises `files.WriteError` naming the folder and leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np

from kamal_jax import locks
from kamal_jax.data.split import ArraySplit
from kamal_jax.files import WriteError, write_failure

__all__ = ['RecordImages', 'write', 'open_split', 'is_records_dir', 'INFO', 'FORMAT']

INFO = 'info.json'
LABELS = 'labels.npz'
FORMAT = 'kamal_jax.records/1'
WRITER_OPTIONS = 'group_size:1,uncompressed'  # one record per chunk: random access reads one image
# Random access: no read-ahead. Reads run on the calling thread (the input's grain workers are
# the parallelism): the reader's own pool let peak memory rise by ~230 MiB when reads missed the
# page cache (docs/PERFORMANCE.md).
READER_OPTIONS = 'readahead_buffer_size:0,max_parallelism:1'
RECORDS_PER_SHARD = 100_000


def is_records_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, INFO))


class RecordImages:
    """(N, H, W, C) uint8 images read from ArrayRecord shards on demand; indexes like a numpy array
    for what the trainer asks of it: an int, a slice or an integer array of rows.

    `subset(rows)` is a lazy view on some rows (nothing is read). `fingerprint` names the files and
    rows, so caches keyed by image index can tell one set of images from another without reading them.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, directory: str, paths: Sequence[str], count: int, shape: Sequence[int],
                 digest: str, rows: np.ndarray | None = None):
        self.directory, self.paths, self.count = directory, tuple(paths), int(count)
        self.image_shape, self.digest = tuple(int(s) for s in shape), digest
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        self._source = None

    @property
    def shape(self) -> tuple:
        return (len(self), *self.image_shape)

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.image_shape))

    @property
    def fingerprint(self) -> str:
        rows = '' if self.rows is None else f':{zlib.crc32(self.rows.tobytes()):08x}'
        return f'{self.digest}:{len(self)}{rows}'

    def __len__(self) -> int:
        return self.count if self.rows is None else len(self.rows)

    def __getstate__(self):  # the readers hold open files; workers open their own
        return {**self.__dict__, '_source': None}

    def _readers(self):
        """One reader per shard, and the first row of each shard. The shards are read from the
        calling thread (a grain worker): a thread pool per read, as grain's ArrayRecordDataSource
        starts, let peak memory grow with the number of shards (docs/PERFORMANCE.md)."""
        if self._source is None:
            from array_record.python.array_record_module import ArrayRecordReader
            readers = [ArrayRecordReader(p, READER_OPTIONS.strip()) for p in self.paths]
            starts = np.cumsum([0] + [r.num_records() for r in readers])
            if starts[-1] != self.count:
                raise ValueError(f'records folder {self.directory!r}: the shards hold {starts[-1]} images, '
                                 f'its {INFO} says {self.count}')
            self._source = (readers, starts)
        return self._source

    def subset(self, rows) -> 'RecordImages':
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= len(self))):
            raise IndexError(f'rows out of range for {len(self)} images')
        base = rows if self.rows is None else self.rows[rows]
        return RecordImages(self.directory, self.paths, self.count, self.image_shape, self.digest, base)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self._read(np.asarray([key]))[0]
        if isinstance(key, slice):
            return self._read(np.arange(*key.indices(len(self))))
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        if key.ndim != 1 or not np.issubdtype(key.dtype, np.integer):
            raise TypeError(f'RecordImages take an int, a slice or a 1-d integer array of rows, not {key!r}')
        return self._read(key)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        n = len(self)
        idx = np.where(idx < 0, idx + n, idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f'row {int(idx.max() if idx.max() >= n else idx.min())} is out of range for {n} images')
        rows = idx if self.rows is None else self.rows[idx]
        out = np.empty((len(rows), *self.image_shape), np.uint8)
        if not len(rows):
            return out
        readers, starts = self._readers()
        shard = np.searchsorted(starts, rows, side='right') - 1
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            for i, record in zip(where, readers[s].read([int(r) for r in rows[where] - starts[s]])):
                out[i] = np.frombuffer(record, np.uint8).reshape(self.image_shape)
        return out

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def __repr__(self):
        return f'RecordImages({self.directory!r}, shape={self.shape})'


def write(out_dir: str, chunks: Iterable[tuple[np.ndarray, Mapping[str, np.ndarray]]], *, shape: Sequence[int],
          label_names: Mapping[str, list], name: str = '', split: str = '', source: Mapping | None = None) -> str:
    """Writes (images [n, H, W, C] uint8, {label key: [n] ints}) chunks as a records folder; returns it.

    Only one chunk is in memory at a time. `source` (JSON data) says where the pixels came from;
    it is kept in info.json, and `open_or_write`-style callers compare it before reusing a folder.
    An existing `out_dir` is replaced only once the new folder is complete.
    """
    shape = tuple(int(s) for s in shape)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = f'{os.path.abspath(out_dir)}.tmp{os.getpid()}'
    with locks.acquire(f'{os.path.abspath(out_dir)}.lock', f'records folder {out_dir!r}',
                       'wait for that run to finish writing it, then relaunch.'):
        try:
            return _write(out_dir, tmp, chunks, shape, label_names, name, split, source)
        except Exception as e:  # noqa: BLE001 (ArrayRecord reports a full disk in its own words)
            reason = write_failure(e)
            shutil.rmtree(tmp, ignore_errors=True)
            if reason is None:
                raise
            raise WriteError(f'the records folder {out_dir} could not be written ({reason}); nothing of it was '
                             'kept; free space and relaunch.') from e


def _write(out_dir, tmp, chunks, shape, label_names, name, split, source) -> str:
    from array_record.python.array_record_module import ArrayRecordWriter
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    labels = {k: [] for k in label_names}
    count, shard, writer, digest = 0, 0, None, zlib.crc32(repr(shape).encode())
    try:
        for images, labs in chunks:
            images = np.asarray(images)
            if images.dtype != np.uint8 or tuple(images.shape[1:]) != shape:
                raise ValueError(f'records of {shape} uint8 pixels cannot hold a chunk of '
                                 f'{images.shape[1:]} {images.dtype}')
            if set(labs) != set(labels):
                raise ValueError(f'a chunk has labels {sorted(labs)}, the split {sorted(labels)}')
            for k, v in labs.items():
                labels[k].append(np.asarray(v, np.int64))
            for image in images:
                if writer is None or count % RECORDS_PER_SHARD == 0:
                    if writer is not None:
                        writer.close()
                    writer = ArrayRecordWriter(os.path.join(tmp, f'images-{shard:05d}'), WRITER_OPTIONS)
                    shard += 1
                data = np.ascontiguousarray(image).tobytes()
                writer.write(data)
                digest = zlib.crc32(data, digest)
                count += 1
    finally:
        if writer is not None:
            writer.close()
    if count == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f'no images to write to {out_dir}')
    names = []
    for i in range(shard):  # the shard count is known only now
        names.append(f'images-{i:05d}-of-{shard:05d}.array_record')
        os.replace(os.path.join(tmp, f'images-{i:05d}'), os.path.join(tmp, names[-1]))
    np.savez(os.path.join(tmp, LABELS), **{k: np.concatenate(v) if v else np.zeros(0, np.int64)
                                           for k, v in labels.items()})
    info = {'format': FORMAT, 'name': name, 'split': split, 'count': count, 'shape': list(shape),
            'label_names': {k: list(v) for k, v in label_names.items()}, 'shards': names,
            'crc32': f'{digest:08x}', 'source': dict(source or {})}
    with open(os.path.join(tmp, INFO), 'w') as f:
        json.dump(info, f, indent=1)
    if os.path.exists(out_dir):  # aside whole, then the new one in: never a half-deleted folder
        aside = f'{os.path.abspath(out_dir)}.old{os.getpid()}'
        os.replace(out_dir, aside)
        os.replace(tmp, out_dir)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    return out_dir


def read_info(directory: str) -> dict:
    """info.json of a records folder, or a ValueError naming the folder and what is wrong."""
    path = os.path.join(directory, INFO)
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ValueError(f'{directory!r} is not a kamal_jax records folder: it has no {INFO}') from None
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not even text
        raise ValueError(f'{path!r} cannot be read as JSON ({type(e).__name__}: {" ".join(str(e).split())})') from None
    if not isinstance(info, dict) or info.get('format') != FORMAT:
        found = info.get('format') if isinstance(info, dict) else type(info).__name__
        raise ValueError(f'{path!r} is not of format {FORMAT!r} (found {found!r})')
    for key, kind in (('count', int), ('shape', list), ('shards', list), ('label_names', dict), ('crc32', str)):
        if not isinstance(info.get(key), kind):
            raise ValueError(f'{path!r} has no valid {key!r} (a {kind.__name__} is needed)')
    missing = [s for s in info['shards'] if not os.path.isfile(os.path.join(directory, s))]
    if missing or not os.path.isfile(os.path.join(directory, LABELS)):
        raise ValueError(f'records folder {directory!r} is incomplete: {", ".join(missing) or LABELS} missing')
    return info


def _check_shards(directory: str, info: dict) -> None:
    """Every shard opens, holds the records info.json gives it (all but the last RECORDS_PER_SHARD),
    and its first record is one image's bytes: a ValueError naming the first shard that does not."""
    from array_record.python.array_record_module import ArrayRecordReader
    count, shards = int(info['count']), info['shards']
    image_bytes = int(np.prod(info['shape']))
    for i, name in enumerate(shards):
        path = os.path.join(directory, name)
        want = RECORDS_PER_SHARD if i < len(shards) - 1 else count - RECORDS_PER_SHARD * (len(shards) - 1)
        try:
            reader = ArrayRecordReader(path, READER_OPTIONS)
            try:
                got = reader.num_records()
                first = reader.read([0]) if got else []
            finally:
                reader.close()
        except Exception as e:  # noqa: BLE001 (ArrayRecord raises its own kinds on a damaged file)
            detail = ' '.join(str(e).split())[:200]
            raise ValueError(f'shard {path!r} is damaged or truncated' + (f' ({detail})' if detail else '')
                             + '; write the folder again') from None
        if got != want:
            raise ValueError(f'shard {path!r} holds {got} records where its {INFO} says {want}; the folder is damaged '
                             'or mixes two writes: write it again')
        if len(first[0]) != image_bytes:
            raise ValueError(f'shard {path!r} holds records of {len(first[0])} bytes where images of '
                             f'{tuple(info["shape"])} take {image_bytes}; write the folder again')


def _read_labels(directory: str) -> dict:
    path = os.path.join(directory, LABELS)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k].astype(np.int64) for k in z.files}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f'{path!r} cannot be read as the labels ({" ".join(str(e).split())[:200]})') from None


def open_split(directory: str):
    """The records folder as an `ArraySplit` whose `images` are read from disk on demand. Every
    shard is opened and counted first: a damaged folder is refused here, naming its file, rather
    than at some training step."""
    info = read_info(directory)
    labels = _read_labels(directory)
    _check_shards(directory, info)
    count = int(info['count'])
    for k, v in labels.items():
        if len(v) != count:
            raise ValueError(f'records folder {directory!r}: {len(v)} labels {k!r} for {count} images')
    images = RecordImages(directory, [os.path.join(directory, s) for s in info['shards']], count,
                          info['shape'], info['crc32'])
    return ArraySplit(images=images, labels=labels, label_names=info['label_names'],
                      name=info.get('name') or os.path.basename(os.path.normpath(directory)),
                      split=info.get('split') or 'train')


def take(split, rows):
    """The split restricted to `rows` (lazy for records: nothing is read)."""
    rows = np.asarray(rows)
    images = split.images.subset(rows) if isinstance(split.images, RecordImages) else split.images[rows]
    return type(split)(images=images, labels={k: v[rows] for k, v in split.labels.items()},
                       label_names=split.label_names, name=split.name, split=split.split)
