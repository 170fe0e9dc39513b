"""MobileNetV2 (torchvision layout) returning pooled features and one tap per stride.

Computes what `torchvision.models.mobilenet_v2(num_classes=N)` computes in eval mode: a 3x3/2
stem, 17 inverted-residual blocks (1x1 expand, 3x3 depthwise, linear 1x1 projection; ReLU6),
a final 1x1 conv to 1280 channels and global average pooling. Dropout before the classifier is
the identity in eval mode and is left out; the classifier itself is the generic `Classifier.fc`.

Taps are the last feature map at each stride: `stride2` (block 1), `stride4` (block 3),
`stride8` (block 6), `stride16` (block 13) and `stride32` (the final 1280-channel conv, after
ReLU6: the map that is pooled). Block outputs are linear (no activation), as in the paper.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kamal_jax.models.taps import Tap

_BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
_BN_EPS = 1e-5

# (expand ratio t, output channels c, repeats n, first stride s), as in torchvision.
SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's `_make_divisible`: round to a multiple of `divisor`, never below 90% of v."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv(features, kernel, stride, name, groups=1, dtype=None):
    pad = (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   feature_group_count=groups, use_bias=False, name=name, dtype=dtype)


def _norm(train, name, dtype=None):
    return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS,
                        name=name, dtype=dtype)


class InvertedResidual(nn.Module):
    """[1x1 expand + BN + ReLU6] -> 3x3 depthwise + BN + ReLU6 -> 1x1 project + BN (+ skip)."""
    out_channels: int
    stride: int
    expand_ratio: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool):
        inp, dt = x.shape[-1], self.dtype
        hidden = int(round(inp * self.expand_ratio))
        y = x
        if self.expand_ratio != 1:
            y = nn.relu6(_norm(train, 'expand_bn', dt)(_conv(hidden, 1, 1, 'expand_conv', dtype=dt)(y)))
        y = nn.relu6(_norm(train, 'dw_bn', dt)(
            _conv(hidden, 3, self.stride, 'dw_conv', groups=hidden, dtype=dt)(y)))
        y = _norm(train, 'project_bn', dt)(_conv(self.out_channels, 1, 1, 'project_conv', dtype=dt)(y))
        if self.stride == 1 and inp == self.out_channels:
            y = x + y
        return y


class MobileNetV2(nn.Module):
    """MobileNetV2 trunk; returns `(pooled, features)` with `features` keyed by tap name."""
    width_mult: float = 1.0
    round_nearest: int = 8
    dtype: Any = None  # compute dtype; params stay float32

    def _layout(self):
        """[(block index, out channels, stride, expand ratio, cumulative stride)] for blocks 1..17."""
        blocks, total = [], 2
        for t, c, n, s in SETTING:
            out = make_divisible(c * self.width_mult, self.round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                total *= stride
                blocks.append((len(blocks) + 1, out, stride, t, total))
        return blocks

    @property
    def stem_channels(self) -> int:
        return make_divisible(32 * self.width_mult, self.round_nearest)

    @property
    def out_channels(self) -> int:
        return make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)

    def _tap_blocks(self) -> dict[int, Tap]:
        """Block index -> tap, for the last block at each stride below the final one."""
        blocks = self._layout()
        last = {}
        for index, out, _, _, total in blocks:
            last[total] = (index, out)
        final = blocks[-1][4]
        return {index: Tap(f'stride{total}', out, total)
                for total, (index, out) in last.items() if total != final}

    def taps(self) -> tuple[Tap, ...]:
        final = self._layout()[-1][4]
        return tuple(self._tap_blocks().values()) + (Tap(f'stride{final}', self.out_channels, final),)

    @nn.compact
    def __call__(self, x, train: bool = False):
        tap_blocks = self._tap_blocks()
        features, dt = {}, self.dtype
        x = nn.relu6(_norm(train, 'stem_bn', dt)(_conv(self.stem_channels, 3, 2, 'stem_conv', dtype=dt)(x)))
        for index, out, stride, t, _ in self._layout():
            x = InvertedResidual(out, stride, t, dt, name=f'block{index}')(x, train)
            if index in tap_blocks:
                features[tap_blocks[index].name] = x
        x = nn.relu6(_norm(train, 'last_bn', dt)(_conv(self.out_channels, 1, 1, 'last_conv', dtype=dt)(x)))
        features[self.taps()[-1].name] = x
        return jnp.mean(x, axis=(1, 2)), features


def mobilenet_v2(*, widths=None, width_mult: float = 1.0) -> MobileNetV2:
    """torchvision `mobilenet_v2`; `widths` is not supported (use `width_mult`)."""
    if widths is not None:
        raise ValueError(f'mobilenet_v2 takes no widths (got {list(widths)}); '
                         'its width is set by width_mult.')
    return MobileNetV2(width_mult=width_mult)
