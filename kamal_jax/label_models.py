"""Label models: which class an image holds when its teachers disagree, estimated without labels.

Pure numpy. Each teacher is a *voter*: per image, a probability over its own answers (its softmax
over the task's classes; a teacher that knows only some of them answers one of those or 'other').
Dawid and Skene (1979) model each voter by a confusion matrix, P(answer | true class), and fit the
matrices and the class prior by EM over unlabelled images; the posterior over the true class is
then a per-sample target in which a teacher counts by how reliable it has been *on that class*,
not by how confident it is. Answers enter as their argmax (the classic model) or soft, as
fractional counts (the expected complete-data log-likelihood: weak evidence from a teacher whose
softmax is flat, so a confident teacher still dominates). With two voters the model is weakly identified, so each row of a confusion
matrix has a Dirichlet prior: towards a fixed accuracy on the voter's right answer ('diagonal'),
or towards the voter's own fitted overall accuracy ('one_coin': shrinks the class-conditional
model towards the one-parameter model that two voters can identify).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def full_answers(num_classes: int) -> np.ndarray:
    """[classes, classes]: a voter over all the task's classes answers the true class."""
    return np.eye(num_classes)


def partial_votes(logits: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """[batch, len(columns) + 1]: a teacher's probability of each task class it covers (its logit
    `columns`), then of 'other' (the rest of its outputs, its own task's classes among them)."""
    p = softmax(logits)
    covered = p[:, list(columns)]
    return np.concatenate([covered, np.clip(1.0 - covered.sum(-1, keepdims=True), 0.0, None)], axis=-1)


def hard(votes: np.ndarray) -> np.ndarray:
    """One-hot of each row's top answer: the classic Dawid-Skene's counts, blind to confidence."""
    return np.eye(votes.shape[-1])[np.argmax(votes, -1)]


def partial_answers(classes: Sequence[int], num_classes: int) -> np.ndarray:
    """[task classes, len(classes) + 1]: the answer a perfect partial voter gives: the class where it
    covers it (task-class indices `classes`, in its columns' order), 'other' elsewhere."""
    answers = np.zeros((num_classes, len(classes) + 1))
    answers[:, -1] = 1.0
    for a, k in enumerate(classes):
        answers[k] = 0.0
        answers[k, a] = 1.0
    return answers


def majority_vote(votes: Sequence[np.ndarray], answers: Sequence[np.ndarray], tiebreak: np.ndarray) -> np.ndarray:
    """[batch, classes]: the share of voters whose top answer names each class (an answer that names
    several, a partial voter's 'other', counts for none), ties broken by `tiebreak` [batch, classes]
    (e.g. the product): the classic start of Dawid-Skene's EM, deaf to how confident a voter is."""
    counts = np.zeros_like(np.asarray(tiebreak, np.float64))
    for v, a in zip(votes, answers):
        naming = a.T * (a.sum(0) == 1)[:, None]  # [answers, classes]: the class an answer names, if one
        counts += naming[np.argmax(v, -1)]
    counts += 1e-3 * np.asarray(tiebreak, np.float64)
    return counts / counts.sum(-1, keepdims=True)


class DawidSkene(NamedTuple):
    """Fitted label model: per voter log P(answer | true class) [classes, answers]; log class prior."""
    log_confusions: tuple[np.ndarray, ...]
    log_prior: np.ndarray


def posterior_logits(model: DawidSkene, votes: Sequence[np.ndarray]) -> np.ndarray:
    """[batch, classes] unnormalised log posterior of the true class: log prior plus each voter's
    expected log-likelihood of its (soft) answer."""
    if len(votes) != len(model.log_confusions):
        raise ValueError(f'{len(votes)} voters but the model was fitted on {len(model.log_confusions)}.')
    return model.log_prior + sum(np.asarray(v, np.float64) @ c.T for v, c in zip(votes, model.log_confusions))


def _prior_rows(answers: np.ndarray, accuracy: float | np.ndarray) -> np.ndarray:
    """Rows of a Dirichlet mean: `accuracy` on the right answer, the rest spread over the others."""
    m = answers.shape[1]
    accuracy = np.asarray(accuracy, np.float64)
    return accuracy * answers + (1.0 - accuracy) * (1.0 - answers) / max(m - 1, 1)


def fit_dawid_skene(votes: Sequence[np.ndarray], answers: Sequence[np.ndarray], init: np.ndarray, *,
                    strength: float = 0.1, prior: str = 'diagonal', accuracy: float = 0.7,
                    learn_class_prior: bool = True, iterations: int = 50, tol: float = 1e-6) -> DawidSkene:
    """EM from the posterior `init` [batch, classes] (e.g. the teachers' product).

    votes[j]: [batch, answers_j] voter j's soft answers; answers[j]: [classes, answers_j] the
    answer a perfect voter j gives per true class (`full_answers`, `partial_answers`). Each row of
    voter j's confusion matrix gets `strength` x (images per class) pseudo-counts, spread as
    `prior`: 'diagonal' (`accuracy` on the right answer) or 'one_coin' (the voter's own accuracy
    under the current posterior). `learn_class_prior=False` keeps the classes equally likely.
    """
    if prior not in ('diagonal', 'one_coin'):
        raise ValueError(f"fit_dawid_skene's prior must be 'diagonal' or 'one_coin', got {prior!r}.")
    if len(votes) != len(answers):
        raise ValueError(f'{len(votes)} voters but {len(answers)} answer maps.')
    votes = [np.asarray(v, np.float64) for v in votes]
    q = np.asarray(init, np.float64)
    n, k = q.shape
    pseudo = strength * n / k
    model = None
    for _ in range(iterations):
        log_confusions = []
        for v, a in zip(votes, answers):
            counts = q.T @ v  # [classes, answers]: expected co-occurrence of true class and answer
            acc = accuracy if prior == 'diagonal' else np.sum(counts * a) / max(counts.sum(), 1e-12)
            rows = counts + pseudo * _prior_rows(a, np.clip(acc, 1e-3, 1 - 1e-3))
            log_confusions.append(np.log(np.maximum(rows / rows.sum(-1, keepdims=True), 1e-12)))
        class_prior = q.sum(0) + 1.0 if learn_class_prior else np.ones(k)
        model = DawidSkene(tuple(log_confusions), np.log(class_prior / class_prior.sum()))
        new_q = np.exp(log_softmax(posterior_logits(model, votes)))
        change = np.abs(new_q - q).max()
        q = new_q
        if change < tol:
            break
    return model
