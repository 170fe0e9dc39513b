"""Selectors: which teacher each sample learns from, as per-sample weights (pure functions).

Every selector has one signature, `selector(context, rng, params) -> weights [batch, teachers]`,
and the online step, the offline pass, the stage-1 cache and the selection report all call it:

    weights = SELECTORS['least_entropy'](Context(teacher_logits=(logits_a, logits_b)), rng, None)

The weights mix each teacher's per-sample **losses** (`losses.weighted_per_sample`); rows sum to 1.
A recipe may instead distil from one **combined target** (`COMBINERS`): the soft target itself,
`combiner(context, temperature, params) -> [batch, classes]` probabilities (the 'average' and
'product' recipes). A combiner that fits (`fit(context, **hyper) -> params`, label-free, once on
the training images' context; `grid`: its hyper-parameters' candidate values, the first the
default) is a label model (`label_models.py`); its target is computed once per training view.

Adding a selector is one decorated function here; `online=False` marks one that needs the whole
training set and so can only run in the offline pass (`stage1.selection = 'offline'`), and
`hard=False` one whose weights are not one-hot (it cannot use the selected-teacher-only cache).
What a selector needs beyond the teachers' logits on one view is declared there too, and the
offline pass (`recipes/teacher_passes.py`) provides it: `views=K`, the teachers' logits on K augmented
views of each image (`Context.view_logits`); `fit`, params fitted once on the training images'
context (`fit(context) -> params`); `student=True`, the student's logits (online only).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kamal_jax import ambiguity, label_models, losses


class Context(NamedTuple):
    """What a selector may look at for one batch of one task."""
    teacher_logits: Sequence[jax.Array]  # per teacher: the task's logits, [batch, classes]
    student_logits: jax.Array | None = None  # the student's task logits when selection is online
    view_logits: Sequence[jax.Array] | None = None  # per teacher: [views, batch, classes] (`views=K`)
    partial: Sequence['Partial'] = ()  # teachers outside the task's group that know some of its classes


class Partial(NamedTuple):
    """A teacher that knows only some of a task's classes: its whole output [batch, its classes],
    the logit `columns` of the task classes it covers and their task-class indices `classes`."""
    logits: jax.Array
    columns: Sequence[int]
    classes: Sequence[int]


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
    student = jax.lax.stop_gradient(context.student_logits)
    p_s = ambiguity.probabilities(student)
    confidence = 1.0 - ambiguity.entropy(student) / jnp.log(p_s.shape[-1])
    picked = jnp.argmax(p_s, axis=-1)
    agree = jnp.stack([jnp.take_along_axis(ambiguity.probabilities(l), picked[:, None], axis=-1)[:, 0]
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

@dataclasses.dataclass(frozen=True)
class Combiner:
    name: str
    fn: Callable[[Context, float, Any], jax.Array]
    fit: Callable[..., Any] | None = None  # fit(context, **hyper) -> params, on the training images
    grid: Mapping[str, tuple] = dataclasses.field(default_factory=dict)  # hyper -> candidates, default first

    def __call__(self, context: Context | Sequence[jax.Array], temperature: float = 1.0,
                 params: Any = None) -> jax.Array:
        """[batch, classes] probabilities; `context` may be the teachers' task logits alone."""
        if not isinstance(context, Context):
            context = Context(tuple(context))
        return self.fn(context, temperature, params)

    @property
    def defaults(self) -> dict:
        return {k: v[0] for k, v in self.grid.items()}

    def fit_default(self, context: Context) -> Any:
        """Params at the default hyper-parameters (what a recipe uses: it has no labels to choose)."""
        return self.fit(context, **self.defaults) if self.fit is not None else None


COMBINERS: dict[str, Combiner] = {}


def combiner(name: str, *, fit: Callable[..., Any] | None = None, grid: Mapping[str, tuple] | None = None):
    """Registers `fn(context, temperature, params) -> [batch, classes]` under `name`."""
    def register(fn):
        COMBINERS[name] = Combiner(name, fn, fit=fit, grid=dict(grid or {}))
        return fn
    return register


def get_combiner(name: str) -> Combiner:
    if name not in COMBINERS:
        raise ValueError(f'unknown combiner {name!r}; valid combiners: {", ".join(COMBINERS)}.')
    return COMBINERS[name]


@combiner('average')
def average(context: Context, temperature: float = 1.0, params=None) -> jax.Array:
    """Hinton-style multi-teacher distillation: the mean of the teachers' softmax(logits / T)."""
    return losses.average_probabilities(context.teacher_logits, temperature)


@combiner('product')
def product(context: Context, temperature: float = 1.0, params=None) -> jax.Array:
    """The product of experts: softmax of the mean logits (the geometric mean of the probabilities)."""
    return losses.normalised_product(context.teacher_logits, temperature)


def with_student_vote(target: jax.Array, student_logits: jax.Array, temperature: float, weight: float,
                      voters: int) -> jax.Array:
    """The student as one more voter (the recipe `student_loop`): the normalised geometric mean of a
    combiner's target [batch, classes], counted as its `voters` teachers, and the student's
    softmax(logits / T), counted as `weight` voters. For `product` (softmax of the teachers' mean
    logits / T) it is the product of `voters` + 1 experts with the student's logits weighed `weight`.
    A class the teachers rule out stays out; weight 0 gives the teachers' target back, weight 1 counts
    the student as one more teacher. Why a mean, not target x student^weight: a student that learnt
    the target votes for it, so a plain product would square it at every refit and the target would
    collapse onto the student's own guesses; the mean keeps the target where the student agrees."""
    student = jax.nn.log_softmax(ambiguity.as_categorical(jnp.asarray(student_logits, jnp.float32)) / temperature,
                                 axis=-1)
    teachers = jnp.log(jnp.clip(jnp.asarray(target, jnp.float32), 1e-30))
    return jax.nn.softmax((voters * teachers + weight * student) / (voters + weight), axis=-1)


def _voters(context: Context, with_partial: bool, votes: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The label model's voters: each teacher of the task, then (`with_partial`) each partial one;
    their softmax (`votes='soft'`) or its argmax ('hard')."""
    if votes not in ('soft', 'hard'):
        raise ValueError(f"a label model's votes must be 'soft' or 'hard', got {votes!r}.")
    soft = [label_models.softmax(np.asarray(ambiguity.as_categorical(jnp.asarray(l, jnp.float32))))
            for l in context.teacher_logits]
    k = soft[0].shape[-1]
    answers = [label_models.full_answers(k)] * len(soft)
    if with_partial:
        soft = soft + [label_models.partial_votes(np.asarray(p.logits), p.columns) for p in context.partial]
        answers = answers + [label_models.partial_answers(p.classes, k) for p in context.partial]
    return [label_models.hard(v) for v in soft] if votes == 'hard' else soft, answers


class LabelModel(NamedTuple):
    model: label_models.DawidSkene
    partial: bool  # the partial teachers vote too
    votes: str     # 'hard' or 'soft'


def _fit_dawid_skene(prior: str):
    def fit(context: Context, *, votes: str, strength: float, partial: bool, class_prior: bool, init: str,
            accuracy: float = 0.7) -> LabelModel:
        kind = votes
        votes, answers = _voters(context, partial, kind)
        init = {'product': lambda p: p, 'vote': lambda p: label_models.majority_vote(votes, answers, p)}[init](
            np.asarray(losses.normalised_product(context.teacher_logits, 1.0), np.float64))
        return LabelModel(label_models.fit_dawid_skene(votes, answers, init, strength=strength, prior=prior,
                                                       accuracy=accuracy, learn_class_prior=class_prior),
                          partial, kind)
    return fit


def _label_model_target(context: Context, temperature: float, params: LabelModel) -> jax.Array:
    votes, _ = _voters(context, params.partial, params.votes)
    return jax.nn.softmax(jnp.asarray(label_models.posterior_logits(params.model, votes), jnp.float32)
                          / temperature, axis=-1)


# EM starts from `product` or from the majority vote (which a confidently wrong teacher cannot carry).
# The defaults (first values) scored best of the grid on the quickstart's five zoos, and still below
# `product` (docs/BENCHMARKS.md, "Label models on the combination screen").
_LABEL_MODEL_GRID = {'votes': ('soft', 'hard'), 'strength': (1.0, 0.1, 0.01), 'partial': (False, True),
                     'class_prior': (False, True), 'init': ('product', 'vote')}


@combiner('dawid_skene', fit=_fit_dawid_skene('diagonal'), grid=_LABEL_MODEL_GRID)
def dawid_skene(context: Context, temperature: float = 1.0, params: LabelModel | None = None) -> jax.Array:
    """Dawid-Skene: the posterior of the true class under a confusion matrix per teacher (and per
    partial teacher, with `partial`), fitted by EM on the training images from `init` (the majority
    vote, ties broken by `product`, or `product`); each row's
    prior puts 0.7 on the right answer, with `strength` x (images per class) pseudo-counts."""
    return _label_model_target(context, temperature, params)


@combiner('dawid_skene_one_coin', fit=_fit_dawid_skene('one_coin'), grid=_LABEL_MODEL_GRID)
def dawid_skene_one_coin(context: Context, temperature: float = 1.0,
                         params: LabelModel | None = None) -> jax.Array:
    """Dawid-Skene with each teacher's confusion rows shrunk towards its own one-coin model (its
    overall accuracy on the right answer, errors spread evenly): with two voters the per-class
    matrices are weakly identified, the single accuracy is not; `strength` sets how far."""
    return _label_model_target(context, temperature, params)


def tilted_weights(num_teachers: int, tilt: float) -> np.ndarray:
    """Per-teacher weights summing to 1, tilted linearly from the first declared teacher (1/T + tilt)
    to the last (1/T - tilt); two teachers: (0.5 + tilt, 0.5 - tilt)."""
    if num_teachers == 1:
        return np.ones(1)
    return 1.0 / num_teachers + tilt * np.linspace(1.0, -1.0, num_teachers)


def _fit_tilt(context: Context, *, tilt: float) -> np.ndarray:
    return tilted_weights(len(context.teacher_logits), tilt)


@combiner('weighted_product', fit=_fit_tilt, grid={'tilt': (0.0, 0.1, -0.1, 0.2, -0.2, 0.3, -0.3, 0.4, -0.4)})
def weighted_product(context: Context, temperature: float = 1.0, params: np.ndarray | None = None) -> jax.Array:
    """`product` with per-teacher weights on the logits (`params`, from `tilted_weights`; equal
    weights, the default, are `product` itself). Nothing is fitted without labels: the screen
    picks the tilt on its labelled validation share, so this measures what one weight per task,
    chosen on held-out training images, adds to the product."""
    weights = jnp.asarray(params if params is not None else tilted_weights(len(context.teacher_logits), 0.0),
                          jnp.float32)
    logits = jnp.stack([ambiguity.as_categorical(jnp.asarray(l, jnp.float32)) for l in context.teacher_logits])
    return jax.nn.softmax(jnp.einsum('t,tbc->bc', weights, logits) / temperature, axis=-1)
