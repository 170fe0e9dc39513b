"""Selectors: which teacher each sample learns from, as per-sample weights (pure functions).

Every selector has one signature, `selector(context, rng, params) -> weights [batch, teachers]`,
and the online step, the offline pass, the stage-1 cache and the selection report all call it:

    weights = SELECTORS['least_entropy'](Context(teacher_logits=(logits_a, logits_b)), rng, None)

The weights mix each teacher's per-sample **losses** (`losses.weighted_per_sample`); rows sum to 1.
A recipe may instead distil from one **combined target** (`COMBINERS`): a function of all teachers'
logits that gives the soft target itself (the 'average' recipe).

Adding a selector is one decorated function here; `online=False` marks one that needs the whole
training set and so can only run in the offline pass (`stage1.selection = 'offline'`), and
`hard=False` one whose weights are not one-hot (it cannot use the selected-teacher-only cache).
What a selector needs beyond the teachers' logits on one view is declared there too, and the
offline pass (`recipes/stages.py`) provides it: `views=K`, the teachers' logits on K augmented
views of each image (`Context.view_logits`); `fit`, params fitted once on the training images'
context (`fit(context) -> params`); `student=True`, the student's logits (online only).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from kamal_jax import ambiguity, losses


class Context(NamedTuple):
    """What a selector may look at for one batch of one task."""
    teacher_logits: Sequence[jax.Array]  # per teacher: the task's logits, [batch, classes]
    student_logits: jax.Array | None = None  # the student's task logits when selection is online
    view_logits: Sequence[jax.Array] | None = None  # per teacher: [views, batch, classes] (`views=K`)


@dataclasses.dataclass(frozen=True)
class Selector:
    name: str
    fn: Callable[[Context, Any, Any], jax.Array]
    online: bool = True  # may run inside the jitted step, on the view the student sees
    hard: bool = True    # one-hot weights: each sample learns from exactly one teacher
    views: int = 0       # augmented views per image the offline pass computes (Context.view_logits)
    fit: Callable[[Context], Any] | None = None  # params from the training images' context
    student: bool = False  # reads Context.student_logits (so cannot run in the offline pass)

    def __call__(self, context: Context, rng: Any = None, params: Any = None) -> jax.Array:
        return self.fn(context, rng, params)


SELECTORS: dict[str, Selector] = {}


def selector(name: str, *, online: bool = True, hard: bool = True, views: int = 0,
             fit: Callable[[Context], Any] | None = None, student: bool = False):
    """Registers `fn(context, rng, params) -> [batch, teachers]` under `name`."""
    def register(fn):
        SELECTORS[name] = Selector(name, fn, online=online, hard=hard, views=views, fit=fit, student=student)
        return fn
    return register


def get(name: str) -> Selector:
    if name not in SELECTORS:
        raise ValueError(f'unknown selector {name!r}; valid selectors: {", ".join(SELECTORS)}.')
    return SELECTORS[name]


def one_hot(selected: jax.Array, num_teachers: int) -> jax.Array:
    """[batch] teacher indices -> [batch, teachers] float32 one-hot weights."""
    return jax.nn.one_hot(selected, num_teachers, dtype=jnp.float32)


def choice(weights: jax.Array) -> jax.Array:
    """The teacher index of one-hot weights (int32): how hard selections are stored and cached."""
    return jnp.argmax(weights, axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------- selectors

@selector('least_entropy')
def least_entropy(context: Context, rng=None, params=None) -> jax.Array:
    """The paper's rule: the teacher whose softmax over the task has the lowest entropy.

    Ties go to the teacher declared first, so the selection is deterministic.
    """
    entropies = jnp.stack([ambiguity.entropy(logits) for logits in context.teacher_logits])
    return one_hot(jnp.argmin(entropies, axis=0), len(context.teacher_logits))


@selector('random')
def random(context: Context, rng=None, params=None) -> jax.Array:
    """A teacher drawn uniformly per sample (the 'random' baseline: what selection is worth)."""
    k = len(context.teacher_logits)
    return one_hot(jax.random.randint(rng, context.teacher_logits[0].shape[:1], 0, k), k)


@selector('uniform', hard=False)
def uniform(context: Context, rng=None, params=None) -> jax.Array:
    """Every teacher's loss with equal weight."""
    k = len(context.teacher_logits)
    return jnp.full((context.teacher_logits[0].shape[0], k), 1.0 / k)


def _probabilities(logits: jax.Array) -> jax.Array:
    return jax.nn.softmax(ambiguity.as_categorical(jnp.asarray(logits, jnp.float32)), axis=-1)


def _entropy_of(p: jax.Array) -> jax.Array:
    return -jnp.sum(p * jnp.log(jnp.clip(p, 1e-12)), axis=-1)


STUDENT_AGREEMENT_TEMPERATURE = 0.1


@selector('student_agreement', hard=False, student=True)
def student_agreement(context: Context, rng=None, params=None) -> jax.Array:
    """Soft weights: softmax over teachers of a * p_teacher(student's class) / 0.1.

    a = 1 - H(student) / log(classes) is the student's own confidence: 0 while it is random (all
    teachers weigh alike, as 'uniform', so no teacher's bias is learnt first and then confirmed),
    towards 1 as it learns and its agreement with each teacher becomes a signal. Without student
    logits (the held-out report of a stage without its student) the weights are uniform. No
    gradient flows through the weights.
    """
    k = len(context.teacher_logits)
    if context.student_logits is None:
        return uniform(context)
    p_s = jax.lax.stop_gradient(_probabilities(context.student_logits))
    confidence = 1.0 - _entropy_of(p_s) / jnp.log(p_s.shape[-1])
    picked = jnp.argmax(p_s, axis=-1)
    agree = jnp.stack([jnp.take_along_axis(_probabilities(l), picked[:, None], axis=-1)[:, 0]
                       for l in context.teacher_logits], axis=-1)
    return jax.nn.softmax(confidence[:, None] * agree / STUDENT_AGREEMENT_TEMPERATURE, axis=-1).reshape(-1, k)


PERCENTILE_QUANTILES = 1001  # entropy quantiles kept per teacher by the fit


def fit_entropy_quantiles(context: Context) -> jax.Array:
    """[teachers, quantiles]: each teacher's entropy distribution over the training images."""
    q = jnp.linspace(0.0, 1.0, PERCENTILE_QUANTILES)
    return jnp.stack([jnp.quantile(ambiguity.entropy(l), q) for l in context.teacher_logits])


@selector('entropy_percentile', online=False, fit=fit_entropy_quantiles)
def entropy_percentile(context: Context, rng=None, params=None) -> jax.Array:
    """The teacher for which this sample is least ambiguous *relative to its own habits*: its
    entropy's percentile among that teacher's training-image entropies (`params`, fitted by
    `fit_entropy_quantiles` on the training images, plain view) is the lowest.

    A net that is confident on every image (deeper, over-fitted) no longer wins by default; it wins
    where it is unusually sure. Ties go to the teacher declared first.
    """
    ranks = jnp.stack([jnp.searchsorted(q, ambiguity.entropy(l), side='left')
                       for q, l in zip(params, context.teacher_logits)])
    return one_hot(jnp.argmin(ranks, axis=0), len(context.teacher_logits))


# ----------------------------------------------------------------------------- combined targets

COMBINERS: dict[str, Callable[[Sequence[jax.Array], float], jax.Array]] = {
    # Hinton-style multi-teacher distillation: the mean of the teachers' softmax(logits / T).
    'average': losses.average_probabilities,
    # The product of experts: softmax of the mean logits (the geometric mean of the probabilities).
    'product': losses.average_logits,
}
