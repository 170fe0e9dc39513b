"""Teachers from their checkpoints: ported to Flax once, then cached in the workdir by content hash.

`arch='auto'` ports a teacher as the registered architecture its weights match; the resolved
record (name, widths, shortcut kind or ViT sizes) is cached with the variables, and the `Net`
reports the resolved name. A timm `pretrained_cfg` next to the checkpoint (`config.json`) gives a
ViT's head count by its architecture name, and the mean/std/input size when the teacher's config
leaves them at their defaults.

`arch='torch:package.module:function'` or `'torchvision:NAME'` takes the generic path instead:
the model is exported once by a PyTorch process to `NAME.graph.safetensors` here and run in JAX
from its ATen graph (`kamal_jax.porting.graph`); this process never imports torch.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import serialization

from kamal_jax import porting
from kamal_jax.files import sha256, write_atomic
from kamal_jax.porting import generic, graph as graph_lib
from kamal_jax.porting import pretrained_cfg as pretrained_cfg_lib
from kamal_jax.tasks import ConfigError, TeacherSpec
from kamal_jax.train.nets import Net

log = logging.getLogger('kamal_jax')

_CACHE_VERSION = 2  # 2: the resolved architecture record is cached beside the variables
_DEFAULT_MEAN, _DEFAULT_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _preprocessing(spec: TeacherSpec, cfg: pretrained_cfg_lib.PretrainedCfg | None):
    """(mean, std, input_size): the config's, else a timm pretrained_cfg's where the config is silent."""
    mean, std, size = tuple(spec.mean), tuple(spec.std), tuple(spec.input_size)
    if cfg is None:
        return mean, std, size
    if mean == _DEFAULT_MEAN and std == _DEFAULT_STD and cfg.mean and cfg.std:
        mean, std = cfg.mean, cfg.std
    return mean, std, size or tuple(cfg.input_size or ())


def _load_generic(spec: TeacherSpec, cache_dir: str, size: tuple[int, ...]) -> tuple[Net, Any]:
    """A torch:/torchvision: teacher: exported once (PyTorch process) to a graph file, then run in JAX."""
    path, meta_path = (os.path.join(cache_dir, f'{spec.name}.{ext}') for ext in ('graph.safetensors', 'json'))
    key = {'version': _CACHE_VERSION, 'sha256': sha256(spec.checkpoint), 'arch': spec.arch,
           'kwargs': dict(spec.kwargs), 'ema': spec.ema, 'size': list(size)}
    meta = json.load(open(meta_path)) if os.path.isfile(meta_path) and os.path.isfile(path) else {}
    try:
        if meta.get('key') != key:
            report = generic.export(spec.arch, path + '.tmp', spec.checkpoint, size, spec.kwargs, spec.ema)
            os.replace(path + '.tmp', path)
            write_atomic(meta_path, json.dumps({'key': key}).encode())
            log.info('teacher %s: %s', spec.name, report)
        else:
            log.info('teacher %s: exported graph read from the cache', spec.name)
        module, variables, _ = graph_lib.load(path)
    except (generic.ExportError, graph_lib.UnsupportedOp) as e:
        raise ConfigError(f'teachers.{spec.name} ({spec.arch}, {spec.checkpoint}): {e}') from None
    net = Net(spec.name, spec.arch, module, tuple(spec.mean), tuple(spec.std), tuple(size),
              dict(spec.heads), ())
    return net, variables


def load_teacher(spec: TeacherSpec, cache_dir: str, image_size: tuple[int, int]) -> tuple[Net, Any]:
    """Returns the teacher as a `Net` and its variables; ports on first use, then reads the cache."""
    if not os.path.isfile(spec.checkpoint):
        raise ConfigError(f'teachers.{spec.name}.checkpoint = {spec.checkpoint!r} does not exist.')
    os.makedirs(cache_dir, exist_ok=True)
    if generic.is_generic(spec.arch):
        return _load_generic(spec, cache_dir, tuple(spec.input_size or image_size))
    cache, meta_path = (os.path.join(cache_dir, f'{spec.name}.{ext}') for ext in ('msgpack', 'json'))
    ema = spec.ema
    cfg = pretrained_cfg_lib.beside(spec.checkpoint)
    key = {'version': _CACHE_VERSION, 'sha256': sha256(spec.checkpoint), 'arch': spec.arch,
           'widths': list(spec.widths), 'ema': ema,
           'pretrained_cfg': sha256(cfg.source) if cfg else None}
    meta = json.load(open(meta_path)) if os.path.isfile(meta_path) and os.path.isfile(cache) else {}
    mean, std, input_size = _preprocessing(spec, cfg)
    if meta.get('key') == key:
        variables = jax.tree.map(jnp.asarray, serialization.msgpack_restore(open(cache, 'rb').read()))
        architecture = porting.Architecture.from_json(meta['architecture'])
        module = porting.build(architecture)
        log.info('teacher %s: ported variables read from the cache', spec.name)
    else:
        size = input_size or image_size
        try:
            state_dict = porting.load_state_dict(spec.checkpoint, ema)
            architecture = porting.resolve(spec.arch, state_dict, spec.widths or None,
                                           cfg.architecture if cfg else None)
            module, variables = porting.port_architecture(architecture, state_dict, (1, *size, 3))
        except (porting.PortingError, porting.CheckpointFormatError, ValueError) as e:
            raise ConfigError(f'teachers.{spec.name} ({spec.checkpoint}): {e}') from None
        write_atomic(cache, serialization.msgpack_serialize(jax.device_get(variables)))
        write_atomic(meta_path, json.dumps({'key': key, 'num_classes': module.num_classes,
                                            'architecture': architecture.to_json()}).encode())
        log.info('teacher %s: ported %s from %s', spec.name, architecture.describe(), spec.checkpoint)
    net = Net(spec.name, architecture.arch, module, mean, std, input_size, dict(spec.heads),
              spec.widths)
    return net, variables
