"""Every field a run reads, in one place: its default (or required), type, allowed values and meaning.

A user's config gives only what is its own (the data, the teachers, the target tasks, and whatever it
changes). `resolve` merges it onto the defaults below, applies `--config.FIELD=VALUE` overrides,
migrates fields renamed since, checks every type and range, and returns a read-only `Resolved`: the
rest of the package reads fields as attributes and never guesses a default (`Resolved` has no `.get`).
`MIGRATIONS` records, for each field added or renamed since configs were first stored in workdirs,
what a config without it behaved as. `docs/CONFIG.md` is generated from this module (`reference`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import numbers
from typing import Any, Iterator, Mapping

import numpy as np



class ConfigError(ValueError):
    """A config field is invalid; the message names the field."""


class _Required:
    def __repr__(self) -> str:
        return 'required'


REQUIRED = _Required()
INHERIT = None  # baseline_stage: a field it leaves unset keeps the one-stage budget's value


# ----------------------------------------------------------------------------- field kinds

@dataclasses.dataclass(frozen=True)
class Leaf:
    """One value: its kind ('int', 'float', 'bool', 'str', 'ints', 'floats', 'strs', 'dict'), default
    and meaning; `choices`, `low` (inclusive) / `above` (exclusive) and `lengths` bound it."""
    kind: str
    default: Any
    meaning: str
    choices: tuple = ()
    low: float | None = None
    above: float | None = None
    lengths: tuple[int, ...] = ()
    nullable: bool = False

    def type_name(self) -> str:
        names = {'int': 'int', 'float': 'float', 'bool': 'bool', 'str': 'str', 'ints': 'tuple of ints',
                 'floats': 'tuple of floats', 'strs': 'tuple of str', 'dict': 'dict'}
        return names[self.kind]

    def parse(self, value: Any, field: str) -> Any:
        """`value` checked and normalised (sequences to tuples, ints to floats where a float is asked)."""
        if value is None and (self.nullable or self.default is None):
            return None
        kind = self.kind
        if kind == 'bool':
            if not isinstance(value, (bool, np.bool_)):
                raise ConfigError(f'{field} must be True or False, got {value!r}.')
            return bool(value)
        if kind == 'int':
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
                raise ConfigError(f'{field} must be a whole number, got {value!r}.')
            value = int(value)
        elif kind == 'float':
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise ConfigError(f'{field} must be a number, got {value!r}.')
            value = float(value)
        elif kind == 'str':
            if not isinstance(value, str):
                raise ConfigError(f'{field} must be a string, got {value!r}.')
        elif kind in ('ints', 'floats', 'strs'):
            if isinstance(value, (str, bytes)) or not hasattr(value, '__iter__') or isinstance(value, Mapping):
                raise ConfigError(f'{field} must be a {self.type_name()}, got {value!r}.')
            item = Leaf(kind[:-1], 0, '')
            value = tuple(item.parse(v, f'{field}[{i}]') for i, v in enumerate(value))
            if self.lengths and len(value) not in self.lengths:
                want = ' or '.join(str(n) for n in self.lengths)
                raise ConfigError(f'{field} must have {want} entries, got {len(value)}: {list(value)}.')
        elif kind == 'dict':
            if not isinstance(value, Mapping) and not hasattr(value, 'to_dict'):
                raise ConfigError(f'{field} must be a dict, got {value!r}.')
            return plain(value)
        if self.choices and value not in self.choices:
            raise ConfigError(f'{field} must be one of {", ".join(map(repr, self.choices))}, got {value!r}.')
        if self.low is not None and value < self.low:
            raise ConfigError(f'{field} must be >= {self.low:g}, got {value!r}.')
        if self.above is not None and not value > self.above:
            raise ConfigError(f'{field} must be > {self.above:g}, got {value!r}.')
        return value

    def from_text(self, text: str, field: str) -> Any:
        """A command-line value (`--config.FIELD=TEXT`) as this field's type."""
        if self.kind == 'str':
            return text
        if self.kind == 'bool' and text.lower() in ('true', 'false', '1', '0'):
            return text.lower() in ('true', '1')
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if self.kind in ('strs',):
                value = tuple(s.strip() for s in text.split(',') if s.strip())
            else:
                raise ConfigError(f'--config.{field}={text} is not a {self.type_name()}.') from None
        if self.kind == 'strs' and isinstance(value, str):
            value = (value,)
        return self.parse(value, f'--config.{field}')


@dataclasses.dataclass(frozen=True)
class Section:
    """A group of named fields (`data`, `stage1`, a teacher's entry, ...)."""
    fields: Mapping[str, Any]
    meaning: str = ''
    optional: bool = False  # may be absent altogether (None)


@dataclasses.dataclass(frozen=True)
class MapOf:
    """Entries under names the user chooses (teachers, a teacher's heads), each of one `entry` shape."""
    entry: Section
    meaning: str
    required: bool = True


def _leaf(kind, default, meaning, **kw) -> Leaf:
    return Leaf(kind, default, meaning, **kw)


# ----------------------------------------------------------------------------- the schema

HEAD = Section({
    'classes': _leaf('strs', REQUIRED, "the task's class names, in the order of the logit slice"),
    'logits': _leaf('ints', REQUIRED, "[start, stop) of the teacher's output logits for this task", lengths=(2,)),
    'kind': _leaf('str', 'multiclass', 'multiclass (softmax) or binary', choices=('multiclass', 'binary')),
    'label_key': _leaf('str', 'label', 'which label of the data scores this task'),
}, 'one task a teacher solves')

TEACHER = Section({
    'checkpoint': _leaf('str', REQUIRED, "the PyTorch checkpoint ('{workdir}' is replaced by the run's workdir)"),
    'heads': MapOf(HEAD, "the tasks it solves, by task name (or give classes)", required=False),
    'classes': _leaf('strs', (), 'the class name of each of its output logits, in order: it then serves every '
                     'task that shares a class with it (empty: only the tasks of its heads)'),
    'class_map': _leaf('dict', {}, "renames its classes to the names tasks use, {its class: name}; classes "
                       "mapped to one name are merged, their probabilities summed (e.g. dog breeds into 'dog')"),
    'mean': _leaf('floats', REQUIRED, 'per-channel mean its images were normalised with (RGB, 0-1 scale)',
                  lengths=(1, 3)),
    'std': _leaf('floats', REQUIRED, 'per-channel standard deviation of its normalisation', lengths=(1, 3)),
    'arch': _leaf('str', 'auto', "a backbone name, 'auto' (read from the checkpoint), 'torchvision:NAME' or "
                  "'torch:package.module:function'"),
    'widths': _leaf('ints', (), 'channel widths of its stages (empty: the architecture\'s own)'),
    'input_size': _leaf('ints', (), '(height, width) it sees (empty: the data\'s image size)', lengths=(0, 2)),
    'ema': _leaf('bool', False, "port the checkpoint's EMA weights instead of its plain ones"),
    'kwargs': _leaf('dict', {}, "keyword arguments of a 'torch:'/'torchvision:' factory"),
}, 'a pre-trained teacher')

PICKED_TASK = Section({
    'classes': _leaf('strs', REQUIRED, 'the class names the task predicts, any the teachers know (their classes '
                     'or heads, after class_map)'),
    'label_key': _leaf('str', 'label', 'which label of the data scores this task'),
}, 'a target task picked by class names')

UNIFIED = Section({
    'outside': _leaf('str', 'weight', "what the unified recipes do with an image the teachers place outside a "
                     "task: 'weight' its loss by the estimated chance that it shows one of the task's classes, "
                     "'drop' it when that chance is under one half, or 'keep' it at full weight",
                     choices=('weight', 'drop', 'keep')),
    'iterations': _leaf('int', 100, 'fixed-point iterations of the unified estimate per image', low=1),
}, "the unified target of teachers that know different classes (kamal_jax.unified)")

DATA = Section({
    'name': _leaf('str', '', "a TFDS builder name, e.g. 'kamal_cifar10' or one from the TFDS catalogue (required "
                  "unless train_folder gives the images)"),
    'image_size': _leaf('ints', (), '(height, width) the images are resized to (empty: their own size)',
                        lengths=(0, 2)),
    'train_split': _leaf('str', 'train', 'the split whose images (not labels) train the student'),
    'eval_split': _leaf('str', 'test', 'the labelled split every net is scored on'),
    'data_dir': _leaf('str', '', 'where TFDS keeps prepared data (empty: its default)'),
    'manual_dir': _leaf('str', '', 'where TFDS finds manually downloaded archives (empty: found automatically)'),
    'mean': _leaf('floats', (0.485, 0.456, 0.406), "the student's input normalisation: per-channel mean",
                  lengths=(1, 3)),
    'std': _leaf('floats', (0.229, 0.224, 0.225), "the student's input normalisation: per-channel std",
                 lengths=(1, 3)),
    'crop_padding': _leaf('int', 0, 'random-crop padding in pixels of each training view (0: none)', low=0),
    'flip': _leaf('bool', False, 'random horizontal flips of the training views'),
    'train_limit': _leaf('int', 0, 'train on a seeded subset of this many images (0: all)', low=0),
    'eval_limit': _leaf('int', 0, 'score on a seeded subset of this many images (0: all)', low=0),
    'views': _leaf('int', 0, 'augmented views pre-drawn per image (0: a fresh view every step)', low=0),
    'streaming': _leaf('str', 'auto', "read the training split from records on disk: 'auto' (when it exceeds "
                       "memory_limit_gb), 'always' or 'never'", choices=('auto', 'always', 'never')),
    'memory_limit_gb': _leaf('float', 4.0, "decoded split size (GiB) above which 'auto' streams", above=0),
    'prefetch': _leaf('int', -1, 'batches gathered ahead on worker threads (0: none; -1: 4 where the images '
                      'come from disk or the devices are accelerators, else 0)', low=-1),
    'train_records': _leaf('str', '', 'a records folder (kamal_jax.data.records) that replaces train_split'),
    'train_folder': _leaf('str', '', 'a folder of your own image files (any depth) that replaces train_split'),
    'eval_folder': _leaf('str', '', 'a labelled folder (one sub-folder per class name) that replaces eval_split'),
    'holdout_fraction': _leaf('float', 0.1, 'without eval_folder, the seeded share of train_folder held out and '
                              'scored without labels', above=0),
}, 'the unlabelled training images and the labelled evaluation images')


def _stage(extra: Mapping[str, Leaf], meaning: str) -> Section:
    return Section({
        'arch': _leaf('str', 'cifar_resnet20', 'backbone of the net this stage trains (kamal_jax.models)'),
        'widths': _leaf('ints', (), "channel widths of its stages (empty: the architecture's own)"),
        'epochs': _leaf('int', 30, 'passes over the training images', low=1),
        'batch_size': _leaf('int', 64, 'images per step, over all devices', low=1),
        'lr': _leaf('float', 1e-3, "the net's peak learning rate (Adam)", above=0),
        'bridge_lr': _leaf('float', 1e-3, "the 1x1 bridges' peak learning rate", above=0),
        'schedule': _leaf('str', 'cosine', 'learning-rate schedule', choices=('constant', 'cosine', 'step')),
        'warmup_steps': _leaf('int', 0, 'linear warm-up steps', low=0),
        'weight_decay': _leaf('float', 0.0, 'decoupled weight decay (0: plain Adam)', low=0),
        'feature_weight': _leaf('float', 1.0, 'weight of feature matching through the bridges (0: logits only)',
                                low=0),
        'logit_weight': _leaf('float', 1.0, 'weight of logit matching', low=0),
        'logit_loss': _leaf('str', 'kl', 'logit matching: KL at the temperature, or MSE', choices=('kl', 'mse')),
        'temperature': _leaf('float', 4.0, 'softening temperature of the logit loss', above=0),
        'tap_pairs': _leaf('dict', {}, 'per teacher, explicit (teacher tap, student tap) pairs (empty: by depth)'),
        'checkpoint_every': _leaf('int', 200, 'steps between checkpoints', low=1),
        'checkpoint_min_interval_s': _leaf('float', 60.0, 'at least this many seconds between checkpoints',
                                           low=0),
        'cache_dtype': _leaf('str', 'float16', 'dtype of cached frozen-net outputs',
                             choices=('float16', 'bfloat16', 'float32')),
        'cache_limit_gb': _leaf('float', 8.0, 'largest cache held (GiB)', above=0),
        **extra,
    }, meaning)


STAGE1 = _stage({
    'selector': _leaf('str', 'least_entropy', 'which teacher each sample learns from (kamal_jax.selection)'),
    'selection': _leaf('str', 'online', "where selection runs: 'online' (each step, on the view the student sees) "
                       "or 'offline' (once)", choices=('online', 'offline')),
    'weight_norm': _leaf('float', 1.0, "weight of the teacher-side bridges' weight-norm term", low=0),
    'bridge_width_ratio': _leaf('float', 0.5, 'bridge width as a share of the narrower side', above=0),
    'teacher_cache': _leaf('bool', False, "cache the teachers' outputs once (fixed views only)"),
}, 'stage 1: one component net per target task, from the least ambiguous teacher per sample')

STAGE2 = _stage({
    'component_cache': _leaf('bool', False, "cache the components' outputs once (fixed views only)"),
}, 'stage 2 (and the one-stage recipes\' optimiser): the multi-head target net')

STUDENT_LOOP = Section({
    'combiner': _leaf('str', 'product', "the teachers' combined target it starts from and keeps as the "
                      "teachers' part of every refit (kamal_jax.selection.COMBINERS)"),
    'start': _leaf('float', 0.5, "share of the steps trained on the combiner's target, as that recipe does, "
                   'before the first refit (between 0 and 1)', above=0),
    'refits': _leaf('int', 4, 'refits of the per-sample target, evenly spaced from the start to the end', low=1),
    'student_weight': _leaf('float', 1.0, "the student's vote in a refitted target, in teachers: the target is the "
                            "normalised geometric mean of the teachers' target (weighed as their number) and the "
                            "student's softmax(logits / T) (weighed this much; 0: the teachers' alone, 1: one more "
                            "teacher)", low=0),
    'cutout': _leaf('float', 0.5, 'after the first refit, the square cut out of every training view, as a share '
                    "of the image's side, on top of data.crop_padding and data.flip (0: none)", low=0),
}, "the recipe student_loop: the target re-estimated from the teachers and the student (kamal_jax.recipes."
   "student_loop)")

BASELINE_STAGE = Section(
    {**{k: dataclasses.replace(v, default=INHERIT, nullable=True) for k, v in STAGE2.fields.items()},
     'epochs': _leaf('int', INHERIT, 'epochs of the one-stage recipes (unset: T x stage1.epochs + '
                     'stage2.epochs for T target tasks)', low=1, nullable=True),
     'logits_cache': _leaf('str', 'auto', "the teachers' logits computed once per pre-drawn view instead of at "
                           "every step, for recipes that learn a combined target: 'on', 'off' or 'auto' (where it "
                           "saves enough compute; kamal_jax.train.cache_policy)", choices=('auto', 'on', 'off')),
     'student_loop': STUDENT_LOOP},
    'overrides of stage2 for the one-stage recipes (unset fields keep stage2\'s value)')

SCHEMA = Section({
    'data': DATA,
    'teachers': MapOf(TEACHER, 'the pre-trained teachers, by name'),
    'tasks': MapOf(PICKED_TASK, 'target tasks picked by class names, by task name', required=False),
    'target_tasks': _leaf('strs', REQUIRED, "the tasks the student serves (declared by the teachers' heads or "
                          "by tasks)"),
    'recipe': _leaf('str', 'product', 'the main recipe (kamal_jax.recipes.RECIPES)'),
    'baselines': _leaf('strs', (), 'more recipes trained and scored on the same data after it'),
    'seed': _leaf('int', 0, 'seed of every random choice of the run'),
    'stage1': STAGE1,
    'stage2': STAGE2,
    'baseline_stage': BASELINE_STAGE,
    'unified': UNIFIED,
    'compute_dtype': _leaf('str', 'float32', "activations' dtype in training steps",
                           choices=('float32', 'bfloat16')),
    'eval_batch_size': _leaf('int', 256, 'images per evaluation batch', low=1),
    'num_devices': _leaf('int', -1, 'devices of the mesh (-1: all)', low=-1),
    'log_every': _leaf('int', 50, 'training steps per log line', low=1),
    'eval_every': _leaf('int', 500, 'steps between held-out evaluations during training (0: none)', low=0),
    'steps_per_call': _leaf('int', 1, 'training steps per jitted call', low=1),
    'profile_steps': _leaf('int', 0, 'steps traced by jax.profiler per stage (0: none)', low=0),
    'zoo': _leaf('dict', None, 'teachers the run trains itself first, in PyTorch (kamal_jax.zoo): '
                 '{teachers: {name: settings}}', nullable=True),
})


# ----------------------------------------------------------------------------- migrations

@dataclasses.dataclass(frozen=True)
class Added:
    """A field added since: a stored config without it behaved as `behaved_as`."""
    behaved_as: Any


@dataclasses.dataclass(frozen=True)
class Renamed:
    """A field renamed since: `new` holds `values[old value]` (or the old value itself)."""
    new: str
    values: Mapping[str, Any]


MIGRATIONS = {
    'stage1.mode': Renamed('stage1.selector', {'select': 'least_entropy', 'random': 'random', 'average': 'uniform'}),
    'recipe': Added('paper'),  # before recipes, every run was the paper's two stages
    'data.views': Added(0),
    'data.train_records': Added(''),
    'data.train_folder': Added(''),
    'data.eval_folder': Added(''),
    'data.holdout_fraction': Added(0.1),
    'stage1.teacher_cache': Added(False),
    'stage2.component_cache': Added(False),
    # Before the cache, and while 'off' was its default, the teachers ran at every step: a run stored so
    # resumes so when the config leaves the field at its default.
    'baseline_stage.logits_cache': Added('off'),
    **{f'{s}.{k}': Added(v) for s in ('stage1', 'stage2') for k, v in
       (('cache_dtype', 'float16'), ('cache_limit_gb', 8.0))},
    # The defaults that code outside this module used to apply, where the schema's differ.
    **{f'{s}.{k}': Added(v) for s in ('stage1', 'stage2') for k, v in
       (('logit_loss', 'mse'), ('temperature', 1.0))},
    'eval_every': Added(0),
}


# ----------------------------------------------------------------------------- the resolved config

class Resolved(Mapping):
    """A resolved config: read-only, every field present, read as attributes or items; no `.get`."""

    __slots__ = ('_values', '_path', '_defaulted')

    def __init__(self, values: Mapping[str, Any], path: str = '', defaulted: frozenset = frozenset()):
        object.__setattr__(self, '_values', dict(values))
        object.__setattr__(self, '_path', path)
        object.__setattr__(self, '_defaulted', frozenset(defaulted))

    def __getattr__(self, key: str) -> Any:
        if key.startswith('__'):
            raise AttributeError(key)
        if key == 'get':
            raise AttributeError('a resolved config has no .get: every field is present; read it as an attribute')
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f'{self._field(key)} is not a config field') from None

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise KeyError(f'{self._field(key)} is not a config field') from None

    def __setattr__(self, key, value):
        raise TypeError(f'a resolved config is read-only ({self._field(key)}); use config_schema.replace')

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f'Resolved({self.to_dict()!r})'

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and plain(self) == plain(other)

    __hash__ = None

    def _field(self, key: str) -> str:
        return f'{self._path}.{key}' if self._path else key

    def to_dict(self) -> dict:
        return plain(self)

    @property
    def defaulted(self) -> frozenset:
        """Dotted names of the fields that took their default (only on the top-level config)."""
        return self._defaulted

    # Mapping gives get(); a resolved config refuses it.
    get = property(lambda self: (_ for _ in ()).throw(
        AttributeError('a resolved config has no .get: every field is present; read it as an attribute')))


def plain(value: Any) -> Any:
    """A config (resolved, a ConfigDict, nested mappings and sequences) as JSON's values: dicts with
    string keys, lists, and Python scalars for numpy's."""
    if isinstance(value, Resolved):
        return {k: plain(v) for k, v in value._values.items()}
    if hasattr(value, 'to_dict'):
        return plain(value.to_dict())
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _freeze(value: Any, path: str) -> Any:
    if isinstance(value, Mapping):
        return Resolved({k: _freeze(v, f'{path}.{k}') for k, v in value.items()}, path)
    if isinstance(value, list):
        return tuple(_freeze(v, path) for v in value)
    return value


# ----------------------------------------------------------------------------- resolving

def _nearest(name: str, known, prefix: str = '') -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    return f'; its fields: {", ".join(sorted(known))}.'


def _resolve_section(section: Section, given: Any, path: str, defaulted: set) -> Resolved:
    given = {} if given is None else given
    if not isinstance(given, Mapping):
        raise ConfigError(f'{path} must be a dict of fields, got {given!r}.')
    unknown = [k for k in given if k not in section.fields]
    if unknown:
        name = f'{path}.{unknown[0]}' if path else unknown[0]
        raise ConfigError(f'{name} is not a config field{_nearest(unknown[0], section.fields, path)}')
    out = {}
    for key, spec in section.fields.items():
        field = f'{path}.{key}' if path else key
        present = key in given
        value = given[key] if present else None
        if isinstance(spec, Section):
            if not present or value is None:
                if spec.optional:
                    out[key] = None
                    continue
            out[key] = _resolve_section(spec, value, field, defaulted)
        elif isinstance(spec, MapOf):
            if not present or not value:
                if spec.required:
                    raise ConfigError(f'{field} is missing: {spec.meaning}.')
                out[key] = Resolved({}, field)
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f'{field} must be a dict of {spec.meaning}, got {value!r}.')
            out[key] = Resolved({str(name): _resolve_section(spec.entry, entry, f'{field}.{name}', defaulted)
                                 for name, entry in value.items()}, field)
        else:
            if not present:
                if spec.default is REQUIRED:
                    raise ConfigError(f'{field} is missing: {spec.meaning}.')
                defaulted.add(field)
                value = spec.default
                out[key] = _freeze(value, field) if isinstance(value, Mapping) else value
                continue
            parsed = spec.parse(value, field)
            out[key] = _freeze(parsed, field) if isinstance(parsed, Mapping) else parsed
    return Resolved(out, path)


def _as_dict(config: Any) -> dict:
    if isinstance(config, Resolved):
        return config.to_dict()
    if hasattr(config, 'to_dict'):
        return config.to_dict()
    if isinstance(config, Mapping):
        return plain(config)
    raise ConfigError(f'a config must be an ml_collections.ConfigDict or a dict, got {type(config).__name__}.')


def spec_of(field: str) -> Leaf | Section | MapOf:
    """The schema entry of a dotted field name (map entries by any name; inside a free-form dict
    field, that field's entry); ConfigError when unknown."""
    node: Any = SCHEMA
    parts = field.split('.')
    walked = []
    for part in parts:
        walked.append(part)
        if isinstance(node, MapOf):
            node = node.entry
            continue
        if isinstance(node, Leaf) and node.kind == 'dict':
            return node
        if not isinstance(node, Section) or part not in node.fields:
            known = node.fields if isinstance(node, Section) else ()
            raise ConfigError(f'--config.{".".join(walked)} is not a config field'
                              f'{_nearest(part, known, ".".join(walked[:-1]))}')
        node = node.fields[part]
    return node


def migrate(config_dict: dict, *, warn=None) -> dict:
    """Renamed fields of an old config under their new names (`MIGRATIONS`); `warn(text)` says each."""
    out = json.loads(json.dumps(config_dict))
    for old, rule in MIGRATIONS.items():
        if not isinstance(rule, Renamed):
            continue
        *parents, leaf = old.split('.')
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        new_leaf = rule.new.split('.')[-1]
        if new_leaf not in node:
            node[new_leaf] = rule.values.get(value, value) if isinstance(value, str) else value
            if warn:
                warn(f'{old} = {value!r} was renamed: read as {rule.new} = {node[new_leaf]!r}.')
    return out


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _set(tree: dict, field: str, value: Any) -> None:
    *parents, leaf = field.split('.')
    node = tree
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[leaf] = value


def _lookup(tree: Mapping, field: str) -> tuple[bool, Any]:
    node: Any = tree
    for p in field.split('.'):
        if not isinstance(node, Mapping) or p not in node:
            return False, None
        node = node[p]
    return True, node


def resolve(config: Any, overrides: Mapping[str, str] | None = None, *, warn=None) -> Resolved:
    """The user's config (ConfigDict or dict) merged onto the schema's defaults, `overrides`
    (`{'stage1.lr': '1e-3'}`, command-line text) applied, old fields migrated, every field checked.
    A `Resolved` is returned as it is (overrides applied on top)."""
    tree = migrate(_as_dict(config), warn=warn)
    overridden = set()
    for field, text in (overrides or {}).items():
        spec = spec_of(field)
        if not isinstance(spec, Leaf):
            raise ConfigError(f'--config.{field} names a group of fields; set one of its fields instead.')
        inside = spec.kind == 'dict' and '.' in field and spec_of(field.rsplit('.', 1)[0]) is spec
        if inside:  # a value inside a free-form dict field (e.g. zoo.teachers.NAME.epochs): as Python reads it
            _set(tree, field, _literal(text) if isinstance(text, str) else text)
        else:
            _set(tree, field, spec.from_text(text, field) if isinstance(text, str) else spec.parse(text, field))
        overridden.add(field)
    defaulted: set = set()
    resolved = _resolve_section(SCHEMA, tree, '', defaulted)
    if isinstance(config, Resolved):  # every field is in its dict: keep which ones were defaults
        defaulted = set(config.defaulted) - overridden
    return Resolved(resolved._values, '', frozenset(defaulted))


def replace(config: Resolved, **sections: Mapping[str, Any]) -> Resolved:
    """A copy of a resolved config with some fields of some sections changed, checked again."""
    tree = config.to_dict()
    for section, fields in sections.items():
        for key, value in dict(fields).items():
            tree[section][key] = plain(value)
    out = resolve(tree)
    return Resolved(out._values, '', config.defaulted - {f'{s}.{k}' for s, f in sections.items() for k in f})


def stage_config(section: str = 'stage1', **fields: Any) -> Resolved:
    """One resolved stage section, `fields` over its defaults: for tools that train one stage alone
    (the step benchmarks, the tests)."""
    return _resolve_section(SCHEMA.fields[section], fields, section, set())


def one_stage_budget(config: Resolved) -> Resolved:
    """stage2's fields with `baseline_stage`'s set ones over them, and the one-stage epochs (see
    kamal_jax.recipes.one_stage)."""
    values = dict(config.stage2._values)
    values['epochs'] = len(config.target_tasks) * config.stage1.epochs + config.stage2.epochs
    values.update({k: v for k, v in config.baseline_stage.items() if v is not INHERIT})
    return Resolved(values, 'baseline_stage')


def adopt_stored(config: Resolved, stored: Mapping[str, Any] | None) -> Resolved:
    """Relaunching on a workdir whose stored config predates a field the user's config leaves at its
    default: the field takes what that stored run behaved as (`Added.behaved_as`), so the run resumes
    as what it ran (e.g. a config without `recipe` stored before recipes existed resumes as 'paper')."""
    if not stored:
        return config
    stored = migrate(dict(stored))
    changes: dict[str, dict] = {}
    top: dict = {}
    for field, rule in MIGRATIONS.items():
        if not isinstance(rule, Added) or field not in config.defaulted:
            continue
        present, value = _lookup(stored, field)
        if present and value != plain(rule.behaved_as):  # stored before the field, or as it behaved
            continue
        if '.' in field and not _lookup(stored, field.split('.')[0])[0]:
            continue  # the stored config has no such section at all
        if '.' in field:
            section, key = field.split('.', 1)
            changes.setdefault(section, {})[key] = rule.behaved_as
        else:
            top[field] = rule.behaved_as
    if not changes and not top:
        return config
    tree = config.to_dict()
    tree.update(top)
    for section, fields in changes.items():
        tree[section].update(fields)
    out = resolve(tree)
    changed = set(top) | {f'{s}.{k}' for s, f in changes.items() for k in f}
    return Resolved(out._values, '', config.defaulted - changed)


def stored_as_resolved(stored: Mapping[str, Any]) -> dict:
    """A config stored in a workdir (by any version) as the full dict the current code would store:
    renamed fields migrated, fields added since as what the run behaved as, the rest at their
    defaults. Fields the schema no longer knows are dropped (the code that stored them ignored them)."""
    tree = migrate(dict(stored))
    for field, rule in MIGRATIONS.items():
        if isinstance(rule, Added) and not _lookup(tree, field)[0]:
            if '.' not in field or isinstance(_lookup(tree, field.split('.')[0])[1], dict):
                _set(tree, field, rule.behaved_as)
    return _fill(SCHEMA, tree, '')


def _fill(section: Section, given: Any, path: str) -> dict:
    given = given if isinstance(given, dict) else {}
    out = {}
    for key, spec in section.fields.items():
        present = key in given
        if isinstance(spec, Section):
            out[key] = _fill(spec, given.get(key), key)
        elif isinstance(spec, MapOf):
            entries = given.get(key) if isinstance(given.get(key), dict) else {}
            out[key] = {name: _fill(spec.entry, e, key) for name, e in entries.items()}
        elif present:
            out[key] = given[key]
        elif spec.default is not REQUIRED:
            out[key] = plain(spec.default)
    return json.loads(json.dumps(out))


# ----------------------------------------------------------------------------- reference

def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Section):
        for key, spec in node.fields.items():
            yield from _walk(spec, f'{path}.{key}' if path else key)
    elif isinstance(node, MapOf):
        yield path, node
        yield from _walk(node.entry, f'{path}.NAME' if path != 'teachers.NAME.heads' else f'{path}.TASK')
    else:
        yield path, node


def fields() -> list[tuple[str, Leaf]]:
    """Every leaf field as (dotted name, spec); map entries appear under NAME / TASK."""
    out = []
    for path, spec in _walk(SCHEMA, ''):
        if isinstance(spec, Leaf):
            out.append((path.replace('heads.NAME', 'heads.TASK'), spec))
    return out


def _fmt_default(spec: Leaf) -> str:
    if spec.default is REQUIRED:
        return '**required**'
    if spec.default is None:
        return 'unset'
    value = spec.default
    if isinstance(value, tuple):
        value = '(' + ', '.join(repr(v) for v in value) + (',)' if len(value) == 1 else ')')
        return f'`{value}`'
    return f'`{value!r}`'


def reference() -> str:
    """docs/CONFIG.md: every field, its type, default and meaning, grouped by section."""
    groups: dict[str, list] = {}
    for path, spec in fields():
        head = path.split('.')[0] if '.' in path else ''
        groups.setdefault(head, []).append((path, spec))
    titles = {'': 'Top level', 'data': 'data', 'teachers': 'teachers', 'tasks': 'tasks', 'stage1': 'stage1',
              'stage2': 'stage2', 'baseline_stage': 'baseline_stage', 'unified': 'unified'}
    meanings = {'': 'what the run trains, and how it logs', 'data': DATA.meaning,
                'teachers': 'the pre-trained teachers, one entry per name (`teachers.NAME`), each with one '
                            'head per task it solves (`teachers.NAME.heads.TASK`)',
                'tasks': 'target tasks picked by class names (`tasks.NAME`): any classes some teacher knows, '
                         'served by every teacher that knows at least one of them',
                'stage1': STAGE1.meaning, 'stage2': STAGE2.meaning, 'baseline_stage': BASELINE_STAGE.meaning,
                'unified': UNIFIED.meaning}
    lines = ['# Configuration reference', '',
             'Generated from `kamal_jax/config_schema.py` by `python -m kamal_jax.config_schema > docs/CONFIG.md`;',
             'a test fails when the two differ. A config gives only the required fields and what it changes;',
             'every other field takes the default below. `kamal-jax --config FILE --print_config` prints a',
             "config resolved, marking the defaults. Any field can be set on the command line:",
             '`--config.stage1.lr=3e-3`.', '']
    for head in ('data', 'teachers', 'tasks', '', 'stage1', 'stage2', 'baseline_stage', 'unified'):
        lines += [f'## {titles[head]}', '', meanings[head][0].upper() + meanings[head][1:] + '.', '',
                  '| field | type | default | meaning |', '|---|---|---|---|']
        for path, spec in groups[head]:
            choices = f' (one of {", ".join(f"`{c}`" for c in spec.choices)})' if spec.choices else ''
            lines.append(f'| `{path}` | {spec.type_name()} | {_fmt_default(spec)} | {spec.meaning}{choices} |')
        lines.append('')
    lines += ['## Fields of older configs', '',
              'A workdir stores its resolved config. A config stored before a field existed behaves as the',
              'value below; a renamed field is read under its new name.', '',
              '| field | a stored config without it behaved as |', '|---|---|']
    for field, rule in MIGRATIONS.items():
        if isinstance(rule, Added):
            lines.append(f'| `{field}` | `{rule.behaved_as!r}` |')
        else:
            pairs = ', '.join(f'`{a}` -> `{b}`' for a, b in rule.values.items())
            lines.append(f'| `{field}` | renamed `{rule.new}` ({pairs}) |')
    return '\n'.join(lines) + '\n'


def describe(config: Resolved) -> str:
    """A resolved config as `--print_config` shows it: one `field = value` line each, defaults marked."""
    lines = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Resolved) and (node or path in ('teachers', 'baseline_stage')):
            for key, value in node.items():
                walk(value, f'{path}.{key}' if path else key)
            return
        mark = '  # default' if path in config.defaulted else ''
        lines.append(f'{path} = {plain(node)!r}{mark}')

    walk(config, '')
    return '\n'.join(lines)


if __name__ == '__main__':
    print(reference(), end='')
