"""A workdir belongs to one config: a rerun with the same config resumes, a different one is refused.

Some fields may change between runs. `baselines`: baselines train in their own subfolders and
leave every other checkpoint alone, so a finished run can be given baselines later (the stages
resume as complete and only the new baselines train). Fields that say how often to log, evaluate or save
(`RUN_CONTROL_FIELDS`) change nothing a run computes, so a run may resume with other values.
A workdir stores the resolved config (every field). A config stored by an earlier version is read
as the current code would store it (`config_schema.stored_as_resolved`): fields added since as what
that run behaved as, renamed ones by their new name.

A run holds the workdir's lock (`LOCK_FILE`, `kamal_jax.locks`) from its claim to its end: a
second run on it is refused, naming the first, and `--overwrite` clears everything but the lock.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from kamal_jax import config_schema, locks
from kamal_jax.files import write_atomic
# LOCK_FILE: held by the run using the workdir, never deleted (see kamal_jax.locks); STOP_FILE: a stage
# stopped on a non-finite loss, what a relaunch may change.
from kamal_jax.layout import CONFIG_FILE, LOCK_FILE, STOP_FILE, Layout  # noqa: F401 (names of this module)
ADDITIVE_FIELDS = ('baselines', 'relaunches')  # may change between runs of one workdir
# After a non-finite stop, a relaunch may change these fields of the stopped stage's config sections.
RETUNABLE_FIELDS = ('lr', 'bridge_lr', 'feature_weight', 'logit_weight', 'weight_norm')
RUN_CONTROL_FIELDS = ('log_every', 'eval_every', 'steps_per_call', 'checkpoint_every',
                      'checkpoint_min_interval_s',  # at any depth; the input's too: the batches are the same
                      'streaming', 'memory_limit_gb', 'prefetch', 'profile_steps')


class WorkdirError(ValueError):
    pass


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f'{prefix}.{k}' if prefix else str(k)))
        return out
    return {prefix: tree}


def first_difference(old: dict, new: dict, *, skip_run_control: bool = False,
                     skip: frozenset[str] = frozenset()) -> str | None:
    """The first field in which two configs differ, as a sentence; None when they agree."""
    a = _flatten(config_schema.stored_as_resolved(old))
    b = _flatten(config_schema.stored_as_resolved(new))
    for key in sorted(set(a) | set(b)):
        if (skip_run_control and key.rsplit('.', 1)[-1] in RUN_CONTROL_FIELDS) or key in skip:
            continue
        if a.get(key, '<absent>') != b.get(key, '<absent>'):
            return f'{key} was {a.get(key, "<absent>")!r}, now {b.get(key, "<absent>")!r}'
    return None


def read_stored(workdir: str) -> dict | None:
    """The config stored in `workdir` (None when there is none, or it cannot be read)."""
    try:
        with open(Layout(workdir).config) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def check_writable(workdir: str) -> None:
    """Refuses a workdir that is a file, or where nothing can be written, before anything is claimed."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f'workdir {workdir!r} is a file, not a folder; choose another --workdir.')
    existing = workdir
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing) or '.'
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise WorkdirError(f'workdir {workdir!r} cannot be written ({e.strerror or e}); choose another '
                           '--workdir or free some space.') from None


def prepare(workdir: str, config_dict: dict, *, overwrite: bool = False) -> bool:
    """Claims `workdir` for this config; returns True when resuming an earlier run of it."""
    config_dict = json.loads(json.dumps(config_dict))  # tuples -> lists, as stored
    layout = Layout(workdir)
    path = layout.config
    if os.path.isdir(workdir) and layout.contents():
        if os.path.isfile(path):
            stored = json.load(open(path))
            stop = _read_stop(workdir)
            retunable = frozenset(f'{s}.{f}' for s in (stop or {}).get('sections', ()) for f in RETUNABLE_FIELDS)
            diff = first_difference({k: v for k, v in stored.items() if k not in ADDITIVE_FIELDS},
                                    {k: v for k, v in config_dict.items() if k not in ADDITIVE_FIELDS},
                                    skip_run_control=True, skip=retunable)
            if diff is None:
                config_dict['relaunches'] = stored.get('relaunches', [])
                changed = {k: [_flatten(stored).get(k), v] for k, v in _flatten(config_dict).items()
                           if k in retunable and _flatten(stored).get(k) != v}
                if changed:  # the stopped stage resumes with new learning rates or loss weights
                    config_dict['relaunches'].append({'stage': stop['stage'], 'step': stop['step'],
                                                      'changed': changed})
                if stored != config_dict:  # only additive, run-control or retuned fields changed
                    _write_config(path, config_dict)
                if stop:
                    os.remove(layout.stop)
                return True
            reason = f'holds a run of a different config ({diff})'
        else:
            reason = 'is not empty and holds no kamal_jax run'
        if not overwrite:
            raise WorkdirError(f'workdir {workdir!r} {reason}; choose another --workdir, or pass '
                               '--overwrite to delete its contents.')
        _clear(workdir)
    os.makedirs(workdir, exist_ok=True)
    _write_config(path, config_dict)
    return False


def _clear(workdir: str) -> None:
    """Deletes what the workdir holds (`--overwrite`) but its lock, which this run holds."""
    for path in Layout(workdir).contents():
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def _lock_words(workdir: str) -> tuple[str, str]:
    return f'workdir {workdir!r}', 'wait for it to end, or choose another --workdir.'


def check_unlocked(workdir: str) -> None:
    """Refuses, before any work, a workdir another run holds (locks.LockHeld naming it); takes nothing."""
    locks.check_free(Layout(workdir).lock, *_lock_words(workdir))


def claim(workdir: str, config_dict: dict, *, overwrite: bool = False) -> tuple[bool, locks.Lock]:
    """Locks `workdir` (locks.LockHeld if another run holds it), then `prepare`s it: returns whether
    this resumes an earlier run, and the lock, held until the caller releases it. A claim that
    `prepare` refuses leaves the folder as it found it (no lock file, no new folder)."""
    existed, lock_path = os.path.isdir(workdir), Layout(workdir).lock
    had_lock_file = os.path.exists(lock_path)
    os.makedirs(workdir, exist_ok=True)
    lock = locks.acquire(lock_path, *_lock_words(workdir))
    try:
        return prepare(workdir, config_dict, overwrite=overwrite), lock
    except BaseException:
        if not had_lock_file:
            os.remove(lock_path)
        lock.release()
        if not existed and not os.listdir(workdir):
            os.rmdir(workdir)
        raise


def record_stop(workdir: str, stage: str, step: int, sections) -> None:
    """Marks that `stage` stopped on a non-finite loss at `step`: the relaunch may retune `sections`."""
    write_atomic(Layout(workdir).stop,
                 json.dumps({'stage': stage, 'step': int(step), 'sections': list(sections)}).encode())


def _read_stop(workdir: str) -> dict | None:
    try:
        with open(Layout(workdir).stop) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_config(path: str, config_dict: dict) -> None:
    write_atomic(path, json.dumps(config_dict, indent=2, sort_keys=True).encode())
