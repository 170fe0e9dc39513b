"""On paper, past this machine: an ImageNet-scale amalgamation projected from measured step rates.

    python -m kamal_jax.benchmarks.projection [--json out.json]

Counts the FLOPs of one training step per image with XLA's cost analysis (on XLA:CPU, where
convolutions are counted; nothing is run) for two settings: the step benchmark's 128 px setting,
whose images/s were measured on a GPU (`MEASURED`, docs/PERFORMANCE.md), and the ImageNet setting
(224 px, two ResNet-50 teachers per task, ResNet-18 components, the paper's widened ResNet-18
target, two tasks of 500 classes). The GPU's achieved FLOP/s at the measured setting, applied to
the ImageNet step's FLOPs, gives its images/s; then hours per stage for `--epochs1` / `--epochs2`,
input bytes per host, and the data-parallel gradient traffic per step. Assumptions are printed
with the figures: it is a projection, not a measurement.
"""

from __future__ import annotations

import json

from kamal_jax.api import apply_cpu_defaults

apply_cpu_defaults()  # Before JAX initialises its backend.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import bench_steps  # noqa: E402
from kamal_jax.api import (Amalgamate, Distill, LossWeights, Supervised, create_state,  # noqa: E402
                           make_optimizer, make_pairs, make_train_step)
from kamal_jax.benchmarks.steps import OPT, random_nets  # noqa: E402

# Images/s measured on one NVIDIA H200, float32, at configs/bench_steps.py (128 px, batch 32;
# docs/results/perf/gpu_h200_steps_128px.json).
MEASURED = {'device': 'NVIDIA H200 (float32, batch 32)', 'supervised': 10926.0, 'stage1': 6895.0, 'stage2': 5883.0}
IMAGENET_TRAIN = 1_281_167
JPEG_BYTES = 110_000     # ImageNet's mean JPEG size, about 110 kB
TASK_CLASSES = 500       # ImageNet's 1000 classes as two tasks


def imagenet_config() -> ml_collections.ConfigDict:
    c = bench_steps.get_config()
    c.image_size = 224
    c.teacher_arch = 'resnet50'
    c.teacher_classes = TASK_CLASSES + 50  # a main part plus an auxiliary part, as the paper's source nets
    c.task_classes = TASK_CLASSES
    c.component_arch = c.target_arch = 'resnet18'
    c.target_widths = (72, 72, 144, 288, 576)
    return c


def step_flops(c, batch: int = 2) -> dict:
    """FLOPs per image of the supervised, stage-1 and stage-2 train steps at `c`'s shapes."""
    rng = jax.random.key(0)
    teachers, teacher_vars, component, target, comps, comp_vars = random_nets(c, rng)
    task = 'task0'
    x = jnp.zeros((1, c.image_size, c.image_size, 3))
    cases = {
        'supervised': (Supervised(component, (task,)).loss, component, {}, {}),
        'stage1': (Distill.component(task, component, teachers,
                                     {t.name: make_pairs(t, component, None) for t in teachers}, LossWeights()),
                   component, None, teacher_vars),
        'stage2': (Amalgamate(target, comps, {n.name: make_pairs(n, target, None) for _, n in comps},
                              LossWeights()), target, None, comp_vars),
    }
    batch_spec = {'image': jax.ShapeDtypeStruct((batch, c.image_size, c.image_size, 3), jnp.uint8)}
    out = {}
    for name, (loss, student, bridges, frozen) in cases.items():
        extra = {}
        if name == 'supervised':
            extra = {'labels': {task: jax.ShapeDtypeStruct((batch,), jnp.int32)}}
        else:
            bridges = loss.init_bridges(rng)
            loss = loss.loss
        tx = make_optimizer(OPT, 1000)
        state = jax.eval_shape(lambda r: create_state(r, student.module, x, bridges, tx), rng)
        step = jax.jit(make_train_step(loss, tx))
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (frozen, {**batch_spec, **extra}))
        cost = step.lower(state, *shapes, rng).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        params = sum(a.size for a in jax.tree.leaves(state.params))
        out[name] = {'flops_per_image': float(cost.get('flops', 0)) / batch, 'trained_params': int(params)}
        print(f'{name:>10} at {c.image_size} px: {out[name]["flops_per_image"] / 1e9:7.2f} GFLOPs per image '
              f'(train step), {params / 1e6:.1f} M trained params', flush=True)
    return out


def project(reference: dict, imagenet: dict, *, epochs1: int, epochs2: int, tasks: int, devices_per_host: int,
            hosts: int) -> dict:
    """Images/s, hours and bytes for the ImageNet run from the measured rates' achieved FLOP/s."""
    rows, hours = {}, 0.0
    chips = devices_per_host * hosts
    for name in ('supervised', 'stage1', 'stage2'):
        achieved = MEASURED[name] * reference[name]['flops_per_image']
        rate = achieved / imagenet[name]['flops_per_image']  # images/s per chip
        epochs = {'supervised': 0, 'stage1': tasks * epochs1, 'stage2': epochs2}[name]
        h = epochs * IMAGENET_TRAIN / (rate * chips) / 3600
        hours += h
        rows[name] = {'achieved_tflops_per_chip': achieved / 1e12, 'images_per_s_per_chip': rate,
                      'epochs': epochs, 'hours': h,
                      'jpeg_mb_per_s_per_host': rate * devices_per_host * JPEG_BYTES / 1e6,
                      'decoded_mb_per_s_per_host': rate * devices_per_host * 224 * 224 * 3 / 1e6,
                      'allreduce_mb_per_step': 4 * imagenet[name]['trained_params'] / 1e6}
    return {'rows': rows, 'total_hours': hours, 'chips': chips, 'hosts': hosts,
            'devices_per_host': devices_per_host, 'epochs1': epochs1, 'epochs2': epochs2, 'tasks': tasks}


def main(argv):
    del argv
    print('FLOPs per image, counted by XLA on CPU:')
    reference = step_flops(bench_steps.get_config())
    imagenet = step_flops(imagenet_config())
    p = project(reference, imagenet, epochs1=_EPOCHS1.value, epochs2=_EPOCHS2.value, tasks=2,
                devices_per_host=_PER_HOST.value, hosts=_HOSTS.value)
    print(f'\nProjected from {MEASURED["device"]} at 128 px ({p["hosts"]} host(s) x {p["devices_per_host"]} '
          f'chips, linear data-parallel scaling assumed):')
    for name, r in p['rows'].items():
        print(f'{name:>10}: {r["achieved_tflops_per_chip"]:.1f} TFLOP/s achieved -> {r["images_per_s_per_chip"]:.0f} '
              f'img/s per chip; {r["epochs"]} epochs -> {r["hours"]:.1f} h; input per host {r["jpeg_mb_per_s_per_host"]:.0f} '
              f'MB/s of JPEG ({r["decoded_mb_per_s_per_host"]:.0f} MB/s decoded); gradient all-reduce '
              f'{r["allreduce_mb_per_step"]:.0f} MB per step')
    print(f'total: {p["total_hours"]:.1f} h on {p["chips"]} chips')
    if _JSON.value:
        with open(_JSON.value, 'w') as f:
            json.dump({'measured': MEASURED, 'flops_reference_128px': reference, 'flops_imagenet_224px': imagenet,
                       'projection': p}, f, indent=2)


if __name__ == '__main__':
    _JSON = flags.DEFINE_string('json', None, 'Also write the figures to this JSON file.')
    _EPOCHS1 = flags.DEFINE_integer('epochs1', 30, 'Epochs per component net (stage 1).')
    _EPOCHS2 = flags.DEFINE_integer('epochs2', 30, 'Epochs of the target net (stage 2).')
    _PER_HOST = flags.DEFINE_integer('devices_per_host', 8, 'Accelerators per host.')
    _HOSTS = flags.DEFINE_integer('hosts', 4, 'Hosts.')
    app.run(main)
