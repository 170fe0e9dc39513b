"""What a checkpoint was resolved to: registry name, classes, widths and constructor options.

The weights alone fix more than a registry name does (a CIFAR ResNet's shortcut kind, a ViT's
patch size and depth), so a ported teacher is rebuilt from this record, which is what the
teacher cache and `teacher.json` store.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kamal_jax import models

_SHORTCUT_WORDS = {'projection': 'option B (1x1 conv + BN)',
                   'zero_pad': 'option A (zero-pad, parameter-free)'}


@dataclasses.dataclass(frozen=True)
class Architecture:
    arch: str  # a `models.BACKBONES` name
    num_classes: int
    widths: tuple[int, ...] | None = None
    options: tuple[tuple[str, Any], ...] = ()  # constructor keywords: shortcut, ViT sizes
    family: str = ''  # for people: 'cifar_resnet', 'resnet', 'vit', 'mobilenet_v2'
    layout: str = ''  # the porting rule table the checkpoint's names follow
    depth: int | None = None
    notes: tuple[str, ...] = ()  # what was not read from the weights (a ViT's head count)

    def __post_init__(self):  # one order for the options, so equal records compare equal
        object.__setattr__(self, 'options', tuple(sorted(dict(self.options).items())))
        if self.widths is not None:
            object.__setattr__(self, 'widths', tuple(int(w) for w in self.widths))

    def build(self):
        return models.classifier(self.arch, self.num_classes, self.widths, **dict(self.options))

    @property
    def input_size(self) -> int:
        """A square input the module accepts (a ViT's own size; 32 for the convnets)."""
        size = dict(self.options).get('image_size')
        if size is None and (self.arch in models.vit.CONFIGS or models.vit.TIMM_NAME.match(self.arch)):
            size = models.vit.config(self.arch)['image_size']
        return int(size or 32)

    def with_widths(self, widths) -> 'Architecture':
        return dataclasses.replace(self, widths=tuple(int(w) for w in widths) if widths else None)

    def describe(self) -> str:
        opts = dict(self.options)
        parts = [self.family or self.arch]
        if self.depth:
            parts.append(f'depth {self.depth}')
        if self.widths:
            parts.append(f'widths {",".join(map(str, self.widths))}')
        if 'hidden_dim' in opts:
            parts.append(f'{opts["num_layers"]} layers, width {opts["hidden_dim"]}, '
                         f'{opts["num_heads"]} heads, patch {opts["patch_size"]}, '
                         f'{opts["image_size"]} px')
        parts.append(f'{self.num_classes} classes')
        if self.family in ('resnet', 'cifar_resnet'):
            parts.append(f'shortcut {_SHORTCUT_WORDS[opts.get("shortcut", "projection")]}')
        text = f'{self.arch}: ' + ', '.join(parts)
        return text + ''.join(f' ({n})' for n in self.notes)

    def to_json(self) -> dict:
        return {'arch': self.arch, 'num_classes': self.num_classes,
                'widths': list(self.widths) if self.widths else None,
                'options': dict(self.options), 'family': self.family, 'layout': self.layout,
                'depth': self.depth, 'notes': list(self.notes)}

    @classmethod
    def from_json(cls, d: dict) -> 'Architecture':
        return cls(d['arch'], int(d['num_classes']), tuple(d['widths']) if d.get('widths') else None,
                   tuple((d.get('options') or {}).items()), d.get('family', ''),
                   d.get('layout', ''), d.get('depth'), tuple(d.get('notes') or ()))
