"""Stage-1 step with generic-path teachers (ATen graph run in JAX) vs the same teachers ported natively.

    python -m kamal_jax.benchmarks.generic_teacher [--size 128] [--batch 32] [--steps 10] [--rounds 2]

torchvision's resnet18 (random weights, 7 classes) is exported once in a PyTorch process; the
same weights are ported onto kamal_jax's Flax ResNet-18 by the rule table. Two such teachers teach
a ResNet-18 component, as in `configs/bench_steps.py`; the two kinds of step alternate `--rounds`
times in one process and the best round of each is reported (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

from kamal_jax.api import apply_cpu_defaults

apply_cpu_defaults()  # Before JAX initialises its backend.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kamal_jax.api import (Distill, LossWeights, Net, create_state, export_generic_teacher,  # noqa: E402
                           jit_train_step, load_graph_teacher, make_mesh, make_optimizer, make_pairs,
                           make_train_step, multihead, port, put_batch, put_replicated, replicated)
from kamal_jax.benchmarks.steps import MEAN, OPT, STD, _time_step  # noqa: E402

HEADS = {'task0': (0, 5)}


def teachers(size: int, scratch: str):
    """(generic Net, its variables, native Net, its variables): the same resnet18 weights (the
    exported graph written in folder `scratch`)."""
    path = os.path.join(scratch, 'resnet18.graph.safetensors')
    export_generic_teacher('torchvision:resnet18', path, None, (size, size), {'num_classes': 7})
    module, variables, probe = load_graph_teacher(path)
    state_dict = {k: np.asarray(v) for c in variables.values() for k, v in c.items()}
    native_module, native_vars = port('resnet18', state_dict, input_shape=(1, size, size, 3))
    native = Net('t', 'resnet18', native_module, MEAN, STD, heads=HEADS)
    gen = Net('t', 'torchvision:resnet18', module, MEAN, STD, (size, size), HEADS)
    x = jnp.asarray(probe['input'])
    diff = np.abs(np.asarray(module.apply(variables, x)[0]) - np.asarray(native_module.apply(native_vars, x)[0]))
    print(f'generic vs native logits on the probe: max |diff| {diff.max():.2e}', flush=True)
    return gen, variables, native, native_vars


def stage1_step(net: Net, variables, size: int, batch: int, mesh):
    """(jitted step, state maker, frozen, batch) of stage 1 with two copies of `net` as teachers."""
    component = Net('component', 'resnet18', multihead('resnet18', [('task0', 5)]), MEAN, STD)
    nets = [Net(f'teacher{k}', net.arch, net.module, net.mean, net.std, net.input_size, HEADS) for k in range(2)]
    stage = Distill.component('task0', component, nets, {t.name: make_pairs(t, component, None) for t in nets},
                              LossWeights())
    rng = jax.random.key(0)
    tx = make_optimizer(OPT, 1000)
    x = jnp.zeros((1, size, size, 3))
    init = jax.jit(lambda r: create_state(r, component.module, x, stage.init_bridges(rng), tx),
                   out_shardings=replicated(mesh))  # called per round: the step donates the state
    step = jit_train_step(make_train_step(stage.loss, tx, crop_padding=0), mesh)
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    frozen = put_replicated({t.name: variables for t in nets}, mesh)
    return step, lambda: init(rng), frozen, put_batch({'image': images}, mesh)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--rounds', type=int, default=2)
    args = parser.parse_args(argv)
    mesh = make_mesh()
    with tempfile.TemporaryDirectory() as tmp:
        gen, gen_vars, native, native_vars = teachers(args.size, tmp)
    runs = {'native': stage1_step(native, native_vars, args.size, args.batch, mesh),
            'generic': stage1_step(gen, gen_vars, args.size, args.batch, mesh)}
    best = {}
    for r in range(args.rounds):
        for name, (step, init, frozen, batch) in runs.items():
            res = _time_step(step, init(), frozen, batch, jax.random.key(1), 2, args.steps, args.batch)
            print(f'round {r} {name:>8}: {res["images_per_s"]:.1f} img/s ({res["step_ms"]:.0f} ms/step)', flush=True)
            if name not in best or res['step_ms'] < best[name]['step_ms']:
                best[name] = res
    ratio = best['generic']['step_ms'] / best['native']['step_ms']
    print(f'stage-1 step, {args.size}px, batch {args.batch}, two resnet18 teachers: native '
          f'{best["native"]["step_ms"]:.0f} ms, generic {best["generic"]["step_ms"]:.0f} ms '
          f'({ratio:.2f}x); {jax.devices()[0].platform} x{len(jax.devices())}, {os.cpu_count()} CPUs '
          f'{platform.machine()}, jax {jax.__version__}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
