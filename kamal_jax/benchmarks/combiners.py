"""Label-free ways to combine a run's teachers, scored without training a student.

    python -m kamal_jax.benchmarks.combiners WORKDIR [WORKDIR ...] [--views 4] [--json out.json]

For each target task of each run (a workdir whose teachers are ported: WORKDIR/teachers), the
teachers' predictions on the evaluation split are combined by each rule below, fitted where a rule
fits anything on the *training* images without their labels, and the combination's accuracy is
reported in points against the best single teacher (labels are used only for that score). A
student distilled from a rule's soft targets tends to land a little above that rule's score: on
the quickstart's five seeds the `average` recipe's target scored 0.0 to 1.8 points above the
averaged teachers' own prediction (docs/BENCHMARKS.md). So this is a cheap screen for a selector or
combined target before the hours a full recipe takes, and shows how far the oracle (some teacher
right) is from the best teacher.

Rules: `average` (the 'average' recipe's combined target, at T = 1 and at the run's distillation
temperature), `least_entropy` and `entropy_percentile` (the library's selectors, the picked
teacher's prediction), `view_agreement` (the teacher least ambiguous on average over the plain
image and `--views` augmented views; measured, then dropped from the library), `view_average`
(each teacher's prediction averaged over the plain image and `--views` augmented views, then over
teachers), `calibrated_average` (each teacher's temperature fitted on the training images so that
its mean top probability equals the teachers' mean, then averaged: removes a teacher's systematic
over-confidence), `product` (the 'product' recipe's
target: softmax of the mean logits, the normalised geometric mean of the probabilities),
`agreement_weighted_product` (`product` with each teacher weighted by the log-odds of its accuracy
as estimated, without labels, from its agreement with the other teachers' confident answers on the
training images: measured below `product`, not a recipe), and where
other teachers cover some of the task's classes among their own (their full class lists are read
from the run's `zoo.teachers.NAME.classes`), `product + partial` and `average + partial`: the same
targets with those teachers taking part on the classes they cover (`losses.pooled_target`), as
equals or (`, weighted`) each weighted per image by its own probability that the image is one of
those classes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from kamal_jax import xla

xla.apply_cpu_defaults()  # Before JAX initialises its backend.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from kamal_jax import losses, pipeline, selection  # noqa: E402
from kamal_jax.recipes import one_stage_config  # noqa: E402
from kamal_jax.recipes.stages import selection_context  # noqa: E402
from kamal_jax.train import evaluate as eval_lib, sharding  # noqa: E402


def _softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32) / temperature, axis=-1))


def confidence_temperature(logits: np.ndarray, confidence: float) -> float:
    """The temperature at which the mean top probability of softmax(logits / T) is `confidence`
    (bisection in log T: the mean top probability falls as T grows)."""
    lo, hi = 1e-2, 1e2
    for _ in range(60):
        mid = float(np.sqrt(lo * hi))
        lo, hi = (mid, hi) if _softmax(logits, mid).max(-1).mean() > confidence else (lo, mid)
    return float(np.sqrt(lo * hi))


def _picked(selector: selection.Selector, train: selection.Context, held_out: selection.Context) -> np.ndarray:
    params = selector.fit(train) if selector.fit is not None else None
    weights = np.asarray(selector(held_out, jax.random.key(0), params))
    probs = np.stack([_softmax(l) for l in held_out.teacher_logits])  # [teachers, batch, classes]
    return np.einsum('bt,tbc->bc', weights, probs)


def _entropy(p: np.ndarray) -> np.ndarray:
    return -np.sum(p * np.log(np.clip(p, 1e-12, None)), axis=-1)


def _view_averaged(held_out: selection.Context) -> list[np.ndarray]:
    """Per teacher, its softmax averaged over the plain view and the augmented ones."""
    return [np.concatenate([_softmax(p)[None], _softmax(v)]).mean(0)
            for p, v in zip(held_out.teacher_logits, held_out.view_logits)]


def view_agreement(held_out: selection.Context) -> np.ndarray:
    """Per sample, the prediction of the teacher whose softmax averaged over the plain view and the
    augmented ones has the least entropy: confident *and* stable under augmentation. A selector of
    the library until the matrix measured it level with least entropy (docs/BENCHMARKS.md); the
    screen keeps it so that the measurement can be repeated."""
    picked = np.argmin(np.stack([_entropy(p) for p in _view_averaged(held_out)]), axis=0)
    probs = np.stack([_softmax(l) for l in held_out.teacher_logits])
    return probs[picked, np.arange(probs.shape[1])]


def agreement_accuracy(train_logits, share: float = 0.5) -> np.ndarray:
    """Per teacher, a label-free estimate of its accuracy: how often its answer on the training
    images agrees with each other teacher's on the `share` of images that teacher is most confident
    about (averaged over the others). A teacher that disagrees with its peers' confident answers is
    taken to be wrong there."""
    answers = [np.argmax(np.asarray(l), -1) for l in train_logits]
    confident = [c >= np.quantile(c, 1 - share) for c in (_softmax(l).max(-1) for l in train_logits)]
    estimate = [np.mean([np.mean(answer[mask] == answers[j][mask]) for j, mask in enumerate(confident) if j != i])
                for i, answer in enumerate(answers)]
    return np.asarray(estimate)


def agreement_weighted_product(train, held_out, temperature: float) -> np.ndarray:
    """`product` with each teacher's logits weighted by the log-odds of its `agreement_accuracy`:
    a teacher's vote counts by how reliable its peers make it look, not by its own confidence."""
    accuracy = np.clip(agreement_accuracy(train.teacher_logits), 1e-3, 1 - 1e-3)
    weights = np.maximum(np.log(accuracy / (1 - accuracy)), 1e-3)
    weights = weights / weights.sum()
    logits = np.einsum('t,tbc->bc', weights, np.stack([np.asarray(l) for l in held_out.teacher_logits]))
    return _softmax(logits, temperature)


def rules(temperature: float) -> dict:
    """name -> fn(train context, held-out context) -> [batch, classes] combined prediction."""
    def calibrated(train, held_out):
        confidence = float(np.mean([_softmax(l).max(-1).mean() for l in train.teacher_logits]))
        temps = [confidence_temperature(np.asarray(l), confidence) for l in train.teacher_logits]
        return np.mean([_softmax(l, t) for l, t in zip(held_out.teacher_logits, temps)], 0)

    return {
        'average (T=1)': lambda tr, ho: np.asarray(losses.average_probabilities(ho.teacher_logits, 1.0)),
        f'average (T={temperature:g})': lambda tr, ho: np.asarray(losses.average_probabilities(ho.teacher_logits,
                                                                                               temperature)),
        'least_entropy': lambda tr, ho: _picked(selection.get('least_entropy'), tr, ho),
        'entropy_percentile': lambda tr, ho: _picked(selection.get('entropy_percentile'), tr, ho),
        'view_agreement': lambda tr, ho: view_agreement(ho),
        'view_average': lambda tr, ho: np.mean(_view_averaged(ho), 0),
        'calibrated_average': calibrated,
        'product': lambda tr, ho: np.asarray(losses.average_logits(ho.teacher_logits, temperature)),
        'agreement_weighted_product': lambda tr, ho: agreement_weighted_product(tr, ho, temperature),
    }


def partial_teachers(config, plan, task: str) -> list[tuple[str, list[int], list[int]]]:
    """(teacher, its logit indices, the task-class indices they score) for each teacher outside the
    task's group whose output classes, as the run's zoo lists them, include two or more of the task's."""
    zoo = (config.get('zoo') or {}).get('teachers') or {}
    group = {t.name for t in plan.group(task)}
    out = []
    for spec in plan.used_teachers:
        classes = list((zoo.get(spec.name) or {}).get('classes') or ())
        shared = [(classes.index(c), i) for i, c in enumerate(plan.tasks[task].classes) if c in classes]
        if spec.name not in group and len(shared) >= 2:
            out.append((spec.name, [j for j, _ in shared], [i for _, i in shared]))
    return out


def _all_logits(net, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The net's whole classifier output (not only its declared task slices)."""
    whole = dataclasses.replace(net, heads={'all': (0, int(net.module.num_classes))})
    return eval_lib.predict(whole, variables, images, batch_size)['all']


def score_run(workdir: str, views: int) -> dict:
    """Per target task of the run in `workdir`: teachers' accuracies, the oracle's, each rule's."""
    config = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, 'config.json'))))
    plan = pipeline.validate(config, workdir)
    train = pipeline.load_split(config, config.data.train_split)
    held_out = pipeline.load_split(config, config.data.eval_split)
    teachers, frozen = pipeline.load_teachers(config, plan, workdir, tuple(train.images.shape[1:3]),
                                              sharding.make_mesh(-1))
    viewing = dataclasses.replace(selection.get('least_entropy'), views=views)
    temperature = float(one_stage_config(config).get('temperature', 1.0))
    out = {}
    for task in plan.target_tasks:
        group = [teachers[t.name] for t in plan.group(task)]
        # Views only for the held-out images: the rules fit on the training images' plain view.
        context = {name: selection_context(task, group, frozen, np.asarray(split.images[:]), config.eval_batch_size,
                                           selector, config.data, config.seed)
                   for name, split, selector in (('train', train, selection.get('least_entropy')),
                                                 ('held_out', held_out, viewing))}
        target = eval_lib.task_targets(plan.tasks[task], held_out.labels, held_out.label_names)
        valid = target >= 0
        right = np.stack([np.argmax(l, -1)[valid] == target[valid] for l in context['held_out'].teacher_logits])
        accuracy = {t.name: float(r.mean()) for t, r in zip(group, right)}
        best = max(accuracy.values())
        def accuracy_of(combined) -> float:
            return float(np.mean(np.argmax(np.asarray(combined), -1)[valid] == target[valid]))
        scores = {name: accuracy_of(rule(context['train'], context['held_out']))
                  for name, rule in rules(temperature).items()}
        partial = partial_teachers(config, plan, task)
        oracle_with_partial = right.any(0)
        if partial:
            images = np.asarray(held_out.images[:])
            whole = [_all_logits(teachers[n], frozen[n], images, config.eval_batch_size) for n, _, _ in partial]
            logits = [w[:, cols] for w, (_, cols, _) in zip(whole, partial)]
            # Weighted: each partial teacher counts as much as it believes the image is one of the classes it covers.
            weights = [_softmax(w)[:, cols].sum(-1) for w, (_, cols, _) in zip(whole, partial)]
            for kind in ('product', 'average'):
                for suffix, w in (('', None), (', weighted', weights)):
                    pooled = losses.pooled_target(context['held_out'].teacher_logits, logits, [c for _, _, c in partial],
                                                  partial_weights=w, kind=kind, temperature=temperature)
                    scores[f'{kind} + partial{suffix}'] = accuracy_of(pooled)
            for l, (_, _, classes) in zip(logits, partial):  # right where it covers the class and ranks it first
                oracle_with_partial = oracle_with_partial | (np.asarray(classes)[np.argmax(l, -1)][valid] == target[valid])
        out[task] = {'teachers': accuracy, 'best_teacher': best, 'oracle': float(right.any(0).mean()),
                     'partial_teachers': {n: [plan.tasks[task].classes[i] for i in c] for n, _, c in partial},
                     'oracle_with_partial': float(oracle_with_partial.mean()),
                     'rules': scores, 'rules_minus_best_teacher': {k: v - best for k, v in scores.items()},
                     'held_out_images': int(valid.sum())}
        print(f'{workdir} {task}: teachers {", ".join(f"{k} {100 * v:.1f}" for k, v in accuracy.items())}; '
              f'oracle {100 * out[task]["oracle"]:.1f}', flush=True)
        for k, v in scores.items():
            print(f'    {k:>22}: {100 * v:.1f} ({100 * (v - best):+.1f} vs the best teacher)', flush=True)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('workdirs', nargs='+')
    p.add_argument('--views', type=int, default=4, help='augmented views per image for view_agreement and view_average')
    p.add_argument('--json', default=None)
    a = p.parse_args(argv)
    results = {w: score_run(w, a.views) for w in a.workdirs}
    rows = [r['rules_minus_best_teacher'] for run in results.values() for r in run.values()]
    # A rule that some tasks lack (no partial teachers there) is summarised over the tasks that have it.
    names = list(dict.fromkeys(k for r in rows for k in r))
    summary = {k: {'mean': float(np.mean([r[k] for r in rows if k in r])),
                   'worst': float(np.min([r[k] for r in rows if k in r])),
                   'tasks': sum(k in r for r in rows)} for k in names}
    print('\n| rule | tasks | mean vs best teacher | worst |\n|---|---:|---:|---:|')
    for k, v in summary.items():
        print(f'| {k} | {v["tasks"]} | {100 * v["mean"]:+.2f} | {100 * v["worst"]:+.1f} |')
    if a.json:
        with open(a.json, 'w') as f:
            json.dump({'runs': results, 'summary': summary, 'views': a.views}, f, indent=2)


if __name__ == '__main__':
    main()
