"""Zoo configs that reuse a benchmark config's teachers and data (`configs/zoo/*.py`)."""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def benchmark_zoo(path: str, arg: str = '') -> ml_collections.ConfigDict:
    """The zoo part of the benchmark config at `path`: its data, seed and `zoo.teachers`."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    from kamal_jax.api import resolve_config  # the benchmark's data and seed as its run reads them
    resolved = resolve_config(config)
    return ml_collections.ConfigDict({'data': resolved.data.to_dict(), 'seed': resolved.seed,
                                      'teachers': config.zoo.teachers.to_dict()})
