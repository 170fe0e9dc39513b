"""Prediction ambiguity per sample (pure functions); the selectors that use it are in `selection.py`."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def as_categorical(logits: jax.Array) -> jax.Array:
    """A single sigmoid logit z becomes the 2-way logits [0, z] (same probabilities)."""
    if logits.shape[-1] == 1:
        return jnp.concatenate([jnp.zeros_like(logits), logits], axis=-1)
    return logits


def probabilities(logits: jax.Array) -> jax.Array:
    """softmax(logits) over the last axis, in float32 (a single sigmoid logit as its two classes)."""
    return jax.nn.softmax(as_categorical(jnp.asarray(logits, jnp.float32)), axis=-1)


def entropy(logits: jax.Array) -> jax.Array:
    """Per-sample Shannon entropy (nats) of softmax(logits) over the last axis, computed in float32.

    log_softmax subtracts the max, so extreme logits stay finite; 0 * log 0 counts as 0.
    """
    logp = jax.nn.log_softmax(as_categorical(logits).astype(jnp.float32), axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
