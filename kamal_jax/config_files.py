"""The configs that ship with kamal_jax, found by name wherever the package is installed.

They live once, in the repository's top-level `configs/`; a wheel carries the same files as
`kamal_jax/configs/` (pyproject.toml maps one onto the other). `kamal_jax:NAME[:ARG]` names one of
them on any command line that takes `--config`, e.g. `kamal-jax --config kamal_jax:quickstart:tiny`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from pathlib import Path

PREFIX = 'kamal_jax:'


def directory() -> Path:
    """`kamal_jax/configs` in a wheel; the checkout's `configs/` in a checkout or editable install."""
    package = Path(__file__).resolve().parent
    for candidate in (package / 'configs', package.parent / 'configs'):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f'No shipped configs beside {str(package)!r}: this kamal_jax was '
                            'installed without its configs (reinstall it from a wheel or a checkout).')


def names() -> list[str]:
    """Shipped config names, e.g. 'quickstart' and 'zoo/cifar10_parts'."""
    root = directory()
    return sorted(p.relative_to(root).with_suffix('').as_posix() for p in root.rglob('*.py')
                  if not p.name.startswith('_'))


def path(name: str) -> str:
    """The file of the shipped config `name`; a ValueError listing the shipped names otherwise."""
    shipped = names()
    if name not in shipped:
        raise ValueError(f'kamal_jax ships no config {name!r}; shipped configs: {", ".join(shipped)}.')
    return str(directory() / f'{name}.py')


def resolve(spec: str) -> str:
    """'kamal_jax:NAME[:ARG]' -> 'FILE[:ARG]' (what config_flags loads); other specs are returned as they are."""
    if not spec.startswith(PREFIX):
        return spec
    name, sep, arg = spec[len(PREFIX):].partition(':')
    return path(name) + sep + arg


def load(spec: str):
    """A shipped config, as `--config kamal_jax:SPEC` gives it: load('quickstart:tiny')."""
    name, _, arg = spec.removeprefix(PREFIX).partition(':')
    module_spec = importlib.util.spec_from_file_location(
        'kamal_jax_config_' + name.replace('/', '_'), path(name))
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


class ConfigFileError(ValueError):
    """A config file that does not exist or does not import: one sentence with its file (and line)."""


def load_file(spec: str):
    """The config of `FILE[:ARG]` or `kamal_jax:NAME[:ARG]`: its `get_config(ARG)`. A missing file,
    a syntax error or an exception while it runs is one `ConfigFileError` naming the file and line."""
    spec = resolve(spec)
    file, sep, arg = spec.partition(':') if not os.path.isfile(spec) else (spec, '', '')
    if not os.path.isfile(file):
        raise ConfigFileError(f'config file {file!r} does not exist.')
    module_spec = importlib.util.spec_from_file_location('kamal_jax_user_config', file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        if not hasattr(module, 'get_config'):
            raise ConfigFileError(f'config file {file!r} defines no get_config() function.')
        return module.get_config(arg) if sep else module.get_config()
    except ConfigFileError:
        raise
    except SyntaxError as e:
        raise ConfigFileError(f'config file {file!r} line {e.lineno}: {e.msg}.') from None
    except Exception as e:  # noqa: BLE001 (anything the file itself raises)
        lines = [f.lineno for f in traceback.extract_tb(sys.exc_info()[2])
                 if os.path.abspath(f.filename) == os.path.abspath(file)]
        where = f' line {lines[-1]}' if lines else ''
        raise ConfigFileError(f'config file {file!r}{where} raised {type(e).__name__}: '
                              f'{" ".join(str(e).split())}') from None
