"""Results files -> the Markdown tables of the docs, so that no figure in a results table is typed by hand.

    python -m kamal_jax.benchmarks.tables KIND FILE [FILE ...] [key=value ...]   # print one table
    python -m kamal_jax.benchmarks.tables --write [DOC ...]   # rewrite every marked table in place
    python -m kamal_jax.benchmarks.tables --check [DOC ...]   # exit 1 naming the first table that differs

A results table in a doc sits between two HTML comments; the first is the command that prints it:

    <!-- table: python -m kamal_jax.benchmarks.tables models docs/results/bench_cifar10_parts.json -->
    | model | role | ... |
    <!-- end table -->

FILE paths are relative to the repository root; `key=value` words are the renderer's options. `--write`
replaces what lies between the two comments with what the command prints; `--check` (and
tests/test_tables.py) fails on the first marked table that differs from it, and on any table of a
checked doc that looks like results (a body cell that starts with a number, after an optional sign or
`**`) and has no marker. A table that is no result, or one whose figures have no results file, says so
in a comment on the line just above it:

    <!-- not results: what the table is (config fields, options, a comparison of features) -->
    <!-- no results file: figures from <where the prose says they came from> -->
    <!-- not generated yet: docs/results/FILE.json (no renderer for this table's layout yet) -->

The last keeps a gap visible: the table's figures come from a results file, but by hand.

Checked docs: README.md and docs/*.md, but for those another tool writes whole (`GENERATED`: docs/CONFIG.md).

To add a table: write `def name(files, **options) -> str` below, decorated with `@renderer('name')`;
it receives the loaded files in the marker's order (JSON parsed, any other file as text) and the
marker's `key=value` options as strings, and returns the table's lines (no marker). Then put the marker
with an empty body in the doc and run `--write`. A renderer only formats what the files hold: a figure
it cannot find there is an error, not a default.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMAND = 'python -m kamal_jax.benchmarks.tables'
GENERATED = ('docs/CONFIG.md',)  # written whole by its own tool (kamal_jax.config_schema), checked by its own test


def checked_docs() -> list[str]:
    """The docs whose tables are checked: README.md and every docs/*.md not generated whole."""
    pages = sorted(f'docs/{n}' for n in os.listdir(os.path.join(ROOT, 'docs')) if n.endswith('.md'))
    return ['README.md'] + [p for p in pages if p not in GENERATED]


START = re.compile(r'^<!-- table: ' + re.escape(COMMAND) + r' (?P<args>.+?) -->$')
END = '<!-- end table -->'
OPT_OUT = re.compile(r'^<!-- (not results|no results file|not generated yet): \S.* -->$')
NUMERIC_CELL = re.compile(r'^(\*\*)?[+-]?\d')

Renderer = Callable[..., str]
RENDERERS: dict[str, Renderer] = {}


def renderer(kind: str) -> Callable[[Renderer], Renderer]:
    """Registers a table kind: `kind` is the first word after the command in a marker."""
    def register(fn: Renderer) -> Renderer:
        if kind in RENDERERS:
            raise ValueError(f'table kind {kind!r} is registered twice')
        RENDERERS[kind] = fn
        return fn
    return register


# ----------------------------------------------------------------------------- markers and docs

def _load(path: str) -> Any:
    full = os.path.join(ROOT, path)
    if not os.path.isfile(full):
        raise ValueError(f'results file {path!r} does not exist (paths are relative to the repository root)')
    with open(full, encoding='utf-8') as f:
        return json.load(f) if path.endswith('.json') else f.read()


def render(args: list[str]) -> str:
    """The table a marker's words (KIND FILE ... key=value ...) stand for."""
    if not args or args[0] not in RENDERERS:
        raise ValueError(f'unknown table kind {args[0] if args else ""!r}; valid: {sorted(RENDERERS)}')
    files = [a for a in args[1:] if '=' not in a]
    options = dict(a.split('=', 1) for a in args[1:] if '=' in a)
    try:
        return RENDERERS[args[0]]([_load(f) for f in files], **options).rstrip('\n')
    except KeyError as e:
        raise ValueError(f'{shlex.join(args)}: the results files have no {e}') from None


def _fences(lines: list[str]) -> list[bool]:
    """Per line: inside a fenced code block (the fence lines included)."""
    inside, out = False, []
    for line in lines:
        fence = line.lstrip().startswith('```')
        out.append(inside or fence)
        inside = inside != fence
    return out


def blocks(text: str) -> list[dict]:
    """The doc's marked tables: their marker words, first body line and body, in order."""
    lines = text.split('\n')
    out, start = [], None
    for i, line in enumerate(lines):
        m = START.match(line)
        if m:
            if start is not None:
                raise ValueError(f'line {i + 1}: a table marker inside the table of line {start + 1}')
            start, words = i, shlex.split(m['args'])
        elif line == END:
            if start is None:
                raise ValueError(f'line {i + 1}: {END} without a table marker above it')
            out.append({'line': start + 1, 'args': words, 'body': '\n'.join(lines[start + 1:i])})
            start = None
    if start is not None:
        raise ValueError(f'line {start + 1}: a table marker without {END}')
    return out


def rewritten(text: str) -> str:
    """`text` with every marked table's body replaced by what its command prints."""
    lines, out, skipping = text.split('\n'), [], False
    for line in lines:
        if skipping and line != END:
            continue
        out.append(line)
        m = START.match(line)
        if m:
            out.append(render(shlex.split(m['args'])))
            skipping = True
        elif line == END:
            skipping = False
    return '\n'.join(out)


def unmarked(text: str) -> list[int]:
    """First lines (1-based) of the tables that look like results and have neither a marker around
    them nor an opt-out comment on the line above."""
    lines = text.split('\n')
    fenced, found, inside, i = _fences(lines), [], False, 0
    while i < len(lines):
        line = lines[i]
        if START.match(line):
            inside = True
        elif line == END:
            inside = False
        if line.startswith('|') and not fenced[i]:
            j = i
            while j < len(lines) and lines[j].startswith('|'):
                j += 1
            body = [c.strip() for row in lines[i + 2:j] for c in row.strip().strip('|').split('|')]
            marked = inside or (i > 0 and OPT_OUT.match(lines[i - 1]))
            if not marked and any(NUMERIC_CELL.match(c) for c in body):
                found.append(i + 1)
            i = j
            continue
        i += 1
    return found


def problems(text: str, doc: str) -> list[str]:
    """What is wrong with the doc `text` (named `doc` in the messages): each marked table that differs
    from what its command prints, and each results-looking table without a marker."""
    out = []
    for b in blocks(text):
        if b['body'] != render(b['args']):
            out.append(f"{doc}:{b['line']}: the table of `{COMMAND} {shlex.join(b['args'])}` differs "
                       f"from what it prints (run `{COMMAND} --write {doc}`)")
    return out + [f'{doc}:{n}: a results-looking table without a table marker or an opt-out comment '
                  f'(see `{COMMAND} --help`)' for n in unmarked(text)]


def check(docs=None) -> list[str]:
    """Every problem in `docs` (paths relative to the repository root; all checked docs by default);
    empty when all agree."""
    out = []
    for doc in docs or checked_docs():
        with open(os.path.join(ROOT, doc), encoding='utf-8') as f:
            out += problems(f.read(), doc)
    return out


def write(docs=None) -> list[str]:
    """Rewrites the marked tables of `docs` (all checked docs by default) in place; returns those that changed."""
    changed = []
    for doc in docs or checked_docs():
        path = os.path.join(ROOT, doc)
        with open(path, encoding='utf-8') as f:
            text = f.read()
        new = rewritten(text)
        if new != text:
            with open(path, 'w', encoding='utf-8') as f:
                f.write(new)
            changed.append(doc)
    return changed


# ----------------------------------------------------------------------------- formatting

def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage ('' when missing)."""
    return '' if x is None else f'{100 * x:.{digits}f}'


def points(x: float | None, digits: int = 1) -> str:
    """A difference of fractions in signed points; a zero after rounding reads +0.0."""
    if x is None:
        return '-'
    v = round(100 * x, digits)
    return f'{0.0 if v == 0 else v:+.{digits}f}'


def seeds_text(seeds) -> str:
    """[0, 1, 2] -> '0-2'; [1] -> '1'; [0, 2] -> '0,2'."""
    s = sorted(seeds)
    return f'{s[0]}-{s[-1]}' if len(s) > 2 and s == list(range(s[0], s[-1] + 1)) else ','.join(map(str, s))


def md(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A Markdown table; `align` has one letter per column, l (left) or r (right)."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + ''.join('---|' if a == 'l' else '---:|' for a in align)]
    lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
    return '\n'.join(re.sub(r'\|  (?=\|)', '| ', line) for line in lines)


def _listed(option: str | None, sep: str = ',') -> list[str] | None:
    """An option's list: 'a,b' -> ['a', 'b'] (rule names hold commas: theirs are split at ';')."""
    return None if option is None else [w for w in option.split(sep) if w]


# ----------------------------------------------------------------------------- a run's record (record.py)

ROLE_ORDER = {'teacher': 0, 'component': 1, 'target': 2, 'baseline': 3}


def _summary(result: dict) -> dict:
    return result['summary'] if 'summary' in result and 'models' in result['summary'] else result


@renderer('models')
def models(files, exact: str = '', columns: str = 'model,role,arch,params,mflops', against: str = '') -> str:
    """A run's nets (teachers, components, target, baselines): parameters, MFLOPs per image and held-out
    accuracy (%) per task. exact=NAME,...: those nets' accuracies also to two decimals. against=yes:
    a student's accuracy also against the best teacher of the task, in points."""
    (result,) = files
    s = _summary(result)
    tasks, cols, precise = list(s['tasks']), columns.split(','), set(_listed(exact))
    titles = {'model': ('model', 'l'), 'role': ('role', 'l'), 'arch': ('arch', 'l'),
              'params': ('params', 'r'), 'mflops': ('MFLOPs/image', 'r')}
    best = {t: max(m['accuracy'][t] for m in s['models'].values() if m['role'] == 'teacher' and t in m['accuracy'])
            for t in tasks}
    rows = []
    for name, m in sorted(s['models'].items(), key=lambda kv: ROLE_ORDER[kv[1]['role']]):
        cells = {'model': name, 'role': m['role'], 'arch': m['arch'], 'params': f"{m['params']:,}",
                 'mflops': f"{m['flops'] / 1e6:,.1f}" if m.get('flops') else ''}
        row = [cells[c] for c in cols]
        for t in tasks:
            a = m['accuracy'].get(t)
            cell = pct(a) + (f' ({pct(a, 2)})' if a is not None and name in precise else '')
            if a is not None and against == 'yes' and m['role'] != 'teacher':
                cell += f' ({points(a - best[t])})'
            row.append(cell)
        rows.append(row)
    return md([titles[c][0] for c in cols] + tasks, ''.join(titles[c][1] for c in cols) + 'r' * len(tasks), rows)


@renderer('selection')
def selection_report(files) -> str:
    """Per task, on the held-out split: how often each teacher was the least ambiguous one, how often
    the teacher so chosen was right, each teacher alone, and some teacher right (the oracle)."""
    (result,) = files
    ms = _summary(result)['models']
    rows = []
    for m in ms.values():
        report = m.get('selection')
        if m['role'] != 'component' or not report:
            continue
        task = m['tasks'][0]
        rows.append([task, ', '.join(f'{n} {100 * f:.0f}%' for n, f in report['selected_fraction'].items()),
                     pct(report['selected_teacher_accuracy']),
                     ', '.join(f"{n} {pct(ms[n]['accuracy'][task])}" for n in report['selected_fraction']),
                     pct(report['oracle_accuracy'])])
    return md(['task', 'selected as least ambiguous', 'selected teacher right (%)', 'each teacher alone (%)',
               'any teacher right (%)'], 'llrlr', rows)


# ----------------------------------------------------------------------------- rows against the best teacher (matrix.py)

def included(results: dict, name: str = '') -> list[dict[str, Any]]:
    """The rows of a results file: matrix.py's JSON ('rows'), or a list of runs ('runs') whose tasks give
    `target`/`result` and `target_minus_best_teacher`/`minus_best_teacher`."""
    out = []
    for r in results.get('rows', results.get('runs', [])):
        tasks = {}
        for t, e in r['tasks'].items():
            result = e.get('result', e.get('target'))
            tasks[t] = {'teachers': e['teachers'], 'best_teacher': e['best_teacher'], 'result': result,
                        'minus_best_teacher': e.get('minus_best_teacher', e.get('target_minus_best_teacher')),
                        **({'selection': e['selection']} if e.get('selection') else {})}
        out.append({'workdir': r.get('workdir', name), 'net': r.get('net', 'target'),
                    'recipe': r['recipe'], 'selector': r.get('selector', '-'), 'seed': r.get('seed', 0),
                    'epochs': r.get('epochs'), 'tasks': tasks})
    return out


def summarise(all_rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per recipe and selector, over its rows (seeds): per task the mean, min and max of the points
    against the best teacher, and the worst task of all. A seed counts once per recipe and selector:
    of two rows with the same seed (a run entered in two results files), the first is kept."""
    groups: dict[str, list[dict]] = {}
    for r in all_rows:
        group = groups.setdefault(f"{r['recipe']} | {r['selector']}", [])
        if all(g['seed'] != r['seed'] for g in group):
            group.append(r)
    out = {}
    for key, rs in groups.items():
        tasks = list(dict.fromkeys(t for r in rs for t in r['tasks']))
        per_task = {}
        for t in tasks:
            v = [r['tasks'][t]['minus_best_teacher'] for r in rs if r['tasks'].get(t, {}).get('minus_best_teacher') is not None]
            per_task[t] = {'mean': sum(v) / len(v), 'min': min(v), 'max': max(v), 'n': len(v)}
        worst = min((r['tasks'][t]['minus_best_teacher'], r['seed'], t) for r in rs for t in r['tasks']
                    if r['tasks'][t]['minus_best_teacher'] is not None)
        out[key] = {'seeds': sorted({r['seed'] for r in rs}), 'tasks': per_task,
                    'worst': {'minus_best_teacher': worst[0], 'seed': worst[1], 'task': worst[2]}}
    return out


def _rows_of(files) -> list[dict]:
    return [r for f in files for r in included(f)]


def _picked(all_rows: list[dict], recipes: str | None) -> list[dict]:
    """Rows whose 'recipe' or 'recipe | selector' is listed (in the listed order), or all rows."""
    if recipes is None:
        return all_rows
    keys = recipes.split(',')
    rank = lambda r: next(i for i, k in enumerate(keys) if k in (r['recipe'], f"{r['recipe']} | {r['selector']}"))
    return sorted((r for r in all_rows if any(k in (r['recipe'], f"{r['recipe']} | {r['selector']}") for k in keys)),
                  key=lambda r: (rank(r), r['seed']))


@renderer('matrix_rows')
def matrix_rows(files, first: str = 'run', recipes: str | None = None, order: str = 'file', absolute: str = 'no') -> str:
    """One line per trained net: its points against the best teacher per task and, for a two-stage
    run, the selection diagnostics. first=run|seed: the first column; order=file|seed; absolute=yes:
    also the net's accuracy (%)."""
    all_rows = _picked(_rows_of(files), recipes)
    if order == 'seed':
        all_rows = sorted(all_rows, key=lambda r: r['seed'])
    task_sets = list(dict.fromkeys(' / '.join(r['tasks']) for r in all_rows))
    rows = []
    for r in all_rows:
        ts = list(r['tasks'].values())
        sel = [e.get('selection') for e in ts]
        right = ' / '.join(pct(s['selected_teacher_accuracy']) for s in sel) if all(sel) else '-'
        oracle = ' / '.join(pct(s['oracle_accuracy']) for s in sel) if all(sel) else '-'
        rows.append([str(r['workdir'] if first == 'run' else r['seed'])]
                    + ([' / '.join(r['tasks'])] if len(task_sets) > 1 else [])
                    + [r['recipe'], r['selector']]
                    + ([' / '.join(pct(e['result']) for e in ts)] if absolute == 'yes' else [])
                    + [' / '.join(points(e['minus_best_teacher']) for e in ts), right,
                       ' / '.join(pct(e['best_teacher']) for e in ts), oracle])
    head = [first, 'tasks', 'recipe', 'selector'] if len(task_sets) > 1 else [first, 'recipe', 'selector']
    named = '' if len(task_sets) > 1 else f' ({task_sets[0]})'
    head += ([f'result{named}'] if absolute == 'yes' else []) + [f'result - best teacher{named}']
    head += ['selected teacher right', 'best teacher', 'oracle']
    return md(head, 'l' * len(head), rows)


@renderer('matrix_summary')
def matrix_summary(files, recipes: str | None = None) -> str:
    """Per recipe and selector over the seeds: mean [min, max] per task against the best teacher, and
    the worst task."""
    summary = summarise(_picked(_rows_of(files), recipes))
    rows = []
    for key, s in summary.items():
        recipe, selector = key.split(' | ')
        cells = ' / '.join(f"{points(v['mean'])} [{points(v['min'])}, {points(v['max'])}]" if v['n'] > 1
                           else points(v['mean']) for v in s['tasks'].values())
        w = s['worst']
        rows.append([recipe, selector, seeds_text(s['seeds']), cells,
                     f"{points(w['minus_best_teacher'])} (seed {w['seed']}, {w['task']})"])
    tasks = list(next(iter(summary.values()))['tasks'])
    return md(['recipe', 'selector', 'seeds', 'mean [min, max] per task - best teacher (' + ' / '.join(tasks) + ')',
               'worst task'], 'lllll', rows)


@renderer('by_seed')
def by_seed(files, recipes: str | None = None) -> str:
    """Per recipe and selector, one column per seed (result - best teacher, task by task), then the
    mean per task and the worst task."""
    all_rows = _picked(_rows_of(files), recipes)
    seeds = sorted({r['seed'] for r in all_rows})
    summary = summarise(all_rows)
    rows = []
    for key, s in summary.items():
        recipe, selector = key.split(' | ')
        per_seed = {r['seed']: r for r in all_rows if f"{r['recipe']} | {r['selector']}" == key}
        cells = [' / '.join(points(e['minus_best_teacher']) for e in per_seed[sd]['tasks'].values())
                 if sd in per_seed else '' for sd in seeds]
        w = s['worst']
        rows.append([recipe, selector, *cells, ' / '.join(points(v['mean']) for v in s['tasks'].values()),
                     f"{points(w['minus_best_teacher'])} (seed {w['seed']}, {w['task']})"])
    return md(['recipe', 'selector', *[f'seed {sd}' for sd in seeds], 'mean', 'worst task'],
              'll' + 'l' * len(seeds) + 'lr', rows)


# ----------------------------------------------------------------------------- the combination screen (combiners.py)

def _screen_tasks(files, runs: str | None = None) -> list[tuple[str, str, dict]]:
    """(run, task, entry) for every task of every run of the screen's results files, in order;
    runs=a;b: only the runs whose name holds one of those words."""
    picked = _listed(runs, ';')
    return [(run, task, e) for f in files for run, tasks in f['runs'].items() for task, e in tasks.items()
            if picked is None or any(w in run for w in picked)]


def _run_label(run: str) -> str:
    """'quickstart seed 3' / 'docs/results/screen_inputs/quickstart_seed3.npz' -> '3'; 'runs/m_x' -> 'm_x'."""
    m = re.search(r'seed ?(\d+)(\.npz)?$', run)
    return m[1] if m else os.path.basename(run.rstrip('/')).removesuffix('.npz')


@renderer('screen')
def screen(files, rules: str | None = None, absolute: str = 'no', summary: str = 'yes', partial: str = 'no',
           digits: str = '1', runs: str | None = None) -> str:
    """Per run and task of the combination screen: the teachers' accuracy (%), the oracle and each rule,
    in points against the best teacher (absolute=yes: accuracy, %); then each rule's mean and worst
    over the tasks (summary=no leaves them out). rules=a;b;...: those rules, in that order. partial=yes:
    also the oracle that counts partial teachers (one ranks the image's class first among its own).
    digits=2: the points per task to two decimals. runs=a;b: only the runs whose name holds one of those."""
    d = int(digits)
    entries = _screen_tasks(files, runs)
    names = _listed(rules, ';') or list(entries[0][2]['rules'])
    shown = (lambda e, r: pct(e['rules'][r], d)) if absolute == 'yes' else (lambda e, r: points(e['rules_minus_best_teacher'][r], d))
    oracle = (lambda e: pct(e['oracle'], d)) if absolute == 'yes' else (lambda e: points(e['oracle'] - e['best_teacher'], d))
    rows = [[f'{_run_label(run)}, {task}', ' / '.join(pct(a) for a in e['teachers'].values()), oracle(e),
             *([points(e['oracle_with_partial'] - e['best_teacher'], d)] if partial == 'yes' else []),
             *[shown(e, r) for r in names]] for run, task, e in entries]
    if summary == 'yes':
        delta = {r: [e['rules_minus_best_teacher'][r] for _, _, e in entries] for r in names}
        blank = [''] * (3 + (partial == 'yes'))
        rows.append(['mean', *blank[1:], *[points(sum(v) / len(v), 2) for v in delta.values()]])
        rows.append(['worst', *blank[1:], *[points(min(v)) for v in delta.values()]])
    head = ['run, task', 'teachers', 'oracle', *(['oracle + partial'] if partial == 'yes' else []), *[f'`{r}`' for r in names]]
    return md(head, 'll' + 'r' * (len(head) - 2), rows)


@renderer('screen_summary')
def screen_summary(files, rules: str | None = None, against: str = '', runs: str | None = None) -> str:
    """Per rule, over every task of the screen: the mean and the worst task in points against the best
    teacher; against=RULE: also the mean and worst against that rule, and how many tasks fall more than
    0.5 points below it. runs=a;b: only the runs whose name holds one of those words."""
    entries = _screen_tasks(files, runs)
    names = _listed(rules, ';') or list(entries[0][2]['rules'])
    rows = []
    for r in names:
        v = [e['rules_minus_best_teacher'][r] for _, _, e in entries]
        row = [f'`{r}`', points(sum(v) / len(v), 2), points(min(v))]
        if against:
            d = [e['rules'][r] - e['rules'][against] for _, _, e in entries]
            row += [points(sum(d) / len(d), 2), points(min(d)), str(sum(x < -0.005 for x in d))]
        rows.append(row)
    head = ['rule', 'mean vs best teacher', 'worst vs best teacher']
    if against:
        head += [f'mean vs `{against}`', f'worst vs `{against}`', f'tasks > 0.5 below `{against}`']
    return md(head, 'l' + 'r' * (len(head) - 1), rows)


@renderer('screen_rules')
def screen_rules(files, rules: str | None = None, right: str = '') -> str:
    """One line per rule, one column per screened run: points against the best teacher per task
    (right=a,b: for those selectors also how often the selected teacher is right, %), then the oracle."""
    runs = [(run, tasks) for f in files for run, tasks in f['runs'].items()]
    names = _listed(rules, ';') or list(next(iter(runs[0][1].values()))['rules'])
    selectors = set(_listed(right, ';') or [])
    rows = []
    for r in names:
        cells = []
        for _, tasks in runs:
            cell = ' / '.join(points(e['rules_minus_best_teacher'][r]) for e in tasks.values())
            if r in selectors:
                cell += ' (right ' + ' / '.join(pct(e['rules'][r]) for e in tasks.values()) + ')'
            cells.append(cell)
        rows.append([f'`{r}`', *cells])
    rows.append(['oracle (some teacher right)', *[' / '.join(points(e['oracle'] - e['best_teacher']) for e in tasks.values())
                                                  for _, tasks in runs]])
    head = ['rule', *[f"{_run_label(run)} ({' / '.join(tasks)})" for run, tasks in runs]]
    return md(head, 'l' * len(head), rows)


@renderer('nets')
def nets(files, rows: str, names: str = '') -> str:
    """Chosen nets of several results files, one line each: rows=I:NET;I:NET+NET;I:NET/FIELD;...
    (I: the file's place among the marker's files; NET: a net of its summary, or a key of its
    `accuracy_percent`; A+B: one net per task, such as the components; /FIELD: that accuracy field of
    the net instead of 'accuracy'); names=A,B,...: what to call each file (where it ran). Accuracy (%)
    per task, and where the net ran."""
    where = names.split(',') if names else [f'file {i}' for i in range(len(files))]
    out, tasks = [], []
    for spec in rows.split(';'):
        index, nets_ = spec.split(':', 1)
        f = files[int(index)]
        acc: dict[str, str] = {}
        for net in nets_.split('+'):
            name, _, field = net.partition('/')
            if 'accuracy_percent' in f:
                acc.update({t: str(v) for t, v in f['accuracy_percent'][name].items()})
            else:
                acc.update({t: pct(v) for t, v in _summary(f)['models'][name][field or 'accuracy'].items()})
        tasks += [t for t in acc if t not in tasks]
        out.append((nets_, where[int(index)], acc))
    return md(['net', 'where', *tasks], 'll' + 'r' * len(tasks),
              [[n, p, *[a.get(t, '') for t in tasks]] for n, p, a in out])


@renderer('components')
def components(files) -> str:
    """Stage 1's component nets of several runs per benchmark and task: the best teacher, how often the
    selected teacher was right, and each run's component with its training images x stage-1 epochs."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for f in files:
        s = _summary(f)
        budget = f"{s['data']['train']} x {f['config']['stage1']['epochs']}"
        for m in s['models'].values():
            if m['role'] != 'component':
                continue
            task = m['tasks'][0]
            g = groups.setdefault((s['data']['name'], task), {'runs': []})
            g.setdefault('best', max(t['accuracy'][task] for t in s['models'].values()
                                     if t['role'] == 'teacher' and task in t['accuracy']))
            if m.get('selection'):
                g.setdefault('right', m['selection']['selected_teacher_accuracy'])
            g['runs'].append(f"{pct(m['accuracy'][task])} ({budget})")
    rows = [[f'{data} {task}', pct(g['best']), pct(g.get('right')), ', '.join(g['runs'])] for (data, task), g in groups.items()]
    return md(['benchmark / task', 'best teacher', 'selected teacher right', 'components (images x epochs)'], 'lrrl', rows)


# ----------------------------------------------------------------------------- other results files

@renderer('unified_seeds')
def unified_seeds(files) -> str:
    """The unified targets' screen (unified_targets.py) over several zoos: per task, temperature and
    estimate, the argmax's accuracy (%) per zoo and the mean."""
    (result,) = files
    runs = result['runs']
    temps = [f"{runs[0]['temperature']:g}", '1']
    rows = []
    for task in runs[0]['tasks']:
        for temp in temps:
            for kind in runs[0]['tasks'][task]['estimates']:
                v = [r['tasks'][task]['estimates'][kind][f'accuracy_T{temp}'] for r in runs]
                rows.append([f'{task}, T = {temp}', kind, *[pct(x) for x in v], pct(sum(v) / len(v))])
    return md(['task', 'estimate', *[f"seed {_run_label(r['inputs'])}" for r in runs], 'mean'], 'll' + 'r' * (len(runs) + 1), rows)


@renderer('student_loop')
def student_loop(files) -> str:
    """student_loop against product per seed (accuracy %, test split; the file holds them in %)."""
    (result,) = files
    two = lambda d: ' / '.join(f'{v:.1f}' for v in d.values())
    rows = [[str(s['seed']), two(s['best_teacher']), two(s['product']), two(s['student_loop']),
             ' / '.join(f"{0.0 if round(a - b, 1) == 0 else a - b:+.1f}" for a, b in zip(s['student_loop'].values(), s['product'].values()))]
            for s in result['seeds']]
    return md(['seed', 'best teacher', 'product', 'student_loop', 'student_loop - product'], 'lllll', rows)


@renderer('logits_cache')
def logits_cache(files) -> str:
    """The one-stage logits cache off against auto, per seed: test accuracy (%) per task, the
    difference in points and the target's wall seconds."""
    (result,) = files
    by = {(r['seed'], r['cache']): r for r in result['runs']}
    rows = []
    for seed in sorted({r['seed'] for r in result['runs']}):
        off, auto = by[seed, 'off'], by[seed, 'auto']
        rows.append([str(seed), ' / '.join(pct(v) for v in off['target'].values()),
                     ' / '.join(pct(v) for v in auto['target'].values()),
                     ' / '.join(points(auto['target'][t] - off['target'][t]) for t in off['target']),
                     f"{off['target_wall_s']:.0f} / {auto['target_wall_s']:.0f}"])
    tasks = ' / '.join(result['runs'][0]['target'])
    return md(['seed', f'off: {tasks}', 'auto (cached, 4 views)', 'auto - off', 'target wall s, off / auto'], 'lllll', rows)


@renderer('student_loop_benchmarks')
def student_loop_benchmarks(files) -> str:
    """student_loop against product per benchmark and task, the same zoo for both (accuracy %, test
    split; the file holds them in %), and the mean over every task."""
    (result,) = files
    rows, gaps = [], []
    for b in result['benchmarks']:
        for task, p in b['product'].items():
            loop = b['student_loop'][task]
            gaps.append(loop - p)
            rows.append([b['benchmark'], task, f"{b['best_teacher'][task]:.1f}", f'{p:.1f}', f'{loop:.1f}',
                         points((loop - p) / 100)])
    rows.append(['mean', f'{len(gaps)} tasks', '', '', '', points(sum(gaps) / len(gaps) / 100, 2)])
    return md(['benchmark', 'task', 'best teacher', 'product', 'student_loop', 'student_loop - product'],
              'llrrrr', rows)


@renderer('logits_cache_runs')
def logits_cache_runs(files, part: str = 'accuracy') -> str:
    """The default recipe with the teachers' logits cached (`auto`) and live (`off`) on one benchmark.
    part=accuracy: test accuracy (%) per task of each run, the difference and the whole run's wall
    seconds and images/s; part=rates: each run's images/s (the file's `images_per_second`: images seen
    over the seconds from its first line to its last step, the cache's build included) and its ratio
    to the student's own supervised run and to the live run."""
    (result,) = files
    runs = result['runs']
    if part == 'accuracy':
        off, auto = runs['off'], runs['auto']
        tasks = list(off['accuracy'])
        rows = [[name, *[f"{r['accuracy'][t]:.2f}" for t in tasks], f"{r['train_seconds']:.0f}",
                 f"{r['images_per_second']:.1f}"] for name, r in (('off (live)', off), ('auto (cached)', auto))]
        rows.append(['auto - off', *[points((auto['accuracy'][t] - off['accuracy'][t]) / 100, 2) for t in tasks],
                     '', f"{auto['images_per_second'] / off['images_per_second']:.2f}x"])
        return md(['run', *tasks, 'train s', 'images/s'], 'l' + 'r' * (len(tasks) + 2), rows)
    if part == 'rates':
        sup, live = runs['supervised']['images_per_second'], runs['off']['images_per_second']
        rows = [[name, f"{r['images_per_second']:.1f}", f"{r['images_per_second'] / sup:.2f}x",
                 f"{r['images_per_second'] / live:.2f}x"]
                for name, r in (('supervised (the student alone)', runs['supervised']),
                                ('product, auto (cached)', runs['auto']), ('product, off (live)', runs['off']))]
        return md(['run', 'images/s', '/ supervised', '/ live'], 'lrrr', rows)
    raise ValueError(f"part must be 'accuracy' or 'rates', got {part!r}")


@renderer('accuracy_percent')
def accuracy_percent(files) -> str:
    """A results file's `accuracy_percent` (figures read from a log, kept at the log's precision): one
    line per net, accuracy (%) per task, and its wall seconds where the file has them."""
    (result,) = files
    acc = result['accuracy_percent']
    tasks = list(dict.fromkeys(t for a in acc.values() for t in a))
    wall = result.get('wall_seconds', {})
    rows = [[name, *[str(a[t]) if t in a else '' for t in tasks],
             *([f"{wall[name.removeprefix('baseline_')]:g}" if name.removeprefix('baseline_') in wall else '']
               if wall else [])] for name, a in acc.items()]
    return md(['model', *tasks, *(['wall s'] if wall else [])], 'l' + 'r' * (len(tasks) + bool(wall)), rows)


# ----------------------------------------------------------------------------- speed (steps.py, cache_run.py, ...)

STEP_CASES = ('supervised', 'supervised_target', 'stage1', 'stage2', 'stage1_cached', 'stage2_cached',
              'stage1_cache_build', 'stage2_cache_build')


def own_supervised(case: str) -> str | None:
    """The plain supervised step a case is compared with: the component's for stage 1, the target's
    for stage 2 (`steps.yardstick`); none for a cache build."""
    if case.endswith('_cache_build'):
        return None
    return 'supervised_target' if case.startswith(('stage2', 'supervised_target')) else 'supervised'


def _rate(r) -> float:
    return r if isinstance(r, (int, float)) else r['images_per_s']


def rate_text(images_per_s: float) -> str:
    """images/s as the docs print them: one decimal under 1000, whole images above."""
    return f'{images_per_s:.0f}' if images_per_s >= 1000 else f'{images_per_s:.1f}'


def _scale(result: dict) -> str:
    c = result['config']
    return f"{c['image_size']} px, batch {c['batch_size']}"


@renderer('steps')
def steps(files) -> str:
    """Step throughput (images/s) per case from steps.py's results, side by side for several files:
    kamal_jax, against the same student's supervised step, and against the PyTorch recipe's same stage
    (per memory layout where the file has both, the ratio against the faster)."""
    cases = [c for c in STEP_CASES if c in files[0]['results']]
    head, align, cols = ['step'], 'l', []
    for f in files:
        ref = f.get('torch_reference') or {}
        settings = list(ref.get('by_setting', {}))
        label = _scale(f) if len(files) > 1 else 'kamal_jax'
        head += [f'{label}: kamal_jax img/s' if len(files) > 1 else 'kamal_jax img/s', '/ own supervised']
        head += [f'PyTorch {s} img/s' for s in settings] if settings else (['PyTorch img/s'] if ref else [])
        head += ['kamal_jax / fastest PyTorch' if settings else 'kamal_jax / PyTorch'] if ref else []
        cols.append((f, ref, settings))
    align += 'r' * (len(head) - 1)
    rows = []
    for case in cases:
        row = [case]
        for f, ref, settings in cols:
            res = f['results']
            rate = _rate(res[case])
            base = own_supervised(case)
            row += [rate_text(rate), f'{rate / _rate(res[base]):.2f}x' if base in res else '']
            if not ref:
                continue
            stage = case.replace('_cached', '')
            known = stage in ref['results'] and not case.startswith('supervised_target') and base is not None
            if settings:
                row += [rate_text(_rate(ref['by_setting'][s][stage])) if known and stage in ref['by_setting'][s] else ''
                        for s in settings]
            else:
                row += [rate_text(_rate(ref['results'][stage])) if known else '']
            row += [f"{rate / _rate(ref['results'][stage]):.2f}x" if known else '']
        rows.append(row)
    return md(head, align, rows)


@renderer('xla_flag')
def xla_flag(files, on: str = 'default', off: str = 'plain') -> str:
    """images/s with XLA:CPU's YNN fusion flag on against off, per step and scale (the flag trials)."""
    (result,) = files
    scales = list(result['flags'])
    cases = [c for c in ('supervised', 'stage1', 'stage2', 'stage1_cached', 'stage2_cached')
             if c in result['flags'][scales[0]][on]['images_per_s']]
    rows = []
    for case in cases:
        row = [case]
        for sc in scales:
            a, b = result['flags'][sc][on]['images_per_s'][case], result['flags'][sc][off]['images_per_s'][case]
            row += [f'{a:.1f}', f'{b:.1f}', f'{a / b:.2f}x']
        rows.append(row)
    head = ['step'] + [h for sc in scales for h in (f'{sc}: flag on', 'flag off', 'on / off')]
    return md(head, 'l' + 'r' * (len(head) - 1), rows)


@renderer('xla_flags')
def xla_flags(files) -> str:
    """images/s per set of XLA:CPU flags tried, per scale and step."""
    (result,) = files
    scales = list(result['flags'])
    cases = ('supervised', 'stage1', 'stage1_cached', 'stage2', 'stage2_cached')
    rows = []
    for name in result['flags'][scales[0]]:
        row = [f"`{name}`: {result['flags'][scales[0]][name]['xla_flags']}"]
        for sc in scales:
            got = result['flags'][sc][name]['images_per_s']
            row += [f'{got[c]:.1f}' if c in got else '' for c in cases]
        rows.append(row)
    head = ['flags'] + [f'{sc} {c}' for sc in scales for c in cases]
    return md(head, 'l' + 'r' * (len(head) - 1), rows)


@renderer('convolutions')
def convolutions(files) -> str:
    """One 3x3 convolution's forward and backward (ms) in XLA:CPU and in PyTorch's two layouts."""
    (result,) = files
    timings = result['convolution_fwd_bwd_ms']
    jax_name, torch_name = list(timings)
    rows = []
    for shape, ms in timings[jax_name].items():
        nchw, last = timings[torch_name][f'{shape}/nchw'], timings[torch_name][f'{shape}/channels_last']
        rows.append([shape.replace('x', ' x '), f'{ms:.1f} ms', f'{nchw:.1f} ms', f'{last:.1f} ms', f'{ms / last:.2f}x'])
    return md(['shape', jax_name, f'{torch_name}: NCHW', 'channels-last', 'XLA / channels-last time'], 'lrrrr', rows)


@renderer('layout_check')
def layout_check(files) -> str:
    """The PyTorch rival's channels-last check against a float64 reference, per setting and step."""
    rows = []
    for f in files:
        for case, c in f['torch_reference']['layout_check'].items():
            rows.append([_scale(f), case, 'yes' if c['ok'] else 'no', f"{c['loss_rel']:.1e}", f"{c['grad_rel']:.1e}",
                         f"{c['nchw_grad_rel']:.1e}", c['worst']])
    return md(['setting', 'step', 'passed', 'channels-last loss error', 'channels-last gradient error',
               'NCHW gradient error', 'largest difference'], 'lllrrrl', rows)


@renderer('cache_runs')
def cache_runs(files) -> str:
    """Whole cached runs (cache_run.py): cache size, build and training rates, peak memory."""
    rows = [[f"stage {r['stage']}, {r['image_size']} px, {r['images']} images, {r['epochs']} epoch{'s' * (r['epochs'] > 1)}",
             f"{r['cache_gib']:.2f} GiB", f"{r['build_images_per_s']:.1f} img/s", f"{r['train_images_per_s']:.1f} img/s",
             f"{r['first_epoch_images_per_s']:.1f} img/s",
             f"{r['peak_rss_gib']:.2f} GiB: {r['peak_anon_gib']:.2f} anonymous + {r['peak_file_gib']:.2f} cache pages"]
            for r in files]
    return md(['run', 'cache size', 'build', 'training from the cache', 'first epoch, build included',
               'peak resident memory'], 'lrrrrl', rows)


def _text_tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables in a command's output, as rows of cells (the header first, no rule line)."""
    tables, current = [], []
    for line in text.splitlines() + ['']:
        if line.startswith('|'):
            if not set(line) <= set('|-: '):
                current.append([c.strip() for c in line.strip().strip('|').split('|')])
        elif current:
            tables.append(current)
            current = []
    return tables


@renderer('output_table')
def output_table(files, columns: str | None = None) -> str:
    """The Markdown table a command printed, kept in its results file (columns=i,j,...: those columns)."""
    (text,) = files
    (table,) = _text_tables(text)
    keep = [int(i) for i in _listed(columns)] if columns else list(range(len(table[0])))
    rows = [[r[i] for i in keep] for r in table]
    return md(rows[0], 'r' * len(keep), rows[1:])


@renderer('loop_vs_step')
def loop_vs_step(files) -> str:
    """steps_per_call.py's output: the bare step against the whole loop, images/s."""
    (text,) = files
    bare = float(re.search(r'bare step \(no input, no loop\): ([\d.]+) images/s', text)[1])
    (table,) = _text_tables(text)
    rows = [['bare step', f'{bare:g}', '1.00x']]
    rows += [[f'whole loop, {r[0]} step{"s" * (r[0] != "1")} per call', r[1], r[3]] for r in table[1:]]
    return md(['', 'images/s', 'vs the bare step'], 'lrr', rows)


@renderer('generic_teacher')
def generic_teacher(files) -> str:
    """generic_teacher.py's output: the stage-1 step with native and generic (ATen graph) teachers."""
    (text,) = files
    rounds: dict[str, dict[str, tuple[str, str]]] = {}
    for n, kind, rate, ms in re.findall(r'round (\d+) +(native|generic): ([\d.]+) img/s \((\d+) ms/step\)', text):
        rounds.setdefault(n, {})[kind] = (rate, ms)
    rows = [[f'round {n}', f"{r['native'][1]} ms ({r['native'][0]} img/s)", f"{r['generic'][1]} ms ({r['generic'][0]} img/s)",
             f"{int(r['generic'][1]) / int(r['native'][1]):.2f}x"] for n, r in rounds.items()]
    best = {k: min(int(r[k][1]) for r in rounds.values()) for k in ('native', 'generic')}
    rows.append(['best of the rounds', f"{best['native']} ms", f"{best['generic']} ms", f"{best['generic'] / best['native']:.2f}x"])
    return md(['stage-1 step, two resnet18 teachers', 'native Flax port', 'generic (ATen graph)', 'generic / native'], 'lrrr', rows)


@renderer('projection')
def projection(files) -> str:
    """projection.py: FLOPs per image, the achieved rate, and the projected ImageNet run per step."""
    (result,) = files
    p = result['projection']
    rows = []
    for step, r in p['rows'].items():
        rows.append([step, f"{result['flops_reference_128px'][step]['flops_per_image'] / 1e9:.2f}",
                     f"{result['flops_imagenet_224px'][step]['flops_per_image'] / 1e9:.1f}",
                     f"{r['achieved_tflops_per_chip']:.1f} TFLOP/s", f"{r['images_per_s_per_chip']:.0f}",
                     str(r['epochs'] or ''), f"{r['hours']:.2f}" if r['epochs'] else '',
                     f"{r['jpeg_mb_per_s_per_host'] / 1000:.1f} GB/s", f"{r['decoded_mb_per_s_per_host'] / 1000:.1f} GB/s",
                     f"{r['allreduce_mb_per_step']:.0f} MB"])
    return md(['step', 'GFLOPs per image, 128 px benchmark', 'GFLOPs per image, ImageNet 224 px', 'achieved',
               'projected img/s per chip', 'epochs', f"hours on {p['chips']} chips", 'JPEG in per host',
               'decoded pixels per host', 'gradient all-reduce per step'], 'l' + 'r' * 9, rows)


@renderer('streaming_memory')
def streaming_memory(files) -> str:
    """streaming.py memory: peak and final anonymous memory per input path and set size."""
    (result,) = files
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in result['rows']:
        runs.setdefault((r['path'], r['images']), []).append(r)
    mean = lambda rs: sum(r['peak_rss_anon_mib'] for r in rs) / len(rs)
    smallest = {path: mean(rs) for (path, n), rs in runs.items() if n == min(k[1] for k in runs if k[0] == path)}
    rows = [['streamed from records' if path == 'stream' else 'in memory', f'{n:,}',
             ' / '.join(f"{r['peak_rss_anon_mib']:.0f}" for r in rs), f'{mean(rs) / smallest[path]:.3f}x',
             ' / '.join(f"{r['end_rss_anon_mib']:.0f}" for r in rs)] for (path, n), rs in runs.items()]
    return md(['input', 'images', 'peak anonymous memory, MiB (each run)', 'mean vs the smallest set', 'at the end, MiB'],
              'lrrrr', rows)


@renderer('folder_records')
def folder_records(files) -> str:
    """folder_records.py: decoding an image folder into records, per image size."""
    rows = [[f"{r['image_size'][0]}x{r['image_size'][1]}", f"{r['images_per_s']:.0f}", f"{r['seconds']:.1f} s",
             f"{r['peak_host_mib']} MiB ({r['host_mib_before_load']} MiB)", f"{r['pixels_mib']} MiB", f"{r['reuse_seconds']:.2f} s"]
            for r in files]
    return md(['image size', 'images/s', f"{files[0]['images']} images", 'peak host memory (before the load)',
               'pixels written', 'reuse'], 'lrrrrr', rows)


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split('\n\n', 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--write', action='store_true', help='rewrite the marked tables of the docs in place')
    p.add_argument('--check', action='store_true', help='exit 1 naming the first table that differs')
    p.add_argument('words', nargs='*', help='KIND FILE ... key=value ... (one table), or the docs to write or check')
    a = p.parse_args(argv)
    if a.write or a.check:
        docs = a.words or None
        if a.write:
            for doc in write(docs):
                print(f'rewrote {doc}')
        problems = check(docs)
        if problems:
            print(problems[0] + (f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''), file=sys.stderr)
            return 1
        return 0
    try:
        print(render(a.words))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return 0


if __name__ == '__main__':
    sys.exit(main())
