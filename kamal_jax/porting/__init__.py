"""PyTorch state_dict -> Flax variables, one rule set per architecture family.

`port(arch, state_dict)` builds the Flax teacher (a `Classifier`) and its `params`/`batch_stats`;
the number of classes is read from the classifier weight. No torchvision import happens here.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kamal_jax import models
from kamal_jax.porting import mobilenet_v2 as mobilenet_v2_rules
from kamal_jax.porting import resnet as resnet_rules
from kamal_jax.porting import vit as vit_rules
from kamal_jax.porting.rules import PortingError, convert
from kamal_jax.porting.state_dict import CheckpointFormatError, load_state_dict


@dataclasses.dataclass(frozen=True)
class PortSpec:
    """How one family's PyTorch names map onto its Flax module."""
    renames: tuple
    head_key: str
    leaf_rules: tuple = ()
    build: Callable[..., object] | None = None  # (arch, num_classes, widths) -> module


_RESNET = PortSpec(resnet_rules.RENAMES, resnet_rules.HEAD_KEY)
SPECS: dict[str, PortSpec] = {name: _RESNET for name in models.BACKBONES
                              if name.startswith(('resnet', 'cifar_resnet'))}
SPECS['mobilenet_v2'] = PortSpec(mobilenet_v2_rules.RENAMES, mobilenet_v2_rules.HEAD_KEY)
SPECS.update({name: PortSpec(vit_rules.RENAMES, vit_rules.HEAD_KEY, vit_rules.LEAF_RULES)
              for name in models.vit.CONFIGS})


def register(arch: str, spec: PortSpec) -> None:
    SPECS[arch] = spec


def spec_for(arch: str) -> PortSpec:
    if arch not in SPECS:
        raise ValueError(f'no porting rules for architecture {arch!r}; supported: '
                         f'{", ".join(sorted(SPECS))}.')
    return SPECS[arch]


def build_teacher(arch: str, num_classes: int, widths: Sequence[int] | None = None):
    spec = spec_for(arch)
    if spec.build is not None:
        return spec.build(arch, num_classes, widths)
    return models.classifier(arch, num_classes, widths)


def port(arch: str, state_dict: Mapping[str, np.ndarray], widths: Sequence[int] | None = None,
         input_shape: Sequence[int] = (1, 32, 32, 3)):
    """Returns `(module, variables)` computing what the PyTorch model computes (eval mode)."""
    spec = spec_for(arch)
    if spec.head_key not in state_dict:
        raise PortingError(f'checkpoint has no classifier weight {spec.head_key!r} expected for '
                           f'{arch!r}; its first keys are {list(state_dict)[:5]}.')
    num_classes = int(np.shape(state_dict[spec.head_key])[0])
    module = build_teacher(arch, num_classes, widths)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(input_shape)))
    variables = convert(state_dict, shapes, spec.renames, spec.leaf_rules)
    return module, jax.tree.map(jnp.asarray, variables)


def port_file(arch: str, path: str, widths: Sequence[int] | None = None,
              input_shape: Sequence[int] = (1, 32, 32, 3)):
    return port(arch, load_state_dict(path), widths, input_shape)


__all__ = ['CheckpointFormatError', 'PortSpec', 'PortingError', 'SPECS', 'build_teacher',
           'load_state_dict', 'port', 'port_file', 'register', 'spec_for']
