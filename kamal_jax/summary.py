"""The run summary: `summary.json` for tools and a Markdown table for people."""

from __future__ import annotations

import json
from typing import Any, Mapping

from kamal_jax.files import write_atomic
from kamal_jax.layout import Layout
from kamal_jax.tasks import Task

ROLE_ORDER = {'teacher': 0, 'component': 1, 'baseline': 2, 'target': 3}
DIAGNOSTICS = 'diagnostics'  # a student entry's label-free diagnostics (`kamal_jax.diagnostics`), per task


def model_entry(role: str, arch: str, params: int, tasks, accuracy: Mapping[str, float],
                **extra: Any) -> dict:
    return {'role': role, 'arch': arch, 'params': int(params), 'tasks': list(tasks),
            'accuracy': {t: float(a) for t, a in accuracy.items()}, **extra}


def build(tasks: Mapping[str, Task], target_tasks, models: Mapping[str, dict],
          wall_seconds: Mapping[str, float], **extra: Any) -> dict:
    return {
        'tasks': {t: {'kind': tasks[t].kind, 'classes': list(tasks[t].classes)} for t in target_tasks},
        'models': dict(models),
        'wall_seconds': {k: round(float(v), 2) for k, v in wall_seconds.items()},
        **extra,
    }


def markdown(summary: Mapping[str, Any]) -> str:
    """Teachers vs components vs baselines vs target: per-task accuracy (%), parameters, FLOPs,
    and which teacher each component learned from."""
    # A task no model was scored on (no labelled held-out images) gets no empty column.
    tasks = [t for t in summary['tasks'] if any(t in m['accuracy'] for m in summary['models'].values())]
    header = '| model | role | arch | params | MFLOPs/image |' + ''.join(f' {t} |' for t in tasks)
    rows = [header, '|' + '---|' * 3 + '---:|' * (2 + len(tasks))]
    entries = sorted(summary['models'].items(), key=lambda kv: ROLE_ORDER.get(kv[1]['role'], 9))
    for name, m in entries:
        cells = [f'{100 * m["accuracy"][t]:.1f}' if t in m['accuracy'] else '' for t in tasks]
        flops = f'{m["flops"] / 1e6:,.1f}' if m.get('flops') else ''
        rows.append(f'| {name} | {m["role"]} | {m["arch"]} | {m["params"]:,} | {flops} |'
                    + ''.join(f' {c} |' for c in cells))
    lines = ['\n'.join(rows)]
    selection = selection_markdown(summary)
    if selection:
        lines.append(selection)
    target = [m for m in summary['models'].values() if m['role'] == 'target']
    teachers = [m for m in summary['models'].values() if m['role'] == 'teacher']
    if target and teachers:
        verdicts = []
        for t in tasks:
            best = max((m['accuracy'][t] for m in teachers if t in m['accuracy']), default=None)
            if best is not None and t in target[0]['accuracy']:
                delta = 100 * (target[0]['accuracy'][t] - best)
                verdicts.append(f'{t}: target {100 * target[0]["accuracy"][t]:.1f} vs best teacher '
                                f'{100 * best:.1f} ({delta:+.1f} pts)')
        comps = sum(m['params'] for m in summary['models'].values() if m['role'] == 'component')
        if comps:
            verdicts.append(f'target params / components together: {target[0]["params"] / comps:.2f}x')
        lines.append('\n'.join(f'- {v}' for v in verdicts))
    diagnosed = diagnostics_markdown(summary)
    if diagnosed:
        lines.append(diagnosed)
    wall = summary.get('wall_seconds', {})
    if wall:
        lines.append('Wall time: ' + ', '.join(f'{k} {v:.0f}s' for k, v in wall.items()))
    pending = summary.get('pending_baselines')
    if pending:
        lines.append(f'Still training: {", ".join(pending)} (this summary is rewritten as each baseline finishes).')
    return '\n\n'.join(lines) + '\n'


def diagnostics_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Per student and task, its label-free diagnostics as table cells (percentages, entropies in nats)."""
    rows = []
    for name, m in sorted(summary['models'].items(), key=lambda kv: ROLE_ORDER.get(kv[1]['role'], 9)):
        for task, d in (m.get(DIAGNOSTICS) or {}).items():
            pct = lambda x: f'{100 * x:.1f}'
            rows.append([name, task, ', '.join(f'{t} {pct(a)}' for t, a in d['agreement'].items()),
                         pct(d['agreement_with_combined']), pct(d['teacher_disagreement']),
                         ', '.join(f'{t} {pct(f)}' for t, f in d['selected_fraction'].items()),
                         ', '.join(f'{k} {v:.3f}' for k, v in d['mean_entropy'].items())])
    return rows


DIAGNOSTICS_HEADER = ['model', 'task', 'agrees with each teacher (%)', 'agrees with the least ambiguous teacher (%)',
                      'teachers disagree (%)', 'least ambiguous teacher (% of images)', 'mean entropy (nats)']


def diagnostics_markdown(summary: Mapping[str, Any]) -> str:
    """The label-free diagnostics on the held-out images, a row per student and task."""
    rows = diagnostics_rows(summary)
    if not rows:
        return ''
    labelled = (summary.get('data') or {}).get('labelled_eval', True)
    title = ('Label-free diagnostics on the held-out images' + ('' if labelled else
             ' (no labels: the accuracies above are empty)') + ':')
    lines = [title, '', '| ' + ' | '.join(DIAGNOSTICS_HEADER) + ' |', '|---|---|---|---:|---:|---|---|']
    lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
    return '\n'.join(lines)


def diagnostics_scalars(models: Mapping[str, dict]) -> dict[str, float]:
    """The diagnostics as flat scalars, 'diagnostics/<model>/<task>/<measure>[/<teacher>]'."""
    out = {}
    for name, m in models.items():
        for task, d in (m.get(DIAGNOSTICS) or {}).items():
            prefix = f'{DIAGNOSTICS}/{name}/{task}'
            for key, value in d.items():
                if isinstance(value, dict):
                    out.update({f'{prefix}/{key}/{k}': float(v) for k, v in value.items()})
                elif key != 'images':
                    out[f'{prefix}/{key}'] = float(value)
    return out


def selection_markdown(summary: Mapping[str, Any]) -> str:
    """Per task, on the held-out data: each teacher's share of the selector's weight, how often
    the selected teacher was right, against each teacher alone and an oracle that picks any right one."""
    models = summary['models']
    rows = []
    for m in models.values():
        report = m.get('selection') or {}
        if m['role'] != 'component' or not report:
            continue
        task = m['tasks'][0]
        chosen = ', '.join(f'{n} {100 * f:.0f}%' for n, f in report['selected_fraction'].items())
        alone = ', '.join(f'{n} {100 * models[n]["accuracy"][task]:.1f}' for n in report['selected_fraction']
                          if n in models and task in models[n]['accuracy'])
        rows.append(f'| {task} | {chosen} | {100 * report["selected_teacher_accuracy"]:.1f} | {alone} | '
                    f'{100 * report["oracle_accuracy"]:.1f} |')
    if not rows:
        return ''
    head = ('| task | selected (stage1.selector) | selected teacher right (%) | each teacher alone (%) '
            '| any teacher right (%) |\n|---|---|---:|---|---:|')
    return head + '\n' + '\n'.join(rows)


def read(workdir: str) -> dict:
    """The workdir's summary.json as a previous launch left it ({} if there is none or it does not
    parse: it is then only not carried over)."""
    try:
        with open(Layout(workdir).summary_json) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def keep_finished(previous: Mapping[str, Any], entries: Mapping[str, dict],
                  wall_seconds: Mapping[str, float]) -> tuple[dict, dict]:
    """One recipe's entries and wall seconds, with what a previous launch recorded for nets that
    resumed as already trained (an empty `final_train_metrics`: no step ran in this launch).

    Such a net keeps the previous summary's training metrics; and when every net of the recipe
    resumed so, its wall seconds are the previous launch's (the training), not this launch's few
    seconds of evaluation. Relaunching a finished run, e.g. to add baselines, so loses nothing.
    """
    old_models, old_wall = previous.get('models') or {}, previous.get('wall_seconds') or {}
    entries, wall_seconds = {k: dict(e) for k, e in entries.items()}, dict(wall_seconds)
    trained = [k for k, e in entries.items() if 'final_train_metrics' in e]
    resumed = [k for k in trained if not entries[k]['final_train_metrics'] and k in old_models]
    for k in resumed:
        entries[k]['final_train_metrics'] = dict(old_models[k].get('final_train_metrics') or {})
    if trained and len(resumed) == len(trained):
        wall_seconds.update({k: old_wall[k] for k in wall_seconds if k in old_wall})
    return entries, wall_seconds


def write(workdir: str, summary: Mapping[str, Any]) -> str:
    """Writes summary.json and summary.md (each whole or not at all: a run rewrites them as it goes)."""
    layout = Layout(workdir)
    write_atomic(layout.summary_json, json.dumps(summary, indent=2).encode())
    table = markdown(summary)
    write_atomic(layout.summary_md, table.encode())
    return table
