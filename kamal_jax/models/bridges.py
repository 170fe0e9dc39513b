"""Transfer bridges: 1x1 convolutions with bias, no norm, no activation, as plain param dicts.

They are pure `x @ kernel + bias` so that stage steps can hold any number of them in one pytree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def init_bridge(rng: jax.Array, in_channels: int, out_channels: int) -> dict:
    """LeCun-normal kernel: each output filter starts with squared norm close to 1."""
    kernel = jax.random.normal(rng, (in_channels, out_channels)) / jnp.sqrt(in_channels)
    return {'kernel': kernel, 'bias': jnp.zeros((out_channels,))}


def apply_bridge(params: dict, x: jax.Array) -> jax.Array:
    return jnp.einsum('...c,cd->...d', x, params['kernel'].astype(x.dtype)) + params['bias'].astype(x.dtype)
