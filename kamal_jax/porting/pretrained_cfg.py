"""A timm `pretrained_cfg`: the architecture name, input normalisation and input size of a teacher.

timm keeps them beside the weights: on the Hugging Face hub as `config.json` (`architecture` and
a `pretrained_cfg` dict), in Python as `model.pretrained_cfg` (a dict with `architecture`, `mean`,
`std`, `input_size`). Either form is read from a dict or a JSON file; next to a checkpoint,
`config.json` or `<checkpoint stem>.json` is used when it has that form.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
    architecture: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, int] | None = None  # (height, width)
    source: str = ''


def _is_timm(d: Any) -> bool:
    return isinstance(d, Mapping) and (
        isinstance(d.get('pretrained_cfg'), Mapping)
        or (isinstance(d.get('architecture'), str) and 'mean' in d and 'std' in d))


def parse(d: Mapping, source: str = '') -> PretrainedCfg:
    if not _is_timm(d):
        raise ValueError(f'{source or "the pretrained_cfg"} is not a timm pretrained_cfg (it needs '
                         f'a pretrained_cfg dict, or architecture, mean and std).')
    cfg = d.get('pretrained_cfg') if isinstance(d.get('pretrained_cfg'), Mapping) else d
    size = cfg.get('input_size')
    return PretrainedCfg(
        architecture=d.get('architecture') or cfg.get('architecture'),
        mean=tuple(float(m) for m in cfg['mean']) if cfg.get('mean') else None,
        std=tuple(float(s) for s in cfg['std']) if cfg.get('std') else None,
        input_size=(int(size[-2]), int(size[-1])) if size else None,
        source=source)


def read(path: str) -> PretrainedCfg:
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'{path!r} is not a readable JSON pretrained_cfg ({e}).') from None
    return parse(d, path)


def beside(checkpoint: str) -> PretrainedCfg | None:
    """The timm config next to `checkpoint`, or None when there is none of that form."""
    for path in (os.path.splitext(checkpoint)[0] + '.json',
                 os.path.join(os.path.dirname(checkpoint), 'config.json')):
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    d = json.load(f)
            except (OSError, json.JSONDecodeError):
                continue
            if _is_timm(d):
                return parse(d, path)
    return None
