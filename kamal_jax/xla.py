"""XLA:CPU defaults, set before JAX starts its backend (launch.py and the benchmarks call this).

The YNN fusion flag made ResNet train steps 1.5x faster on a 2-core x86_64 CPU (see
docs/PERFORMANCE.md) and changes results only within float tolerance (tests/test_xla_flags.py).
Set KAMAL_JAX_PLAIN_XLA=1 to run without it.
"""

from __future__ import annotations

import os

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce'


def apply_cpu_defaults(environ=os.environ) -> None:
    if environ.get('KAMAL_JAX_PLAIN_XLA') == '1':
        return
    flags = environ.get('XLA_FLAGS', '')
    if 'xla_cpu_experimental_ynn_fusion_type' not in flags:
        environ['XLA_FLAGS'] = f'{flags} {YNN_FLAG}'.strip()
