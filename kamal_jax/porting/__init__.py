"""PyTorch state_dict -> Flax variables, one rule table per checkpoint layout.

`resolve(arch, state_dict)` names what the weights are (an `Architecture`: registry name,
classes, widths, shortcut kind or ViT sizes, all read from the keys; `arch='auto'` picks the
registered architecture the weights match), `port` builds that Flax teacher (a `Classifier`) and
converts the weights onto it. `inspect` lists every match, or the nearest architecture and its
first offending keys. No torch or torchvision import happens here (reading a torch.save file
imports torch then).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kamal_jax import models
from kamal_jax.porting import detect as detect_lib
from kamal_jax.porting.architecture import Architecture
from kamal_jax.porting.detect import Inspection
from kamal_jax.porting.layouts import LAYOUTS, SPECS, PortSpec, register, spec_for
from kamal_jax.porting.pretrained_cfg import PretrainedCfg
from kamal_jax.porting.rules import PortingError, convert
from kamal_jax.porting.state_dict import (Checkpoint, CheckpointFormatError, load_state_dict,
                                          read_checkpoint)

AUTO = 'auto'


def build_teacher(arch: str, num_classes: int, widths: Sequence[int] | None = None, **options):
    spec = spec_for(arch)
    if spec.build is not None:
        return spec.build(arch, num_classes, widths)
    return models.classifier(arch, num_classes, widths, **options)


def build(architecture: Architecture):
    """The Flax teacher an `Architecture` record describes (e.g. read back from a cache)."""
    return build_teacher(architecture.arch, architecture.num_classes, architecture.widths,
                         **dict(architecture.options))


def _spec(architecture: Architecture) -> PortSpec:
    return LAYOUTS[architecture.layout] if architecture.layout in LAYOUTS else spec_for(architecture.arch)


def _convert(architecture: Architecture, state_dict: Mapping, input_shape=None):
    module = build(architecture)
    size = architecture.input_size
    shape = tuple(input_shape or (1, size, size, 3))
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape)))
    spec = _spec(architecture)
    return module, convert(state_dict, shapes, spec.renames, spec.leaf_rules)


def inspect(state_dict: Mapping, hint: str | None = None) -> Inspection:
    """Every registered architecture the weights match, or the nearest and its offending keys.

    `hint` is a name the weights cannot confirm (a timm ViT's, whose head count it gives).
    """
    return detect_lib.inspect(state_dict, lambda a, sd: _convert(a, sd), hint)


def resolve(arch: str, state_dict: Mapping, widths: Sequence[int] | None = None,
            hint: str | None = None) -> Architecture:
    """What to build for `state_dict` under the name `arch` ('auto': the first match)."""
    if arch == AUTO:
        found = inspect(state_dict, hint)
        if not found.matches:
            raise PortingError(found.explain())
        return found.matches[0].with_widths(widths) if widths else found.matches[0]
    spec = spec_for(arch)
    head = next((k for k in spec.head_keys if k in state_dict), None)
    if head is None:
        raise PortingError(f'checkpoint has no classifier weight '
                           f'{" or ".join(repr(k) for k in spec.head_keys)} expected for {arch!r}; '
                           f'its first keys are {list(state_dict)[:5]}.')
    detected = [a for a in (spec.detect(state_dict, arch) if spec.detect else []) if a.arch == arch]
    if detected:
        return detected[0].with_widths(widths) if widths else detected[0]
    return Architecture(arch, int(np.shape(state_dict[head])[0]), widths, (), '', spec.name)


def port_architecture(architecture: Architecture, state_dict: Mapping,
                      input_shape: Sequence[int] | None = None):
    """Returns `(module, variables)` computing what the PyTorch model computes (eval mode)."""
    module, variables = _convert(architecture, state_dict, input_shape)
    return module, jax.tree.map(jnp.asarray, variables)


def port(arch: str, state_dict: Mapping[str, np.ndarray], widths: Sequence[int] | None = None,
         input_shape: Sequence[int] | None = None, hint: str | None = None):
    """Returns `(module, variables)`; `arch` may be 'auto'."""
    return port_architecture(resolve(arch, state_dict, widths, hint), state_dict, input_shape)


def port_file(arch: str, path: str, widths: Sequence[int] | None = None,
              input_shape: Sequence[int] | None = None, ema: bool = False, hint: str | None = None):
    return port(arch, load_state_dict(path, ema), widths, input_shape, hint)


__all__ = ['AUTO', 'Architecture', 'Checkpoint', 'CheckpointFormatError', 'Inspection', 'LAYOUTS',
           'PortSpec', 'PortingError', 'PretrainedCfg', 'SPECS', 'build', 'build_teacher', 'inspect',
           'load_state_dict', 'port', 'port_architecture', 'port_file', 'read_checkpoint', 'register',
           'resolve', 'spec_for']
