"""What can be said of a student without labels (pure functions of predicted probabilities).

Per task, on held-out images: how often the student's top class is each teacher's, and the
teachers' combined prediction's (the least ambiguous teacher's per image, the paper's selection
rule); how often the teachers disagree among themselves; each teacher's share of that selection;
and the mean entropy (nats) of the student's and each teacher's predictions. With labels these sit
beside the accuracies; without them they are the run's only report of how the student did.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ['probabilities', 'entropy', 'task_diagnostics', 'line', 'KEYS']

KEYS = ('agreement', 'agreement_with_combined', 'teacher_disagreement', 'selected_fraction', 'mean_entropy')


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (a single sigmoid logit z as the two classes [0, z]), float64."""
    z = np.asarray(logits, np.float64)
    if z.shape[-1] == 1:
        z = np.concatenate([np.zeros_like(z), z], axis=-1)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Per-sample Shannon entropy (nats); 0 log 0 counts as 0."""
    p = np.asarray(probs, np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def task_diagnostics(student: np.ndarray, teachers: Mapping[str, np.ndarray]) -> dict:
    """student: (N, C) probabilities; teachers: name -> (N, C) probabilities, for one task.

    Ties in entropy go to the teacher named first. Every value is a fraction of the N images,
    except the entropies.
    """
    names = list(teachers)
    if not names:
        raise ValueError('diagnostics need at least one teacher of the task')
    top = {n: np.argmax(teachers[n], -1) for n in names}
    own = np.argmax(student, -1)
    ent = np.stack([entropy(teachers[n]) for n in names])  # (T, N)
    chosen = np.argmin(ent, axis=0)
    combined = np.stack([top[n] for n in names])[chosen, np.arange(len(own))]
    tops = np.stack([top[n] for n in names])
    return {
        'images': int(len(own)),
        'agreement': {n: float(np.mean(own == top[n])) for n in names},
        'agreement_with_combined': float(np.mean(own == combined)),
        'teacher_disagreement': float(np.mean((tops != tops[0]).any(0))),
        'selected_fraction': {n: float(np.mean(chosen == i)) for i, n in enumerate(names)},
        'mean_entropy': {'student': float(np.mean(entropy(student))),
                         **{n: float(np.mean(ent[i])) for i, n in enumerate(names)}},
    }


def line(diagnostics: Mapping[str, dict]) -> str:
    """The log's one line for a student scored without labels: per task, how often its answer is the
    least ambiguous teacher's, and how often the teachers disagree among themselves."""
    if not diagnostics:
        return 'not scored (no labelled held-out images, and no teacher of its tasks)'
    return '; '.join(f"{task} agrees with the least ambiguous teacher on {100 * d['agreement_with_combined']:.1f}% "
                     f"of {d['images']} held-out images (teachers disagree on {100 * d['teacher_disagreement']:.1f}%)"
                     for task, d in diagnostics.items()) + ' (no labels: label-free diagnostics in summary.md)'
