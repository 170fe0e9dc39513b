"""XLA:CPU defaults, set before JAX starts its backend (launch.py and the benchmarks call this).

The YNN fusion flag made ResNet train steps 1.5x faster on a 2-core x86_64 CPU (see
docs/PERFORMANCE.md) and changes results only within float tolerance (tests/test_xla_flags.py).
Set KAMAL_JAX_PLAIN_XLA=1 to run without it; jaxlib before 0.8.1 does not know it and runs without.
"""

from __future__ import annotations

import importlib.metadata
import os
import re

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce'


def _knows_ynn_flag() -> bool:
    """jaxlib < 0.8.1 (Colab's 0.7.2, for one) aborts on the flag as unknown."""
    try:
        version = importlib.metadata.version('jaxlib')
    except importlib.metadata.PackageNotFoundError:
        return False
    parts = tuple(int(p) for p in re.findall(r'\d+', version)[:3])
    return parts >= (0, 8, 1)


def apply_cpu_defaults(environ=os.environ) -> None:
    if environ.get('KAMAL_JAX_PLAIN_XLA') == '1' or not _knows_ynn_flag():
        return
    flags = environ.get('XLA_FLAGS', '')
    if 'xla_cpu_experimental_ynn_fusion_type' not in flags:
        environ['XLA_FLAGS'] = f'{flags} {YNN_FLAG}'.strip()
