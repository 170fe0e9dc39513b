"""A network together with how it sees the data (input size, normalisation) and its task heads."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from kamal_jax.ambiguity import as_categorical


@dataclasses.dataclass(frozen=True, eq=False)
class Net:
    """Static description of a model for jitted steps; its variables travel as step arguments.

    `heads` maps task -> [start, stop) for flat-logit models (ported teachers); multi-head
    models (components, target) return a task dict and leave it empty.
    """
    name: str
    arch: str
    module: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, ...] = ()
    heads: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    widths: tuple[int, ...] = ()
    dtype: Any = None  # compute dtype of `module` (None: float32); see `with_compute_dtype`

    def prepare(self, images: jax.Array, dtype=None) -> jax.Array:
        """[0, 1] NHWC images -> this net's resolution and normalisation, in its compute dtype."""
        dtype = dtype or self.dtype or jnp.float32
        if self.input_size and tuple(images.shape[1:3]) != tuple(self.input_size):
            images = jax.image.resize(images, (images.shape[0], *self.input_size, images.shape[3]),
                                      method='linear')
        mean = jnp.asarray(self.mean, jnp.float32)
        std = jnp.asarray(self.std, jnp.float32)
        return ((images - mean) / std).astype(dtype)

    def with_compute_dtype(self, dtype) -> 'Net':
        """This net computing in `dtype` ('float32' or 'bfloat16'); params stay float32."""
        from kamal_jax.models.registry import with_dtype
        if dtype is None or str(dtype) == 'float32':
            return self
        return dataclasses.replace(self, module=with_dtype(self.module, jnp.dtype(dtype)), dtype=jnp.dtype(dtype))

    def task_logits(self, logits: Any) -> dict[str, jax.Array]:
        if isinstance(logits, Mapping):
            return dict(logits)
        return {task: as_categorical(logits[:, a:b]) for task, (a, b) in self.heads.items()}

    def taps(self):
        return self.module.backbone.taps()

    def apply_eval(self, variables, images: jax.Array):
        """(task logits dict, features) in inference mode."""
        logits, features = self.module.apply(variables, self.prepare(images), train=False)
        return self.task_logits(logits), features
