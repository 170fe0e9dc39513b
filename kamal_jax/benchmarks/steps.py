"""Images/s of the stage-1, stage-2 and supervised train steps (compile time reported apart).

Cases: the plain supervised student step (the yardstick); stage 1 and stage 2 with the frozen
nets run in the step (on-the-fly augmentation); the same steps fed from the teacher / component
caches (`*_cached`: stage 1 with offline selection and only the selected teacher's features, as
`stage1.teacher_cache` stores them); the default one-stage recipe (`product`: the multi-head target
learns every teacher's combined soft target) with live teachers and from the teachers' cached
logits; and the caches' build rate (`*_cache_build`: the frozen nets' forward passes, paid once per
view).

    python -m kamal_jax.benchmarks.steps --config configs/bench_steps.py [--json out.json]

XLA:CPU's YNN fusion flag is on, as in launch.py; KAMAL_JAX_PLAIN_XLA=1 measures without it.
`--config.compute_dtype=bfloat16` times the steps in bf16 (params and optimizer state float32), the
way `compute_dtype` runs them in a config; with `--compare_torch` the PyTorch recipe then runs under
bf16 autocast. On a GPU both sides run on the GPU.

`--compare_torch` first runs the PyTorch recipe (`kamal_jax.benchmarks.torch_steps`, own process) in
NCHW and, where its gradients check out, channels-last, and with `--torch_compile=on` (the default
on a GPU) compiled as well; each ratio is against PyTorch's fastest setting for that step, named.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time

from kamal_jax.api import apply_cpu_defaults

apply_cpu_defaults()  # Before JAX initialises its backend.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from kamal_jax.api import (Amalgamate, Distill, LossWeights, Net, Supervised, classifier, create_state,
                           jit_train_step, make_mesh, make_optimizer, make_pairs, make_train_step, multihead,
                           put_batch, put_replicated, replicated, selected_slots, selection, stage_config,
                           teacher_logits_key, teacher_outputs_fn, to_unit)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OPT = stage_config('stage1', lr=5e-4, bridge_lr=1e-3, schedule='constant')


def _time_step(step, state, frozen, batch, rng, warmup: int, timed: int, batch_size: int) -> dict:
    t0 = time.perf_counter()
    state, metrics = step(state, frozen, batch, rng)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        state, metrics = step(state, frozen, batch, rng)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(timed):
        state, metrics = step(state, frozen, batch, rng)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - t0
    return {'images_per_s': timed * batch_size / elapsed, 'step_ms': 1000 * elapsed / timed,
            'first_step_s': compile_s}


def _cache_rows(stage, frozen, inputs, fn=None) -> dict:
    """What a stage's cache holds for these images, as the cache stores it (float16 features).

    `fn`: the stage's jitted `teacher_outputs_fn`, when the caller already has one."""
    fn = fn or jax.jit(teacher_outputs_fn(stage.cache_spec(), 'float16'))
    return jax.device_get(fn(frozen, {k: jnp.asarray(v) for k, v in inputs.items()}))


def _print(name: str, r: dict) -> None:
    print(f'{name:>18}: {r["images_per_s"]:7.1f} img/s  ({r["step_ms"]:.0f} ms/step; first step incl. compile '
          f'{r["first_step_s"]:.1f}s)', flush=True)


def random_nets(c, rng) -> tuple:
    """The config's nets with random weights: teachers (+ variables), component, target, components
    per task (+ variables)."""
    x = jnp.zeros((1, c.image_size, c.image_size, 3))
    tasks = [f'task{i}' for i in range(c.num_tasks)]
    teachers, teacher_vars = [], {}
    for k in range(c.num_teachers):
        net = Net(f'teacher{k}', c.teacher_arch, classifier(c.teacher_arch, c.teacher_classes), MEAN,
                  STD, heads={tasks[0]: (0, c.task_classes)})
        teachers.append(net)
        teacher_vars[net.name] = net.module.init(jax.random.fold_in(rng, k), x)
    component = Net('component', c.component_arch,
                    multihead(c.component_arch, [(tasks[0], c.task_classes)]), MEAN, STD)
    target = Net('target', c.target_arch,
                 multihead(c.target_arch, [(t, c.task_classes) for t in tasks], c.target_widths),
                 MEAN, STD)
    comps = tuple((t, Net(f'component_{t}', c.component_arch,
                          multihead(c.component_arch, [(t, c.task_classes)]), MEAN, STD)) for t in tasks)
    comp_vars = {n.name: n.module.init(jax.random.fold_in(rng, 10 + i), x) for i, (_, n) in enumerate(comps)}
    dtype = c.compute_dtype  # params were made in float32 above and stay so
    teachers = [t.with_compute_dtype(dtype) for t in teachers]
    component, target = component.with_compute_dtype(dtype), target.with_compute_dtype(dtype)
    comps = tuple((t, n.with_compute_dtype(dtype)) for t, n in comps)
    return teachers, teacher_vars, component, target, comps, comp_vars


def _cases(c, rng, images):
    """The timed steps: {name: (loss, student, bridges, frozen, extra batch)}, and the cache builds:
    [(name, jitted build, frozen, inputs)], all on random nets at the config's shapes."""
    bs = c.batch_size
    tasks = [f'task{i}' for i in range(c.num_tasks)]
    teachers, teacher_vars, component, target, comps, comp_vars = random_nets(c, rng)
    stage1 = Distill.component(tasks[0], component, teachers,
                               {t.name: make_pairs(t, component, None) for t in teachers}, LossWeights())
    stage2 = Amalgamate(target, comps, {n.name: make_pairs(n, target, None) for _, n in comps}, LossWeights())
    labels = {'labels': {t: np.random.default_rng(1 + i).integers(0, c.task_classes, bs).astype(np.int32)
                         for i, t in enumerate(tasks)}}

    # The caches' steps: offline selection with only the selected teacher's features stored (stage 1),
    # every component's outputs (stage 2); the batch carries what the cache would hold for it.
    offline = dataclasses.replace(stage1, offline=True, cached=True)
    selected = np.random.default_rng(2).integers(0, len(teachers), bs).astype(np.int32)
    offline = dataclasses.replace(offline, selected_slots=selected_slots(
        offline.cache_spec(), teacher_vars, images.shape[1:]))
    stage2_cached = dataclasses.replace(stage2, cached=True)
    cache_inputs = {'image': images, 'selected': selected}
    build_fns = {stage: jax.jit(teacher_outputs_fn(stage.cache_spec(), 'float16'))
                 for stage in (offline, stage2_cached)}
    stage1_cache = _cache_rows(offline, teacher_vars, cache_inputs, build_fns[offline])
    stage2_cache = _cache_rows(stage2_cached, comp_vars, {'image': images}, build_fns[stage2_cached])
    # The default recipe (`product`, one stage): the multi-head target learns every teacher's combined
    # soft target, the teachers run live at every step or their logits come from the one-stage cache.
    one_stage = Distill(target, ((tasks[0], tuple(teachers)),), {}, LossWeights(temperature=4.0),
                        combine=selection.get_combiner('product'))
    one_stage_cached = dataclasses.replace(one_stage, cached=True)
    logits = jax.jit(lambda v, x: {teacher_logits_key(t.name): t.apply_eval(v[t.name], x)[0][tasks[0]]
                                   for t in teachers})
    one_stage_cache = jax.device_get(logits(teacher_vars, to_unit(jnp.asarray(images))))
    cases = {
        'supervised': (Supervised(component, (tasks[0],)).loss, component, {}, {}, labels),
        'supervised_target': (Supervised(target, tuple(tasks)).loss, target, {}, {}, labels),
        'stage1': (stage1.loss, component, stage1.init_bridges(rng), teacher_vars, {}),
        'stage2': (stage2.loss, target, stage2.init_bridges(rng), comp_vars, {}),
        'stage1_cached': (offline.loss, component, offline.init_bridges(rng), {},
                          {'selected': selected, **stage1_cache}),
        'stage2_cached': (stage2_cached.loss, target, stage2_cached.init_bridges(rng), {}, stage2_cache),
        'one_stage': (one_stage.loss, target, {}, teacher_vars, {}),
        'one_stage_cached': (one_stage_cached.loss, target, {}, {}, one_stage_cache),
    }
    builds = [('stage1_cache_build', build_fns[offline], teacher_vars, cache_inputs),
              ('stage2_cache_build', build_fns[stage2_cached], comp_vars, {'image': images})]
    # On request only (config.cases): what the bridges and feature losses cost, i.e. the most that
    # fusing them or fewer taps (`stageN.tap_pairs`) could save: the same steps with logits only.
    logits1 = Distill.component(tasks[0], component, teachers, {t.name: () for t in teachers}, LossWeights())
    logits2 = Amalgamate(target, comps, {n.name: () for _, n in comps}, LossWeights())
    extra = {'stage1_logits_only': (logits1.loss, component, logits1.init_bridges(rng), teacher_vars, {}),
             'stage2_logits_only': (logits2.loss, target, logits2.init_bridges(rng), comp_vars, {})}
    return cases, builds, extra


def run(c) -> dict:
    mesh = make_mesh()
    size, bs = c.image_size, c.batch_size
    rng = jax.random.key(c.seed)
    x = jnp.zeros((1, size, size, 3))
    images = np.random.default_rng(c.seed).integers(0, 256, (bs, size, size, 3), dtype=np.uint8)
    batch = put_batch({'image': images}, mesh)
    cases, builds, extra = _cases(c, rng, images)
    wanted = [n.strip() for n in str(c.cases).split(',') if n.strip()]
    valid = [*cases, *(b[0] for b in builds), *extra]
    unknown = sorted(set(wanted) - set(valid))
    if unknown:
        raise ValueError(f'config.cases names unknown steps {unknown}; valid: {", ".join(valid)}.')
    if wanted:
        cases = {k: v for k, v in {**cases, **extra}.items() if k in wanted}
        builds = [b for b in builds if b[0] in wanted]
    results = {}
    for name, (loss_fn, student, bridges, frozen, extra) in cases.items():
        tx = make_optimizer(OPT, 1000)
        state = jax.jit(lambda r: create_state(r, student.module, x, bridges, tx),
                        out_shardings=replicated(mesh))(rng)
        step = jit_train_step(make_train_step(loss_fn, tx, crop_padding=0), mesh)
        b = dict(batch, **put_batch(extra, mesh)) if extra else batch
        results[name] = _time_step(step, state, put_replicated(frozen, mesh), b, rng,
                                   c.warmup_steps, c.timed_steps, bs)
        _print(name, results[name])
    for name, fn, frozen, inputs in builds:  # compiled above, when the cached batches were made
        results[name] = _time_step(lambda st, fr, b, r, fn=fn: (st, fn(fr, b)), None, frozen,
                                   {k: jnp.asarray(v) for k, v in inputs.items()}, rng, c.warmup_steps,
                                   c.timed_steps, bs)
        _print(name, results[name])
    return {
        'config': c.to_dict(), 'results': results,
        'device': f'{jax.devices()[0].platform} x{len(jax.devices())} ({jax.devices()[0].device_kind})',
        'cpu_count': os.cpu_count(), 'machine': platform.machine(), 'jax': jax.__version__,
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
    }


def _torch_reference(config_arg: str, torch_compile: str = 'auto') -> dict:
    import subprocess
    import sys
    import tempfile
    with tempfile.NamedTemporaryFile(suffix='.json') as f:
        env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
        subprocess.run([sys.executable, '-m', 'kamal_jax.benchmarks.torch_steps', f'--config={config_arg}',
                        f'--json={f.name}', f'--torch_compile={torch_compile}'], check=True, env=env)
        return json.load(open(f.name))


def yardstick(case: str) -> str:
    """The plain supervised step of the same student: the component's for stage 1, the target's for
    stage 2 and the one-stage recipes."""
    return 'supervised_target' if case.startswith(('stage2', 'one_stage')) else 'supervised'


def table(results: dict, torch_results: dict | None = None) -> str:
    """Markdown: images/s per case, vs the same student's plain supervised step (`yardstick`) and vs
    the PyTorch recipe's same stage in its fastest setting (layout, compiled or not), named."""
    head = '| step | kamal_jax img/s | / own supervised |' + (' PyTorch img/s (fastest setting) | kamal_jax / PyTorch |'
                                                              if torch_results else '')
    lines = [head, '|---|' + '---:|' * (head.count('|') - 2)]
    for name, r in results.items():
        rate = r['images_per_s']
        sup = results.get(yardstick(name), results.get('supervised'))
        row = f'| {name} | {rate:.1f} | ' + (f'{rate / sup["images_per_s"]:.2f}x |' if sup else '|')
        if torch_results:
            ref = torch_results.get(name.replace('_cached', ''))
            setting = f' ({ref["setting"]})' if ref and 'setting' in ref else ''
            row += (f' {ref["images_per_s"]:.1f}{setting} | {rate / ref["images_per_s"]:.2f}x |' if ref and
                    not name.endswith('_build') else ' | |')
        lines.append(row)
    return '\n'.join(lines)


def main(argv):
    del argv
    reference = None
    if _COMPARE_TORCH.value:
        print('PyTorch recipe (own process):', flush=True)
        reference = _torch_reference(flags.FLAGS['config'].value if isinstance(flags.FLAGS['config'].value, str)
                                     else flags.FLAGS['config'].config_filename, _TORCH_COMPILE.value)
        print('kamal_jax:', flush=True)
    out = run(_CONFIG.value)
    out['table'] = table(out['results'], reference['results'] if reference else None)
    if reference:
        out['torch_reference'] = reference
    print(out['table'])
    if _JSON.value:
        with open(_JSON.value, 'w') as f:
            json.dump(out, f, indent=2)


if __name__ == '__main__':  # flags only when run as a program, so tests can import it
    _CONFIG = config_flags.DEFINE_config_file('config', 'configs/bench_steps.py', 'Benchmark config.')
    _JSON = flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')
    _COMPARE_TORCH = flags.DEFINE_bool('compare_torch', False, 'First run the PyTorch recipe of the same steps '
                                       '(kamal_jax.benchmarks.torch_steps, own process) and print both.')
    _TORCH_COMPILE = flags.DEFINE_enum('torch_compile', 'auto', ['auto', 'on', 'off'], 'With --compare_torch: '
                                       'also time the PyTorch steps under torch.compile (auto: on a GPU only).')
    app.run(main)
