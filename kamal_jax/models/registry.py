"""Architecture registry: names -> backbone constructors; unknown names fail with the valid list."""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn

from kamal_jax.models import mobilenet_v2 as mobilenet_v2_lib
from kamal_jax.models import resnet as resnet_lib
from kamal_jax.models import vit as vit_lib
from kamal_jax.models.heads import Classifier, MultiHeadNet

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    'resnet18': functools.partial(resnet_lib.resnet, 18),
    'resnet34': functools.partial(resnet_lib.resnet, 34),
    'resnet50': functools.partial(resnet_lib.resnet, 50),
    # torchvision ResNets with the small-image stem (3x3/1 conv, no max-pool).
    'resnet18_small': functools.partial(resnet_lib.resnet, 18, stem='cifar'),
    'resnet34_small': functools.partial(resnet_lib.resnet, 34, stem='cifar'),
    'resnet50_small': functools.partial(resnet_lib.resnet, 50, stem='cifar'),
    'cifar_resnet8': functools.partial(resnet_lib.cifar_resnet, 8),
    'cifar_resnet14': functools.partial(resnet_lib.cifar_resnet, 14),
    'cifar_resnet20': functools.partial(resnet_lib.cifar_resnet, 20),
    'cifar_resnet32': functools.partial(resnet_lib.cifar_resnet, 32),
    'cifar_resnet56': functools.partial(resnet_lib.cifar_resnet, 56),
    'mobilenet_v2': mobilenet_v2_lib.mobilenet_v2,
    **{name: functools.partial(vit_lib.vit, name) for name in vit_lib.CONFIGS},
}


def register(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Adds an architecture; constructors take `widths=None` (and may ignore it)."""
    BACKBONES[name] = constructor


def backbone(arch: str, widths: Sequence[int] | None = None) -> nn.Module:
    if arch not in BACKBONES:
        raise ValueError(f'unknown architecture {arch!r}; supported: {", ".join(sorted(BACKBONES))}.')
    return BACKBONES[arch](widths=tuple(widths) if widths else None)


def classifier(arch: str, num_classes: int, widths: Sequence[int] | None = None) -> Classifier:
    return Classifier(backbone(arch, widths), num_classes)


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
