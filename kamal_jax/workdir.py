"""A workdir belongs to one config: a rerun with the same config resumes, a different one is refused.

Some fields may change between runs. `baselines`: baselines train in their own subfolders and
leave every other checkpoint alone, so a finished run can be given baselines later (the stages
resume as complete and only the new baselines train). Fields that say how often to log or save
(`RUN_CONTROL_FIELDS`) change nothing a run computes, so a run may resume with other values.
Fields added to the configs after a run was stored (`LATER_FIELDS`) compare equal to their
default when the stored config lacks them, and renamed ones (`RENAMED_FIELDS`) by their new name.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from kamal_jax import stage_defaults
from kamal_jax.files import write_atomic

CONFIG_FILE = 'config.json'
ADDITIVE_FIELDS = ('baselines',)  # may change between runs of one workdir
RUN_CONTROL_FIELDS = ('log_every', 'checkpoint_every', 'checkpoint_min_interval_s')  # at any depth
# Fields the configs gained later, with the value a config without them behaves as.
LATER_FIELDS = {'data.views': 0, 'stage1.teacher_cache': False, 'stage2.component_cache': False,
                **{f'{stage}.{k}': v for stage in ('stage1', 'stage2') for k, v in stage_defaults.CACHE.items()},
                'recipe': 'paper'}
# Fields renamed since: old name -> (new name, old value -> new value). A run stored with
# `stage1.mode` resumes under the selector that does what that mode did.
RENAMED_FIELDS = {'stage1.mode': ('stage1.selector', {'select': 'least_entropy', 'random': 'random',
                                                      'average': 'uniform'})}


class WorkdirError(ValueError):
    pass


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f'{prefix}.{k}' if prefix else str(k)))
        return out
    return {prefix: tree}


def first_difference(old: dict, new: dict, *, skip_run_control: bool = False) -> str | None:
    """The first field in which two configs differ, as a sentence; None when they agree."""
    a, b = _flatten(old), _flatten(new)
    for flat in (a, b):
        for key, (renamed, values) in RENAMED_FIELDS.items():
            if key in flat and renamed not in flat:
                value = flat.pop(key)
                flat[renamed] = values.get(value, value)
    for key, default in LATER_FIELDS.items():
        section = key.split('.')[0]
        for flat, tree in ((a, old), (b, new)):
            if '.' not in key or section in tree:
                flat.setdefault(key, default)
    for key in sorted(set(a) | set(b)):
        if skip_run_control and key.rsplit('.', 1)[-1] in RUN_CONTROL_FIELDS:
            continue
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
                                    {k: v for k, v in config_dict.items() if k not in ADDITIVE_FIELDS},
                                    skip_run_control=True)
            if diff is None:
                if stored != config_dict:  # only additive or run-control fields changed: record them
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
