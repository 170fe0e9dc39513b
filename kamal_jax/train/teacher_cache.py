"""Frozen nets' outputs (stage 1: the teachers, stage 2: the component nets), computed once per
training image for runs with fixed views.

With `data.crop_padding == 0` and no flip every step shows the frozen nets the same un-augmented
images, so their task logits (float32) and the features the stage matches (float16, bfloat16 or
float32) are computed once, chunk by chunk, and memory-mapped from `WORKDIR/cache/stage1/<task>/`
or `WORKDIR/cache/stage2/`. With offline selection a sample needs the features of its selected
teacher only, so one array per matched tap holds just those (`Distill.selected_slots`).
When no selection is given, the build makes the offline selection itself from the logits it has
just computed (the stage's hard selector) and stores it as `selected`, so the teachers
run once per image, not once to select and again to cache.
A cache is written into a temporary folder and renamed when complete; its manifest holds
everything its contents depend on (frozen nets' hashes, data, view recipe, selection, taps,
dtypes), so a cache of other nets, other data or a killed build is rebuilt, never reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import zlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from kamal_jax import selection
from kamal_jax.files import write_atomic
from kamal_jax.progress import Progress
from kamal_jax.train.augment import to_unit

log = logging.getLogger('kamal_jax')

MANIFEST = 'manifest.json'
SELECTED = 'selected'  # each sample's selected teacher, when the build made the selection
FEATURE_DTYPES = {'float16': np.float16, 'bfloat16': ml_dtypes.bfloat16, 'float32': np.float32}


def logits_key(net: str, task: str | None = None) -> str:
    """Where a net's task logits sit in a cache: per net (one task per net in a stage's cache) or,
    for a cache serving several tasks (`Spec.logits_by_task`), per net and task."""
    return f'cache/{net}/logits' if task is None else f'cache/{net}/logits/{task}'


def feature_key(net: str, tap: str) -> str:
    return f'cache/{net}/{tap}'


def slot_key(i: int) -> str:
    return f'cache/selected/tap{i}'


# ----------------------------------------------------------------------------- what a stage caches

@dataclasses.dataclass(frozen=True, eq=False)
class Spec:
    """What one stage reads from its frozen nets, as the cache must hold it (`Distill.cache_spec`,
    `Amalgamate.cache_spec`)."""
    name: str                             # how logs name the stage: 'stage1/<task>' or 'stage2'
    kind: str                             # 'teacher' or 'component'
    nets: tuple[tuple[Any, str], ...]     # (frozen net, the task whose logits the stage reads)
    taps: Mapping[str, tuple[str, ...]]   # frozen net name -> the names of its matched taps
    # Selected-teacher-only storage: teacher -> tap -> (slot, per-sample shape); see `selected_slots`.
    selected_slots: Mapping[str, Mapping[str, tuple[str, tuple[int, ...]]]] | None = None
    select: Callable | None = None        # a hard selector, when the build makes the selection
    logits_by_task: bool = False          # key the logits by net and task (a net may teach several tasks)
    logits_dtype: str = 'float32'         # how the logits are stored (a logits-only cache: float16)


class CacheTooLarge(ValueError):
    """The cache would exceed its size limit (the caller names the config fields to change)."""

    def __init__(self, nbytes: int, limit_gb: float):
        super().__init__(f'the cache would take {nbytes / 2 ** 30:.2f} GiB, more than its limit of {limit_gb:g} GiB.')
        self.nbytes, self.limit_gb = nbytes, limit_gb


def outputs_fn(spec: Spec, feature_dtype: str = 'float16'):
    """`fn(frozen, inputs) -> {name: per-sample array}`: everything the stage's step reads from a cache.

    `inputs` holds uint8 'image' and, for selected-only storage, each sample's 'selected' teacher;
    without it the selector picks one here, and it is returned as `SELECTED`.
    """
    dtype, logits_dtype = FEATURE_DTYPES[feature_dtype], FEATURE_DTYPES[spec.logits_dtype]

    def fn(frozen, inputs):
        x = to_unit(inputs['image'])
        logits, feats, outputs = {}, {}, {}
        for net, task in spec.nets:
            if net.name not in outputs:  # a net teaching several tasks runs once
                outputs[net.name] = net.apply_eval(frozen[net.name], x)
            net_logits, net_feats = outputs[net.name]
            key = logits_key(net.name, task if spec.logits_by_task else None)
            logits[key] = net_logits[task].astype(logits_dtype)
            feats.update({feature_key(net.name, tap): net_feats[tap].astype(dtype) for tap in spec.taps[net.name]})
        if spec.selected_slots:
            names = [net.name for net, _ in spec.nets]
            selected = inputs.get('selected')
            if selected is None:
                context = selection.Context(tuple(logits[logits_key(n)] for n in names))
                selected = selection.choice(spec.select(context, None, None))
                logits[SELECTED] = selected
            feats = _keep_selected(feats, spec.selected_slots, names, selected)
        return {**logits, **feats}
    return fn


def selected_slots(spec: Spec, frozen, image_shape: tuple[int, ...]) -> dict:
    """Teacher -> tap -> (slot, per-sample shape) for storing only each sample's selected teacher.

    Slot i holds the selected teacher's i-th matched tap, flattened and zero-padded to the widest
    teacher's, so teachers of any architecture share one array per slot.
    """
    plain = dataclasses.replace(spec, selected_slots=None)
    shapes = layout(plain, frozen, image_shape, 1, 'float32')
    out = {}
    for net, _ in plain.nets:
        by_depth = [tap.name for tap in net.taps() if tap.name in plain.taps[net.name]]  # slot i: i-th from the input
        out[net.name] = {tap: (slot_key(i), tuple(shapes[feature_key(net.name, tap)][0][1:]))
                         for i, tap in enumerate(by_depth)}
    return out


def _by_slot(slots) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """Slot -> teacher -> (tap, shape): the inverse of `selected_slots`."""
    out: dict = {}
    for net, taps in slots.items():
        for tap, (slot, shape) in taps.items():
            out.setdefault(slot, {})[net] = (tap, tuple(shape))
    return dict(sorted(out.items()))


def _keep_selected(feats, slots, names, selected):
    """Per slot, each sample's selected teacher's features (a teacher without that slot gives zeros)."""
    out = {}
    for slot, nets in _by_slot(slots).items():
        width = max(int(np.prod(shape)) for _, shape in nets.values())
        first, (tap, _) = next(iter(nets.items()))
        some = feats[feature_key(first, tap)]  # a teacher without this slot gets zeros like it
        rows = jnp.stack([_flat_padded(feats[feature_key(name, nets[name][0])], width) if name in nets
                          else jnp.zeros((some.shape[0], width), some.dtype) for name in names])
        out[slot] = jnp.take_along_axis(rows, selected.astype(jnp.int32)[None, :, None], axis=0)[0]
    return out


def _flat_padded(a: jax.Array, width: int) -> jax.Array:
    a = a.reshape(a.shape[0], -1)
    return jnp.pad(a, ((0, 0), (0, width - a.shape[1])))


def read_outputs(batch: Mapping[str, jax.Array], net, taps, slots=None, index: int = 0, task: str | None = None):
    """A frozen net's cached `task` logits (as float32) and features (in its compute dtype) for the batch.

    With `slots` (selected-only storage) only the samples that selected this net (teacher `index`)
    have its features; the others get zeros, and the selection mask drops their terms anyway.
    """
    dtype = net.dtype or jnp.float32
    feats = {}
    for tap in taps:
        if slots:
            slot, shape = slots[tap]
            a = batch[slot][:, :int(np.prod(shape))]
            a = jnp.where((batch['selected'] == index)[:, None], a, jnp.zeros((), a.dtype))
            a = a.reshape(a.shape[0], *shape)
        else:
            a = batch[feature_key(net.name, tap)]
        feats[tap] = a.astype(dtype)
    by_task = logits_key(net.name, task)
    return batch[by_task if task is not None and by_task in batch else logits_key(net.name)].astype(jnp.float32), feats


def variables_sha256(variables: Any) -> str:
    """Content hash of a variable tree (paths, shapes, dtypes, bytes): the cache key of trained nets."""
    from kamal_jax.train.sharding import to_host
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(to_host(variables))[0]:
        a = np.ascontiguousarray(leaf)
        digest.update(f'{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape};'.encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- layout and size

def _input_specs(spec: Spec, image_shape: tuple[int, ...], given_selection: bool) -> dict:
    specs = {'image': jax.ShapeDtypeStruct((1, *image_shape), jnp.uint8)}
    if spec.selected_slots and given_selection:
        specs['selected'] = jax.ShapeDtypeStruct((1,), jnp.int32)
    return specs


def layout(spec: Spec, frozen, image_shape: tuple[int, ...], n: int, feature_dtype: str = 'float16',
           given_selection: bool = True) -> dict:
    """name -> (shape, dtype) of every cached array, from shapes alone (nothing is computed)."""
    shapes = jax.eval_shape(outputs_fn(spec, feature_dtype), frozen,
                            _input_specs(spec, image_shape, given_selection))
    return {k: ((n, *s.shape[1:]), np.dtype(s.dtype).name) for k, s in sorted(shapes.items())}


def size_bytes(spec: Mapping[str, Any]) -> int:
    return sum(int(np.prod(shape)) * np.dtype(_dtype(d)).itemsize for shape, d in spec.values())


def _dtype(name: str):
    return FEATURE_DTYPES.get(name, name)


def _saving_note(spec: Spec, frozen, image_shape, n, feature_dtype, nbytes) -> str:
    """With selected-only storage: how much smaller the cache is than one of every teacher's features."""
    if not spec.selected_slots:
        return ''
    full = size_bytes(layout(dataclasses.replace(spec, selected_slots=None), frozen, image_shape, n,
                             feature_dtype))
    return (f'; selected-teacher features only: {(full - nbytes) / 2 ** 20:.1f} MiB saved '
            f'({full - nbytes} bytes, {full / 2 ** 20:.1f} MiB with every teacher\'s)')


# ----------------------------------------------------------------------------- load or build

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


def load_or_build(path: str, *, spec: Spec, frozen, images: np.ndarray, key: Mapping[str, Any],
                  selected: np.ndarray | None = None, batch_size: int = 256, limit_gb: float = 8.0,
                  feature_dtype: str = 'float16') -> dict[str, np.ndarray]:
    """The cached arrays for `spec` on `images` (memory-mapped), built first if missing or stale.

    `key` names what the frozen nets and data are (hashes, data name/split/size/limit, view
    recipe); with the array layout and checksums of the images and the selection (selected-only
    storage) it is the manifest. Selected-only storage without `selected` makes the offline
    selection in the build and returns it as `SELECTED`. Raises `CacheTooLarge` over `limit_gb`.
    """
    name, kind = spec.name, spec.kind
    inputs = {'image': images}
    if spec.selected_slots and selected is not None:
        inputs['selected'] = np.asarray(selected, np.int32)
    arrays_spec = layout(spec, frozen, images.shape[1:], len(images), feature_dtype, 'selected' in inputs)
    manifest = {'key': dict(key), 'stage': name, 'feature_dtype': feature_dtype,
                'inputs_crc32': {k: _checksum(v) for k, v in inputs.items()},
                'arrays': {k: [list(s), d] for k, (s, d) in arrays_spec.items()}}
    manifest = json.loads(json.dumps(manifest))  # as it reads back from disk
    found = _read_manifest(path)
    if found == manifest:
        arrays = _open(path, arrays_spec)
        if arrays is not None:
            log.info('%s: %s outputs from the cache in %s', name, kind, path)
            return arrays
    if os.path.exists(path):
        log.info('%s: the %s cache in %s is %s; rebuilding it.', name, kind, path,
                 'incomplete' if found is None else f'for other {kind}s, data, views or selection')
    nbytes = size_bytes(arrays_spec)
    log.info('%s: caching %s outputs for %d images: %.1f MiB (limit %g GiB)%s', name, kind, len(images),
             nbytes / 2 ** 20, limit_gb, _saving_note(spec, frozen, images.shape[1:], len(images),
                                                      feature_dtype, nbytes))
    if nbytes > limit_gb * 2 ** 30:
        raise CacheTooLarge(nbytes, limit_gb)
    _build(path, outputs_fn(spec, feature_dtype), frozen, inputs, arrays_spec, manifest, batch_size)
    arrays = _open(path, arrays_spec)
    assert arrays is not None, path
    return arrays


def _checksum(array) -> int | str:
    """What the cache was built on: the CRC-32 of an in-memory array; for images streamed from disk
    (`data.records.RecordImages`) their fingerprint, the records' CRC-32 and rows (nothing is read)."""
    fingerprint = getattr(array, 'fingerprint', None)
    return fingerprint if fingerprint is not None else zlib.crc32(np.ascontiguousarray(array).data)


def _build(path, fn, frozen, inputs, spec, manifest, batch_size) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(frozen)):
        from kamal_jax.train.sharding import to_host  # several processes: a local copy of the weights
        frozen = jax.device_put(to_host(frozen), jax.local_devices()[0])
    fn = jax.jit(fn)
    out = {k: np.lib.format.open_memmap(os.path.join(tmp, k.replace('/', '__') + '.npy'), mode='w+',
                                        dtype=_dtype(d), shape=tuple(s)) for k, (s, d) in spec.items()}
    n = len(inputs['image'])
    progress = Progress(f'building cache {os.path.basename(path)}', n, 'images')
    for i in range(0, n, batch_size):  # fixed-size padded chunks: one compilation
        chunk = {k: _padded(v[i:i + batch_size], batch_size) for k, v in inputs.items()}
        keep = min(batch_size, n - i)
        result = jax.device_get(fn(frozen, {k: jnp.asarray(v) for k, v in chunk.items()}))
        for k, a in result.items():
            out[k][i:i + keep] = a[:keep]
        progress.update(keep)
    for a in out.values():
        a.flush()
    del out
    write_atomic(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _padded(chunk: np.ndarray, size: int) -> np.ndarray:
    pad = size - len(chunk)
    return np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]) if pad else chunk
