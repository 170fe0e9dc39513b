"""The teachers' passes over images before a net trains, shared by the recipes: their logits as a
selector's context, a fitted selector, an offline selection, a fitted combiner's target, and the
report of what a selector picks on labelled held-out data."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from kamal_jax import selection
from kamal_jax.tasks import ConfigError, Plan
from kamal_jax.train import evaluate as eval_lib, views as views_lib


def selection_context(task: str, teachers, frozen, images: np.ndarray, batch_size: int,
                      selector: selection.Selector, data: Any = None, seed: int = 0) -> selection.Context:
    """The teachers' task logits on `images` as they are, and on the selector's K augmented views
    (`selector.views`, drawn by `views.predraw` from a seed-fixed rng with `data`'s crop padding and
    flip, or 2-pixel shifts when the data has no augmentation)."""
    logits = tuple(eval_lib.predict(t, frozen[t.name], images, batch_size)[task] for t in teachers)
    if not selector.views:
        return selection.Context(logits)
    d = data or {}
    drawn = views_lib.predraw(images, selector.views, crop_padding=d.crop_padding or 2,
                              flip=d.flip, seed=seed + 0x5e1)
    view_logits = tuple(eval_lib.predict(t, frozen[t.name], drawn, batch_size)[task].reshape(
        selector.views, len(images), -1) for t in teachers)
    return selection.Context(logits, view_logits=view_logits)


def fit_selector(task: str, teachers, frozen, images: np.ndarray, batch_size: int,
                 selector: selection.Selector, data: Any = None, seed: int = 0) -> Any:
    """The selector's params, fitted on the training images (None when it fits nothing)."""
    if selector.fit is None:
        return None
    return selector.fit(selection_context(task, teachers, frozen, images, batch_size, selector, data, seed))


def offline_selection(task: str, teachers, frozen, images: np.ndarray, batch_size: int,
                      selector: selection.Selector = selection.SELECTORS['least_entropy'],
                      rng: jax.Array | None = None, data: Any = None, seed: int = 0) -> np.ndarray:
    """Per-sample teacher weights [N, teachers], once, on the un-augmented view (as the authors' code)
    and the selector's augmented views; a fitted selector is fitted on these same training images."""
    if selector.student:
        raise ConfigError(f'selector {selector.name!r} reads the student and cannot run offline.')
    context = selection_context(task, teachers, frozen, images, batch_size, selector, data, seed)
    params = selector.fit(context) if selector.fit is not None else None
    return np.asarray(selector(context, rng, params), np.float32)


def fitted_target(task: str, teachers, frozen, images: np.ndarray, batch_size: int,
                  combiner: selection.Combiner, temperature: float) -> np.ndarray:
    """[N, classes] float32: a fitted combiner's target for every training row (each pre-drawn view
    is a row), fitted label-free on those same rows at its default hyper-parameters, once."""
    context = selection.Context(tuple(eval_lib.predict(t, frozen[t.name], images, batch_size)[task]
                                      for t in teachers))
    return np.asarray(combiner(context, temperature, combiner.fit_default(context)), np.float32)


def selection_arrays(weights: np.ndarray, selector: selection.Selector) -> dict:
    """The batch arrays an offline selection travels as: teacher indices when hard, else weights."""
    if selector.hard:
        return {'selected': np.asarray(selection.choice(weights))}
    return {'teacher_weights': weights}


def selection_on_held_out(task: str, teachers, frozen, split, plan: Plan, batch_size: int,
                     selector: selection.Selector = selection.SELECTORS['least_entropy'], params: Any = None,
                     data: Any = None, seed: int = 0, student: tuple | None = None) -> dict:
    """On labelled held-out data: each teacher's share of the selector's weight, and how often the
    selected teacher is right (weighted by the selector's weights), against the oracle. `params` are
    the selector's, fitted on the training images (`fit_selector`); a selector that reads the student
    sees `student` = (net, variables), the trained component, i.e. what it picks at the end."""
    t = plan.tasks[task]
    if t.label_key not in split.labels:
        return {}
    target = eval_lib.task_targets(t, split.labels, split.label_names)
    valid = target >= 0
    context = selection_context(task, teachers, frozen, split.images, batch_size, selector, data, seed)
    logits = [l[valid] for l in context.teacher_logits]
    views = context.view_logits and tuple(v[:, valid] for v in context.view_logits)
    student_logits = None
    if selector.student and student is not None:
        student_logits = eval_lib.predict(student[0], student[1], split.images, batch_size)[task][valid]
    context = selection.Context(tuple(logits), student_logits, views)
    weights = np.asarray(selector(context, jax.random.key(0), params), np.float64)
    correct = np.stack([np.argmax(l, -1) == target[valid] for l in logits])
    return {
        'selected_fraction': {n.name: float(np.mean(weights[:, i])) for i, n in enumerate(teachers)},
        'selected_teacher_accuracy': float(np.mean(np.sum(weights * correct.T, axis=-1))),
        'oracle_accuracy': float(np.mean(correct.any(0))),
    }
