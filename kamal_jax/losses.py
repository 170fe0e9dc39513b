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


def normalised_product(teacher_logits, temperature: float = 1.0) -> jax.Array:
    """softmax(mean of the teachers' logits / T): the normalised product (geometric mean) of their
    softmax(logits / T), i.e. a product of experts, where a class must be likely under every teacher."""
    mean = jnp.mean(jnp.stack([as_categorical(l).astype(jnp.float32) for l in teacher_logits]), axis=0)
    return jax.nn.softmax(mean / temperature, axis=-1)


def soft_target_kl(student: jax.Array, target_probs: jax.Array, *, temperature: float = 1.0) -> jax.Array:
    """Per-sample KL(target || softmax(student / T)) x T^2, for a target given as probabilities."""
    logq = jax.nn.log_softmax(as_categorical(student).astype(jnp.float32) / temperature, axis=-1)
    logp = jnp.log(jnp.maximum(target_probs, 1e-12))
    return jnp.sum(jnp.where(target_probs > 0, target_probs * (logp - logq), 0.0), axis=-1) * temperature ** 2


def pooled_target(teacher_logits, partial_logits=(), partial_classes=(), *, partial_weights=None,
                  kind: str = 'product', temperature: float = 1.0, steps: int = 1000) -> jax.Array:
    """The combined soft target of the `average` or `product` rule, with teachers that know only
    some of the task's classes taking part on those classes.

    A teacher trained on other tasks often covers a few of this task's classes among its own (the
    cifar10_parts and quickstart teachers have 2-3 such auxiliary classes each). Its softmax
    renormalised over the covered classes `partial_classes[j]` (task-class indices of the columns
    of `partial_logits[j]`) says how those classes rank against each other, evidence the full
    teachers' vote lacks. The target q over the task's classes minimises
      'product': sum_j KL(q restricted to S_j || p_j)   (the product of experts, generalised)
      'average': sum_j KL(p_j || q restricted to S_j)   (the mean of the teachers, generalised)
    over full teachers (S_j = all classes) and partial ones; `partial_weights[j]` ([batch]; default
    1) scales partial teacher j's term per sample, e.g. by its own probability that the image is
    one of the classes it covers at all. With no partial teacher the minimiser
    is `normalised_product` / `average_probabilities`, returned as they are; otherwise it is found by
    `steps` steps of gradient descent on q's logits, started there (on cifar10_parts' teachers the
    argmax no longer changed after 100 steps; probabilities settle to about 1e-3 by 1000). Meant
    for scoring held-out sets (`kamal_jax.benchmarks.combiners`); a training step would want a
    faster solver.
    """
    if kind not in ('product', 'average'):
        raise ValueError(f"pooled_target's kind must be 'product' or 'average', got {kind!r}.")
    closed_form = normalised_product if kind == 'product' else average_probabilities
    start = closed_form(teacher_logits, temperature)
    if not partial_logits:
        return start
    if len(partial_logits) != len(partial_classes):
        raise ValueError(f'{len(partial_logits)} partial teachers but {len(partial_classes)} class lists.')
    num_classes = start.shape[-1]
    if partial_weights is None:
        partial_weights = [1.0] * len(partial_logits)
    members = [(jax.nn.log_softmax(as_categorical(l).astype(jnp.float32) / temperature, axis=-1),
                jnp.arange(num_classes), 1.0) for l in teacher_logits]
    members += [(jax.nn.log_softmax(l.astype(jnp.float32) / temperature, axis=-1), jnp.asarray(c),
                 jnp.asarray(w, jnp.float32)) for l, c, w in zip(partial_logits, partial_classes, partial_weights)]

    def objective(z):
        total = 0.0
        for logp, classes, weight in members:
            logq = jax.nn.log_softmax(z[:, classes], axis=-1)
            pair = (logq, logp) if kind == 'product' else (logp, logq)
            total += jnp.sum(weight * jnp.sum(jnp.exp(pair[0]) * (pair[0] - pair[1]), axis=-1))
        return total

    grad = jax.grad(objective)
    rate = 1.0 / len(members)  # one unit step shared by the terms: stable in every trial so far
    z = jax.lax.fori_loop(0, steps, lambda _, z: z - rate * grad(z), jnp.log(jnp.maximum(start, 1e-30)))
    return jax.nn.softmax(z, axis=-1)
