"""A finished benchmark run -> one results JSON (what, how, on what) and its Markdown tables.

    python -m kamal_jax.benchmarks.record --workdir runs/bench_cifar10_parts \
        --out docs/results/bench_cifar10_parts.json

The JSON holds the run's config, summary (accuracy per task, parameters, FLOPs, teacher
selection, wall seconds per stage), the zoo's teacher cards and the machine and library versions,
so a table in docs/BENCHMARKS.md can be traced back to the run that made it. It draws nothing:
the plots of a run (curves, selection, teachers) are `python -m kamal_jax.plots WORKDIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata

from kamal_jax.api import Layout, summary_markdown

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'torch', 'tensorflow-datasets')


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return 'not installed'


def collect(workdir: str) -> dict:
    """Everything a results file records about the run in `workdir`."""
    layout = Layout(workdir)
    paths = {'config.json': layout.config, 'summary.json': layout.summary_json}
    for name, path in paths.items():
        if not os.path.isfile(path):
            raise SystemExit(f'{path} is missing: is {workdir!r} the workdir of a finished run?')
    cards = {}
    for path in layout.zoo_cards():
        with open(path) as f:
            cards[os.path.splitext(os.path.basename(path))[0]] = json.load(f)
    with open(paths['config.json']) as f:
        config = json.load(f)
    with open(paths['summary.json']) as f:
        summary = json.load(f)
    return {
        'summary': summary,
        'config': config,
        'teacher_cards': cards,
        'machine': {'cpu': _cpu_model(), 'cores': os.cpu_count(), 'arch': platform.machine(),
                    'python': platform.python_version()},
        'versions': {p: _version(p) for p in PACKAGES},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--workdir', required=True, help='workdir of a finished launch.py run')
    parser.add_argument('--out', help='results JSON to write (an existing file is replaced)')
    args = parser.parse_args(argv)
    result = collect(args.workdir)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1, sort_keys=True)
            f.write('\n')
    sys.stdout.write(summary_markdown(result['summary']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
