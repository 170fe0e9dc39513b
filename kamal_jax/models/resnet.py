"""ResNet backbones (torchvision layout) that return pooled features and named block taps.

Taps are the stem (conv+BN, before ReLU) and each stage's output taken before its final
ReLU, the points Shen et al. match. Parameter names follow torchvision (`conv1`, `bn1`,
`layer1_0`, ...) so that porting is a short rule table.

Where a block changes resolution or width its shortcut is either a 1x1 conv + BN
(`shortcut='projection'`, He et al.'s option B and torchvision's; the default for every net
kamal_jax builds) or parameter-free (`shortcut='zero_pad'`, the original CIFAR option A:
`x[:, ::2, ::2]` with `planes // 4` zero channels on each side), so teachers trained either
way run exactly as they were trained.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kamal_jax.models.taps import Tap
from kamal_jax.resnet_depths import RESNET_DEPTHS, cifar_blocks_per_stage

_BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
_BN_EPS = 1e-5
SHORTCUTS = ('projection', 'zero_pad')


def _conv(features, kernel, stride, name, dtype=None):
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, name=name, dtype=dtype)


def _norm(train, name, dtype=None):
    return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS,
                        name=name, dtype=dtype)


def zero_pad_shortcut(x, planes: int):
    """Option A: every other pixel, then `planes // 4` zero channels each side (NHWC)."""
    pad = planes // 4
    if x.shape[-1] + 2 * pad != planes:
        raise ValueError(f'a zero-pad (option A) shortcut needs the width to double from '
                         f'{x.shape[-1]} channels, got {planes}.')
    return jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))


class BasicBlock(nn.Module):
    """Two 3x3 convs; returns the residual sum *before* the ReLU (a tap point)."""
    filters: int
    stride: int = 1
    dtype: Any = None  # compute dtype (None: that of the inputs); params stay float32
    shortcut: str = 'projection'  # or 'zero_pad' (option A)
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        dt = self.dtype
        y = nn.relu(_norm(train, 'bn1', dt)(_conv(self.filters, 3, self.stride, 'conv1', dt)(x)))
        y = _norm(train, 'bn2', dt)(_conv(self.filters, 3, 1, 'conv2', dt)(y))
        if self.stride != 1 or x.shape[-1] != self.filters:
            if self.shortcut == 'zero_pad':
                x = zero_pad_shortcut(x, self.filters).astype(y.dtype)
            else:
                x = _norm(train, 'downsample_bn', dt)(
                    _conv(self.filters, 1, self.stride, 'downsample_conv', dt)(x))
        return y + x


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 with the stride on the 3x3 (torchvision v1.5); pre-ReLU output."""
    filters: int
    stride: int = 1
    dtype: Any = None
    shortcut: str = 'projection'  # option A is defined for basic blocks only
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        out, dt = self.filters * self.expansion, self.dtype
        y = nn.relu(_norm(train, 'bn1', dt)(_conv(self.filters, 1, 1, 'conv1', dt)(x)))
        y = nn.relu(_norm(train, 'bn2', dt)(_conv(self.filters, 3, self.stride, 'conv2', dt)(y)))
        y = _norm(train, 'bn3', dt)(_conv(out, 1, 1, 'conv3', dt)(y))
        if self.stride != 1 or x.shape[-1] != out:
            x = _norm(train, 'downsample_bn', dt)(_conv(out, 1, self.stride, 'downsample_conv', dt)(x))
        return y + x


_BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


class ResNet(nn.Module):
    """ResNet trunk. `stem='imagenet'`: 7x7/2 conv + 3x3/2 max-pool; `stem='cifar'`: 3x3/1 conv.

    Returns `(pooled, features)`; `features` maps tap names to NHWC maps.
    """
    stage_sizes: Sequence[int]
    stage_widths: Sequence[int]
    stem_width: int
    block: str = 'basic'
    stem: str = 'imagenet'
    dtype: Any = None  # compute dtype (e.g. bfloat16); params stay float32
    shortcut: str = 'projection'  # 'projection' (option B) or 'zero_pad' (option A)

    def taps(self) -> tuple[Tap, ...]:
        expansion = _BLOCKS[self.block].expansion
        stride = 2 if self.stem == 'imagenet' else 1
        taps = [Tap('stem', self.stem_width, stride)]
        if self.stem == 'imagenet':
            stride *= 2
        for i, width in enumerate(self.stage_widths):
            if i > 0:
                stride *= 2
            taps.append(Tap(f'stage{i + 1}', width * expansion, stride))
        return tuple(taps)

    @property
    def out_channels(self) -> int:
        return self.stage_widths[-1] * _BLOCKS[self.block].expansion

    @nn.compact
    def __call__(self, x, train: bool = False):
        block_cls = _BLOCKS[self.block]
        check_shortcut(self.shortcut, self.block, self.stem_width, self.stage_widths)
        features, dt = {}, self.dtype
        if self.stem == 'imagenet':
            x = _norm(train, 'bn1', dt)(_conv(self.stem_width, 7, 2, 'conv1', dt)(x))
        elif self.stem == 'cifar':
            x = _norm(train, 'bn1', dt)(_conv(self.stem_width, 3, 1, 'conv1', dt)(x))
        else:
            raise ValueError(f"ResNet stem must be 'imagenet' or 'cifar', got {self.stem!r}.")
        features['stem'] = x
        x = nn.relu(x)
        if self.stem == 'imagenet':
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for i, (size, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            for j in range(size):
                stride = 2 if (i > 0 and j == 0) else 1
                x = block_cls(width, stride, dt, self.shortcut, name=f'layer{i + 1}_{j}')(x, train)
                if j < size - 1:
                    x = nn.relu(x)
            features[f'stage{i + 1}'] = x
            x = nn.relu(x)
        return jnp.mean(x, axis=(1, 2)), features


def check_shortcut(shortcut: str, block: str, stem_width: int, stage_widths: Sequence[int]) -> None:
    """Option A only exists where each stage doubles the width of the one before (PyTorch's too)."""
    if shortcut not in SHORTCUTS:
        raise ValueError(f'ResNet shortcut must be one of {SHORTCUTS}, got {shortcut!r}.')
    if shortcut == 'projection':
        return
    widths = (stem_width, *stage_widths)
    if block != 'basic' or widths[0] != widths[1] or any(
            b != 2 * a or b % 4 for a, b in zip(widths[1:], widths[2:])):
        raise ValueError(f'zero-pad (option A) shortcuts need basic blocks, a stem as wide as stage 1 '
                         f'and each later stage twice as wide as the one before (a multiple of 4); '
                         f'got {block} blocks with widths {list(widths)}.')


def resnet(depth: int, *, widths: Sequence[int] | None = None, stem: str = 'imagenet',
           shortcut: str = 'projection') -> ResNet:
    """torchvision ResNet-18/34/50/101; `widths` = (stem, stage1, ..., stage4)."""
    sizes, block = RESNET_DEPTHS[depth]
    widths = tuple(widths or (64, 64, 128, 256, 512))
    check_shortcut(shortcut, block, widths[0], widths[1:])
    return ResNet(sizes, widths[1:], widths[0], block, stem, shortcut=shortcut)


def cifar_resnet(depth: int, *, widths: Sequence[int] | None = None,
                 shortcut: str = 'projection') -> ResNet:
    """He et al.'s CIFAR ResNet-(6n+2): three stages of n basic blocks, 16/32/64 wide.

    Any depth 6n+2 and any widths (stem, stage1, ...; one stage per width after the stem).
    """
    n = cifar_blocks_per_stage(depth)
    widths = tuple(widths or (16, 16, 32, 64))
    check_shortcut(shortcut, 'basic', widths[0], widths[1:])
    return ResNet((n,) * (len(widths) - 1), widths[1:], widths[0], 'basic', 'cifar',
                  shortcut=shortcut)


resnet18 = functools.partial(resnet, 18)
resnet34 = functools.partial(resnet, 34)
resnet50 = functools.partial(resnet, 50)
