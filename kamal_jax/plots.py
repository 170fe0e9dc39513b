"""Plots of one run, to look at: `python -m kamal_jax.plots WORKDIR` (also run at the end of a run).

Writes WORKDIR/report/index.html and its PNGs: learning curves and held-out accuracy per stage,
each teacher's selection share over training, per task each teacher's held-out accuracy beside how
often it was selected (and how often the selected teacher, and the best of them, the oracle, was
right), and the accuracy table. It reads the run's JSONL metrics (`kamal_jax.train.metrics`, so no
TensorFlow is needed) and `summary.json`.

`kamal_jax.benchmarks.record` is another thing: it records a finished benchmark run as one JSON
(config, summary, teacher cards, machine, versions) for docs/results; it draws nothing.
"""

from __future__ import annotations

import html
import json
import os
import sys
from typing import Mapping

from kamal_jax.layout import DIAGNOSTICS, TB, Layout
from kamal_jax.summary import DIAGNOSTICS_HEADER, diagnostics_rows
from kamal_jax.train.metrics import JSONL

Curves = dict[str, tuple[list[int], list[float]]]  # scalar name -> (steps, values)


def read_curves(workdir: str) -> dict[str, Curves]:
    """Per stage ('stage1/<task>', 'stage2', 'baselines/<name>/target', ...), its scalars over steps.
    A resumed run repeats the steps after its last checkpoint: the later value of a step wins."""
    stages = {}
    for root, _, files in sorted(os.walk(workdir)):
        if JSONL not in files:
            continue
        parts = os.path.relpath(root, workdir).split(os.sep)
        if TB not in parts:
            continue
        cut = len(parts) - 1 - parts[::-1].index(TB)  # WORKDIR[/baselines/NAME]/tb/STAGE
        stage = '/'.join(parts[:cut] + parts[cut + 1:])
        by_key: dict[str, dict[int, float]] = {}
        with open(os.path.join(root, JSONL)) as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    step = record.pop('step')
                    for k, v in record.items():
                        by_key.setdefault(k, {})[step] = v
        stages[stage] = {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in by_key.items()}
    return stages


def _figure(ncols: int):
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.2), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_curves(stage: str, curves: Curves, path: str) -> str:
    """Loss terms (log scale), held-out accuracy and the learning rates of one stage."""
    plt, fig, (loss, acc, lr) = _figure(3)
    for prefix, ax, title in (('train/', loss, 'training loss terms'), ('eval/', acc, 'held-out accuracy'),
                              ('lr/', lr, 'learning rate')):
        for key, (steps, values) in curves.items():
            if key.startswith(prefix) and key != 'train/grad_norm':
                ax.plot(steps, values, marker='o' if prefix == 'eval/' else None, ms=3,
                        label=key[len(prefix):])
        ax.set_title(f'{stage}: {title}', fontsize=9)
        ax.set_xlabel('step')
        if ax.lines:
            ax.legend(fontsize=7)
    if any(l.get_ydata().min() > 0 for l in loss.lines):
        loss.set_yscale('log')
    return _save(plt, fig, path)


def plot_selection(stage: str, curves: Curves, path: str) -> str:
    """Each teacher's share of the selection, window by window."""
    plt, fig, (ax,) = _figure(1)
    for key, (steps, values) in curves.items():
        if key.startswith('selected/'):
            ax.plot(steps, values, label=key.split('/', 1)[1])
    ax.set(title=f'{stage}: teacher selection share', xlabel='step', ylim=(0, 1))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_teachers(task: str, teachers: Mapping[str, float], selection: Mapping, path: str) -> str:
    """Per teacher of `task`: held-out accuracy and selected share; lines for selected and oracle."""
    plt, fig, (ax,) = _figure(1)
    names = list(teachers)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [teachers[n] for n in names], 0.4, label='teacher accuracy')
    ax.bar([x + 0.2 for x in xs], [selection['selected_fraction'].get(n, 0.0) for n in names], 0.4,
           label='selected share')
    ax.axhline(selection['selected_teacher_accuracy'], color='C2', ls='--', label='selected teacher right')
    ax.axhline(selection['oracle_accuracy'], color='C3', ls=':', label='oracle (any teacher right)')
    ax.set_xticks(list(xs), names, fontsize=7)
    ax.set(title=f'{task}: teachers on held-out data', ylim=(0, 1.05))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc='lower right')
    return _save(plt, fig, path)


def accuracy_table(summary: Mapping) -> str:
    """Every model's held-out accuracy per task, parameters and FLOPs, as an HTML table."""
    from kamal_jax.summary import ROLE_ORDER
    tasks = list(summary['tasks'])
    head = ''.join(f'<th>{html.escape(h)}</th>' for h in ['model', 'role', 'arch', 'params', 'MFLOPs', *tasks])
    rows = []
    for name, m in sorted(summary['models'].items(), key=lambda kv: ROLE_ORDER.get(kv[1]['role'], 9)):
        acc = [f'{100 * m["accuracy"][t]:.1f}' if t in m['accuracy'] else '' for t in tasks]
        flops = f'{m["flops"] / 1e6:,.1f}' if m.get('flops') else ''
        cells = [name, m['role'], m['arch'], f'{m["params"]:,}', flops, *acc]
        rows.append('<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in cells) + '</tr>')
    return f'<table><tr>{head}</tr>{"".join(rows)}</table>'


def diagnostics_table(summary: Mapping) -> str:
    """Each student's label-free diagnostics per task (`kamal_jax.diagnostics`), as an HTML table."""
    head = ''.join(f'<th>{html.escape(h)}</th>' for h in DIAGNOSTICS_HEADER)
    rows = ''.join('<tr>' + ''.join(f'<td>{html.escape(c)}</td>' for c in r) + '</tr>'
                   for r in diagnostics_rows(summary))
    return f'<table><tr>{head}</tr>{rows}</table>'


def _teacher_plots(summary: Mapping, out: str) -> list[tuple[str, str]]:
    """Per component with a selection report: its task's teachers against what was selected."""
    plots = []
    for m in summary.get('models', {}).values():
        if m['role'] != 'component' or not m.get('selection'):
            continue
        task = m['tasks'][0]
        teachers = {n: t['accuracy'][task] for n, t in summary['models'].items()
                    if t['role'] == 'teacher' and task in t['accuracy']}
        path = plot_teachers(task, teachers, m['selection'], os.path.join(out, f'teachers_{task}.png'))
        plots.append((f'Teachers of {task}', path))
    return plots


def write_plots(workdir: str) -> str:
    """Writes WORKDIR/report/index.html and its PNGs; returns the HTML's path."""
    layout = Layout(workdir)
    out = layout.report
    os.makedirs(out, exist_ok=True)
    plots = []
    for stage, curves in sorted(read_curves(workdir).items()):
        if stage == DIAGNOSTICS:  # one value each, shown as a table below
            continue
        slug = stage.replace('/', '_')
        plots.append((f'Learning curves: {stage}', plot_curves(stage, curves, os.path.join(out, f'curves_{slug}.png'))))
        if any(k.startswith('selected/') for k in curves):
            plots.append((f'Teacher selection: {stage}',
                          plot_selection(stage, curves, os.path.join(out, f'selection_{slug}.png'))))
    path = layout.summary_json
    summary = json.load(open(path)) if os.path.isfile(path) else None
    if summary:
        plots += _teacher_plots(summary, out)
    body = [f'<h1>kamal_jax run: {html.escape(os.path.basename(os.path.abspath(workdir)))}</h1>']
    body.append('<h2>Accuracy on held-out data (%)</h2>' + accuracy_table(summary) if summary
                else '<p>No summary.json yet: the run has not finished its main recipe.</p>')
    if summary and diagnostics_rows(summary):
        body.append('<h2>Label-free diagnostics on the held-out images</h2>' + diagnostics_table(summary))
    for title, png in plots:
        body.append(f'<h2>{html.escape(title)}</h2><img src="{html.escape(os.path.basename(png))}">')
    page = os.path.join(out, 'index.html')
    with open(page, 'w') as f:
        f.write('<!doctype html><meta charset="utf-8"><title>kamal_jax report</title>'
                '<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}</style>'
                + '\n'.join(body))
    return page


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith('-'):
        print('usage: python -m kamal_jax.plots WORKDIR', file=sys.stderr)
        return 2
    if not os.path.isdir(argv[0]):
        print(f'WORKDIR {argv[0]!r} is not a directory.', file=sys.stderr)
        return 2
    print(write_plots(argv[0]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
