"""Device mesh and shardings: batches split over a 'data' axis, state and frozen nets replicated."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(num_devices: int = -1) -> Mesh:
    devices = jax.devices()
    if num_devices > 0:
        if num_devices > len(devices):
            raise ValueError(f'mesh.num_devices = {num_devices} but only {len(devices)} devices exist.')
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P('data'))


def stacked_data_sharded(mesh: Mesh) -> NamedSharding:
    """k stacked batches [k, batch, ...]: the batch axis (second) split over the mesh."""
    return NamedSharding(mesh, P(None, 'data'))


def process_rows(batch_size: int, mesh: Mesh) -> slice:
    """The rows of a global batch that this process's devices hold: [i*B/P, (i+1)*B/P) when the
    mesh lists the processes' devices in order (it does: `jax.devices()` is ordered that way)."""
    index = data_sharded(mesh).addressable_devices_indices_map((batch_size,))
    starts = [idx[0].start or 0 for idx in index.values()]
    stops = [batch_size if idx[0].stop is None else idx[0].stop for idx in index.values()]
    lo, hi = min(starts), max(stops)
    if hi - lo != sum(b - a for a, b in set(zip(starts, stops))):
        raise ValueError('this process\'s devices do not hold one contiguous block of the batch; '
                         'build the mesh from jax.devices() in their order.')
    return slice(lo, hi)


def put_batch(batch: Any, mesh: Mesh, stacked: bool = False, local: bool = False) -> Any:
    """Host numpy batch -> global arrays split along the batch axis over the mesh.

    `batch` is the whole global batch (every process computes the same, seed-determined one);
    with several processes each one hands over only the rows its own devices hold. `local`: the
    batch already holds only those rows (`process_rows`; the training input reads no others).
    `stacked`: k batches stacked on a leading axis ([k, batch, ...], for `steps.make_multi_step`).
    """
    sharding = stacked_data_sharded(mesh) if stacked else data_sharded(mesh)
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)
    if local:
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
    axis = int(stacked)  # the batch axis
    rows = (slice(None),) * axis + (process_rows(np.shape(jax.tree.leaves(batch)[0])[axis], mesh),)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        sharding, np.asarray(x[rows]), np.shape(x)), batch)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Every leaf on every device of the mesh (all processes must pass the same values)."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)  # already global: a no-op or a reshard
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """Replicated (or process-local) arrays -> numpy, on every process."""
    if jax.process_count() == 1:  # one batched transfer: the copies overlap instead of queueing
        return jax.tree.map(np.asarray, jax.device_get(tree))

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                from jax.experimental import multihost_utils
                return np.asarray(multihost_utils.process_allgather(x, tiled=True))
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)
    return jax.tree.map(get, tree)


def jit_train_step(step: Callable, mesh: Mesh, stacked: bool = False) -> Callable:
    """jit with explicit shardings; the state argument is donated (updated in place). `stacked`:
    for `steps.make_multi_step`, whose batches are stacked [k, batch, ...]."""
    rep, data = replicated(mesh), stacked_data_sharded(mesh) if stacked else data_sharded(mesh)
    return jax.jit(step, in_shardings=(rep, rep, data, rep), out_shardings=(rep, rep),
                   donate_argnums=(0,))


def check_batch_size(batch_size: int, mesh: Mesh, field: str) -> None:
    if batch_size % mesh.size:
        raise ValueError(f'{field} = {batch_size} is not divisible by the {mesh.size} devices of the mesh.')
