"""Export of the finished student and `load_student` for downstream Flax code.

An export directory holds the variables twice, as Flax msgpack and as safetensors with flat names
('params/backbone/conv1/kernel', 'batch_stats/backbone/bn1/mean', ...: any framework reads them),
beside a JSON card (architecture, tasks and classes, normalisation) that `load_student` needs to
rebuild the module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util
from safetensors import numpy as safetensors_np

from kamal_jax import models
from kamal_jax.files import WriteError, write_failure
from kamal_jax.tasks import Task

VARIABLES_FILE = 'variables.msgpack'
SAFETENSORS_FILE = 'variables.safetensors'
FILES = {'msgpack': VARIABLES_FILE, 'safetensors': SAFETENSORS_FILE}
CARD_FILE = 'student.json'
FORMAT_VERSION = 1
SEP = '/'  # joins the nested variable names into the safetensors file's flat names


class Student(NamedTuple):
    """`module.apply(variables, normalise(images))` returns `({task: logits}, features)`."""
    module: Any
    variables: Any
    card: dict

    def predict(self, images):
        """[0, 1] NHWC images -> {task: class probabilities}, normalised as in training."""
        x = (jnp.asarray(images, jnp.float32) - jnp.asarray(self.card['mean'])) / jnp.asarray(self.card['std'])
        logits, _ = self.module.apply(self.variables, x, train=False)
        return {t: jax.nn.softmax(l, axis=-1) for t, l in logits.items()}


def save_student(directory: str, *, arch: str, widths, heads, variables: Any,
                 tasks: Mapping[str, Task], mean, std, image_size) -> str:
    """Writes the export into a temporary folder beside `directory`, then renames it into place:
    a reader (or a killed run) sees the old export or the new one, never half of one. A write that
    fails (a full disk) raises `files.WriteError` naming the folder; nothing of it is left."""
    variables = jax.device_get(variables)
    try:
        return _save(directory, arch=arch, widths=widths, heads=heads, variables=variables, tasks=tasks, mean=mean,
                     std=std, image_size=image_size)
    except Exception as e:  # noqa: BLE001 (safetensors and msgpack report a full disk in their own words)
        reason = write_failure(e)
        if reason is None:
            raise
        raise WriteError(f'the export could not be written to {directory} ({reason}); the checkpoints are kept: free '
                         'space and relaunch the same command to write it.') from e


def _save(directory: str, *, arch, widths, heads, variables, tasks, mean, std, image_size) -> str:
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.abspath(directory))}.', dir=parent)
    try:
        with open(os.path.join(tmp, VARIABLES_FILE), 'wb') as f:
            f.write(serialization.msgpack_serialize(variables))
        safetensors_np.save_file(flatten(variables), os.path.join(tmp, SAFETENSORS_FILE),
                                 metadata={'format': 'flax'})
        card = {
            'format_version': FORMAT_VERSION, 'arch': arch, 'widths': list(widths),
            'heads': [[t, int(n)] for t, n in heads],
            'tasks': {t: {'kind': tasks[t].kind, 'classes': list(tasks[t].classes),
                          'label_key': tasks[t].label_key} for t, _ in heads},
            'mean': list(mean), 'std': list(std), 'image_size': list(image_size),
            'input': 'NHWC float32 in [0, 1], then (x - mean) / std',
        }
        with open(os.path.join(tmp, CARD_FILE), 'w') as f:
            json.dump(card, f, indent=2)
        _replace_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _replace_dir(new: str, directory: str) -> None:
    """Puts folder `new` at `directory`, keeping what `directory` holds besides an older export
    (the baselines' exports live in its subfolder `baselines/`)."""
    if not os.path.isdir(directory):
        os.replace(new, directory)
        return
    for name in os.listdir(new):  # each file replaced atomically, the card last
        if name != CARD_FILE:
            os.replace(os.path.join(new, name), os.path.join(directory, name))
    os.replace(os.path.join(new, CARD_FILE), os.path.join(directory, CARD_FILE))


def flatten(variables) -> dict:
    """{'params': {'a': {'kernel': x}}} -> {'params/a/kernel': x}, the safetensors file's names."""
    flat = traverse_util.flatten_dict(serialization.to_state_dict(variables))
    for key in flat:
        if any(SEP in str(k) for k in key):
            raise ValueError(f'Variable {key!r} has {SEP!r} in a name; safetensors export joins the '
                             f'names with {SEP!r}, so it cannot be split back.')
    return {SEP.join(map(str, k)): np.ascontiguousarray(v) for k, v in flat.items()}


def unflatten(flat: Mapping[str, Any]) -> dict:
    """Inverse of `flatten`."""
    return traverse_util.unflatten_dict({tuple(k.split(SEP)): v for k, v in flat.items()})


def _read_variables(directory: str, fmt: str | None):
    if fmt is None:  # msgpack first: exports written before safetensors have only that
        fmt = next((f for f, name in FILES.items() if os.path.isfile(os.path.join(directory, name))), None)
        if fmt is None:
            raise FileNotFoundError(f'{directory!r} holds neither {VARIABLES_FILE} nor {SAFETENSORS_FILE}.')
    if fmt not in FILES:
        raise ValueError(f'format must be one of {sorted(FILES)} or None, got {fmt!r}.')
    path = os.path.join(directory, FILES[fmt])
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path!r} does not exist (format={fmt!r}).')
    if fmt == 'safetensors':
        return unflatten(safetensors_np.load_file(path))
    with open(path, 'rb') as f:
        return serialization.msgpack_restore(f.read())


def load_student(path: str, format: str | None = None) -> Student:  # noqa: A002 (the file format)
    """Reads an export directory (or its student.json) into a Flax module and its variables.

    format: 'msgpack' or 'safetensors'; None takes the msgpack file, or the safetensors one alone.
    """
    directory = os.path.dirname(path) if path.endswith('.json') else path
    card_path = os.path.join(directory, CARD_FILE)
    if not os.path.isfile(card_path):
        raise FileNotFoundError(f'{card_path!r} does not exist: pass the export directory of a run '
                                '(WORKDIR/export).')
    card = json.load(open(card_path))
    if card.get('format_version') != FORMAT_VERSION:
        raise ValueError(f'{card_path!r} has format_version {card.get("format_version")!r}; '
                         f'this kamal_jax reads version {FORMAT_VERSION}.')
    module = models.multihead(card['arch'], [tuple(h) for h in card['heads']], card['widths'] or None)
    variables = jax.tree.map(jnp.asarray, _read_variables(directory, format))
    return Student(module, variables, card)
