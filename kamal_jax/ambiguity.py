"""Prediction ambiguity per sample and the least-ambiguous-teacher selection (pure functions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def as_categorical(logits: jax.Array) -> jax.Array:
    """A single sigmoid logit z becomes the 2-way logits [0, z] (same probabilities)."""
    if logits.shape[-1] == 1:
        return jnp.concatenate([jnp.zeros_like(logits), logits], axis=-1)
    return logits


def entropy(logits: jax.Array) -> jax.Array:
    """Per-sample Shannon entropy (nats) of softmax(logits) over the last axis, computed in float32.

    log_softmax subtracts the max, so extreme logits stay finite; 0 * log 0 counts as 0.
    """
    logp = jax.nn.log_softmax(as_categorical(logits).astype(jnp.float32), axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def select_least_ambiguous(entropies: jax.Array) -> jax.Array:
    """Index of the least ambiguous teacher per sample; `entropies` is (teachers, batch).

    Ties go to the teacher declared first, so selection is deterministic.
    """
    return jnp.argmin(entropies, axis=0)


def selection_mask(selected: jax.Array, num_teachers: int) -> jax.Array:
    """(batch, teachers) one-hot float mask of the selected teacher."""
    return jax.nn.one_hot(selected, num_teachers, dtype=jnp.float32)
