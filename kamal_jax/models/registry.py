"""Architecture registry: names -> backbone constructors; unknown names fail with the valid list."""

from __future__ import annotations

import functools
import re
from typing import Callable, Sequence

import flax.linen as nn

from kamal_jax.models import mobilenet_v2 as mobilenet_v2_lib
from kamal_jax.models import resnet as resnet_lib
from kamal_jax.models import vit as vit_lib
from kamal_jax.models.heads import Classifier, MultiHeadNet


class Registry(dict):
    """Named constructors plus name families (`cifar_resnetN`), which `in` and `[]` also accept.

    A family is (regex, description, factory(match) -> constructor, or None for a name the regex
    matches but the family lacks); a lookup that fails lists every name and family.
    """

    def __init__(self, entries=(), families=()):
        super().__init__(entries)
        self.families = list(families)

    def _family(self, name):
        for pattern, _, factory in self.families:
            if isinstance(name, str) and (m := re.fullmatch(pattern, name)):
                return factory(m)
        return None

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or self._family(name) is not None

    def __missing__(self, name):
        found = self._family(name)
        if found is None:
            raise KeyError(name)
        return found

    def get(self, name, default=None):
        return self[name] if name in self else default

    def describe(self) -> str:
        """Every name and family, for error messages."""
        return ', '.join([*sorted(self), *(d for _, d, _ in self.families)])

    def lookup(self, name, what: str = 'architecture'):
        if name not in self:
            raise ValueError(f'unknown {what} {name!r}; supported: {self.describe()}.')
        return self[name]


BACKBONES = Registry({
    'resnet18': functools.partial(resnet_lib.resnet, 18),
    'resnet34': functools.partial(resnet_lib.resnet, 34),
    'resnet50': functools.partial(resnet_lib.resnet, 50),
    # torchvision ResNets with the small-image stem (3x3/1 conv, no max-pool).
    'resnet18_small': functools.partial(resnet_lib.resnet, 18, stem='cifar'),
    'resnet34_small': functools.partial(resnet_lib.resnet, 34, stem='cifar'),
    'resnet50_small': functools.partial(resnet_lib.resnet, 50, stem='cifar'),
    **{f'cifar_resnet{d}': functools.partial(resnet_lib.cifar_resnet, d)
       for d in (8, 14, 20, 32, 44, 56, 110)},
    'mobilenet_v2': mobilenet_v2_lib.mobilenet_v2,
    **{name: functools.partial(vit_lib.vit, name) for name in vit_lib.CONFIGS},
}, families=[
    (r'cifar_resnet(\d+)', 'cifar_resnetN (any N = 6n+2)',
     lambda m: functools.partial(resnet_lib.cifar_resnet, int(m.group(1)))
     if int(m.group(1)) >= 8 and int(m.group(1)) % 6 == 2 else None),
    (vit_lib.TIMM_NAME.pattern.strip('^$'), 'timm ViT/DeiT names ({vit,deit}_{tiny,small,base,'
     'large,huge}_patchP_S)', lambda m: functools.partial(vit_lib.vit, m.group(0))),
])


def register(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Adds an architecture; constructors take `widths=None` (and may ignore it)."""
    BACKBONES[name] = constructor


def backbone(arch: str, widths: Sequence[int] | None = None, **options) -> nn.Module:
    """`options` are the constructor's own (a teacher's `shortcut`, a ported ViT's sizes)."""
    return BACKBONES.lookup(arch)(widths=tuple(widths) if widths else None, **options)


def classifier(arch: str, num_classes: int, widths: Sequence[int] | None = None,
               **options) -> Classifier:
    return Classifier(backbone(arch, widths, **options), num_classes)


def multihead(arch: str, heads: Sequence[tuple[str, int]],
              widths: Sequence[int] | None = None) -> MultiHeadNet:
    return MultiHeadNet(backbone(arch, widths), tuple((t, int(n)) for t, n in heads))


COMPUTE_DTYPES = ('float32', 'bfloat16')


def with_dtype(module: nn.Module, dtype) -> nn.Module:
    """The same network computing in `dtype` (activations); its params stay float32.

    None or 'float32' returns the module unchanged (results bit-identical to before).
    """
    if dtype is None or str(dtype) == 'float32':
        return module
    if isinstance(module, (Classifier, MultiHeadNet)):
        return module.clone(backbone=module.backbone.clone(dtype=dtype), dtype=dtype)
    return module.clone(dtype=dtype)
