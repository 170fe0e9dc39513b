"""Export of the finished student (params + a JSON card) and `load_student` for downstream Flax code."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import serialization

from kamal_jax import models
from kamal_jax.tasks import Task

VARIABLES_FILE = 'variables.msgpack'
CARD_FILE = 'student.json'
FORMAT_VERSION = 1


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
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, VARIABLES_FILE), 'wb') as f:
        f.write(serialization.msgpack_serialize(jax.device_get(variables)))
    card = {
        'format_version': FORMAT_VERSION, 'arch': arch, 'widths': list(widths),
        'heads': [[t, int(n)] for t, n in heads],
        'tasks': {t: {'kind': tasks[t].kind, 'classes': list(tasks[t].classes),
                      'label_key': tasks[t].label_key} for t, _ in heads},
        'mean': list(mean), 'std': list(std), 'image_size': list(image_size),
        'input': 'NHWC float32 in [0, 1], then (x - mean) / std',
    }
    with open(os.path.join(directory, CARD_FILE), 'w') as f:
        json.dump(card, f, indent=2)
    return directory


def load_student(path: str) -> Student:
    """Reads an export directory (or its student.json) into a Flax module and its variables."""
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
    with open(os.path.join(directory, VARIABLES_FILE), 'rb') as f:
        variables = jax.tree.map(jnp.asarray, serialization.msgpack_restore(f.read()))
    return Student(module, variables, card)
