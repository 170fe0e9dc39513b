"""Accuracy of any net on every task that has labels in a split."""

from __future__ import annotations

import collections
import functools
from typing import Any, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kamal_jax.ambiguity import as_categorical
from kamal_jax.progress import Progress
from kamal_jax.train import sharding
from kamal_jax.train.augment import to_unit
from kamal_jax.train.nets import Net

IN_FLIGHT = 2  # batches dispatched ahead of the one being fetched: the device never waits on the host


class TaskClasses(Protocol):
    """What scoring reads of a task (`kamal_jax.tasks.Task` is one): the label it reads and its classes."""
    label_key: str
    classes: Sequence[str]


def task_targets(task: TaskClasses, labels: Mapping[str, np.ndarray],
                 label_names: Mapping[str, list[str]]) -> np.ndarray:
    """Index into `task.classes` per sample, -1 where the sample belongs to no class of the task."""
    names = label_names[task.label_key]
    lookup = np.array([task.classes.index(n) if n in task.classes else -1 for n in names])
    return lookup[labels[task.label_key]]


@functools.lru_cache(maxsize=64)
def _predict_fn(net: Net):
    return jax.jit(lambda v, x: {t: as_categorical(l) for t, l in net.apply_eval(v, to_unit(x))[0].items()})


def _mesh_of(variables: Any):
    """The mesh the weights are replicated over, when it spans more than one device: evaluation runs
    there, the batch split over it like training's. None: one device, as jit places it."""
    for x in jax.tree.leaves(variables):
        spec = getattr(x, 'sharding', None)
        if isinstance(spec, jax.sharding.NamedSharding) and (spec.mesh.size > 1 or jax.process_count() > 1):
            return spec.mesh
    return None


def predict(net: Net, variables: Any, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Task logits for all images, in fixed-size padded batches (one compilation per net).

    Where `variables` live replicated over a mesh (the run's teachers and trained students), each
    batch is split over it and every process passes the rows its devices hold; the outputs are
    gathered on every process. A few batches are in flight at once, so copies overlap compute.
    """
    fn = _predict_fn(net)
    mesh = _mesh_of(variables)
    if mesh is not None:
        batch_size = -(-batch_size // mesh.size) * mesh.size

    def put(chunk):
        return sharding.put_batch(chunk, mesh) if mesh is not None else jnp.asarray(chunk)
    outputs, pending = [], collections.deque()
    progress = Progress(f'evaluating {net.name}', len(images), 'images')

    def collect():
        out, valid = pending.popleft()
        out = sharding.to_host(out)
        outputs.append({t: l[:valid] for t, l in out.items()})
        progress.update(valid)
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        valid = len(chunk)
        if valid < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - valid,) + chunk.shape[1:], chunk.dtype)])
        pending.append((fn(variables, put(chunk)), valid))
        if len(pending) > IN_FLIGHT:
            collect()
    while pending:
        collect()
    return {t: np.concatenate([o[t] for o in outputs]) for t in outputs[0]}


def evaluate(net: Net, variables: Any, split: Any, tasks: Mapping[str, TaskClasses],
             batch_size: int = 256) -> dict[str, float]:
    """Top-1 accuracy per task, over the samples of the split that belong to the task's classes."""
    return accuracy(predict(net, variables, split.images, batch_size), split, tasks)


def accuracy(logits: Mapping[str, np.ndarray], split: Any, tasks: Mapping[str, TaskClasses]) -> dict[str, float]:
    """Top-1 accuracy per task from `predict`'s logits on `split` ({} where it has no labels)."""
    result = {}
    for name, task in tasks.items():
        if name not in logits or task.label_key not in split.labels:
            continue
        target = task_targets(task, split.labels, split.label_names)
        valid = target >= 0
        if valid.any():
            result[name] = float(np.mean(np.argmax(logits[name][valid], -1) == target[valid]))
    return result


def forward_flops(net: Net, variables: Any, image_shape: tuple[int, ...]) -> int:
    """Floating-point operations of one inference pass on one image (XLA's cost analysis).

    A multiply-add counts as 2, zero-padded taps of a convolution are not counted; the input's
    resize and normalisation are included. Counted on XLA:CPU whatever the run's device: on a GPU,
    convolutions become cuDNN calls that XLA's cost analysis does not count (a CIFAR ResNet-20
    read 0.9 MFLOPs there instead of 75).
    """
    try:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
    except RuntimeError:  # JAX_PLATFORMS without cpu: count on the default device
        sharding = None
    host = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=sharding), variables)
    image = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32, sharding=sharding)
    cost = jax.jit(lambda v, x: net.apply_eval(v, x)).lower(host, image).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return int(cost.get('flops', 0))
