"""The rule tables by layout, and which layout each registered architecture name uses.

A layout is one naming scheme of PyTorch weights (torchvision's ResNet names, timm's ViT names,
...): its renames and leaf rules for `rules.convert`, the keys its classifier weight may have,
and a `detect` that reads from the keys which registered architectures the weights describe.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from kamal_jax import models
from kamal_jax.models.registry import Registry
from kamal_jax.porting import mobilenet_v2 as mobilenet_v2_rules
from kamal_jax.porting import resnet as resnet_rules
from kamal_jax.porting import timm_vit as timm_vit_rules
from kamal_jax.porting import vit as vit_rules


@dataclasses.dataclass(frozen=True)
class PortSpec:
    """How one layout's PyTorch names map onto its Flax module."""
    renames: tuple
    head_key: str | tuple[str, ...]  # the classifier weight's key (any of several)
    leaf_rules: tuple = ()
    build: Callable[..., object] | None = None  # (arch, num_classes, widths) -> module
    detect: Callable[..., list] | None = None  # (state_dict, hint) -> [Architecture]
    name: str = ''

    @property
    def head_keys(self) -> tuple[str, ...]:
        return (self.head_key,) if isinstance(self.head_key, str) else tuple(self.head_key)


LAYOUTS: dict[str, PortSpec] = {
    'resnet': PortSpec(resnet_rules.RENAMES, resnet_rules.HEAD_KEYS, detect=resnet_rules.detect,
                       name='resnet'),
    'mobilenet_v2': PortSpec(mobilenet_v2_rules.RENAMES, mobilenet_v2_rules.HEAD_KEY,
                             detect=mobilenet_v2_rules.detect, name='mobilenet_v2'),
    'torchvision_vit': PortSpec(vit_rules.RENAMES, vit_rules.HEAD_KEY, vit_rules.LEAF_RULES,
                                detect=vit_rules.detect, name='torchvision_vit'),
    'timm_vit': PortSpec(timm_vit_rules.RENAMES, timm_vit_rules.HEAD_KEY, timm_vit_rules.LEAF_RULES,
                         detect=timm_vit_rules.detect, name='timm_vit'),
}

SPECS = Registry({
    **{name: LAYOUTS['resnet'] for name in models.BACKBONES
       if name.startswith(('resnet', 'cifar_resnet'))},
    'mobilenet_v2': LAYOUTS['mobilenet_v2'],
    **{name: LAYOUTS['torchvision_vit'] for name in models.vit.CONFIGS},
}, families=[
    (r'cifar_resnet\d+', 'cifar_resnetN (any N = 6n+2)',
     lambda m: LAYOUTS['resnet'] if m.group(0) in models.BACKBONES else None),
    (models.vit.TIMM_NAME.pattern.strip('^$'), 'timm ViT/DeiT names ({vit,deit}_SIZE_patchP_S)',
     lambda m: LAYOUTS['timm_vit']),
])


def register(arch: str, spec: PortSpec) -> None:
    SPECS[arch] = spec


def spec_for(arch: str) -> PortSpec:
    if arch not in SPECS:
        raise ValueError(f'no porting rules for architecture {arch!r}; supported: '
                         f'{SPECS.describe()}, or auto.')
    return SPECS[arch]
