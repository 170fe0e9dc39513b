"""Trains the teacher zoo: PyTorch ResNets, each on its own classes and its own part of the data.

A zoo config (`config.zoo`, or the whole config when it has no `zoo` field) has

    data:      name, train_split ('train'), eval_split ('test'), data_dir, manual_dir, image_size,
               split_seed (seeds the permutation that `train_fraction`/`shard` cut up; default:
               the zoo's `split_seed`, else its `seed`, else 0)
    seed:      optional; the default of `split_seed` and of every teacher's `seed`
    teachers:  name -> arch, widths (optional), classes (names of `label_key`'s classes, in the
               teacher's output order), label_key ('label'), train_fraction (1.0), shard (0),
               epochs, batch_size, lr, momentum (0.9), weight_decay (5e-4), seed, mean, std
               (default: per-channel statistics of the teacher's training images), crop_padding
               (4; 0 = no random crop), flip (True), input_size (optional (h, w) to resize to),
               warmup_epochs (0), label_smoothing (0.0), kwargs (a timm:/torch:/torchvision: arch's)

`arch` is a twin of `kamal_jax.api.TORCH_TWINS` (`cifar_resnet20_a`: option-A shortcuts),
`timm:NAME` (timm.create_model, random init), or a factory `torch:package.module:function` /
`torchvision:NAME` (the generic teacher path exports it afterwards); the last three are built with
`num_classes` and `kwargs`.

An attribute (multi-head) teacher gives `heads` instead of `classes` and `label_key`: a list of
(label key, class names) pairs, e.g. `heads=[('gender', ['male', 'female']), ('race', [...5])]`
(a list, because ConfigDict sorts a mapping's keys). Its one `fc` holds the heads side by side in
that order (here 2 + 5 = 7 logits: gender [0, 2), race [2, 7)), each its own softmax, trained with the sum of the heads' cross-entropies over the
samples that have a label of that head. It sees a sample when any head has a label for it. Its
card lists every head's `label_key`, `classes` and `logits` slice (single-label cards too, as one
head), with held-out accuracy per head (`eval.accuracy` is their mean).

Teacher `name` sees sample i of the training split only if its label is in `classes` and i falls
in part `shard` of the split cut into parts of `train_fraction` after a permutation seeded with
`split_seed`; equal fractions with different shards are therefore disjoint. Labels are remapped
to the order of `classes`. Each teacher is written as `{out}/{name}.pth` (its `state_dict()`)
and `{out}/{name}.json` (its card); a teacher whose two files exist is skipped.

Inputs are RGB, `uint8 / 255` in [0, 1], then `(x - mean) / std`; PyTorch sees NCHW.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Mapping

import torch  # Before anything that might import TensorFlow (the reverse order aborts).
import torch.nn.functional as F
import numpy as np

from kamal_jax.api import TORCH_TWINS, build_torch_twin, eta_text, plain, sha256, write_atomic_with

CARD_VERSION = 1

GENERIC = ('torch:', 'torchvision:')  # factories the generic teacher path exports
BUILT_BY_NAME = GENERIC + ('timm:',)  # archs the zoo builds from a name, not its twin registry
DEFAULTS = {
    'widths': None,
    'label_key': 'label',
    'train_fraction': 1.0,
    'shard': 0,
    'epochs': 30,
    'batch_size': 128,
    'lr': 0.1,
    'momentum': 0.9,
    'weight_decay': 5e-4,
    'nesterov': False,
    'seed': 0,
    'mean': None,
    'std': None,
    'crop_padding': 4,
    'flip': True,
    'input_size': None,
    'warmup_epochs': 0,
    'label_smoothing': 0.0,
}
DATA_DEFAULTS = {
    'train_split': 'train',
    'eval_split': 'test',
    'data_dir': None,
    'manual_dir': None,
    'image_size': None,
    'split_seed': 0,
}


class ZooConfigError(ValueError):
    """A zoo config field is invalid; the message names the field."""


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, 'get'):
        try:
            value = cfg.get(key, default)
        except (AttributeError, KeyError):
            value = default
    else:
        value = getattr(cfg, key, default)
    return default if value is None and default is not None else value


def zoo_section(config: Any) -> Any:
    """`config.zoo` if the config has one, else the config itself."""
    zoo = _get(config, 'zoo')
    return zoo if zoo is not None else config


def split_seed_of(zoo: Any) -> int:
    """`data.split_seed`, else the zoo's `split_seed`, else its `seed`, else 0."""
    for value in (_get(_get(zoo, 'data'), 'split_seed'), _get(zoo, 'split_seed'), _get(zoo, 'seed')):
        if value is not None:
            return int(value)
    return DATA_DEFAULTS['split_seed']


def _class_list(classes: Any, field: str) -> list[str]:
    if isinstance(classes, str) or not hasattr(classes, '__len__'):
        raise ZooConfigError(f'{field} must list class names, got {classes!r}.')
    classes = [str(c) for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ZooConfigError(f'{field} must list at least two distinct class names, got {classes}.')
    return classes


def _check_arch(arch: str, prefix: str) -> None:
    if arch not in TORCH_TWINS and not str(arch).startswith(BUILT_BY_NAME):
        raise ZooConfigError(f'{prefix}.arch = {arch!r} is unknown; supported: '
                             f'{", ".join(sorted(TORCH_TWINS))}, \'timm:NAME\', or a factory '
                             f"'torch:package.module:function' / 'torchvision:NAME'.")


def teacher_settings(name: str, tc: Any, zoo: Any = None) -> dict:
    """The teacher's fields with defaults filled in; `augment.{crop_padding,flip}` also accepted.

    A teacher's `seed` defaults to the zoo's `seed` (0 if none).
    """
    prefix = f'teachers.{name}'
    defaults = dict(DEFAULTS, seed=int(_get(zoo, 'seed', DEFAULTS['seed'])))
    s = {k: _get(tc, k, v) if v is not None else _get(tc, k) for k, v in defaults.items()}
    s['split_seed'] = split_seed_of(zoo)
    augment = _get(tc, 'augment')
    if augment is not None:
        for k in ('crop_padding', 'flip'):
            if _get(augment, k) is not None:
                s[k] = _get(augment, k)
    heads = _get(tc, 'heads')
    s['arch'] = _get(tc, 'arch')
    s['classes'] = None if heads else _get(tc, 'classes')
    for k in ('arch', 'classes'):
        if s[k] is None and not (k == 'classes' and heads):
            raise ZooConfigError(f'{prefix}.{k} is missing.')
    _check_arch(s['arch'], prefix)
    s['kwargs'] = plain(_get(tc, 'kwargs') or {})
    if heads and _get(tc, 'classes') is not None:
        raise ZooConfigError(f'{prefix} gives both classes and heads; an attribute teacher lists its '
                             f'classes per head in heads.')
    if heads:  # attribute teacher: (label key, classes) pairs, side by side in one fc
        s['heads'] = _attribute_heads(prefix, heads)
        s['label_key'] = None
        s['classes'] = [f'{h["label_key"]}:{c}' for h in s['heads'] for c in h['classes']]
    else:
        s['classes'] = _class_list(s['classes'], f'{prefix}.classes')
        s['heads'] = [{'label_key': s['label_key'], 'classes': s['classes'],
                       'logits': [0, len(s['classes'])]}]
    s['widths'] = [int(w) for w in s['widths']] if s['widths'] else None
    return _checked_numbers(prefix, s)


def _attribute_heads(prefix: str, heads: Any) -> list[dict]:
    """An attribute teacher's heads: label key, classes and the slice of the logits, in order."""
    if isinstance(heads, Mapping) or hasattr(heads, 'items'):
        raise ZooConfigError(f'{prefix}.heads must be a list of [label_key, classes] pairs (the '
                             f'order of the logits), not a mapping (ConfigDict sorts its keys).')
    try:
        heads = [(str(key), classes) for key, classes in heads]
    except (TypeError, ValueError):
        raise ZooConfigError(f'{prefix}.heads must be a list of [label_key, classes] pairs, got '
                             f'{heads!r}.') from None
    if len({key for key, _ in heads}) != len(heads):
        raise ZooConfigError(f'{prefix}.heads names a label key twice: {[k for k, _ in heads]}.')
    out, start = [], 0
    for key, classes in heads:
        classes = _class_list(classes, f'{prefix}.heads.{key}')
        out.append({'label_key': str(key), 'classes': classes, 'logits': [start, start + len(classes)]})
        start += len(classes)
    return out


def _checked_numbers(prefix: str, s: dict) -> dict:
    """The settings' numbers as their types, checked: the data part, epochs and batch size."""
    frac, shard = float(s['train_fraction']), int(s['shard'])
    if not 0 < frac <= 1:
        raise ZooConfigError(f'{prefix}.train_fraction must be in (0, 1], got {frac}.')
    if shard < 0 or (shard + 1) * frac > 1 + 1e-9:
        raise ZooConfigError(f'{prefix}.shard = {shard} does not fit: with train_fraction {frac} '
                             f'the shards are 0..{int(math.floor(1 / frac + 1e-9)) - 1}.')
    s['train_fraction'], s['shard'] = frac, shard
    for k in ('epochs', 'batch_size', 'seed', 'crop_padding', 'warmup_epochs'):
        s[k] = int(s[k])
    for k in ('lr', 'momentum', 'weight_decay', 'label_smoothing'):
        s[k] = float(s[k])
    s['flip'], s['nesterov'] = bool(s['flip']), bool(s['nesterov'])
    if s['epochs'] < 1 or s['batch_size'] < 1:
        raise ZooConfigError(f'{prefix}.epochs and {prefix}.batch_size must be positive.')
    if s['input_size'] is not None:
        size = [int(v) for v in (s['input_size'] if not isinstance(s['input_size'], int)
                                 else (s['input_size'], s['input_size']))]
        s['input_size'] = size
    return s


def build_model(s: dict, num_classes: int, channels: int) -> torch.nn.Module:
    """A registered twin, a timm model (`timm:NAME`, random init), or any factory (`torch:`/
    `torchvision:`) as the generic teacher path exports it later; the last two are called with
    `num_classes` and the teacher's `kwargs`."""
    if str(s['arch']).startswith('timm:'):
        import timm
        return timm.create_model(s['arch'].split(':', 1)[1], pretrained=False, num_classes=num_classes,
                                 in_chans=channels, **s.get('kwargs', {}))
    if str(s['arch']).startswith(GENERIC):
        from kamal_jax.api import build_torch_factory
        factory = s['arch'] if s['arch'].startswith('torchvision:') else s['arch'].split(':', 1)[1]
        return build_torch_factory(factory, None, {'num_classes': num_classes, **s.get('kwargs', {})}).train()
    return build_torch_twin(s['arch'], num_classes, s['widths'], in_channels=channels)


def load_data(data_cfg: Any) -> dict:
    """{'train': split, 'eval': split} via `kamal_jax.api.load_dataset`."""
    from kamal_jax.api import load_dataset  # TensorFlow is imported there lazily, after torch.
    name = _get(data_cfg, 'name')
    if not name:
        raise ZooConfigError('data.name is missing.')
    kwargs = {k: _get(data_cfg, k) or None for k in ('data_dir', 'manual_dir')}  # '' = default
    size = _get(data_cfg, 'image_size')
    if size:
        kwargs['image_size'] = (int(size), int(size)) if isinstance(size, int) else tuple(size)
    train = _get(data_cfg, 'train_split', DATA_DEFAULTS['train_split'])
    evals = _get(data_cfg, 'eval_split', DATA_DEFAULTS['eval_split'])
    return {'train': load_dataset(name, train, **kwargs), 'eval': load_dataset(name, evals, **kwargs)}


def _resolve_data(data: Any, data_cfg: Any) -> dict:
    if data is None:
        return load_data(data_cfg)
    if isinstance(data, Mapping):
        if 'train' not in data or 'eval' not in data:
            raise ValueError(f"data must map 'train' and 'eval' to dataset splits, got {list(data)}.")
        return dict(data)
    if callable(data):  # split name -> split
        return {'train': data(_get(data_cfg, 'train_split', 'train')),
                'eval': data(_get(data_cfg, 'eval_split', 'test'))}
    raise TypeError(f'data must be None, a mapping or a callable, got {type(data).__name__}.')


def _head_labels(split: Any, key: str, classes: list, key_field: str, classes_field: str) -> np.ndarray:
    """Every sample's label `key` as an index into `classes`, -1 where it is none of them."""
    if key not in split.labels:
        raise ZooConfigError(f'{key_field} = {key!r} is not a label of the data; '
                             f'labels: {sorted(split.labels)}.')
    names = list(split.label_names.get(key, []))
    if not names:
        raise ZooConfigError(f'{key_field} = {key!r} is numeric; a teacher needs a '
                             f'categorical label.')
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise ZooConfigError(f'{classes_field} names {unknown}, not classes of {key!r}: '
                             f'{names}.')
    remap = np.full(len(names), -1, np.int64)
    remap[[names.index(c) for c in classes]] = np.arange(len(classes))
    labels = np.asarray(split.labels[key], np.int64)
    valid = (labels >= 0) & (labels < len(names))
    return np.where(valid, remap[np.clip(labels, 0, len(names) - 1)], -1)


def _shard(n: int, fraction: float, shard: int, split_seed: int) -> np.ndarray:
    idx = np.arange(n)
    if fraction < 1.0:
        perm = np.random.default_rng(split_seed).permutation(n)
        lo, hi = int(round(shard * fraction * n)), int(round((shard + 1) * fraction * n))
        idx = np.sort(perm[lo:hi])
    return idx


def select(split: Any, s: dict, name: str, *, fraction: float = 1.0, shard: int = 0,
           split_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of `split` this teacher sees (sorted) and their labels in the teacher's order.

    For a single-label teacher; `select_heads` covers attribute teachers too.
    """
    key = s['label_key']
    labels = _head_labels(split, key, s['classes'], f'teachers.{name}.label_key',
                          f'teachers.{name}.classes')
    idx = _shard(len(labels), fraction, shard, split_seed)
    labels = labels[idx]
    keep = labels >= 0
    return idx[keep], labels[keep]


def select_heads(split: Any, s: dict, name: str, *, fraction: float = 1.0, shard: int = 0,
                 split_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Like `select`, for every head of `s['heads']`: labels are (samples, heads), -1 = no label.

    A sample is kept when at least one head has a label for it.
    """
    if s['label_key'] is not None:  # single label: exactly `select`
        idx, labels = select(split, s, name, fraction=fraction, shard=shard, split_seed=split_seed)
        return idx, labels[:, None]
    columns = [_head_labels(split, h['label_key'], h['classes'], f'teachers.{name}.heads',
                            f'teachers.{name}.heads.{h["label_key"]}') for h in s['heads']]
    labels = np.stack(columns, axis=1)
    idx = _shard(len(labels), fraction, shard, split_seed)
    labels = labels[idx]
    keep = (labels >= 0).any(axis=1)
    return idx[keep], labels[keep]


def _resize(images: np.ndarray, size) -> np.ndarray:
    if size is None or tuple(images.shape[1:3]) == tuple(size):
        return images
    out = []
    for i in range(0, len(images), 1024):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + 1024].transpose(0, 3, 1, 2))).float()
        x = F.interpolate(x, size=tuple(size), mode='bilinear', antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def _augment(images: np.ndarray, rng: np.random.Generator, crop_padding: int, flip: bool):
    """uint8 NHWC batch -> randomly translated (reflect padding) and flipped copy."""
    b, h, w, _ = images.shape
    if crop_padding:
        p = crop_padding
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode='reflect')
        oy = rng.integers(0, 2 * p + 1, b)
        ox = rng.integers(0, 2 * p + 1, b)
        rows = oy[:, None] + np.arange(h)[None]
        cols = ox[:, None] + np.arange(w)[None]
        images = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
        do = rng.random(b) < 0.5
        images = np.where(do[:, None, None, None], images[:, :, ::-1], images)
    return images


class _Normalise:
    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, -1, 1, 1)
        self.mean = self.mean * 255.0

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        # Contiguous NCHW, not the permuted NHWC view (which PyTorch treats as channels-last):
        # channels-last conv backward corrupted memory for some shapes when the zoo was written,
        # on this PyTorch CPU build. benchmarks/torch_steps.py later found channels-last gradients
        # correct at the shapes it times, but NCHW also keeps each seed's zoo, and the figures
        # measured on it, as they are.
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float()
        return (x - self.mean) * self.scale


def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, norm: _Normalise,
             batch_size: int = 500) -> float | None:
    if len(labels) == 0:
        return None
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            logits = model(norm(images[i:i + batch_size]))
            correct += int((logits.argmax(1).numpy() == labels[i:i + batch_size]).sum())
    return correct / len(labels)


def evaluate_heads(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, norm: _Normalise,
                   heads: list, batch_size: int = 500) -> list:
    """Accuracy per head (argmax within its logit slice) over the samples with a label of that head.

    `labels` is (samples, heads) with -1 for no label; a head without any label gets None.
    """
    correct, seen = np.zeros(len(heads), np.int64), np.zeros(len(heads), np.int64)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            logits = model(norm(images[i:i + batch_size])).numpy()
            y = labels[i:i + batch_size]
            for h, head in enumerate(heads):
                a, b = head['logits']
                valid = y[:, h] >= 0
                correct[h] += int((logits[valid, a:b].argmax(1) == y[valid, h]).sum())
                seen[h] += int(valid.sum())
    return [float(c / n) if n else None for c, n in zip(correct, seen)]


def _mean_accuracy(per_head: list) -> float | None:
    known = [a for a in per_head if a is not None]
    return float(np.mean(known)) if known else None


def _heads_loss(logits: torch.Tensor, y: torch.Tensor, heads: list, label_smoothing: float):
    """Sum over heads of the cross-entropy on the head's logit slice, samples with a label only."""
    loss = logits.new_zeros(())
    for h, head in enumerate(heads):
        a, b = head['logits']
        if bool((y[:, h] >= 0).any()):
            loss = loss + F.cross_entropy(logits[:, a:b], y[:, h], ignore_index=-1,
                                          label_smoothing=label_smoothing)
    return loss


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    if len(x) > 4_000_000:
        x = x[np.random.default_rng(0).choice(len(x), 4_000_000, replace=False)]
    return ([round(float(v), 4) for v in x.mean(0)],
            [round(max(float(v), 1e-3), 4) for v in x.std(0)])


def _print(message: str) -> None:
    print(message, flush=True)  # Progress shows up promptly when stdout is a pipe.


def _counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return [int(c) for c in np.bincount(labels[labels >= 0], minlength=num_classes)]


class _Samples:
    """One teacher's training and held-out images (uint8 NHWC, resized) and labels in its class order
    ((samples, heads) for an attribute teacher, -1 = no label)."""

    def __init__(self, name: str, s: dict, data: dict):
        train, evals = data['train'], data['eval']
        self.multi = s['label_key'] is None  # attribute teacher: labels are (samples, heads)
        tr_idx, self.train_labels = select_heads(train, s, name, fraction=s['train_fraction'], shard=s['shard'],
                                                 split_seed=s['split_seed'])
        ev_idx, self.eval_labels = select_heads(evals, s, name)
        if not self.multi:
            self.train_labels, self.eval_labels = self.train_labels[:, 0], self.eval_labels[:, 0]
        if len(tr_idx) == 0:
            raise ZooConfigError(f'teachers.{name} has no training samples (classes {s["classes"]}, '
                                 f'shard {s["shard"]} of fraction {s["train_fraction"]}).')
        self.train_images = _resize(np.asarray(train.images)[tr_idx], s['input_size'])
        self.eval_images = _resize(np.asarray(evals.images)[ev_idx], s['input_size'])
        if self.train_images.dtype != np.uint8:
            raise TypeError(f'training images must be uint8 NHWC, got {self.train_images.dtype}.')


def _mean_std(name: str, s: dict, images: np.ndarray) -> tuple[list[float], list[float]]:
    """The teacher's `mean` and `std`, each defaulting to its training images' per-channel statistics."""
    channels = images.shape[-1]
    mean, std = s['mean'], s['std']
    if mean is None or std is None:
        stats = _channel_stats(images)
        mean = stats[0] if mean is None else mean
        std = stats[1] if std is None else std
    mean, std = [float(m) for m in mean], [float(v) for v in std]
    if len(mean) != channels or len(std) != channels:
        raise ZooConfigError(f'teachers.{name}.mean/std need {channels} values, got {mean}, {std}.')
    return mean, std


def _optimizer(model: torch.nn.Module, s: dict) -> torch.optim.Optimizer:
    """SGD with weight decay on the weights, none on biases and norms."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.SGD([{'params': decay, 'weight_decay': s['weight_decay']},
                            {'params': no_decay, 'weight_decay': 0.0}],
                           lr=s['lr'], momentum=s['momentum'], nesterov=s['nesterov'])


def _schedule(s: dict, steps_per_epoch: int) -> Callable[[int], float]:
    """Step -> learning rate: linear warmup over `warmup_epochs`, then a cosine to 0."""
    total = steps_per_epoch * s['epochs']
    warmup = steps_per_epoch * s['warmup_epochs']

    def lr_at(step):
        if step < warmup:
            return s['lr'] * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * s['lr'] * (1.0 + math.cos(math.pi * t))
    return lr_at


class _Epochs:
    """The training loop's state: the model, its optimiser, the schedule and the step count."""

    def __init__(self, model, s: dict, samples: _Samples, norm: _Normalise, bs: int, steps_per_epoch: int):
        self.model, self.s, self.samples, self.norm = model, s, samples, norm
        self.bs, self.steps_per_epoch = bs, steps_per_epoch
        self.opt, self.lr_at = _optimizer(model, s), _schedule(s, steps_per_epoch)
        self.rng = np.random.default_rng(s['seed'])
        self.labels = torch.from_numpy(samples.train_labels)
        self.step = 0

    def run(self) -> tuple[float, float]:
        """One epoch: (mean training loss, training accuracy; an attribute teacher's is its heads' mean)."""
        s, heads, multi = self.s, self.s['heads'], self.samples.multi
        self.model.train()
        perm = self.rng.permutation(len(self.samples.train_labels))
        loss_sum, correct, seen = 0.0, 0, 0
        head_correct, head_seen = np.zeros(len(heads)), np.zeros(len(heads))
        for k in range(self.steps_per_epoch):
            batch = perm[k * self.bs:(k + 1) * self.bs]
            x = self.norm(_augment(self.samples.train_images[batch], self.rng, s['crop_padding'], s['flip']))
            y = self.labels[batch]
            for group in self.opt.param_groups:
                group['lr'] = self.lr_at(self.step)
            logits = self.model(x)
            if multi:
                loss = _heads_loss(logits, y, heads, s['label_smoothing'])
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=s['label_smoothing'])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            loss_sum += loss.item() * len(batch)
            if multi:
                for h, head in enumerate(heads):
                    valid = y[:, h] >= 0
                    a, b = head['logits']
                    head_correct[h] += int((logits.detach()[valid, a:b].argmax(1) == y[valid, h]).sum())
                    head_seen[h] += int(valid.sum())
            else:
                correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(batch)
        if multi:  # mean over heads of each head's accuracy
            correct = seen * _mean_accuracy([c / k if k else None for c, k in zip(head_correct, head_seen)])
        return loss_sum / seen, correct / seen


def _held_out(model, s: dict, samples: _Samples, norm: _Normalise) -> list:
    """Held-out accuracy per head (one head for a single-label teacher)."""
    if samples.multi:
        return evaluate_heads(model, samples.eval_images, samples.eval_labels, norm, s['heads'])
    return [evaluate(model, samples.eval_images, samples.eval_labels, norm)]


def _training_data_card(s: dict, samples: _Samples, train: Any, data_cfg: Any) -> dict:
    heads, n, num_classes = s['heads'], len(samples.train_labels), len(s['classes'])
    labels = samples.train_labels
    return {
        'dataset': _get(data_cfg, 'name', getattr(train, 'name', None)),
        'split': _get(data_cfg, 'train_split', getattr(train, 'split', 'train')),
        'train_fraction': s['train_fraction'],
        'shard': s['shard'],
        'split_seed': s['split_seed'],
        'num_samples': int(n),
        'class_counts': ({h['label_key']: _counts(labels[:, i], len(h['classes']))
                          for i, h in enumerate(heads)} if samples.multi
                         else _counts(labels, num_classes)),
        'description': (f'{n} images of {num_classes} classes {s["classes"]} '
                        + (f'(heads {[h["label_key"] for h in heads]}) ' if samples.multi
                           else f'(label {s["label_key"]!r}) ')
                        + f'from shard {s["shard"]} '
                        f'(fraction {s["train_fraction"]}, split_seed {s["split_seed"]}) of '
                        f'{_get(data_cfg, "name", getattr(train, "name", "?"))}:'
                        f'{_get(data_cfg, "train_split", getattr(train, "split", "train"))}'),
    }


def _training_card(s: dict, bs: int, total: int, loss_value: float) -> dict:
    return {
        'epochs': s['epochs'], 'batch_size': bs, 'steps': total, 'lr': s['lr'],
        'schedule': 'cosine' + (f' with {s["warmup_epochs"]} warmup epochs'
                                if s['warmup_epochs'] else ''),
        'momentum': s['momentum'], 'nesterov': s['nesterov'],
        'weight_decay': s['weight_decay'], 'label_smoothing': s['label_smoothing'],
        'seed': s['seed'],
        'augment': {'crop_padding': s['crop_padding'], 'crop_pad_mode': 'reflect',
                    'flip': s['flip']},
        'final_train_loss': round(loss_value, 6),
    }


def _card(name: str, s: dict, mean, std, samples: _Samples, pth: str, sections: dict) -> dict:
    """The teacher card; `sections` holds its training_data, training and eval parts."""
    heads = s['heads']
    return {
        'card_version': CARD_VERSION,
        'name': name,
        'arch': s['arch'],
        'kwargs': s.get('kwargs', {}),  # a factory's (torch:/torchvision: archs)
        'widths': s['widths'],
        'num_classes': len(s['classes']),
        'classes': s['classes'],
        'label_key': s['label_key'],  # None for an attribute teacher: see heads
        'heads': {h['label_key']: dict(h) for h in heads},
        'mean': mean,
        'std': std,
        'input_size': [int(samples.train_images.shape[1]), int(samples.train_images.shape[2])],
        'input': 'RGB uint8 / 255 in [0, 1], then (x - mean) / std; PyTorch NCHW',
        'checkpoint': f'{name}.pth',
        'checkpoint_sha256': sha256(pth),
        **sections,
        'eval_accuracy': sections['eval']['accuracy'],
    }


def _write_card(path: str, card: dict) -> None:
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(card, f, indent=2)
    write_atomic_with(path, write)


def _log_start(log, name: str, s: dict, samples: _Samples, bs: int, steps_per_epoch: int) -> None:
    heads, n = s['heads'], len(samples.train_labels)
    what = (' + '.join(f'{h["label_key"]} {len(h["classes"])}' for h in heads) + ' logits'
            if samples.multi else f'{len(s["classes"])} classes')
    log(f'[{name}] {s["arch"]} on {n} images of {what} '
        f'({samples.train_images.shape[1]}x{samples.train_images.shape[2]}), {s["epochs"]} epochs x '
        f'{steps_per_epoch} steps of {bs}; eval on {len(samples.eval_labels)} images')


def _train_epochs(log, name: str, s: dict, epochs: _Epochs) -> float:
    """Runs every epoch, logging each and the held-out accuracy five times; returns the last loss."""
    loss_value, t_train = float('nan'), time.time()
    for epoch in range(s['epochs']):
        t0 = time.time()
        loss_value, train_accuracy = epochs.run()
        msg = (f'[{name}] epoch {epoch + 1}/{s["epochs"]}: loss {loss_value:.4f}, '
               f'train acc {train_accuracy:.4f}, lr {epochs.lr_at(epochs.step - 1):.4g}, {time.time() - t0:.1f}s, '
               f'{eta_text(epoch + 1, s["epochs"], time.time() - t_train)}')
        if epoch == s['epochs'] - 1 or (epoch + 1) % max(1, s['epochs'] // 5) == 0:
            acc = _mean_accuracy(_held_out(epochs.model, s, epochs.samples, epochs.norm))
            if acc is not None:
                msg += f', eval acc {acc:.4f}'
        log(msg)
    return loss_value


def train_teacher(name: str, s: dict, data: dict, data_cfg: Any, out_dir: str,
                  log: Callable[[str], None] = _print) -> dict:
    """Trains one teacher and writes `{out_dir}/{name}.pth` and `.json`; returns the card."""
    start = time.time()
    samples = _Samples(name, s, data)
    mean, std = _mean_std(name, s, samples.train_images)
    norm = _Normalise(mean, std)
    torch.manual_seed(s['seed'])
    model = build_model(s, len(s['classes']), samples.train_images.shape[-1])
    n = len(samples.train_labels)
    bs = min(s['batch_size'], n)
    steps_per_epoch = max(1, n // bs)
    epochs = _Epochs(model, s, samples, norm, bs, steps_per_epoch)
    _log_start(log, name, s, samples, bs, steps_per_epoch)
    loss_value = _train_epochs(log, name, s, epochs)
    per_head = _held_out(model, s, samples, norm)
    accuracy = _mean_accuracy(per_head) if samples.multi else per_head[0]

    os.makedirs(out_dir, exist_ok=True)
    pth = os.path.join(out_dir, f'{name}.pth')
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic_with(pth, lambda p: torch.save(state, p))
    evals = data['eval']
    sections = {
        'training_data': _training_data_card(s, samples, data['train'], data_cfg),
        'training': _training_card(s, bs, steps_per_epoch * s['epochs'], loss_value),
        'eval': {
            'dataset': _get(data_cfg, 'name', getattr(evals, 'name', None)),
            'split': _get(data_cfg, 'eval_split', getattr(evals, 'split', 'test')),
            'num_samples': int(len(samples.eval_labels)),
            'accuracy': accuracy,
            'accuracy_per_head': {h['label_key']: a for h, a in zip(s['heads'], per_head)},
        },
    }
    card = _card(name, s, mean, std, samples, pth, sections)
    card.update(wall_seconds=round(time.time() - start, 2), torch_version=torch.__version__)
    card = plain(card)
    _write_card(os.path.join(out_dir, f'{name}.json'), card)
    acc_text = 'n/a' if accuracy is None else f'{accuracy:.4f}'
    log(f'[{name}] done in {card["wall_seconds"]:.1f}s: eval accuracy {acc_text} -> {pth}')
    return card


def train_zoo(zoo_config: Any, out_dir: str, data: Any = None, *, only=None,
              log: Callable[[str], None] = _print) -> dict:
    """Trains every teacher of `zoo_config` (or of its `zoo` field) not yet in `out_dir`.

    `data`: None (load `zoo.data` with `kamal_jax.api.load_dataset`), a mapping
    {'train': split, 'eval': split}, or a callable split_name -> split. Splits have `.images`
    (uint8 NHWC), `.labels` (key -> int array) and `.label_names` (key -> class names).
    Returns {teacher name: card}, skipped teachers included (their card read from disk).
    """
    zoo = zoo_section(zoo_config)
    teachers_cfg = _get(zoo, 'teachers')
    if not teachers_cfg:
        raise ZooConfigError('teachers is empty: declare at least one teacher.')
    data_cfg = _get(zoo, 'data')
    names = list(teachers_cfg.keys())
    if only:
        unknown = [t for t in only if t not in names]
        if unknown:
            raise ZooConfigError(f'unknown teachers {unknown}; the config declares {names}.')
        names = [t for t in names if t in only]
    settings = {t: teacher_settings(t, teachers_cfg[t], zoo) for t in names}  # Validate all first.
    torch.set_num_threads(len(os.sched_getaffinity(0)) or 1)  # the cores this process may use
    os.makedirs(out_dir, exist_ok=True)
    cards, todo = {}, []
    for t in names:
        pth, card_path = (os.path.join(out_dir, f'{t}.{ext}') for ext in ('pth', 'json'))
        if os.path.isfile(pth) and os.path.isfile(card_path):
            log(f'[{t}] skipped: {pth} and {card_path} already exist')
            with open(card_path) as f:
                cards[t] = json.load(f)
        else:
            todo.append(t)
    if todo:
        resolved = _resolve_data(data, data_cfg)
        for t in todo:
            cards[t] = train_teacher(t, settings[t], resolved, data_cfg, out_dir, log)
    return {t: cards[t] for t in names}
