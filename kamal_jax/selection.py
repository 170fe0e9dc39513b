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


@dataclasses.dataclass(frozen=True)
class Selector:
    name: str
    fn: Callable[[Context, Any, Any], jax.Array]
    online: bool = True  # may run inside the jitted step, on the view the student sees
    hard: bool = True    # one-hot weights: each sample learns from exactly one teacher

    def __call__(self, context: Context, rng: Any = None, params: Any = None) -> jax.Array:
        return self.fn(context, rng, params)


SELECTORS: dict[str, Selector] = {}


def selector(name: str, *, online: bool = True, hard: bool = True):
    """Registers `fn(context, rng, params) -> [batch, teachers]` under `name`."""
    def register(fn):
        SELECTORS[name] = Selector(name, fn, online=online, hard=hard)
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


# ----------------------------------------------------------------------------- combined targets

COMBINERS: dict[str, Callable[[Sequence[jax.Array], float], jax.Array]] = {
    # Hinton-style multi-teacher distillation: the mean of the teachers' softmax(logits / T).
    'average': losses.average_probabilities,
}
