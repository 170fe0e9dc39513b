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


def put_batch(batch: Any, mesh: Mesh) -> Any:
    """Host numpy batch -> global arrays split along the batch axis over the mesh."""
    sharding = data_sharded(mesh)
    return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))


def jit_train_step(step: Callable, mesh: Mesh) -> Callable:
    """jit with explicit shardings; the state argument is donated (updated in place)."""
    rep, data = replicated(mesh), data_sharded(mesh)
    return jax.jit(step, in_shardings=(rep, rep, data, rep), out_shardings=(rep, rep),
                   donate_argnums=(0,))


def check_batch_size(batch_size: int, mesh: Mesh, field: str) -> None:
    if batch_size % mesh.size:
        raise ValueError(f'{field} = {batch_size} is not divisible by the {mesh.size} devices of the mesh.')
