"""Whole-loop images/s with one training step per jitted call against k per call (`steps_per_call`),
and against the bare step.

    python -m kamal_jax.benchmarks.steps_per_call [--size 8] [--batch 8] [--steps 256] [--k 1 4 16] [--rounds 2]

A stage-1 loop (`train_student`, as a run drives it) with two CIFAR ResNet-8 teachers (random
weights) and a ResNet-8 component on tiny random images: a step of a few milliseconds, where each
call's dispatch of the state and the frozen teachers' arrays weighs most. Each k runs `--rounds`
times in one process, alternating; the best round is reported, compilation excluded (the machine
may be shared). Compile seconds are reported apart.

The bare step is what the step benchmark (`benchmarks/steps.py`) times: the same jitted step called
back to back on one batch already on the device, no input, no loop. The loop's rate over it is
what the loop itself costs.
"""

from __future__ import annotations

import argparse
import platform
import time

from kamal_jax.api import apply_cpu_defaults

apply_cpu_defaults()  # Before JAX initialises its backend.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kamal_jax.api import (Distill, LossWeights, Net, classifier, create_state, jit_train_step,  # noqa: E402
                           make_mesh, make_optimizer, make_pairs, make_train_step, multihead, put_batch,
                           put_replicated, replicated, selection, stage_config, train_student)

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def stage(size: int):
    """(component Net, Distill loss, frozen teacher variables) for task 'a' with two teachers."""
    teachers, frozen = [], {}
    for i, (name, logits) in enumerate((('t1', (0, 5)), ('t2', (2, 7)))):
        net = Net(name, 'cifar_resnet8', classifier('cifar_resnet8', 7), MEAN, STD, heads={'a': logits})
        teachers.append(net)
        frozen[name] = net.module.init(jax.random.key(i), jnp.zeros((1, size, size, 3)))
    student = Net('component_a', 'cifar_resnet8', multihead('cifar_resnet8', [('a', 5)]), MEAN, STD)
    pairs = {t.name: make_pairs(t, student, None) for t in teachers}
    loss = Distill.component('a', student, teachers, pairs, LossWeights(),
                             selector=selection.get('least_entropy'))
    return student, loss, frozen


def bare_step_rate(student, loss, frozen, cfg, images, steps: int) -> float:
    """Images/s of the loop's own jitted step on one device-resident batch, back to back."""
    mesh = make_mesh(1)
    tx = make_optimizer(cfg, steps)
    size = images.shape[1]
    state = jax.jit(lambda r: create_state(r, student.module, jnp.zeros((1, size, size, 3)),
                                           loss.init_bridges(jax.random.key(0)), tx),
                    out_shardings=replicated(mesh))(jax.random.key(1))  # as train_student
    step = jit_train_step(make_train_step(loss.loss, tx), mesh)
    batch = put_batch({'image': images[:cfg.batch_size]}, mesh)
    frozen = put_replicated(frozen, mesh)
    rng = jax.random.key(2)
    for _ in range(3):  # compiles (once: the state keeps its sharding), then warm
        state, metrics = step(state, frozen, batch, rng)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        state, metrics = step(state, frozen, batch, rng)
    jax.block_until_ready(metrics)
    return (steps - 1) * cfg.batch_size / (time.perf_counter() - t0)


def run(size: int, batch: int, steps: int, ks, rounds: int) -> dict:
    student, loss, frozen = stage(size)
    images = np.random.default_rng(0).integers(0, 256, (steps * batch, size, size, 3), dtype=np.uint8)
    cfg = stage_config('stage1', arch='cifar_resnet8', epochs=1, batch_size=batch)
    best = {k: (0.0, 0.0) for k in ks}
    best['bare'] = (0.0, 0.0)
    for _ in range(rounds):
        best['bare'] = max(best['bare'], (bare_step_rate(student, loss, frozen, cfg, images, steps), 0.0))
        for k in ks:
            _, m = train_student(name=f'k{k}', student=student, loss_fn=loss.loss,
                                 bridges=loss.init_bridges(jax.random.key(0)), cfg=cfg,
                                 arrays={'image': images}, frozen=frozen, mesh=make_mesh(1), seed=0,
                                 log_every=steps, steps_per_call=k)
            rate = (steps - 1) * batch / (m['train_seconds'] - m['compile_seconds'])
            best[k] = max(best[k], (rate, m['compile_seconds']))
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--size', type=int, default=8)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--steps', type=int, default=256, help='a multiple of every k')
    p.add_argument('--k', type=int, nargs='+', default=[1, 4, 16])
    p.add_argument('--rounds', type=int, default=2)
    a = p.parse_args(argv)
    if any(a.steps % k for k in a.k):
        p.error(f'--steps {a.steps} is not a multiple of every --k {a.k}.')
    best = run(a.size, a.batch, a.steps, a.k, a.rounds)
    print(f'{jax.devices()[0].platform} ({platform.processor() or platform.machine()}), {a.size}px, batch {a.batch}, '
          f'{a.steps} steps, best of {a.rounds}')
    bare = best['bare'][0]
    print(f'bare step (no input, no loop): {bare:.0f} images/s')
    print('| steps per call | whole loop images/s (compilation excluded) | vs 1 per call | vs the bare step | '
          'first call (compile) s |')
    print('|---:|---:|---:|---:|---:|')
    for k in a.k:
        rate, compile_s = best[k]
        print(f'| {k} | {rate:.0f} | {rate / best[a.k[0]][0]:.2f}x | {rate / bare:.2f}x | {compile_s:.1f} |')


if __name__ == '__main__':
    main()
