"""Label-free ways to combine a run's teachers, scored without training a student.

    python -m kamal_jax.benchmarks.combiners WORKDIR [WORKDIR ...] [--views 4] [--json out.json] [--store DIR]
    python -m kamal_jax.benchmarks.combiners DIR/NAME.npz [...] [--json out.json]

`--store DIR` writes what the screen reads of each run (its teachers' logits on the training and
evaluation images, float16, compressed: `save_inputs`) to DIR/NAME.npz; given such files instead of
workdirs, the screen scores the very same teachers again without their checkpoints or the data.

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
teachers), `view_product` (`product` over every teacher and every view: each teacher's logits
averaged over the views, then the product), `calibrated_average` (each teacher's temperature fitted on the training images so that
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
those classes, and `view_product + partial` (`product + partial` over the task's teachers' views;
partial teachers on the plain image); a task without partial teachers scores each of these as its
rule alone. Then every combiner of `selection.COMBINERS` that fits (the label models): fitted on
all training images without labels at each point of its grid, the point chosen by accuracy on a
seed-fixed `--validation` share of the training images (their labels are read there only; a point
replaces the grid's default only when it gets `--min_gain` more of them right), scored on the
evaluation images; `NAME (default)` is the grid's default, what a recipe uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os

from kamal_jax.api import apply_cpu_defaults

apply_cpu_defaults()  # Before JAX initialises its backend.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import numpy as np  # noqa: E402

from kamal_jax.api import (Layout, load_split, load_teachers, losses, make_mesh, one_stage_config,  # noqa: E402
                           predict, resolve_config, selection, selection_context, stored_as_resolved,
                           task_targets, validate_config)


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


def view_mean_logits(held_out: selection.Context) -> tuple[np.ndarray, ...]:
    """Per teacher, its logits averaged over the plain view and the augmented ones: a product over
    them is the normalised geometric mean of its probabilities over the views."""
    return tuple(np.concatenate([np.asarray(p)[None], np.asarray(v)]).mean(0)
                 for p, v in zip(held_out.teacher_logits, held_out.view_logits))


def view_product(held_out: selection.Context, temperature: float) -> np.ndarray:
    """`product` over every teacher and every view: an answer counts where it holds across
    augmentations as well as across teachers (with a logits cache of K views, a recipe could
    read it for free)."""
    return np.asarray(selection.COMBINERS['product'](selection.Context(view_mean_logits(held_out)), temperature))


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
        'average (T=1)': lambda tr, ho: np.asarray(selection.COMBINERS['average'](ho, 1.0)),
        f'average (T={temperature:g})': lambda tr, ho: np.asarray(selection.COMBINERS['average'](ho, temperature)),
        'least_entropy': lambda tr, ho: _picked(selection.get('least_entropy'), tr, ho),
        'entropy_percentile': lambda tr, ho: _picked(selection.get('entropy_percentile'), tr, ho),
        'view_agreement': lambda tr, ho: view_agreement(ho),
        'view_average': lambda tr, ho: np.mean(_view_averaged(ho), 0),
        'view_product': lambda tr, ho: view_product(ho, temperature),
        'calibrated_average': calibrated,
        'product': lambda tr, ho: np.asarray(selection.COMBINERS['product'](ho, temperature)),
        'agreement_weighted_product': lambda tr, ho: agreement_weighted_product(tr, ho, temperature),
    }


def partial_teachers(config, plan, task: str) -> list[tuple[str, list[int], list[int]]]:
    """(teacher, its logit indices, the task-class indices they score) for each teacher outside the
    task's group whose output classes, as the run's zoo lists them, include two or more of the task's."""
    zoo = config.zoo.teachers if config.zoo and 'teachers' in config.zoo else {}
    group = {t.name for t in plan.group(task)}
    out = []
    for spec in plan.used_teachers:
        classes = list(zoo[spec.name].classes) if spec.name in zoo and 'classes' in zoo[spec.name] else []
        shared = [(classes.index(c), i) for i, c in enumerate(plan.tasks[task].classes) if c in classes]
        if spec.name not in group and len(shared) >= 2:
            out.append((spec.name, [j for j, _ in shared], [i for _, i in shared]))
    return out


def _all_logits(net, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The net's whole classifier output (not only its declared task slices)."""
    whole = dataclasses.replace(net, heads={'all': (0, int(net.module.num_classes))})
    return predict(whole, variables, images, batch_size)['all']


# ----------------------------------------------------------------------------- the screen's inputs

def gather(workdir: str, views: int) -> dict:
    """Everything the screen reads of a run, as arrays: per target task, each of its teachers' task
    logits on the training images and on the evaluation images (and on `views` augmented views of
    them), each partial teacher's whole output on both, and the task's class index per image (-1
    outside the task; the screen reads the training labels only on its validation share)."""
    config = resolve_config(stored_as_resolved(json.load(open(Layout(workdir).config))))
    plan = validate_config(config, workdir)
    train = load_split(config, config.data.train_split)
    held_out = load_split(config, config.data.eval_split)
    teachers, frozen = load_teachers(config, plan, workdir, tuple(train.images.shape[1:3]), make_mesh(-1))
    viewing = dataclasses.replace(selection.get('least_entropy'), views=views)
    tasks = {}
    for task in plan.target_tasks:
        group = [teachers[t.name] for t in plan.group(task)]
        partial = partial_teachers(config, plan, task)
        entry = {'classes': list(plan.tasks[task].classes), 'teachers': [t.name for t in group],
                 'partial': [[n, cols, classes] for n, cols, classes in partial]}
        # Views only for the held-out images: the rules fit on the training images' plain view.
        for part, split, selector in (('train', train, selection.get('least_entropy')), ('test', held_out, viewing)):
            images = np.asarray(split.images[:])
            context = selection_context(task, group, frozen, images, config.eval_batch_size, selector, config.data,
                                        config.seed)
            entry[part] = dict(zip(entry['teachers'], context.teacher_logits))
            if context.view_logits is not None:
                entry[f'{part}_views'] = dict(zip(entry['teachers'], context.view_logits))
            entry[f'{part}_partial'] = {n: _all_logits(teachers[n], frozen[n], images, config.eval_batch_size)
                                        for n, _, _ in partial}
            entry[f'{part}_labels'] = task_targets(plan.tasks[task], split.labels, split.label_names)
        tasks[task] = entry
    return {'temperature': one_stage_config(config).temperature, 'views': views, 'tasks': tasks}


_ARRAYS = ('train', 'test', 'train_views', 'test_views', 'train_partial', 'test_partial')


def save_inputs(inputs: dict, path: str, command: str) -> None:
    """A compressed npz: logits as float16, class indices as int16, the rest as JSON under 'meta'
    (with the `command` that wrote it). Read back with `load_inputs`."""
    arrays, meta = {}, {'temperature': inputs['temperature'], 'views': inputs['views'], 'command': command,
                        'tasks': {}}
    for task, entry in inputs['tasks'].items():
        meta['tasks'][task] = {k: entry[k] for k in ('classes', 'teachers', 'partial')}
        for part in _ARRAYS:
            for name, a in entry.get(part, {}).items():
                arrays[f'{task}/{part}/{name}'] = np.asarray(a, np.float16)
        for part in ('train_labels', 'test_labels'):
            arrays[f'{task}/{part}'] = np.asarray(entry[part], np.int16)
    np.savez_compressed(path, meta=np.asarray(json.dumps(meta)), **arrays)


def load_inputs(path: str) -> dict:
    """What `save_inputs` wrote (no pickles: a file never runs code), logits as float32."""
    with np.load(path, allow_pickle=False) as f:
        if 'meta' not in f.files:
            raise ValueError(f'{path} holds no screen inputs (no "meta" entry); it is not a file save_inputs wrote.')
        meta = json.loads(str(f['meta']))
        tasks = {}
        for task, m in meta['tasks'].items():
            entry = dict(m, **{part: {} for part in _ARRAYS})
            for key in f.files:
                parts = key.split('/')
                if parts[0] == task and len(parts) == 3:
                    entry[parts[1]][parts[2]] = f[key].astype(np.float32)
                elif parts[0] == task and len(parts) == 2:
                    entry[parts[1]] = f[key].astype(np.int64)
            entry = {k: v for k, v in entry.items() if not (isinstance(v, dict) and not v)}
            for part in ('train', 'test'):  # the task's teachers in their declared order
                entry[part] = {n: entry[part][n] for n in m['teachers']}
            tasks[task] = entry
    return {'temperature': meta['temperature'], 'views': meta['views'], 'command': meta['command'], 'tasks': tasks}


def contexts(entry: dict) -> dict[str, selection.Context]:
    """The task's training and evaluation contexts (teachers in declared order, views, partial ones)."""
    out = {}
    for part in ('train', 'test'):
        views = entry.get(f'{part}_views')
        out[part] = selection.Context(
            tuple(entry[part][n] for n in entry['teachers']),
            view_logits=tuple(views[n] for n in entry['teachers']) if views else None,
            partial=tuple(selection.Partial(entry[f'{part}_partial'][n], cols, classes)
                          for n, cols, classes in entry['partial']))
    return out


def validation_rows(num_train: int, share: float) -> np.ndarray:
    """The training rows whose labels choose hyper-parameters: a seed-fixed `share` of them."""
    order = np.random.default_rng(0).permutation(num_train)
    return np.sort(order[:int(round(share * num_train))])


# ----------------------------------------------------------------------------- scoring

def _rows(context: selection.Context, rows: np.ndarray) -> selection.Context:
    return selection.Context(tuple(np.asarray(l)[rows] for l in context.teacher_logits),
                             partial=tuple(p._replace(logits=np.asarray(p.logits)[rows]) for p in context.partial))


def choose_on_validation(combiner: selection.Combiner, train: selection.Context, test: selection.Context,
                         train_labels: np.ndarray, validation: np.ndarray, min_gain: int = 0) -> dict:
    """Fits `combiner` on all training images (no labels) at every point of its grid, keeps the
    point whose argmax is right most often on the labelled validation rows, unless it gets fewer
    than `min_gain` more of them right than the grid's default (then, and on a tie, the default),
    and predicts the evaluation images with it."""
    names = list(combiner.grid)
    scored = []
    for values in itertools.product(*(combiner.grid[n] for n in names)):
        hyper = dict(zip(names, values))
        params = combiner.fit(train, **hyper)
        rows = validation[train_labels[validation] >= 0]
        predicted = np.argmax(np.asarray(combiner(_rows(train, rows), 1.0, params)), -1)
        scored.append((float(np.mean(predicted == train_labels[rows])), hyper, params))
    best = max(range(len(scored)), key=lambda i: (scored[i][0], -i))
    if (scored[best][0] - scored[0][0]) * len(rows) < min_gain - 1e-9:
        best = 0
    accuracy, hyper, params = scored[best]
    return {'prediction': np.asarray(combiner(test, 1.0, params)), 'hyper': hyper, 'validation_accuracy': accuracy,
            'default': np.asarray(combiner(test, 1.0, scored[0][2])),
            'grid': [(h, a, np.argmax(np.asarray(combiner(test, 1.0, p)), -1)) for a, h, p in scored]}


def pooled_alone(temperature: float) -> dict[str, str]:
    """Each rule with partial teachers -> the rule it is without them."""
    average = f'average (T={temperature:g})'
    return {'product + partial': 'product', 'product + partial, weighted': 'product',
            'average + partial': average, 'average + partial, weighted': average,
            'view_product + partial': 'view_product'}


def score_task(entry: dict, temperature: float, validation_share: float, min_gain: int = 0) -> dict:
    """One task: teachers' accuracies, the oracle's, each rule's, on the evaluation images."""
    context = contexts(entry)
    target = np.asarray(entry['test_labels'])
    valid = target >= 0
    right = np.stack([np.argmax(l, -1)[valid] == target[valid] for l in context['test'].teacher_logits])
    accuracy = dict(zip(entry['teachers'], map(float, right.mean(1))))
    best = max(accuracy.values())

    def accuracy_of(combined) -> float:
        return float(np.mean(np.argmax(np.asarray(combined), -1)[valid] == target[valid]))
    scores = {name: accuracy_of(rule(context['train'], context['test'])) for name, rule in rules(temperature).items()}
    chosen = {}
    validation = validation_rows(len(entry['train_labels']), validation_share)
    for name, combiner in selection.COMBINERS.items():
        if combiner.fit is None:
            continue
        picked = choose_on_validation(combiner, context['train'], context['test'], np.asarray(entry['train_labels']),
                                      validation, min_gain)
        scores[name] = accuracy_of(picked['prediction'])
        scores[f'{name} (default)'] = accuracy_of(picked['default'])
        # Every grid point's scores, for the record (the choice above read only the validation ones).
        chosen[name] = {'hyper': picked['hyper'], 'validation_accuracy': picked['validation_accuracy'],
                        'grid': [{'hyper': h, 'validation': a, 'test': float(np.mean(p[valid] == target[valid]))}
                                 for h, a, p in picked['grid']]}
    partial = context['test'].partial
    oracle_with_partial = right.any(0)
    if partial:
        logits = [np.asarray(p.logits)[:, list(p.columns)] for p in partial]
        # Weighted: each partial teacher counts as much as it believes the image is one of the classes it covers.
        weights = [_softmax(p.logits)[:, list(p.columns)].sum(-1) for p in partial]
        for kind in ('product', 'average'):
            for suffix, w in (('', None), (', weighted', weights)):
                pooled = losses.pooled_target(context['test'].teacher_logits, logits, [p.classes for p in partial],
                                              partial_weights=w, kind=kind, temperature=temperature)
                scores[f'{kind} + partial{suffix}'] = accuracy_of(pooled)
        # The two that gained most on the screens together: the task's teachers over their views.
        pooled = losses.pooled_target(view_mean_logits(context['test']), logits, [p.classes for p in partial],
                                      kind='product', temperature=temperature)
        scores['view_product + partial'] = accuracy_of(pooled)
        for l, p in zip(logits, partial):  # right where it covers the class and ranks it first
            oracle_with_partial = oracle_with_partial | (np.asarray(p.classes)[np.argmax(l, -1)][valid] == target[valid])
    else:  # no partial teacher: each '+ partial' rule is its rule alone, so every zoo scores every rule
        for name, alone in pooled_alone(temperature).items():
            if alone in scores:
                scores[name] = scores[alone]
    return {'teachers': accuracy, 'best_teacher': best, 'oracle': float(right.any(0).mean()),
            'partial_teachers': {n: [entry['classes'][i] for i in c] for n, _, c in entry['partial']},
            'oracle_with_partial': float(oracle_with_partial.mean()),
            'rules': scores, 'rules_minus_best_teacher': {k: v - best for k, v in scores.items()},
            'chosen_on_validation': chosen, 'validation_images': int(np.sum(
                np.asarray(entry['train_labels'])[validation_rows(len(entry['train_labels']), validation_share)] >= 0)),
            'held_out_images': int(valid.sum())}


def score_inputs(name: str, inputs: dict, validation_share: float, min_gain: int = 0) -> dict:
    out = {}
    for task, entry in inputs['tasks'].items():
        out[task] = r = score_task(entry, inputs['temperature'], validation_share, min_gain)
        print(f'{name} {task}: teachers {", ".join(f"{k} {100 * v:.1f}" for k, v in r["teachers"].items())}; '
              f'oracle {100 * r["oracle"]:.1f}', flush=True)
        for k, v in r['rules'].items():
            print(f'    {k:>30}: {100 * v:.1f} ({100 * (v - r["best_teacher"]):+.1f} vs the best teacher)', flush=True)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('runs', nargs='+', help="run workdirs, or screen inputs (.npz) that --store wrote")
    p.add_argument('--views', type=int, default=4, help='augmented views per image for view_agreement and view_average')
    p.add_argument('--validation', type=float, default=0.2,
                   help="share of the training images whose labels choose a fitted combiner's hyper-parameters")
    p.add_argument('--min_gain', type=int, default=2,
                   help="validation images a grid point must get right beyond the grid's default to replace it")
    p.add_argument('--store', default=None, help="a folder: write each workdir's inputs there as NAME.npz")
    p.add_argument('--json', default=None)
    a = p.parse_args(argv)
    if not 0 < a.validation < 1:
        p.error(f'--validation must be between 0 and 1, got {a.validation}.')
    missing = [r for r in a.runs if not os.path.exists(r)]
    if missing:
        p.error(f'no such workdir or inputs file: {", ".join(missing)}.')
    results = {}
    for run in a.runs:
        if run.endswith('.npz'):
            inputs = load_inputs(run)
        else:
            inputs = gather(run, a.views)
            if a.store:
                os.makedirs(a.store, exist_ok=True)
                path = os.path.join(a.store, os.path.basename(os.path.normpath(run)) + '.npz')
                save_inputs(inputs, path, f'python -m kamal_jax.benchmarks.combiners {run} --views {a.views} '
                                          f'--store {a.store}')
                print(f'wrote {path}', flush=True)
        results[run] = score_inputs(run, inputs, a.validation, a.min_gain)
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
            json.dump({'runs': results, 'summary': summary, 'views': a.views, 'validation': a.validation,
                       'min_gain': a.min_gain}, f, indent=2)


if __name__ == '__main__':
    main()
