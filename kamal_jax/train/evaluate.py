"""Accuracy of any net on every task that has labels in a split."""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kamal_jax.ambiguity import as_categorical
from kamal_jax.progress import Progress
from kamal_jax.tasks import Task
from kamal_jax.train.augment import to_unit
from kamal_jax.train.nets import Net


def task_targets(task: Task, labels: Mapping[str, np.ndarray],
                 label_names: Mapping[str, list[str]]) -> np.ndarray:
    """Index into `task.classes` per sample, -1 where the sample belongs to no class of the task."""
    names = label_names[task.label_key]
    lookup = np.array([task.classes.index(n) if n in task.classes else -1 for n in names])
    return lookup[labels[task.label_key]]


@functools.lru_cache(maxsize=64)
def _predict_fn(net: Net):
    return jax.jit(lambda v, x: {t: as_categorical(l) for t, l in net.apply_eval(v, to_unit(x))[0].items()})


def predict(net: Net, variables: Any, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Task logits for all images, in fixed-size padded batches (one compilation per net)."""
    fn = _predict_fn(net)
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(variables)):
        # Several processes: each evaluates on its own devices, from a local copy of the weights.
        from kamal_jax.train.sharding import to_host
        variables = jax.device_put(to_host(variables), jax.local_devices()[0])
    outputs, progress = [], Progress(f'evaluating {net.name}', len(images), 'images')
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        out = jax.device_get(fn(variables, jnp.asarray(chunk)))
        outputs.append({t: l[:batch_size - pad] for t, l in out.items()})
        progress.update(len(chunk) - pad)
    return {t: np.concatenate([o[t] for o in outputs]) for t in outputs[0]}


def evaluate(net: Net, variables: Any, split: Any, tasks: Mapping[str, Task],
             batch_size: int = 256) -> dict[str, float]:
    """Top-1 accuracy per task, over the samples of the split that belong to the task's classes."""
    logits = predict(net, variables, split.images, batch_size)
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
