"""Rule table and structure reader for ResNets: torchvision, timm, the CIFAR repos, kamal_jax's zoo.

They all use torchvision's names but for two aliases, applied first: option-B shortcuts named
`shortcut.0/1` (CIFAR repos) are torchvision's `downsample.0/1`, and the classifier may be
`linear`, `classifier` or `head` instead of `fc`. The structure (stem, blocks per stage, widths,
shortcut kind, classes) is read from the keys and shapes, so `detect` can name the architecture.
"""

from __future__ import annotations

import re
from typing import Mapping

from kamal_jax.porting.architecture import Architecture
from kamal_jax.porting.rules import rename
from kamal_jax.resnet_depths import RESNET_DEPTHS

ALIASES = (
    (r'/shortcut/(\d)$', r'/downsample/\1'),
    (r'^(linear|classifier|head)$', r'fc'),
)
RENAMES = ALIASES + (
    (r'^layer(\d+)/(\d+)', r'backbone/layer\1_\2'),
    (r'/downsample/0$', r'/downsample_conv'),
    (r'/downsample/1$', r'/downsample_bn'),
    (r'^(conv1|bn1)$', r'backbone/\1'),
)
HEAD_KEYS = ('fc.weight', 'linear.weight', 'classifier.weight', 'head.weight')
_STEMS = {7: 'imagenet', 3: 'cifar'}
_BLOCK = re.compile(r'^layer(\d+)\.(\d+)\.conv1\.weight$')


def canonical(state_dict: Mapping) -> dict:
    """Keys with the aliases applied (`linear.weight` -> `fc.weight`), torchvision's names."""
    out = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition('.')
        out[f'{rename(module, ALIASES).replace("/", ".")}.{leaf}' if module else key] = value
    return out


def _stage_sizes(keys) -> tuple[int, ...] | None:
    """Blocks per stage, counting stages 1, 2, ... and blocks 0, 1, ... while they run on.

    Stray blocks beyond are left for `convert` to report as unexpected keys.
    """
    blocks = {}
    for key in keys:
        if m := _BLOCK.match(key):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    sizes, i = [], 1
    while 0 in blocks.get(i, ()):
        sizes.append(next(j for j in range(len(blocks[i]) + 1) if j not in blocks[i]))
        i += 1
    return tuple(sizes) or None


def _shortcut(sd: Mapping, sizes, widths, block: str) -> str:
    """'projection' if any block that changes shape has a 1x1 conv, else 'zero_pad' (option A)."""
    expansion = 4 if block == 'bottleneck' else 1
    cin, changing = widths[0], []
    for i, width in enumerate(widths[1:]):
        if i > 0 or cin != width * expansion:
            changing.append(f'layer{i + 1}.0.downsample.0.weight')
        cin = width * expansion
    if block == 'bottleneck' or not changing or any(k in sd for k in changing):
        return 'projection'
    return 'zero_pad'


def detect(state_dict: Mapping, hint: str | None = None) -> list[Architecture]:
    """The registered ResNets whose structure the keys describe, most specific name first."""
    del hint  # ResNet weights say everything about the architecture.
    sd = canonical(state_dict)
    conv1, fc = sd.get('conv1.weight'), sd.get('fc.weight')
    sizes = _stage_sizes(sd)
    if conv1 is None or fc is None or sizes is None or len(conv1.shape) != 4:
        return []
    stem = _STEMS.get(int(conv1.shape[-1]))
    if stem is None:
        return []
    block = 'bottleneck' if 'layer1.0.conv3.weight' in sd else 'basic'
    widths = (int(conv1.shape[0]),) + tuple(int(sd[f'layer{i}.0.conv1.weight'].shape[0])
                                            for i in range(1, len(sizes) + 1))
    shortcut = _shortcut(sd, sizes, widths, block)
    options = (('shortcut', shortcut),) if shortcut != 'projection' else ()
    num_classes = int(fc.shape[0])
    found = []
    for depth, (table_sizes, table_block) in RESNET_DEPTHS.items():
        if (tuple(table_sizes), table_block) == (sizes, block):
            name = f'resnet{depth}' if stem == 'imagenet' else f'resnet{depth}_small'
            found.append(Architecture(name, num_classes, widths, options, 'resnet', 'resnet', depth))
    n = sizes[0]
    if stem == 'cifar' and block == 'basic' and len(set(sizes)) == 1 and (len(sizes) == 3 or not found):
        found.append(Architecture(f'cifar_resnet{6 * n + 2}', num_classes, widths, options,
                                  'cifar_resnet', 'resnet', 6 * n + 2))
    return found
