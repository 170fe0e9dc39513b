"""Which registered architectures a state_dict is: every layout's reading, checked by converting.

Each layout's `detect` proposes architectures from the key names and shapes; a proposal matches
when the weights convert onto its freshly initialised Flax tree with no missing, unexpected or
mis-shaped key. With no match, the nearest proposal (fewest offending keys) is reported with its
first offending keys; when no layout recognises the keys at all, one default per family is tried.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from kamal_jax import models
from kamal_jax.porting.architecture import Architecture
from kamal_jax.porting.layouts import LAYOUTS, SPECS
from kamal_jax.porting.rules import PortingError

# Tried when no layout recognises the keys: one architecture per family.
FALLBACKS = ('cifar_resnet20', 'resnet18', 'resnet50', 'mobilenet_v2', 'vit_b_16',
             'vit_small_patch16_224')


@dataclasses.dataclass
class Inspection:
    matches: list[Architecture]
    nearest: Architecture | None = None
    error: PortingError | None = None

    def explain(self, what: str = 'the checkpoint', n: int = 5) -> str:
        if self.matches:
            return f'{what} matches ' + '; '.join(a.describe() for a in self.matches)
        count = self.error.count
        return (f'{what} matches no registered architecture; the nearest is '
                f'{self.nearest.describe()}, with {count} offending key{"s" * (count != 1)}, '
                f'first: {"; ".join(self.error.first(n))}.')


def _fallback(arch: str, state_dict: Mapping) -> Architecture:
    spec = SPECS[arch]
    head = next((state_dict[k] for k in spec.head_keys if k in state_dict), None)
    num_classes = int(head.shape[0]) if head is not None and len(head.shape) == 2 else 10
    return Architecture(arch, num_classes, None, (), '', spec.name)


def inspect(state_dict: Mapping, check: Callable[[Architecture, Mapping], object],
            hint: str | None = None) -> Inspection:
    """`check(architecture, state_dict)` raises PortingError (or ValueError) when they differ."""
    proposed = [a for spec in LAYOUTS.values() if spec.detect
                for a in spec.detect(state_dict, hint) if a.arch in models.BACKBONES]
    matches, tried = [], []
    for arch in proposed:
        error = _try(check, arch, state_dict)
        (tried.append((arch, error)) if error else matches.append(arch))
    if not matches and not tried:
        for arch in (_fallback(name, state_dict) for name in FALLBACKS):
            error = _try(check, arch, state_dict)
            (tried.append((arch, error)) if error else matches.append(arch))
    if matches:
        return Inspection(matches)
    nearest, error = min(tried, key=lambda t: t[1].count)
    return Inspection([], nearest, error)


def _try(check, arch: Architecture, state_dict: Mapping) -> PortingError | None:
    try:
        check(arch, state_dict)
    except PortingError as e:
        return e
    except ValueError as e:  # e.g. widths an option-A shortcut cannot have
        return PortingError(str(e))
    return None
