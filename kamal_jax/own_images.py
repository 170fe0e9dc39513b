"""Your own images in a run: `data.train_folder` and `data.eval_folder` become the training and
held-out splits (`kamal_jax.data.folder` decodes them), or a seeded share of the training folder is
held out when nothing is labelled. What was skipped or held out is written into the workdir."""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import numpy as np

from kamal_jax.config_checks import FolderFields
from kamal_jax.data import folder, records
from kamal_jax.data.split import ArraySplit
from kamal_jax.layout import Layout
from kamal_jax.tasks import ConfigError, Plan

log = logging.getLogger('kamal_jax')



class FolderSplit(NamedTuple):
    split: ArraySplit
    field: str
    root: str
    paths: list  # each row's path, relative to `root`
    skipped: list  # [(relative path, why)]
    reused: bool  # its records were written before: nothing was decoded


def load_folder(config: Any, fields: FolderFields, field: str, *, labelled: bool, load) -> FolderSplit:
    """The folder of `field` as a split, in host memory unless its decoded pixels pass
    `data.memory_limit_gb` (or `data.streaming` says otherwise). `load` calls `folder.load` on the
    primary process first (the others then read its records)."""
    root = os.path.abspath(os.path.expanduser(getattr(fields, field.split('.')[1])))
    d = config.data
    try:
        found = load(lambda: folder.load(root, image_size=tuple(d.image_size), data_dir=fields.data_dir,
                                         labelled=labelled, field=field), f'writing the records of {field}')
    except folder.FolderError as e:
        raise ConfigError(str(e)) from None
    split = found.split
    mode = d['streaming'] if 'streaming' in d else 'auto'
    limit = float(d['memory_limit_gb'] if 'memory_limit_gb' in d else 4.0) * 2 ** 30
    if mode == 'never' or (mode == 'auto' and split.images.nbytes <= limit):
        split = ArraySplit(np.asarray(split.images), split.labels, split.label_names, split.name, split.split)
    return FolderSplit(split, field, root, found.paths, found.skipped, found.reused)


def holdout_rows(count: int, fraction: float, seed: int) -> np.ndarray:
    """The sorted rows held out: a seeded `fraction` of `count`, at least one."""
    n = min(count - 1, max(1, int(round(count * fraction))))
    return np.sort(np.random.default_rng([seed, 37]).permutation(count)[:n])


def hold_out(train: FolderSplit, fraction: float, seed: int) -> tuple[FolderSplit, FolderSplit]:
    """(the rest to train on, the held-out share), both unlabelled."""
    count = len(train.split.images)
    if count < 2:
        raise ConfigError(f'data.train_folder = {train.root!r} has {count} readable image; holding out '
                          'data.holdout_fraction of it needs at least two (or set data.eval_folder).')
    rows = holdout_rows(count, fraction, seed)
    rest = np.setdiff1d(np.arange(count), rows)
    part = lambda r: train._replace(split=records.take(train.split, r), paths=[train.paths[i] for i in r])
    return part(rest), part(rows)


def check_eval_classes(plan: Plan, split: ArraySplit, root: str) -> str:
    """The evaluation folder's sub-folders against the target tasks' classes: a class with no
    sub-folder is refused (its accuracy would silently cover fewer classes; often a misspelt
    folder); a sub-folder no task names is a warning, returned (its images are scored by no task:
    harmless)."""
    present = list(split.label_names[folder.LABEL_KEY])
    named = set()
    for name in plan.target_tasks:
        task = plan.tasks[name]
        if task.label_key != folder.LABEL_KEY:
            raise ConfigError(f'task {name!r} reads label {task.label_key!r}, but data.eval_folder = {root!r} '
                              f'gives one label per image, its sub-folder ({folder.LABEL_KEY!r}).')
        missing = [c for c in task.classes if c not in present]
        if missing:
            raise ConfigError(f'data.eval_folder = {root!r} has no sub-folder for class(es) {missing} of task '
                              f'{name!r}; its sub-folders: {present}.')
        named.update(task.classes)
    unnamed = [c for c in present if c not in named]
    if unnamed:
        count = int(np.isin(split.labels[folder.LABEL_KEY], [present.index(c) for c in unnamed]).sum())
        return (f'data.eval_folder: sub-folder(s) {unnamed} name no class of the target tasks; their {count} '
                'images are scored by no task (they still count in the label-free diagnostics).')
    return ''


class Notes(NamedTuple):
    """What the folders' loading has to tell once the workdir (and its log file) is claimed."""
    parts: list  # the FolderSplits read
    held_out: FolderSplit | None  # the share of data.train_folder held out, if any
    warnings: list  # one line each


def write_notes(workdir: str, notes: Notes) -> None:
    """Logs them; writes WORKDIR/skipped_images.tsv (field, path, why) and, when a share was held
    out, WORKDIR/held_out_images.txt (one path per line, relative to the training folder)."""
    parts, held_out, layout = notes.parts, notes.held_out, Layout(workdir)
    for line in notes.warnings:
        log.warning('%s', line)
    for p in parts:  # logged once the workdir's log file is open
        log.info('%s = %r: %d readable images%s; %d files skipped%s', p.field, p.root, len(p.paths),
                 ' (records reused: nothing decoded)' if p.reused else '', len(p.skipped),
                 f' (listed in {layout.skipped_images})' if p.skipped else '')
    skipped = [(p.field, rel, why) for p in parts for rel, why in p.skipped]
    if skipped:
        with open(layout.skipped_images, 'w') as f:
            f.write('field\tpath\treason\n')
            f.writelines(f'{field}\t{rel}\t{why}\n' for field, rel, why in skipped)
    if held_out is not None:
        with open(layout.held_out_images, 'w') as f:
            f.writelines(f'{rel}\n' for rel in held_out.paths)
