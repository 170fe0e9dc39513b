"""Teachers from their checkpoints: ported to Flax once, then cached in the workdir by content hash."""

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
from kamal_jax.tasks import ConfigError, TeacherSpec
from kamal_jax.train.nets import Net

log = logging.getLogger('kamal_jax')


def load_teacher(spec: TeacherSpec, cache_dir: str, image_size: tuple[int, int]) -> tuple[Net, Any]:
    """Returns the teacher as a `Net` and its variables; ports on first use, then reads the cache."""
    if not os.path.isfile(spec.checkpoint):
        raise ConfigError(f'teachers.{spec.name}.checkpoint = {spec.checkpoint!r} does not exist.')
    os.makedirs(cache_dir, exist_ok=True)
    cache, meta_path = (os.path.join(cache_dir, f'{spec.name}.{ext}') for ext in ('msgpack', 'json'))
    key = {'sha256': sha256(spec.checkpoint), 'arch': spec.arch, 'widths': list(spec.widths)}
    meta = json.load(open(meta_path)) if os.path.isfile(meta_path) and os.path.isfile(cache) else {}
    if meta.get('key') == key:
        variables = jax.tree.map(jnp.asarray, serialization.msgpack_restore(open(cache, 'rb').read()))
        module = porting.build_teacher(spec.arch, meta['num_classes'], spec.widths or None)
        log.info('teacher %s: ported variables read from the cache', spec.name)
    else:
        size = spec.input_size or image_size
        try:
            module, variables = porting.port_file(spec.arch, spec.checkpoint, spec.widths or None,
                                                  input_shape=(1, *size, 3))
        except (porting.PortingError, porting.CheckpointFormatError, ValueError) as e:
            raise ConfigError(f'teachers.{spec.name}: {e}') from None
        write_atomic(cache, serialization.msgpack_serialize(jax.device_get(variables)))
        write_atomic(meta_path, json.dumps({'key': key, 'num_classes': module.num_classes}).encode())
        log.info('teacher %s: ported %s from %s', spec.name, spec.arch, spec.checkpoint)
    net = Net(spec.name, spec.arch, module, spec.mean, spec.std, spec.input_size, dict(spec.heads),
              spec.widths)
    return net, variables
