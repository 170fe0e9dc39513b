"""Generic teachers, JAX side: `arch='torch:package.module:function'` or `'torchvision:NAME'`.

The model is exported in a separate PyTorch process (`python -m kamal_jax.porting.torch_export`,
so this process never imports torch) to a graph file that `kamal_jax.porting.graph` runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any, Mapping, Sequence

PREFIXES = ('torch:', 'torchvision:')
_FACTORY = re.compile(r'^[A-Za-z_][\w.]*:[A-Za-z_]\w*$')
_TORCHVISION = re.compile(r'^[A-Za-z_]\w*$')


class ExportError(ValueError):
    """The export process failed: the factory did not build, the weights did not load strictly, ..."""


def is_generic(arch: str) -> bool:
    return str(arch).startswith(PREFIXES)


def arch_error(arch: str) -> str | None:
    """Why `arch` is not a well-formed generic architecture, or None."""
    if arch.startswith('torchvision:'):
        name = arch.split(':', 1)[1]
        return None if _TORCHVISION.match(name) else (
            f"'torchvision:NAME' needs a torchvision model name after the colon, got {name!r}")
    if arch.startswith('torch:'):
        factory = arch.split(':', 1)[1]
        return None if _FACTORY.match(factory) else (
            f"'torch:package.module:function' needs an importable module and a function name, got {factory!r}")
    return f'{arch!r} starts with neither torch: nor torchvision:'


def factory(arch: str) -> str:
    """What the export process builds: 'torchvision:NAME' or 'package.module:function'."""
    return arch if arch.startswith('torchvision:') else arch.split(':', 1)[1]


def _env() -> dict:
    """The child imports what this process can (a factory defined next to the caller, e.g. a test)."""
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([os.getcwd(), *paths, env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
    return env


def export(arch: str, out: str | None, state_dict: str | None = None, size: Sequence[int] = (32, 32),
           kwargs: Mapping[str, Any] | None = None, ema: bool = False, timeout: float = 900) -> str:
    """Exports `arch` with `state_dict` to the graph file `out` in a PyTorch process; returns its report.

    `out=None` only builds the model and loads the state_dict strictly (`check`)."""
    error = arch_error(arch)
    if error:
        raise ExportError(error + '.')
    cmd = [sys.executable, '-m', 'kamal_jax.porting.torch_export', '--factory', factory(arch),
           '--size', *map(str, size), '--kwargs', json.dumps(dict(kwargs or {}))]
    cmd += ['--out', out] if out else ['--check']
    if state_dict:
        cmd += ['--state-dict', state_dict] + (['--ema'] if ema else [])
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    if done.returncode != 0:
        lines = [l for l in (done.stderr or done.stdout).strip().splitlines() if l.strip()]
        message = lines[-1] if lines else f'exit status {done.returncode}'
        raise ExportError(message.removeprefix('error: '))
    return done.stdout.strip()


def check(arch: str, state_dict: str | None = None, kwargs: Mapping[str, Any] | None = None,
          ema: bool = False, size: Sequence[int] = (32, 32)) -> str:
    """Builds `arch`, loads `state_dict` strictly and runs one `size` image in a PyTorch process
    (seconds; for validation before a run claims its workdir); raises ExportError with PyTorch's
    error. The report ends with the model's output width (`output_width` reads it)."""
    return export(arch, None, state_dict, size, kwargs=kwargs, ema=ema)


def output_width(report: str) -> int:
    """The number of output logits a `check` report gives."""
    found = re.search(r'; (\d+) output logits$', report.strip())
    if not found:
        raise ExportError(f'the check of the model said nothing of its output width: {report.strip()[-200:]!r}')
    return int(found.group(1))
