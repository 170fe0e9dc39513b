"""The unified soft target of teachers that know different classes (pure numpy).

Vongkulbhisal et al., "Unifying Heterogeneous Classifiers with Distillation" (UHC, CVPR 2019): each
teacher softmax j knows a set S_j of classes, and its probabilities are taken to be one unknown
distribution q over the union U of what the task's teachers know, restricted to S_j and
renormalised: p_j(c) = q(c) / q(S_j). Per image, the *cross-entropy estimate* is the q minimising
sum_j CE(p_j, q restricted to S_j); its minimiser satisfies q(c) = sum_{j knows c} p_j(c) /
sum_{j knows c} 1 / q(S_j), which `cross_entropy_estimate` iterates (a minorise-maximise step: the
objective never rises). The *naive extension* (`naive_estimate`), the baseline UHC beats, puts each
teacher's probabilities on its classes, zero elsewhere, and averages.

U holds the task's classes first, then the other classes its teachers know. The task's target is
q restricted to the task's classes and renormalised; q's mass on them (`inside`) is the estimated
chance that the image shows one of them at all, which `sample_weights` turns into how much the
image teaches the task (`unified.outside`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from kamal_jax.tasks import Member, Plan

ESTIMATES = ('cross_entropy', 'naive')
OUTSIDE = ('weight', 'drop', 'keep')


class Union(NamedTuple):
    """A task's class union and the teacher softmaxes that serve it."""
    names: tuple[str, ...]   # the task's classes, then the others its teachers know
    task_size: int           # the first `task_size` of `names` are the task's
    members: tuple[Member, ...]

    def mask(self) -> np.ndarray:
        """[members, union] 1 where a member knows the class."""
        out = np.zeros((len(self.members), len(self.names)))
        for j, m in enumerate(self.members):
            out[j, [self.names.index(n) for n in m.names]] = 1.0
        return out


def union_of(plan: Plan, task: str) -> Union:
    """The union of what `task`'s serving teachers know, the task's classes first."""
    members = plan.members(task)
    names = list(plan.tasks[task].classes)
    for m in members:
        names += [n for n in m.names if n not in names]
    return Union(tuple(names), len(plan.tasks[task].classes), members)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def member_probabilities(union: Union, logits: Sequence[np.ndarray], temperature: float = 1.0) -> np.ndarray:
    """[batch, members, union]: member j's softmax(logits / T) over its own columns, merged columns
    summed, placed on its classes of the union (zero elsewhere). `logits[j]` is the whole output of
    member j's teacher."""
    out = None
    for j, (m, z) in enumerate(zip(union.members, logits)):
        own = sorted(c for cols in m.columns for c in cols)
        p = _softmax(np.asarray(z)[:, own] / temperature)
        if out is None:
            out = np.zeros((p.shape[0], len(union.members), len(union.names)))
        for name, cols in zip(m.names, m.columns):
            out[:, j, union.names.index(name)] = p[:, [own.index(c) for c in cols]].sum(-1)
    return out


def naive_estimate(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[batch, union]: each member's probabilities on its classes, zero elsewhere, averaged (and so
    already summing to one)."""
    del mask
    return probs.mean(1)


def cross_entropy_estimate(probs: np.ndarray, mask: np.ndarray, iterations: int = 100) -> np.ndarray:
    """[batch, union]: UHC's cross-entropy estimate of q from `probs` [batch, members, union] (each
    member's renormalised probabilities on the classes of `mask` [members, union]), by the fixed
    point above from the naive estimate. Where the members' classes do not connect the union (no
    chain of shared classes between two of them), their relative mass stays the naive one."""
    known = probs.sum(1)  # [batch, union]: sum over the members that know each class
    q = naive_estimate(probs, mask)
    for _ in range(iterations):
        seen = np.maximum(q @ mask.T, 1e-30)          # [batch, members]: q(S_j)
        q = known / np.maximum((1.0 / seen) @ mask, 1e-30)
        q = q / q.sum(-1, keepdims=True)
    return q


def estimate(probs: np.ndarray, mask: np.ndarray, kind: str, iterations: int = 100) -> np.ndarray:
    if kind not in ESTIMATES:
        raise ValueError(f'unknown unified estimate {kind!r}; valid: {", ".join(ESTIMATES)}.')
    if kind == 'naive':
        return naive_estimate(probs, mask)
    return cross_entropy_estimate(probs, mask, iterations)


def restrict(q: np.ndarray, task_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(target [batch, task classes] renormalised, inside [batch]: q's mass on the task's classes)."""
    inside = q[:, :task_size].sum(-1)
    return q[:, :task_size] / np.maximum(inside, 1e-30)[:, None], inside


def sample_weights(inside: np.ndarray, outside: str) -> np.ndarray:
    """[batch] loss weights with mean one: by `inside` ('weight'), 0/1 at one half ('drop'), or 1."""
    if outside not in OUTSIDE:
        raise ValueError(f'unknown unified.outside {outside!r}; valid: {", ".join(OUTSIDE)}.')
    w = {'weight': inside, 'drop': (inside >= 0.5).astype(np.float64), 'keep': np.ones_like(inside)}[outside]
    return w / max(float(w.mean()), 1e-12)


class Target(NamedTuple):
    """A task's unified soft target for every training row, and each row's loss weight."""
    probabilities: np.ndarray  # [rows, task classes] float32, at the distillation temperature
    weights: np.ndarray        # [rows] float32, mean one
    inside: np.ndarray         # [rows] q's mass on the task's classes, at temperature 1


def task_target(union: Union, logits: Sequence[np.ndarray], *, kind: str, temperature: float, outside: str,
                iterations: int = 100) -> Target:
    """The target at temperature T (the teachers' softmax(logits / T)); the weights from the
    estimate at T = 1, where the teachers say how sure they are that the image is a task class."""
    mask = union.mask()
    soft = estimate(member_probabilities(union, logits, temperature), mask, kind, iterations)
    target, _ = restrict(soft, union.task_size)
    _, inside = restrict(estimate(member_probabilities(union, logits, 1.0), mask, kind, iterations),
                         union.task_size)
    return Target(target.astype(np.float32), sample_weights(inside, outside).astype(np.float32),
                  inside.astype(np.float32))
