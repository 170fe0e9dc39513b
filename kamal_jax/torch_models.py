"""PyTorch twins of the Flax ResNets in `kamal_jax.models.resnet`: what a ported checkpoint is checked
against (`python -m kamal_jax.porting` prints the parity), and what the teacher zoo trains.

PyTorch only: imported in a PyTorch process (the porting command, the zoo), never by a JAX run; it
stands outside `porting/` so that the zoo's process, importing it, loads no JAX.
Parameter names are torchvision's (`conv1`, `bn1`, `layer{i}.{j}.conv1`, ...,
`layer{i}.{j}.downsample.{0,1}`, `fc`), so a `state_dict()` of these models ports with the rule
table in `kamal_jax.porting.resnet`.

Taps match the Flax model: `stem` is the stem's BN output before the ReLU (and before the
max-pool), `stage{i}` is the last block's residual sum of stage i before its final ReLU.
Feature maps are NCHW here, NHWC in Flax.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from kamal_jax.resnet_depths import RESNET_DEPTHS, cifar_blocks_per_stage

_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1  # Flax momentum 0.9.


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


def _conv(cin: int, cout: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs; `forward` returns the residual sum before the ReLU."""
    expansion = 1

    def __init__(self, cin: int, filters: int, stride: int = 1, shortcut: str = 'projection'):
        super().__init__()
        self.conv1 = _conv(cin, filters, 3, stride)
        self.bn1 = _bn(filters)
        self.conv2 = _conv(filters, filters, 3, 1)
        self.bn2 = _bn(filters)
        self.downsample, self.zero_pad = None, 0
        if (stride != 1 or cin != filters) and shortcut == 'zero_pad':
            self.zero_pad = filters // 4  # option A: parameter-free, no state_dict keys
        elif stride != 1 or cin != filters:
            self.downsample = nn.Sequential(_conv(cin, filters, 1, stride), _bn(filters))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.zero_pad:
            return y + F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.zero_pad, self.zero_pad))
        return y + (x if self.downsample is None else self.downsample(x))


class Bottleneck(nn.Module):
    """1x1-3x3-1x1, stride on the 3x3 (torchvision v1.5); returns the pre-ReLU residual sum."""
    expansion = 4

    def __init__(self, cin: int, filters: int, stride: int = 1):
        super().__init__()
        out = filters * self.expansion
        self.conv1 = _conv(cin, filters, 1, 1)
        self.bn1 = _bn(filters)
        self.conv2 = _conv(filters, filters, 3, stride)
        self.bn2 = _bn(filters)
        self.conv3 = _conv(filters, out, 1, 1)
        self.bn3 = _bn(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(_conv(cin, out, 1, stride), _bn(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return y + (x if self.downsample is None else self.downsample(x))


_BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


class ResNet(nn.Module):
    """Mirror of `kamal_jax.models.resnet.ResNet` wrapped in a `Classifier` (flat `fc`)."""

    def __init__(self, stage_sizes: Sequence[int], stage_widths: Sequence[int], stem_width: int,
                 block: str = 'basic', stem: str = 'imagenet', num_classes: int = 1000,
                 in_channels: int = 3, shortcut: str = 'projection'):
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"ResNet block must be 'basic' or 'bottleneck', got {block!r}.")
        if stem not in ('imagenet', 'cifar'):
            raise ValueError(f"ResNet stem must be 'imagenet' or 'cifar', got {stem!r}.")
        if len(stage_sizes) != len(stage_widths):
            raise ValueError(f'{len(stage_sizes)} stage sizes but {len(stage_widths)} stage widths.')
        self.stem = stem
        block_cls = _BLOCKS[block]
        if stem == 'imagenet':
            self.conv1 = _conv(in_channels, stem_width, 7, 2)
        else:
            self.conv1 = _conv(in_channels, stem_width, 3, 1)
        self.bn1 = _bn(stem_width)
        self.num_stages = len(stage_sizes)
        cin = stem_width
        for i, (size, width) in enumerate(zip(stage_sizes, stage_widths)):
            blocks = []
            for j in range(size):
                stride = 2 if (i > 0 and j == 0) else 1
                extra = {'shortcut': shortcut} if shortcut != 'projection' else {}
                blocks.append(block_cls(cin, width, stride, **extra))
                cin = width * block_cls.expansion
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
        self.out_channels = cin
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # torchvision's initialisation.
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        """Returns `(logits, {'stem': ..., 'stage1': ..., ...})`, NCHW maps."""
        features = {}
        x = self.bn1(self.conv1(x))
        features['stem'] = x
        x = F.relu(x)
        if self.stem == 'imagenet':
            x = F.max_pool2d(x, 3, 2, 1)
        for i in range(self.num_stages):
            layer = getattr(self, f'layer{i + 1}')
            for j, blk in enumerate(layer):
                x = blk(x)
                if j < len(layer) - 1:
                    x = F.relu(x)
            features[f'stage{i + 1}'] = x
            x = F.relu(x)
        return self.fc(x.mean(dim=(2, 3))), features

    def forward(self, x):
        return self.forward_features(x)[0]


def resnet(depth: int, num_classes: int, widths: Sequence[int] | None = None,
           stem: str = 'imagenet', in_channels: int = 3) -> ResNet:
    """torchvision ResNet-18/34/50/101; `widths` = (stem, stage1, ..., stage4)."""
    sizes, block = RESNET_DEPTHS[depth]
    widths = tuple(widths or (64, 64, 128, 256, 512))
    if len(widths) != len(sizes) + 1:
        raise ValueError(f'ResNet-{depth} widths must be (stem, stage1, ..., stage{len(sizes)}), '
                         f'got {widths}.')
    return ResNet(sizes, widths[1:], widths[0], block, stem, num_classes, in_channels)


def cifar_resnet(depth: int, num_classes: int, widths: Sequence[int] | None = None,
                 in_channels: int = 3, shortcut: str = 'projection') -> ResNet:
    """He et al.'s CIFAR ResNet-(6n+2): stages of n basic blocks, 16/32/64 wide by default;
    `shortcut='zero_pad'` is their option A (as akamaster/pytorch_resnet_cifar10 trains it)."""
    n = cifar_blocks_per_stage(depth)
    widths = tuple(widths or (16, 16, 32, 64))
    return ResNet((n,) * (len(widths) - 1), widths[1:], widths[0], 'basic', 'cifar', num_classes,
                  in_channels, shortcut)


ARCHS = {
    'resnet18': lambda n, w, c: resnet(18, n, w, in_channels=c),
    'resnet34': lambda n, w, c: resnet(34, n, w, in_channels=c),
    'resnet50': lambda n, w, c: resnet(50, n, w, in_channels=c),
    'resnet18_small': lambda n, w, c: resnet(18, n, w, 'cifar', c),
    'resnet34_small': lambda n, w, c: resnet(34, n, w, 'cifar', c),
    'resnet50_small': lambda n, w, c: resnet(50, n, w, 'cifar', c),
    'cifar_resnet8': lambda n, w, c: cifar_resnet(8, n, w, c),
    'cifar_resnet14': lambda n, w, c: cifar_resnet(14, n, w, c),
    'cifar_resnet20': lambda n, w, c: cifar_resnet(20, n, w, c),
    'cifar_resnet32': lambda n, w, c: cifar_resnet(32, n, w, c),
    # option A (zero-pad shortcuts); they port as cifar_resnetN with shortcut 'zero_pad' (arch 'auto')
    'cifar_resnet20_a': lambda n, w, c: cifar_resnet(20, n, w, c, 'zero_pad'),
    'cifar_resnet32_a': lambda n, w, c: cifar_resnet(32, n, w, c, 'zero_pad'),
    'cifar_resnet44_a': lambda n, w, c: cifar_resnet(44, n, w, c, 'zero_pad'),
    'cifar_resnet56_a': lambda n, w, c: cifar_resnet(56, n, w, c, 'zero_pad'),
    'cifar_resnet56': lambda n, w, c: cifar_resnet(56, n, w, c),
}


def build(arch: str, num_classes: int, widths: Sequence[int] | None = None,
          in_channels: int = 3) -> ResNet:
    """The PyTorch twin of `kamal_jax.models.classifier(arch, num_classes, widths)`."""
    if arch not in ARCHS:
        raise ValueError(f'unknown architecture {arch!r}; supported: {", ".join(sorted(ARCHS))}.')
    return ARCHS[arch](int(num_classes), tuple(widths) if widths else None, int(in_channels))


# --- real torchvision ResNets -------------------------------------------------------------------

TORCHVISION_ARCHS = ('resnet18', 'resnet34', 'resnet50',
                     'resnet18_small', 'resnet34_small', 'resnet50_small')


def torchvision_resnet(arch: str, num_classes: int) -> nn.Module:
    """A real `torchvision.models.resnet*`; `*_small` swaps in a 3x3/1 conv1 and no max-pool."""
    import torchvision
    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f'no torchvision model for {arch!r}; supported: '
                         f'{", ".join(TORCHVISION_ARCHS)}.')
    base = arch.removesuffix('_small')
    model = getattr(torchvision.models, base)(weights=None, num_classes=num_classes)
    if arch.endswith('_small'):
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model


def _torchvision_block_pre_relu(blk, x):
    """A torchvision Basic/Bottleneck block up to (not including) its final ReLU."""
    identity = x
    out = blk.relu(blk.bn1(blk.conv1(x)))
    if hasattr(blk, 'conv3'):
        out = blk.relu(blk.bn2(blk.conv2(out)))
        out = blk.bn3(blk.conv3(out))
    else:
        out = blk.bn2(blk.conv2(out))
    if blk.downsample is not None:
        identity = blk.downsample(x)
    return out + identity


def torchvision_features(model: nn.Module, x: torch.Tensor):
    """`(logits, taps)` of a torchvision ResNet, with the Flax model's tap semantics (NCHW)."""
    features = {}
    x = model.bn1(model.conv1(x))
    features['stem'] = x
    x = model.maxpool(F.relu(x))  # Not model.relu: it is in-place and would clobber the tap.
    for i in range(1, 5):
        layer = getattr(model, f'layer{i}', None)
        if layer is None:
            break
        for j, blk in enumerate(layer):
            if j < len(layer) - 1:
                x = blk(x)  # Ends with the block's ReLU.
            else:
                x = _torchvision_block_pre_relu(blk, x)
        features[f'stage{i}'] = x
        x = F.relu(x)
    x = torch.flatten(model.avgpool(x), 1)
    return model.fc(x), features
