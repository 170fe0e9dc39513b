"""The teacher zoo of `configs/bench_utkface_attributes.py` on its own (three UTKFace attribute nets):

    python -m kamal_jax.zoo --config configs/zoo/utkface_attributes.py --out runs/zoo_utkface_attributes

Takes the benchmark's argument (e.g. `configs/zoo/utkface_attributes.py:tiny`). `launch.py` with the
benchmark config trains the same teachers itself into `WORKDIR/zoo/`.
"""

import os

from kamal_jax.zoo.configs import benchmark_zoo


def get_config(arg: str = ''):
    return benchmark_zoo(os.path.join(os.path.dirname(__file__), '..', 'bench_utkface_attributes.py'), arg)
