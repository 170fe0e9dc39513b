"""The teacher zoo of `configs/bench_cifar10_overlap.py` on its own (four CIFAR-10 nets on overlapping classes):

    python -m kamal_jax.zoo --config configs/zoo/cifar10_overlap.py --out runs/zoo_cifar10_overlap

Takes the benchmark's argument (e.g. `configs/zoo/cifar10_overlap.py:tiny`). `launch.py` with the
benchmark config trains the same teachers itself into `WORKDIR/zoo/`.
"""

import os

from kamal_jax.zoo.configs import benchmark_zoo


def get_config(arg: str = ''):
    return benchmark_zoo(os.path.join(os.path.dirname(__file__), '..', 'bench_cifar10_overlap.py'), arg)
