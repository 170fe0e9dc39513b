"""A workdir belongs to one config: a rerun with the same config resumes, a different one is refused.

One field may change between runs: `baselines`. Baselines train in their own subfolders and
leave every other checkpoint alone, so a finished run can be given baselines later (the stages
resume as complete and only the new baselines train).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from kamal_jax.files import write_atomic

CONFIG_FILE = 'config.json'
ADDITIVE_FIELDS = ('baselines',)  # may change between runs of one workdir


class WorkdirError(ValueError):
    pass


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f'{prefix}.{k}' if prefix else str(k)))
        return out
    return {prefix: tree}


def first_difference(old: dict, new: dict) -> str | None:
    a, b = _flatten(old), _flatten(new)
    for key in sorted(set(a) | set(b)):
        if a.get(key, '<absent>') != b.get(key, '<absent>'):
            return f'{key} was {a.get(key, "<absent>")!r}, now {b.get(key, "<absent>")!r}'
    return None


def prepare(workdir: str, config_dict: dict, *, overwrite: bool = False) -> bool:
    """Claims `workdir` for this config; returns True when resuming an earlier run of it."""
    config_dict = json.loads(json.dumps(config_dict))  # tuples -> lists, as stored
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.isdir(workdir) and os.listdir(workdir):
        if os.path.isfile(path):
            stored = json.load(open(path))
            diff = first_difference({k: v for k, v in stored.items() if k not in ADDITIVE_FIELDS},
                                    {k: v for k, v in config_dict.items() if k not in ADDITIVE_FIELDS})
            if diff is None:
                if stored != config_dict:  # only additive fields changed: record the new ones
                    _write_config(path, config_dict)
                return True
            reason = f'holds a run of a different config ({diff})'
        else:
            reason = 'is not empty and holds no kamal_jax run'
        if not overwrite:
            raise WorkdirError(f'workdir {workdir!r} {reason}; choose another --workdir, or pass '
                               '--overwrite to delete its contents.')
        shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    _write_config(path, config_dict)
    return False


def _write_config(path: str, config_dict: dict) -> None:
    write_atomic(path, json.dumps(config_dict, indent=2, sort_keys=True).encode())
