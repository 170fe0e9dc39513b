"""Distillation losses as pure functions of arrays. Per-sample outputs; callers reduce."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kamal_jax.ambiguity import as_categorical


def resize_like(x: jax.Array, height: int, width: int) -> jax.Array:
    """Resizes an NHWC map to (height, width); identity when the size already matches."""
    if x.shape[1:3] == (height, width):
        return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), method='linear')


def feature_mse(student: jax.Array, teacher: jax.Array) -> jax.Array:
    """Per-sample mean squared error of two NHWC maps (teacher resized to the student's grid)."""
    teacher = resize_like(teacher, student.shape[1], student.shape[2])
    diff = student.astype(jnp.float32) - teacher.astype(jnp.float32)
    return jnp.mean(jnp.square(diff), axis=(1, 2, 3))


def logit_mse(student: jax.Array, teacher: jax.Array) -> jax.Array:
    """Per-sample mean squared error of raw logits, as the paper's code matches them."""
    diff = as_categorical(student).astype(jnp.float32) - as_categorical(teacher).astype(jnp.float32)
    return jnp.mean(jnp.square(diff), axis=-1)


def soft_kl(student: jax.Array, teacher: jax.Array, *, temperature: float = 1.0) -> jax.Array:
    """Per-sample KL(teacher || student) of tempered softmaxes, scaled by T^2 (Hinton et al.)."""
    t = jax.nn.log_softmax(as_categorical(teacher).astype(jnp.float32) / temperature, axis=-1)
    s = jax.nn.log_softmax(as_categorical(student).astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(t) * (t - s), axis=-1) * temperature ** 2


def logit_loss(student: jax.Array, teacher: jax.Array, *, kind: str = 'mse',
               temperature: float = 1.0) -> jax.Array:
    if kind == 'mse':
        return logit_mse(student, teacher)
    if kind == 'kl':
        return soft_kl(student, teacher, temperature=temperature)
    raise ValueError(f"logit_loss must be 'mse' or 'kl', got {kind!r}.")


def weight_norm_penalty(kernel: jax.Array) -> jax.Array:
    """Mean over output filters of (||w||^2 - 1)^2; keeps teacher-side bridges from collapsing.

    `kernel` is a 1x1 conv kernel, (..., in, out); biases are not included.
    """
    kernel = kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)
    return jnp.mean(jnp.square(jnp.sum(jnp.square(kernel), axis=0) - 1.0))


def weighted_per_sample(per_teacher: jax.Array, weights: jax.Array) -> jax.Array:
    """Mixes each sample's per-teacher losses by its selector weights: (teachers, batch) x (batch, teachers)."""
    return jnp.sum(per_teacher.T * weights, axis=-1)


def average_probabilities(teacher_logits, temperature: float = 1.0) -> jax.Array:
    """Mean over teachers of softmax(logits / T): the combined soft target of multi-teacher KD."""
    probs = [jax.nn.softmax(as_categorical(l).astype(jnp.float32) / temperature, axis=-1)
             for l in teacher_logits]
    return jnp.mean(jnp.stack(probs), axis=0)


def average_logits(teacher_logits, temperature: float = 1.0) -> jax.Array:
    """softmax(mean of the teachers' logits / T): the normalised product (geometric mean) of their
    softmax(logits / T), i.e. a product of experts, where a class must be likely under every teacher."""
    mean = jnp.mean(jnp.stack([as_categorical(l).astype(jnp.float32) for l in teacher_logits]), axis=0)
    return jax.nn.softmax(mean / temperature, axis=-1)


def soft_target_kl(student: jax.Array, target_probs: jax.Array, *, temperature: float = 1.0) -> jax.Array:
    """Per-sample KL(target || softmax(student / T)) x T^2, for a target given as probabilities."""
    logq = jax.nn.log_softmax(as_categorical(student).astype(jnp.float32) / temperature, axis=-1)
    logp = jnp.log(jnp.maximum(target_probs, 1e-12))
    return jnp.sum(jnp.where(target_probs > 0, target_probs * (logp - logq), 0.0), axis=-1) * temperature ** 2
