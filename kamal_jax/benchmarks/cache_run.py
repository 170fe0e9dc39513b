"""A cached stage-1 or stage-2 run end to end: images/s over whole epochs, and peak host memory.

    python -m kamal_jax.benchmarks.cache_run --config configs/bench_steps.py --images 10000 \
        --epochs 2 --stage 1 --workdir /tmp/cache_run [--json out.json]

The step benchmark times one step on one batch; this runs what a user runs: build the cache (the
frozen nets' only pass over the data; in stage 1 it also makes the offline selection and keeps
only the selected teacher's features), then train whole epochs from the memory-mapped cache with
the real batching loop. Random weights and images at the step benchmark's shapes. It prints the
cache size, the build's images/s, the training images/s, images/s of the first epoch with the
build counted in, and the peak resident memory of the process, split into anonymous memory (what
the process itself holds: images, weights, buffers) and file-backed pages (the memory-mapped
cache as it is read, which the kernel may evict and read again from disk).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import threading
import time

from kamal_jax.api import apply_cpu_defaults

apply_cpu_defaults()  # Before JAX initialises its backend.

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from kamal_jax.api import (Amalgamate, Distill, LossWeights, load_or_build_teacher_cache,  # noqa: E402
                           make_mesh, make_pairs, selected_slots, stage_config, train_student)
from kamal_jax.benchmarks import steps  # noqa: E402


def _stage(c, stage_no: str, rng):
    """(stage with caching on, frozen variables, student) at the config's shapes, random weights."""
    teachers, teacher_vars, component, target, comps, comp_vars = steps.random_nets(c, rng)
    if stage_no == '1':
        stage = Distill.component('task0', component, teachers,
                                  {t.name: make_pairs(t, component, None) for t in teachers}, LossWeights(),
                                  offline=True, cached=True)
        return stage, teacher_vars, component
    stage = Amalgamate(target, comps, {n.name: make_pairs(n, target, None) for _, n in comps}, LossWeights(),
                   cached=True)
    return stage, comp_vars, target


class PeakMemory:
    """Samples /proc/self/status every `every` s: peak anonymous and file-backed resident memory (GiB)."""

    def __init__(self, every: float = 0.2):
        self.peak = {'RssAnon': 0, 'RssFile': 0, 'VmRSS': 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every,), daemon=True)

    def _sample(self) -> None:
        with open('/proc/self/status') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(value.split()[0]))  # kB

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def gib(self) -> dict:
        return {k: v / 2 ** 20 for k, v in self.peak.items()}


def run(c, *, images: int, epochs: int, stage_no: str, workdir: str) -> dict:
    with PeakMemory() as memory:
        out = _run(c, images=images, epochs=epochs, stage_no=stage_no, scratch=workdir)
    peak = memory.gib()
    out.update(peak_anon_gib=peak['RssAnon'], peak_file_gib=peak['RssFile'], peak_rss_gib=peak['VmRSS'],
               max_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    print(f'peak resident memory: {out["peak_rss_gib"]:.2f} GiB ({out["peak_anon_gib"]:.2f} GiB anonymous, '
          f'{out["peak_file_gib"]:.2f} GiB file-backed cache pages; ru_maxrss {out["max_rss_gib"]:.2f} GiB)',
          flush=True)
    return out


def _run(c, *, images: int, epochs: int, stage_no: str, scratch: str) -> dict:
    """`scratch`: the folder the cache is built in (`--workdir`, emptied first; not a run's workdir)."""
    rng = jax.random.key(c.seed)
    mesh = make_mesh()
    data = np.random.default_rng(c.seed).integers(0, 256, (images, c.image_size, c.image_size, 3), np.uint8)
    stage, frozen, student = _stage(c, stage_no, rng)
    if stage_no == '1':  # only the selected teacher's features, selection made by the build
        stage = dataclasses.replace(stage, selected_slots=selected_slots(stage.cache_spec(), frozen,
                                                                                       data.shape[1:]))
    shutil.rmtree(scratch, ignore_errors=True)
    t0 = time.perf_counter()
    cache = load_or_build_teacher_cache(os.path.join(scratch, 'cache'), spec=stage.cache_spec(), frozen=frozen, images=data,
                                        key={'benchmark': 'cache_run'}, batch_size=c.batch_size, limit_gb=64.0)
    build_s = time.perf_counter() - t0
    cache_bytes = sum(a.nbytes for a in cache.values())
    print(f'cache: {cache_bytes / 2 ** 30:.2f} GiB for {images} images, built in {build_s:.1f}s '
          f'({images / build_s:.1f} img/s)', flush=True)
    cfg = stage_config('stage1', epochs=epochs, batch_size=c.batch_size, lr=5e-4, bridge_lr=1e-3,
                                     schedule='cosine', warmup_steps=0, weight_decay=0.0)
    bridges = stage.init_bridges(rng)
    _, metrics = train_student(name=f'stage{stage_no}/cached', student=student, loss_fn=stage.loss, bridges=bridges,
                               cfg=cfg, arrays={'image': data, **cache}, frozen={}, mesh=mesh, seed=c.seed,
                               log_every=max(1, images // c.batch_size // 4))
    steps_per_epoch = images // c.batch_size
    trained = epochs * steps_per_epoch * c.batch_size
    train_s = metrics['train_seconds'] - metrics['compile_seconds']
    epoch_s = train_s / epochs
    out = {
        'stage': stage_no, 'images': images, 'epochs': epochs, 'image_size': c.image_size,
        'batch_size': c.batch_size, 'cache_gib': cache_bytes / 2 ** 30, 'build_seconds': build_s,
        'build_images_per_s': images / build_s, 'compile_seconds': metrics['compile_seconds'],
        'train_images_per_s': trained / train_s,
        'first_epoch_images_per_s': steps_per_epoch * c.batch_size / (build_s + epoch_s),
        'device': f'{jax.devices()[0].platform} x{len(jax.devices())}', 'cpu_count': os.cpu_count(),
        'jax': jax.__version__,
    }
    print(f'training from the cache: {out["train_images_per_s"]:.1f} img/s (compile {out["compile_seconds"]:.1f}s '
          f'apart); first epoch with the build: {out["first_epoch_images_per_s"]:.1f} img/s', flush=True)
    return out


def main(argv):
    del argv
    out = run(_CONFIG.value, images=_IMAGES.value, epochs=_EPOCHS.value, stage_no=_STAGE.value,
              workdir=_WORKDIR.value)
    if _JSON.value:
        with open(_JSON.value, 'w') as f:
            json.dump(out, f, indent=2)


if __name__ == '__main__':  # flags only when run as a program, so tests can import it
    _CONFIG = config_flags.DEFINE_config_file('config', 'configs/bench_steps.py',
                                              "Shapes (the step benchmark's).")
    _IMAGES = flags.DEFINE_integer('images', 10000, 'Training images.')
    _EPOCHS = flags.DEFINE_integer('epochs', 2, 'Training epochs from the cache.')
    _STAGE = flags.DEFINE_enum('stage', '1', ['1', '2'],
                               'Stage 1 (teachers -> component) or 2 (components -> target).')
    _WORKDIR = flags.DEFINE_string('workdir', None, 'Where the cache is written (emptied first).', required=True)
    _JSON = flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')
    app.run(main)
