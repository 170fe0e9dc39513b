"""ResNet backbones (torchvision layout) that return pooled features and named block taps.

Taps are the stem (conv+BN, before ReLU) and each stage's output taken before its final
ReLU, the points Shen et al. match. Parameter names follow torchvision (`conv1`, `bn1`,
`layer1_0`, ...) so that porting is a short rule table.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kamal_jax.models.taps import Tap

_BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
_BN_EPS = 1e-5


def _conv(features, kernel, stride, name, dtype=None):
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, name=name, dtype=dtype)


def _norm(train, name, dtype=None):
    return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS,
                        name=name, dtype=dtype)


class BasicBlock(nn.Module):
    """Two 3x3 convs; returns the residual sum *before* the ReLU (a tap point)."""
    filters: int
    stride: int = 1
    dtype: Any = None  # compute dtype (None: that of the inputs); params stay float32
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        dt = self.dtype
        y = nn.relu(_norm(train, 'bn1', dt)(_conv(self.filters, 3, self.stride, 'conv1', dt)(x)))
        y = _norm(train, 'bn2', dt)(_conv(self.filters, 3, 1, 'conv2', dt)(y))
        if self.stride != 1 or x.shape[-1] != self.filters:
            x = _norm(train, 'downsample_bn', dt)(
                _conv(self.filters, 1, self.stride, 'downsample_conv', dt)(x))
        return y + x


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 with the stride on the 3x3 (torchvision v1.5); pre-ReLU output."""
    filters: int
    stride: int = 1
    dtype: Any = None
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
                x = block_cls(width, stride, dt, name=f'layer{i + 1}_{j}')(x, train)
                if j < size - 1:
                    x = nn.relu(x)
            features[f'stage{i + 1}'] = x
            x = nn.relu(x)
        return jnp.mean(x, axis=(1, 2)), features


def resnet(depth: int, *, widths: Sequence[int] | None = None, stem: str = 'imagenet') -> ResNet:
    """torchvision ResNet-18/34/50/101; `widths` = (stem, stage1, ..., stage4)."""
    table = {18: ((2, 2, 2, 2), 'basic'), 34: ((3, 4, 6, 3), 'basic'),
             50: ((3, 4, 6, 3), 'bottleneck'), 101: ((3, 4, 23, 3), 'bottleneck')}
    sizes, block = table[depth]
    widths = tuple(widths or (64, 64, 128, 256, 512))
    return ResNet(sizes, widths[1:], widths[0], block, stem)


def cifar_resnet(depth: int, *, widths: Sequence[int] | None = None) -> ResNet:
    """He et al.'s CIFAR ResNet-(6n+2): three stages of n basic blocks, 16/32/64 wide."""
    if (depth - 2) % 6:
        raise ValueError(f'CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 56, ...), got {depth}.')
    n = (depth - 2) // 6
    widths = tuple(widths or (16, 16, 32, 64))
    return ResNet((n,) * (len(widths) - 1), widths[1:], widths[0], 'basic', 'cifar')


resnet18 = functools.partial(resnet, 18)
resnet34 = functools.partial(resnet, 34)
resnet50 = functools.partial(resnet, 50)
