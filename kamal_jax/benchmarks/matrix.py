"""Finished runs -> the recipe x selector matrix: each net against the best teacher, per task.

    python -m kamal_jax.benchmarks.matrix WORKDIR [WORKDIR ...] [--include rows.json ...] \
        [--json out.json] [--note "..."]

One row per trained net of each run: the main recipe's target (recipe `recipe`, with stage 1's
selector where the recipe selects), then each baseline. Per task: the net's held-out accuracy
minus the best teacher's, and, where the run reports it (a two-stage main recipe's components),
the selection diagnostics: how often the selected teacher is right (weighted by the selector's
weights) against the best teacher and the oracle (some teacher right). The JSON keeps every row
with its run's command inputs, so a table in docs/BENCHMARKS.md can be traced back to its runs.
`--include` adds the rows of earlier results files (this tool's, or a list under 'runs'), and a
second table gives each recipe and selector's mean, spread and worst task over the rows' seeds.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from kamal_jax.api import RECIPES, Layout, OneStage, TwoStage, stored_as_resolved
from kamal_jax.benchmarks import tables
from kamal_jax.benchmarks.tables import summarise


def recipe_selector(recipe: str, config: dict) -> str:
    """The selector a recipe uses under `config` ('-' for one that combines or reads labels)."""
    r = RECIPES[recipe]
    if not (isinstance(r, TwoStage) or (isinstance(r, OneStage) and not r.combine)):
        return '-'
    stage1 = {**stored_as_resolved(config)['stage1'], **(r.stage1 if isinstance(r, TwoStage) else {})}
    return f"{stage1['selector']} ({stage1['selection']})"


def _read(workdir: str, name: str) -> dict:
    """The run's 'config' or 'summary' (its JSON file)."""
    layout = Layout(workdir)
    path = layout.config if name == 'config' else layout.summary_json
    if not os.path.isfile(path):
        raise SystemExit(f'{path} is missing: is {workdir!r} the workdir of a run that has finished a recipe?')
    with open(path) as f:
        return json.load(f)


def _name(workdir: str) -> str:
    return os.path.basename(os.path.normpath(workdir))


def rows(workdir: str, config: dict | None = None, summary: dict | None = None) -> list[dict[str, Any]]:
    """The matrix rows of one run: every finished net of a recipe, scored per task (`config` and
    `summary`: the run's files, when the caller has read them)."""
    config = stored_as_resolved(config if config is not None else _read(workdir, 'config'))
    summary = summary if summary is not None else _read(workdir, 'summary')
    models = summary['models']
    tasks = list(config['target_tasks'])
    teachers = {t: {n: m['accuracy'][t] for n, m in models.items() if m.get('role') == 'teacher' and t in m['accuracy']}
                for t in tasks}
    best = {t: max(a.values()) for t, a in teachers.items()}
    nets = [('target', config['recipe'])]
    nets += [(k, k[len('baseline_'):]) for k in models if k.startswith('baseline_')]
    out = []
    for key, recipe in nets:
        if key not in models:
            continue
        row = {'workdir': _name(workdir), 'net': key, 'recipe': recipe,
               'selector': recipe_selector(recipe, config), 'seed': config['seed'],
               'epochs': models[key].get('epochs'), 'tasks': {}}
        for t in tasks:
            acc = models[key]['accuracy'].get(t)
            entry = {'teachers': teachers[t], 'best_teacher': best[t], 'result': acc,
                     'minus_best_teacher': None if acc is None else acc - best[t]}
            component = models.get(f'component_{t}', {})
            if key == 'target' and component.get('selection'):
                entry['selection'] = component['selection']
            row['tasks'][t] = entry
        out.append(row)
    return out


def table(all_rows: list[dict]) -> str:
    """Markdown: one line per row, points against the best teacher and selection diagnostics."""
    tasks = list(dict.fromkeys(t for r in all_rows for t in r['tasks']))
    lines = ['| run | recipe | selector | ' + ' / '.join(tasks) + ' - best teacher | selected right | best teacher | oracle |',
             '|---|---|---|---:|---:|---:|---:|']
    for r in all_rows:
        ts = [r['tasks'][t] for t in tasks if t in r['tasks']]
        delta = ' / '.join('-' if e['minus_best_teacher'] is None else f"{100 * e['minus_best_teacher']:+.1f}" for e in ts)
        sel = [e.get('selection') for e in ts]
        right = ' / '.join(f"{100 * s['selected_teacher_accuracy']:.1f}" for s in sel) if all(sel) else '-'
        oracle = ' / '.join(f"{100 * s['oracle_accuracy']:.1f}" for s in sel) if all(sel) else '-'
        best = ' / '.join(f"{100 * e['best_teacher']:.1f}" for e in ts)
        lines.append(f"| {r['workdir']} | {r['recipe']} | {r['selector']} | {delta} | {right} | {best} | {oracle} |")
    return '\n'.join(lines)


def included(path: str) -> list[dict[str, Any]]:
    """Rows of an earlier results file (`tables.included`, which the docs' tables read too)."""
    with open(path) as f:
        return tables.included(json.load(f), os.path.basename(path))


def summary_table(summary: dict[str, dict[str, Any]]) -> str:
    """Markdown: mean [min, max] per task over the seeds, and the worst task."""
    lines = ['| recipe | selector | seeds | mean [min, max] per task - best teacher | worst task |',
             '|---|---|---|---|---:|']
    for key, s in summary.items():
        recipe, selector = key.split(' | ')
        cells = ' / '.join(f"{100 * v['mean']:+.1f} [{100 * v['min']:+.1f}, {100 * v['max']:+.1f}]"
                           for v in s['tasks'].values())
        w = s['worst']
        lines.append(f"| {recipe} | {selector} | {','.join(map(str, s['seeds']))} | {cells} | "
                     f"{100 * w['minus_best_teacher']:+.1f} (seed {w['seed']}, {w['task']}) |")
    return '\n'.join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('workdirs', nargs='*')
    p.add_argument('--include', nargs='*', default=[], help='earlier results files whose rows to add')
    p.add_argument('--json', default=None, help='write the rows here')
    p.add_argument('--note', default='', help='what, where and how the runs ran (kept in the JSON)')
    a = p.parse_args(argv)
    runs = {_name(w): (w, _read(w, 'config'), _read(w, 'summary')) for w in a.workdirs}
    all_rows = [r for w, config, summary in runs.values() for r in rows(w, config, summary)]
    all_rows += [r for path in a.include for r in included(path)]
    if not all_rows:
        raise SystemExit('no rows: name at least one finished workdir or --include file.')
    summary = summarise(all_rows)
    print(table(all_rows) + '\n\n' + summary_table(summary))
    if a.json:
        configs = {name: config for name, (_, config, _) in runs.items()}
        walls = {name: summary.get('wall_seconds') for name, (_, _, summary) in runs.items()}
        with open(a.json, 'w') as f:
            json.dump({'note': a.note, 'included': a.include, 'rows': all_rows, 'summary': summary,
                       'wall_seconds': walls, 'configs': configs}, f, indent=2)


if __name__ == '__main__':
    main()
