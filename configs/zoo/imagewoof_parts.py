"""The teacher zoo of `configs/bench_imagewoof_parts.py` on its own (four Imagewoof part nets):

    python -m kamal_jax.zoo --config configs/zoo/imagewoof_parts.py --out runs/zoo_imagewoof_parts

Takes the benchmark's argument (e.g. `configs/zoo/imagewoof_parts.py:tiny`). `launch.py` with the
benchmark config trains the same teachers itself into `WORKDIR/zoo/`.
"""

import os

from kamal_jax.zoo.configs import benchmark_zoo


def get_config(arg: str = ''):
    return benchmark_zoo(os.path.join(os.path.dirname(__file__), '..', 'bench_imagewoof_parts.py'), arg)
