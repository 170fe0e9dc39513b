"""Every check of a run's config that needs no data or weights, in one place: each failure is one
`ConfigError` sentence naming the field, raised before the workdir is claimed."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from kamal_jax import models, selection, stage_defaults
from kamal_jax.porting import generic
from kamal_jax.recipes import DEFAULT_RECIPE, RECIPES, one_stage_config
from kamal_jax.recipes.context import compute_dtype
from kamal_jax.tasks import ConfigError, Plan, check_logit_slices, plan_from_config
from kamal_jax.train import teacher_cache, views as views_lib

SELECTIONS = ('online', 'offline')
STREAMING_MODES = ('auto', 'always', 'never')
# stage1.mode (before selectors existed) -> the selector that does the same.
MODE_TO_SELECTOR = {'select': 'least_entropy', 'random': 'random', 'average': 'uniform'}


def check_stage(cfg: Any, field: str) -> None:
    if cfg.arch not in models.BACKBONES:
        raise ConfigError(f'{field}.arch = {cfg.arch!r} is unknown; supported: {models.BACKBONES.describe()}.')
    for key in ('epochs', 'batch_size'):
        if int(cfg[key]) <= 0:
            raise ConfigError(f'{field}.{key} must be positive, got {cfg[key]}.')
    if float(cfg.lr) <= 0:
        raise ConfigError(f'{field}.lr must be positive, got {cfg.lr}.')


def check_selection(cfg: Any) -> None:
    """`stage1.selection` says where selection runs, `stage1.selector` what it computes."""
    if 'mode' in cfg:
        raise ConfigError(f'stage1.mode was replaced by stage1.selector; for mode = {cfg.mode!r} set '
                          f'stage1.selector = {MODE_TO_SELECTOR.get(cfg.mode, "least_entropy")!r}.')
    if cfg.selection not in SELECTIONS:
        raise ConfigError(f'stage1.selection must be one of {SELECTIONS}, got {cfg.selection!r}.')
    name = cfg.get('selector', 'least_entropy')
    if name not in selection.SELECTORS:
        raise ConfigError(f'stage1.selector = {name!r} is unknown; valid selectors: '
                          f'{", ".join(selection.SELECTORS)}.')
    if cfg.selection == 'online' and not selection.SELECTORS[name].online:
        raise ConfigError(f'stage1.selector = {name!r} can only run offline; set stage1.selection = \'offline\'.')
    if cfg.selection == 'offline' and selection.SELECTORS[name].student:
        raise ConfigError(f'stage1.selector = {name!r} reads the student, so it runs online only; set '
                          f'stage1.selection = \'online\'.')


def check_views(data: Any) -> None:
    """`data.views`: how many augmented views to pre-draw per image (0: a fresh view every step)."""
    k = data.get('views', 0) or 0
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ConfigError(f'data.views must be a whole number >= 0 (0: a fresh view every step), got {k!r}.')
    if k and not (data.get('crop_padding', 0) or data.get('flip', False)):
        raise ConfigError(f'data.views = {k} pre-draws augmented views, but data.crop_padding = 0 and '
                          'data.flip = False draw none; set one of them, or data.views = 0.')


def check_input(config: Any) -> None:
    """How the training images reach the step (`stage_defaults.INPUT`): streaming, its memory
    limit, prefetch, and a records folder to train on."""
    d = config.data
    mode = d.get('streaming', 'auto')
    if mode not in STREAMING_MODES:
        raise ConfigError(f'data.streaming must be one of {", ".join(map(repr, STREAMING_MODES))} (\'auto\': from disk '
                          f'when the split exceeds data.memory_limit_gb), got {mode!r}.')
    limit = d.get('memory_limit_gb', 4.0)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
        raise ConfigError(f'data.memory_limit_gb must be a positive number of GiB, got {limit!r}.')
    prefetch = d.get('prefetch', -1)
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < -1:
        raise ConfigError(f'data.prefetch must be a whole number >= -1 (batches gathered ahead; 0: none; '
                          f'-1: 4 where the images come from disk or the devices are accelerators, else 0), '
                          f'got {prefetch!r}.')
    path = d.get('train_records', '') or ''
    if path:
        from kamal_jax.data import records
        try:
            records.open_split(os.path.expanduser(path))  # opens and counts every shard
        except ValueError as e:
            raise ConfigError(f'data.train_records = {path!r} cannot be used: {e}.') from None
    streamed = path or mode == 'always'
    if streamed and views_lib.count(d):
        raise ConfigError(f'data.views = {views_lib.count(d)} pre-draws views of every training image in host '
                          f'memory, which {"data.train_records" if path else "data.streaming = always"} avoids; '
                          'set data.views = 0' + ('.' if path else ", or data.streaming = 'never'."))


class FolderFields(NamedTuple):
    """The data fields of your own images (`stage_defaults.FOLDERS`), as strings and a float."""
    train_folder: str
    eval_folder: str
    holdout_fraction: float
    data_dir: str  # where the records of a folder are written (as TFDS's builds: DEFAULT_DATA_DIR)


def folder_fields(data: Any) -> FolderFields:
    """The one place these fields are read: a config written before they existed has their
    defaults (`stage_defaults.FOLDERS`)."""
    from kamal_jax.data.datasets import DEFAULT_DATA_DIR
    values = {k: data[k] if k in data else v for k, v in stage_defaults.FOLDERS.items()}
    data_dir = (data['data_dir'] if 'data_dir' in data else '') or DEFAULT_DATA_DIR
    return FolderFields(values['train_folder'] or '', values['eval_folder'] or '', values['holdout_fraction'],
                        os.path.expanduser(str(data_dir)))


def check_folders(config: Any) -> FolderFields:
    """`data.train_folder`, `data.eval_folder`, `data.holdout_fraction`: folders that exist, an image
    size to resize them to, and a share of the training folder to hold out when nothing is labelled."""
    d = config.data
    f = folder_fields(d)
    for key in ('train_folder', 'eval_folder'):
        path = getattr(f, key)
        if not isinstance(path, str):
            raise ConfigError(f'data.{key} must be a folder path (a string; \'\': none), got {path!r}.')
        if path and not os.path.isdir(os.path.expanduser(path)):
            raise ConfigError(f'data.{key} = {path!r} is not a folder.')
        if path and not (d['image_size'] if 'image_size' in d else None):
            raise ConfigError(f'data.{key} = {path!r} holds images of any size, so data.image_size must say '
                              'the size to resize them to, e.g. (32, 32).')
    if f.train_folder and (d.train_records if 'train_records' in d else ''):
        raise ConfigError(f'data.train_folder = {f.train_folder!r} and data.train_records = {d.train_records!r} '
                          'both name the training images; keep one.')
    share = f.holdout_fraction
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise ConfigError(f'data.holdout_fraction must be a number between 0 and 1 (the share of data.train_folder '
                          f'held out when data.eval_folder is not set), got {share!r}.')
    return f


def check_cadence(config: Any) -> None:
    """`log_every` (steps per log line), `eval_every` (steps between held-out evaluations),
    `steps_per_call` (training steps per jitted call) and `profile_steps` (steps traced per stage)."""
    for key, low, meaning in (('log_every', 1, ''), ('eval_every', 0, ' (0: no evaluation during training)'),
                              ('steps_per_call', 1, ''), ('profile_steps', 0, ' (0: no profile)')):
        value = config.get(key, low)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f'{key} must be a whole number >= {low}{meaning}, got {value!r}.')


def check_cache(config: Any, section: str, switch: str) -> None:
    """A cache of frozen nets' outputs needs fixed views, a positive size limit and a known dtype."""
    cfg = config[section]
    if not cfg.get(switch, False):
        return
    d = config.data
    if (d.get('crop_padding', 0) or d.get('flip', False)) and not views_lib.count(d):
        field = 'data.crop_padding' if d.get('crop_padding', 0) else 'data.flip'
        raise ConfigError(f'{section}.{switch} = True needs fixed views, but {field} = '
                          f'{d.get(field.split(".")[1])!r} draws a random view each step; set '
                          f'{field} to {0 if field == "data.crop_padding" else False}, pre-draw a '
                          f'fixed number of views (data.views = K), or set '
                          f'{section}.{switch} = False.')
    if float(cfg.get('cache_limit_gb', 8.0)) <= 0:
        raise ConfigError(f'{section}.cache_limit_gb must be positive, got {cfg.cache_limit_gb}.')
    if cfg.get('cache_dtype', 'float16') not in teacher_cache.FEATURE_DTYPES:
        raise ConfigError(f'{section}.cache_dtype must be one of {tuple(teacher_cache.FEATURE_DTYPES)}, '
                          f'got {cfg.cache_dtype!r}.')


def check_recipes(config: Any) -> tuple[str, tuple[str, ...]]:
    """The main recipe (`recipe`, default `recipes.DEFAULT_RECIPE`) and the baselines (`baselines`,
    default none)."""
    valid = ', '.join(RECIPES)
    main = config.get('recipe') or DEFAULT_RECIPE
    if main not in RECIPES:
        raise ConfigError(f'recipe = {main!r} is unknown; valid recipes: {valid}.')
    if isinstance(config.get('baselines'), str):
        raise ConfigError(f'baselines must be a tuple of names, got the string {config.baselines!r}; '
                          f'valid baselines: {valid}.')
    names = tuple(config.get('baselines', ()) or ())
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ConfigError(f'baselines names {unknown}, which are not baselines; valid baselines: {valid}.')
    if len(set(names)) != len(names):
        raise ConfigError(f'baselines lists a baseline twice: {list(names)}.')
    if main in names:
        raise ConfigError(f'baselines lists {main!r}, the main recipe (recipe = {main!r}); remove it from baselines.')
    overrides = config.get('baseline_stage') or {}
    extra = sorted(k for k in overrides if k not in config.stage2)
    if extra:
        raise ConfigError(f'baseline_stage sets {extra}, which are not fields of stage2 '
                          f'({", ".join(sorted(config.stage2))}).')
    if int(one_stage_config(config).epochs) <= 0:
        raise ConfigError('baseline_stage.epochs must be positive.')
    return main, names


def validate(config: Any, workdir: str = '') -> Plan:
    """Everything that can be checked without touching data or weights."""
    plan = plan_from_config(config, workdir)
    check_stage(config.stage1, 'stage1')
    check_stage(config.stage2, 'stage2')
    check_selection(config.stage1)
    if compute_dtype(config) not in models.registry.COMPUTE_DTYPES:
        raise ConfigError(f'compute_dtype = {config.compute_dtype!r} is not supported; choose one of '
                          f'{", ".join(models.registry.COMPUTE_DTYPES)}.')
    check_views(config.data)
    check_folders(config)
    check_input(config)
    check_cadence(config)
    check_cache(config, 'stage1', 'teacher_cache')
    check_cache(config, 'stage2', 'component_cache')
    check_recipes(config)
    for teacher in plan.used_teachers:
        if generic.is_generic(teacher.arch) and generic.arch_error(teacher.arch):
            raise ConfigError(f'teachers.{teacher.name}.arch = {teacher.arch!r} is malformed: '
                              f'{generic.arch_error(teacher.arch)}.')
        if teacher.arch not in models.BACKBONES and teacher.arch != 'auto' and not generic.is_generic(teacher.arch):
            raise ConfigError(f'teachers.{teacher.name}.arch = {teacher.arch!r} is unknown; supported: '
                              f'{models.BACKBONES.describe()}, \'auto\' (read from the checkpoint), or any '
                              f'PyTorch classifier as \'torch:package.module:function\' or \'torchvision:NAME\'.')
    zoo = config.get('zoo')
    if zoo:  # teachers the run trains itself: their output width is known now
        widths = {name: len(t.classes) if t.get('classes') else sum(len(c) for _, c in t.heads)
                  for name, t in zoo.teachers.items()}  # one softmax, or several heads
        check_logit_slices(Plan(plan.tasks, tuple(t for t in plan.teachers if t.name in widths),
                                plan.target_tasks), widths)
    return plan
