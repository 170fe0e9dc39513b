"""Stage 1's teacher outputs, computed once per training image for runs with fixed views.

With `data.crop_padding == 0` and no flip every step shows the teachers the same un-augmented
images, so their task logits (float32) and the features stage 1 matches (float16 or bfloat16)
are computed once, chunk by chunk, and memory-mapped from `WORKDIR/cache/stage1/<task>/`.
A cache is written into a temporary folder and renamed when complete; its manifest holds
everything its contents depend on (teacher checkpoint hashes, data, view recipe, taps, dtypes),
so a cache of other teachers, other data or a killed build is rebuilt, never reused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from kamal_jax.files import write_atomic
from kamal_jax.tasks import ConfigError
from kamal_jax.train.augment import to_unit

log = logging.getLogger('kamal_jax')

MANIFEST = 'manifest.json'
FEATURE_DTYPES = {'float16': np.float16, 'bfloat16': ml_dtypes.bfloat16, 'float32': np.float32}


def logits_key(teacher: str) -> str:
    return f'cache/{teacher}/logits'


def feature_key(teacher: str, tap: str) -> str:
    return f'cache/{teacher}/{tap}'


def cached_taps(stage) -> dict[str, tuple[str, ...]]:
    """Teacher name -> the names of its taps that stage 1 matches (sorted, no repeats)."""
    return {t.name: tuple(sorted({pair[0].name for pair in stage.pairs[t.name]})) for t in stage.teachers}


def _outputs_fn(stage, taps, feature_dtype):
    def fn(frozen, images):
        x = to_unit(images)
        out = {}
        for teacher in stage.teachers:
            logits, feats = teacher.apply_eval(frozen[teacher.name], x)
            out[logits_key(teacher.name)] = logits[stage.task].astype(jnp.float32)
            for tap in taps[teacher.name]:
                out[feature_key(teacher.name, tap)] = feats[tap].astype(feature_dtype)
        return out
    return fn


def layout(stage, frozen, image_shape: tuple[int, ...], n: int, feature_dtype: str = 'float16') -> dict:
    """name -> (shape, dtype) of every cached array, from shapes alone (nothing is computed)."""
    dtype = FEATURE_DTYPES[feature_dtype]
    shapes = jax.eval_shape(_outputs_fn(stage, cached_taps(stage), dtype), frozen,
                            jax.ShapeDtypeStruct((1, *image_shape), jnp.uint8))
    return {k: ((n, *s.shape[1:]), np.dtype(s.dtype).name) for k, s in sorted(shapes.items())}


def size_bytes(spec: Mapping[str, Any]) -> int:
    return sum(int(np.prod(shape)) * np.dtype(_dtype(d)).itemsize for shape, d in spec.values())


def _dtype(name: str):
    return FEATURE_DTYPES.get(name, name)


def check_limit(nbytes: int, limit_gb: float, what: str) -> None:
    if nbytes > limit_gb * 2 ** 30:
        raise ConfigError(f'{what} would take {nbytes / 2 ** 30:.2f} GiB, more than stage1.cache_limit_gb = '
                          f'{limit_gb:g}; raise the limit, use fewer or smaller images, or set '
                          'stage1.teacher_cache = False.')


def _read_manifest(path: str) -> dict | None:
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _open(path: str, spec: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    arrays = {}
    for key, (shape, dtype) in spec.items():
        try:
            a = np.load(os.path.join(path, key.replace('/', '__') + '.npy'), mmap_mode='r')
        except (OSError, ValueError):
            return None
        want = np.dtype(_dtype(dtype))
        if a.dtype != want and a.dtype.kind == 'V' and a.dtype.itemsize == want.itemsize:
            a = a.view(want)  # .npy stores bfloat16 as raw 2-byte records
        if tuple(a.shape) != tuple(shape) or a.dtype != np.dtype(_dtype(dtype)):
            return None
        arrays[key] = a
    return arrays


def load_or_build(path: str, *, stage, frozen, images: np.ndarray, key: Mapping[str, Any],
                  batch_size: int = 256, limit_gb: float = 8.0, feature_dtype: str = 'float16'
                  ) -> dict[str, np.ndarray]:
    """The cached arrays for `stage` on `images` (memory-mapped), built first if missing or stale.

    `key` names what the teachers and data are (checkpoint hashes, data name/split/size/limit,
    view recipe); together with the array layout and a checksum of the images it is the manifest.
    """
    spec = layout(stage, frozen, images.shape[1:], len(images), feature_dtype)
    manifest = {'key': dict(key), 'task': stage.task, 'feature_dtype': feature_dtype,
                'images_crc32': zlib.crc32(np.ascontiguousarray(images).data),
                'arrays': {k: [list(s), d] for k, (s, d) in spec.items()}}
    manifest = json.loads(json.dumps(manifest))  # as it reads back from disk
    found = _read_manifest(path)
    if found == manifest:
        arrays = _open(path, spec)
        if arrays is not None:
            log.info('stage1/%s: teacher outputs from the cache in %s', stage.task, path)
            return arrays
    if os.path.exists(path):
        log.info('stage1/%s: the teacher cache in %s is %s; rebuilding it.', stage.task, path,
                 'incomplete' if found is None else 'for other teachers, data or views')
    nbytes = size_bytes(spec)
    log.info('stage1/%s: caching teacher outputs for %d images: %.1f MiB (limit %g GiB)', stage.task,
             len(images), nbytes / 2 ** 20, limit_gb)
    check_limit(nbytes, limit_gb, f'The stage-1 teacher cache of task {stage.task!r}')
    _build(path, stage, frozen, images, spec, manifest, batch_size, feature_dtype)
    arrays = _open(path, spec)
    assert arrays is not None, path
    return arrays


def _build(path, stage, frozen, images, spec, manifest, batch_size, feature_dtype) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(frozen)):
        from kamal_jax.train.sharding import to_host  # several processes: a local copy of the weights
        frozen = jax.device_put(to_host(frozen), jax.local_devices()[0])
    fn = jax.jit(_outputs_fn(stage, cached_taps(stage), FEATURE_DTYPES[feature_dtype]))
    out = {k: np.lib.format.open_memmap(os.path.join(tmp, k.replace('/', '__') + '.npy'), mode='w+',
                                        dtype=_dtype(d), shape=tuple(s)) for k, (s, d) in spec.items()}
    n = len(images)
    for i in range(0, n, batch_size):  # fixed-size padded chunks: one compilation
        chunk = images[i:i + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        result = jax.device_get(fn(frozen, jnp.asarray(chunk)))
        for k, a in result.items():
            out[k][i:i + batch_size - pad] = a[:batch_size - pad]
    for a in out.values():
        a.flush()
    del out
    write_atomic(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
