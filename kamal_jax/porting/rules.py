"""PyTorch -> Flax conversion by a rule table, checked against a freshly initialised Flax tree.

An architecture supplies ordered (regex, replacement) renames for module paths; the leaf rules
below (weight -> kernel/scale with the right transpose, running stats -> batch_stats) are shared.
Every missing, unexpected or mis-shaped key is reported at once, as Hugging Face's porting does.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

import numpy as np
from flax import traverse_util

Rename = tuple[str, str]
LeafRule = Callable[[str, str, np.ndarray], 'tuple[tuple[str, ...], np.ndarray] | None']

IGNORED = (r'num_batches_tracked$',)


class PortingError(ValueError):
    """The checkpoint does not fit the architecture; the message lists every offending key."""

    def __init__(self, message: str, missing=(), unexpected=(), misshaped=()):
        super().__init__(message)
        self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), list(misshaped)

    @property
    def count(self) -> int:
        """Offending keys (for ranking the nearest architecture); a bare message counts as many."""
        n = len(self.missing) + len(self.unexpected) + len(self.misshaped)
        return n if n else 10 ** 9

    def first(self, n: int = 5) -> list[str]:
        """The first `n` offending keys, each with what is wrong."""
        items = ([f'missing {k}' for k in self.missing] + [f'unexpected {k}' for k in self.unexpected]
                 + [f'mis-shaped {k}' for k in self.misshaped])
        return items[:n] or [str(self)]


def rename(key: str, renames: Sequence[Rename]) -> str:
    """A PyTorch module path (dotted) through the rename table, as a '/'-joined path."""
    path = key.replace('.', '/')
    for pattern, repl in renames:
        path = re.sub(pattern, repl, path)
    return path


def default_leaf(path: str, leaf: str, value: np.ndarray):
    """Maps one PyTorch leaf to (flax key tuple, array)."""
    parts = tuple(p for p in path.split('/') if p)
    if leaf == 'weight':
        if value.ndim == 4:  # OIHW -> HWIO (depthwise: O1HW -> HW1O).
            return ('params',) + parts + ('kernel',), value.transpose(2, 3, 1, 0)
        if value.ndim == 2:
            return ('params',) + parts + ('kernel',), value.T
        if value.ndim == 1:
            return ('params',) + parts + ('scale',), value
    if leaf == 'bias':
        return ('params',) + parts + ('bias',), value
    if leaf == 'running_mean':
        return ('batch_stats',) + parts + ('mean',), value
    if leaf == 'running_var':
        return ('batch_stats',) + parts + ('var',), value
    return None


def convert(state_dict: Mapping[str, np.ndarray], target: Mapping, renames: Sequence[Rename],
            leaf_rules: Sequence[LeafRule] = (), ignored: Sequence[str] = IGNORED) -> dict:
    """Converts `state_dict` into a variables dict with exactly the structure of `target`.

    `target` is the (shape-only) variables tree of the Flax module, e.g. from `jax.eval_shape`.
    """
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(target)).items()}
    got, unexpected, misshaped = {}, [], []
    for key, value in state_dict.items():
        if any(re.search(p, key) for p in ignored):
            continue
        module, _, leaf = key.rpartition('.')
        path = rename(module, renames)
        mapped = None
        for rule in tuple(leaf_rules) + (default_leaf,):
            mapped = rule(path, leaf, np.asarray(value))
            if mapped is not None:
                break
        if mapped is None or mapped[0] not in want:
            unexpected.append(f'{key} {tuple(np.shape(value))}')
            continue
        flax_key, array = mapped
        if tuple(array.shape) != want[flax_key]:
            misshaped.append(f'{key} {tuple(np.shape(value))} -> {"/".join(flax_key)} expects '
                             f'{want[flax_key]}')
            continue
        got[flax_key] = np.ascontiguousarray(array, dtype=np.float32)
    missing = [f'{"/".join(k)} {s}' for k, s in want.items() if k not in got]
    if missing or unexpected or misshaped:
        lines = []
        for title, items in (('missing', missing), ('unexpected', unexpected),
                             ('mis-shaped', misshaped)):
            if items:
                lines.append(f'{len(items)} {title}: ' + '; '.join(items))
        raise PortingError('checkpoint does not match the architecture: ' + ' | '.join(lines),
                           missing, unexpected, misshaped)
    return traverse_util.unflatten_dict(got)
