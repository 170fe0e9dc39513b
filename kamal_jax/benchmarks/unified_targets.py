"""The unified targets of a run whose teachers know different classes, scored without training a student.

    python -m kamal_jax.benchmarks.unified_targets WORKDIR [--config NAME] [--json out.json]
    python -m kamal_jax.benchmarks.unified_targets DIR/NAME.npz [...] --config NAME --task NAME=c1,c2,... [...]

The second form reads the combination screen's stored inputs (`kamal_jax.benchmarks.combiners
--store`: every teacher's whole output on the held-out images, as its partial teachers) and scores
tasks picked by class names (`--task`) across the teachers of the config's zoo (whose
`zoo.teachers.NAME.classes` name their logits): the very same teachers again, without their
checkpoints or the data.

WORKDIR is a run's workdir (its stored config is read), or with `--config` (a config file or
`kamal_jax:bench_cifar10_overlap:reduced`) any folder where that config's teacher
checkpoints exist (its zoo trained into WORKDIR/zoo). On the held-out split,
for each target task: each serving teacher scored on the images of the classes it knows, argmax over
those classes (the fair reading of a net that cannot name the others); the accuracy of each unified
estimate's argmax (`kamal_jax.unified.ESTIMATES`) on the task's images, at the temperature the
recipes distil at and at 1; and what `unified.outside` sees: the estimated chance of being one of
the task's classes (`inside`), on the task's images and on the others, and the share under one half
(what 'drop' drops). Labels are read only to score.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from kamal_jax.api import (Layout, Run, load_config_file, load_split, load_teachers, make_mesh,
                           one_stage_config, plan_from_config, resolve_config, stored_as_resolved, unified,
                           validate_config, whole_logits)


def member_accuracy(member, logits: np.ndarray, label_names: np.ndarray) -> tuple[float, int]:
    """(accuracy, images) of one teacher softmax on the images of the classes it knows."""
    alone = unified.Union(member.names, len(member.names), (member,))
    probs = unified.member_probabilities(alone, [logits])[:, 0]
    known = np.isin(label_names, member.names)
    predicted = np.asarray(member.names)[np.argmax(probs, -1)]
    return float(np.mean(predicted[known] == label_names[known])), int(known.sum())


def score_task(union: unified.Union, logits, label_names: np.ndarray, temperature: float,
               iterations: int) -> dict:
    """One task's teachers, estimates and inside chances on labelled images (`label_names` [N])."""
    task_names = np.asarray(union.names[:union.task_size])
    in_task = np.isin(label_names, task_names)
    out = {'images': int(in_task.sum()), 'other_images': int((~in_task).sum()),
           'teachers': {}, 'estimates': {}}
    for m, z in zip(union.members, logits):
        accuracy, images = member_accuracy(m, z, label_names)
        out['teachers'][m.teacher] = {'classes': list(m.names), 'accuracy': accuracy, 'images': images}
    mask = union.mask()
    for kind in unified.ESTIMATES:
        row = {}
        for t in (temperature, 1.0):
            q = unified.estimate(unified.member_probabilities(union, logits, t), mask, kind, iterations)
            target, inside = unified.restrict(q, union.task_size)
            predicted = task_names[np.argmax(target, -1)]
            row[f'accuracy_T{t:g}'] = float(np.mean(predicted[in_task] == label_names[in_task]))
            if t == 1.0:
                row['inside_on_task_images'] = float(inside[in_task].mean())
                row['under_half_on_task_images'] = float(np.mean(inside[in_task] < 0.5))
                others = inside[~in_task]  # none (None) for a task of every class the teachers know
                row['inside_on_other_images'] = float(others.mean()) if others.size else None
                row['under_half_on_other_images'] = float(np.mean(others < 0.5)) if others.size else None
        out['estimates'][kind] = row
    return out


def score_run(workdir: str, config_name: str = '') -> dict:
    if config_name:
        config = resolve_config(load_config_file(config_name))
    else:
        stored = json.load(open(Layout(workdir).config))
        config = resolve_config(stored_as_resolved(stored))
    plan = validate_config(config, workdir)
    missing = [t.checkpoint for t in plan.used_teachers if not os.path.isfile(t.checkpoint)]
    if missing:
        raise SystemExit(f'error: teacher checkpoint {missing[0]} does not exist; launch the config on {workdir} '
                         'first (it trains its zoo there).')
    held_out = load_split(config, config.data.eval_split)
    size = tuple(held_out.images.shape[1:3])
    teachers, frozen = load_teachers(config, plan, workdir, size, make_mesh(-1))
    run = Run(config, plan, teachers, frozen, None, held_out, None, workdir)
    names = np.asarray(held_out.label_names['label'])[np.asarray(held_out.labels['label'])]
    logits = {t.name: whole_logits(run, t.name, held_out.images) for t in plan.used_teachers}
    temperature = one_stage_config(config).temperature
    out = {}
    for task in plan.target_tasks:
        union = unified.union_of(plan, task)
        out[task] = score_task(union, [logits[m.teacher] for m in union.members],
                               np.asarray([str(n) for n in names]), temperature, config.unified.iterations)
    return {'workdir': workdir, 'temperature': temperature, 'tasks': out}


def score_inputs(path: str, config_name: str, tasks: dict[str, list[str]], iterations: int = 100) -> dict:
    """`tasks` (name -> class names) across the zoo teachers of screen inputs `path`."""
    from kamal_jax.benchmarks import combiners
    inputs = combiners.load_inputs(path)
    config = resolve_config(load_config_file(config_name))
    zoo = config.zoo.teachers
    logits, label_names = {}, None
    for entry in inputs['tasks'].values():
        logits.update(entry['test_partial'])
        names = np.asarray(entry['classes'] + [''])[entry['test_labels']]  # '' outside the task (index -1)
        label_names = names if label_names is None else np.where(names != '', names, label_names)
    missing = [n for n in zoo if n not in logits]
    if missing:
        raise SystemExit(f'error: {path} holds no whole output of teacher {missing[0]!r}.')
    plan = plan_from_config(resolve_config({
        'data': config.data.to_dict(), 'target_tasks': tuple(tasks),
        'tasks': {n: {'classes': list(c)} for n, c in tasks.items()},
        'teachers': {n: {'checkpoint': 'unused', 'mean': (0.0,), 'std': (1.0,), 'classes': list(zoo[n]['classes'])}
                     for n in zoo}}))
    out = {}
    for task in plan.target_tasks:
        union = unified.union_of(plan, task)
        out[task] = score_task(union, [logits[m.teacher] for m in union.members], label_names,
                               inputs['temperature'], iterations)
    return {'inputs': path, 'temperature': inputs['temperature'], 'tasks': out}


def _figure(value, form: str) -> str:
    return '-' if value is None else form.format(value)


def table(result: dict) -> str:
    lines = ['| task | estimate | accuracy (T = %g) | accuracy (T = 1) | inside, task images | inside, others '
             '| others under 1/2 |' % result['temperature'], '|---|---|---:|---:|---:|---:|---:|']
    key = f"accuracy_T{result['temperature']:g}"
    for task, r in result['tasks'].items():
        for kind, e in r['estimates'].items():
            lines.append(f"| {task} | {kind} | {100 * e[key]:.1f} | "
                         f"{100 * e['accuracy_T1']:.1f} | {e['inside_on_task_images']:.3f} | "
                         f"{_figure(e['inside_on_other_images'], '{:.3f}')} | "
                         f"{_figure(e['under_half_on_other_images'], '{:.1%}')} |")
    lines += ['', '| teacher | classes it knows | accuracy on their images | images |', '|---|---|---:|---:|']
    seen = {}
    for r in result['tasks'].values():
        seen.update(r['teachers'])
    for name, t in seen.items():
        lines.append(f"| {name} | {', '.join(t['classes'])} | {100 * t['accuracy']:.1f} | {t['images']} |")
    return '\n'.join(lines)


def mean_over(results: list[dict]) -> dict:
    """Per task and estimate, each figure's mean over several results (e.g. zoos of five seeds)."""
    out = {}
    for task in results[0]['tasks']:
        out[task] = {kind: {k: None if v is None else float(np.mean([r['tasks'][task]['estimates'][kind][k]
                                                                    for r in results]))
                            for k, v in e.items()} for kind, e in results[0]['tasks'][task]['estimates'].items()}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('runs', nargs='+', help='a workdir, or screen inputs (.npz) that combiners --store wrote')
    p.add_argument('--config', default='', help="a config file[:ARG] or kamal_jax:NAME[:ARG] (default: WORKDIR's stored config)")
    p.add_argument('--task', action='append', default=[], help='with screen inputs: NAME=class,class,...')
    p.add_argument('--json', default=None)
    a = p.parse_args(argv)
    command = 'python -m kamal_jax.benchmarks.unified_targets ' + ' '.join(argv or sys.argv[1:])
    if all(r.endswith('.npz') for r in a.runs):
        if not a.config or not a.task:
            p.error('screen inputs need --config (whose zoo names the teachers\' classes) and at least one --task.')
        tasks = {}
        for t in a.task:
            name, _, classes = t.partition('=')
            if not name or not classes:
                p.error(f'--task {t!r} must be NAME=class,class,...')
            tasks[name] = [c.strip() for c in classes.split(',') if c.strip()]
        results = [score_inputs(r, a.config, tasks) for r in a.runs]
        for r in results:
            print(f"\n{r['inputs']}\n{table(r)}", flush=True)
        result = {'command': command, 'runs': results, 'mean': mean_over(results)}
        print('\nmean over the inputs:\n' + json.dumps(result['mean'], indent=1))
    else:
        if len(a.runs) != 1:
            p.error('give one workdir (or only .npz screen inputs).')
        if not a.config and not os.path.isfile(Layout(a.runs[0]).config):
            p.error(f'{a.runs[0]} holds no run (no config.json); name its config with --config.')
        result = score_run(a.runs[0], a.config)
        result['command'] = command
        print(table(result), flush=True)
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    main()
