"""Streaming input against the in-memory path: peak host memory by dataset size, and stage speed.

    python -m kamal_jax.data.crops --size 500000 --out DIR500     # once per size (50k, 200k, 500k)
    python -m kamal_jax.benchmarks.streaming memory DIR50 DIR200 DIR500 [--steps 40]
    python -m kamal_jax.benchmarks.streaming speed DIR50 [--steps 60] [--rounds 2]

Both train cifar10_parts' stage 1 as `train_student` drives it in a run: a ResNet-20 and a small
ResNet-18 teacher (random weights: speed and memory do not depend on them), a ResNet-20 component,
online least-entropy selection, tempered KL on logits plus feature matching, batch 128, random
crops and flips on the device.

`memory`: each (path, size) trains the same number of steps in a fresh process (compiled programs
come from a compilation cache warmed per size, so XLA's compile-time peak is left out); a thread samples
the process's anonymous resident memory (RssAnon: not file-backed pages, so the page cache the
records are read through does not count) every 20 ms and reports its peak. The in-memory path
holds the decoded split (N x 3 KiB at 32 px), so it grows with N; streaming should not.

`speed`: one process, the paths alternating for `--rounds`; images/s of the best round with
compilation excluded: in memory with the batch gathered on the loop's thread (prefetch 0, the loop
before streaming existed), in memory with prefetch, streamed with prefetch, streamed without.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

from kamal_jax.api import apply_cpu_defaults

apply_cpu_defaults()  # Before JAX initialises its backend.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kamal_jax.api import (Distill, LossWeights, Net, classifier, make_mesh, make_pairs,  # noqa: E402
                           multihead, open_record_split, selection, stage_config, train_student)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
TEACHERS = (('a_resnet20', 'cifar_resnet20', None, (0, 5)), ('a_resnet18', 'resnet18_small', (16, 16, 32, 64, 128), (3, 8)))
BATCH = 128


def cifar10_parts_stage1():
    """(component Net, Distill loss, frozen teacher variables, stage config) of cifar10_parts' part_a."""
    teachers, frozen = [], {}
    for i, (name, arch, widths, logits) in enumerate(TEACHERS):
        net = Net(name, arch, classifier(arch, 8, widths), MEAN, STD, heads={'part_a': logits})
        teachers.append(net)
        frozen[name] = net.module.init(jax.random.key(i), jnp.zeros((1, 32, 32, 3)))
    student = Net('component_part_a', 'cifar_resnet20', multihead('cifar_resnet20', [('part_a', 5)]), MEAN, STD)
    pairs = {t.name: make_pairs(t, student, None) for t in teachers}
    loss = Distill.component('part_a', student, teachers, pairs, LossWeights(logit_loss='kl', temperature=4.0),
                             selector=selection.get('least_entropy'))
    cfg = stage_config('stage1', arch='cifar_resnet20', epochs=1, batch_size=BATCH, lr=2e-3,
                                     bridge_lr=2e-3, logit_loss='kl', temperature=4.0)
    return student, loss, frozen, cfg


def train(images, steps: int, prefetch: int) -> dict:
    student, loss, frozen, cfg = cifar10_parts_stage1()
    cfg.epochs = max(1, -(-steps * BATCH // len(images)))
    _, m = train_student(name='stage1', student=student, loss_fn=loss.loss, bridges=loss.init_bridges(jax.random.key(0)),
                         cfg=cfg, arrays={'image': images}, frozen=frozen, mesh=make_mesh(1), seed=0,
                         crop_padding=4, flip=True, log_every=steps, stop_after=steps, prefetch=prefetch)
    return {'img_per_s': (steps - 1) * BATCH / (m['train_seconds'] - m['compile_seconds']),
            'compile_s': m['compile_seconds']}


def _rss_anon_kib() -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('RssAnon:'):
                return int(line.split()[1])
    return 0


def measure_memory(directory: str, path: str, steps: int) -> dict:
    """One (path, size) in this process: peak RssAnon while loading and training `steps` steps."""
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_anon_kib())
            time.sleep(0.02)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    images = open_record_split(directory).images
    if path == 'memory':
        images = images[:]  # the whole split decoded in host memory, as the in-memory loader holds it
    result = train(images, steps, prefetch=4)
    stop.set()
    sampler.join()
    return {'path': path, 'images': len(images), 'peak_rss_anon_mib': peak[0] / 1024,
            'end_rss_anon_mib': _rss_anon_kib() / 1024, **result}


def drop_page_cache() -> None:
    """Empties the kernel's page cache (root only), so every run reads its records from disk."""
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('1\n')


def memory(dirs, steps: int, repeats: int, cold: bool = False) -> list[dict]:
    """Each (path, size) `repeats` times, each in a fresh process. The processes share a compilation
    cache, warmed by one unrecorded run per size first (the step's learning-rate schedule knows the
    steps per epoch, so each size is its own program): compiling in-process adds ~250 MiB to the
    peak, the same for every size, which would hide what the input holds."""
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, 'JAX_COMPILATION_CACHE_DIR': cache, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}

        def one(d, path):
            if cold:
                drop_page_cache()
            out = subprocess.run([sys.executable, '-m', 'kamal_jax.benchmarks.streaming', '_one', d, path,
                                  '--steps', str(steps)], capture_output=True, text=True, check=True, env=env)
            return json.loads(out.stdout.strip().splitlines()[-1])
        for d in dirs:
            one(d, 'stream')
        for path in ('stream', 'memory'):
            for d in [d for d in dirs for _ in range(repeats)]:
                rows.append(one(d, path))
            print(f"{path:7s} {rows[-1]['images']:7d} images: peak RssAnon {rows[-1]['peak_rss_anon_mib']:.0f} MiB "
                  f"(at the end {rows[-1]['end_rss_anon_mib']:.0f}), "
                  f"{rows[-1]['img_per_s']:.0f} img/s", flush=True)
    return rows


def speed(directory: str, steps: int, rounds: int) -> dict:
    streamed = open_record_split(directory).images
    in_memory = streamed[:]
    runs = {'memory, prefetch 0': (in_memory, 0), 'memory, prefetch 4': (in_memory, 4),
            'stream, prefetch 4': (streamed, 4), 'stream, prefetch 0': (streamed, 0)}
    best = {k: 0.0 for k in runs}
    for r in range(rounds):
        for name, (images, prefetch) in runs.items():
            best[name] = max(best[name], train(images, steps, prefetch)['img_per_s'])
            print(f'round {r + 1}: {name}: {best[name]:.0f} img/s (best so far)', flush=True)
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='what', required=True)
    m = sub.add_parser('memory')
    m.add_argument('dirs', nargs='+', help='records folders of different sizes (kamal_jax.data.crops)')
    m.add_argument('--steps', type=int, default=40)
    m.add_argument('--repeats', type=int, default=2, help='processes per (input, size): the peak varies by tens of MiB')
    m.add_argument('--json', default='', help='write the rows here too')
    m.add_argument('--cold', action='store_true', help='empty the page cache before each process (root only)')
    s = sub.add_parser('speed')
    s.add_argument('dir')
    s.add_argument('--steps', type=int, default=60)
    s.add_argument('--rounds', type=int, default=2)
    one = sub.add_parser('_one')  # a child process of `memory`
    one.add_argument('dir')
    one.add_argument('path', choices=('stream', 'memory'))
    one.add_argument('--steps', type=int, default=40)
    a = p.parse_args(argv)
    where = f'{jax.devices()[0].platform} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)'
    if a.what == '_one':
        print(json.dumps(measure_memory(a.dir, a.path, a.steps)))
        return
    if a.what == 'memory':
        if a.cold:
            try:
                drop_page_cache()
            except OSError as e:
                p.error(f'--cold empties the page cache, which needs root: {e}')
        rows = memory(a.dirs, a.steps, a.repeats, a.cold)
        if a.json:
            with open(a.json, 'w') as f:
                json.dump({'where': where, 'steps': a.steps, 'batch': BATCH, 'cold': a.cold, 'rows': rows}, f, indent=1)
        print(f'\n{where}, cifar10_parts stage 1 shape, batch {BATCH}, {a.steps} steps per run, one process each'
              f'{", page cache emptied before each" if a.cold else ""}')
        print('| input | images | peak anonymous memory, MiB (each process) | mean vs the smallest set\'s | '
              'at the end, MiB |')
        print('|---|---:|---:|---:|---:|')
        for path in ('stream', 'memory'):
            sizes = sorted({r['images'] for r in rows if r['path'] == path})
            mean = {n: np.mean([r['peak_rss_anon_mib'] for r in rows if r['path'] == path and r['images'] == n])
                    for n in sizes}
            for n in sizes:
                these = [r for r in rows if r['path'] == path and r['images'] == n]
                peaks = ' / '.join('%.0f' % r['peak_rss_anon_mib'] for r in these)
                ends = ' / '.join('%.0f' % r['end_rss_anon_mib'] for r in these)
                label = 'streamed from records' if path == 'stream' else 'in memory'
                print(f'| {label} | {n:,} | {peaks} | {mean[n] / mean[sizes[0]]:.3f}x | {ends} |')
        return
    best = speed(a.dir, a.steps, a.rounds)
    print(f'\n{where}, cifar10_parts stage 1 shape, batch {BATCH}, {a.steps} steps, best of {a.rounds}')
    print('| input | images/s (compilation excluded) | vs memory, prefetch 0 |')
    print('|---|---:|---:|')
    for name, rate in best.items():
        print(f'| {name} | {rate:.0f} | {rate / best["memory, prefetch 0"]:.2f}x |')


if __name__ == '__main__':
    main()
