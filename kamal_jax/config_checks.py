"""Every check of a run's config, in one place: each failure is one `ConfigError` sentence naming the
field, raised before the workdir is claimed. `validate` needs no data or weights (types and ranges
are the schema's, `kamal_jax.config_schema`); `check_data` runs once the images are loaded."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from kamal_jax import config_schema, models, selection
from kamal_jax.porting import generic
from kamal_jax.recipes import RECIPES, one_stage_config, task_label_arrays
from kamal_jax.recipes import student_loop
from kamal_jax.recipes.one_stage import OneStage
from kamal_jax.recipes.two_stage import TwoStage
from kamal_jax.recipes.context import compute_dtype
from kamal_jax.tasks import ConfigError, Plan, check_logit_slices, plan_from_config
from kamal_jax.train import views as views_lib
from kamal_jax.train import teacher_cache


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
    name = cfg.selector
    if name not in selection.SELECTORS:
        raise ConfigError(f'stage1.selector = {name!r} is unknown; valid selectors: '
                          f'{", ".join(selection.SELECTORS)}.')
    if cfg.selection == 'online' and not selection.SELECTORS[name].online:
        raise ConfigError(f'stage1.selector = {name!r} can only run offline; set stage1.selection = \'offline\'.')
    if cfg.selection == 'offline' and selection.SELECTORS[name].student:
        raise ConfigError(f'stage1.selector = {name!r} reads the student, so it runs online only; set '
                          f'stage1.selection = \'online\'.')


def check_student_loop(config: Any) -> None:
    """`baseline_stage.student_loop`: a known combiner, a start inside the budget, a cutout smaller
    than the image (the schedule against the steps is `check_data`'s)."""
    loop, field = config.baseline_stage.student_loop, student_loop.FIELD
    if loop.combiner not in selection.COMBINERS:
        raise ConfigError(f'{field}.combiner = {loop.combiner!r} is unknown; valid combiners: '
                          f'{", ".join(selection.COMBINERS)}.')
    if not 0 < loop.start < 1:
        raise ConfigError(f'{field}.start must be between 0 and 1 (the share of the steps before the first refit), '
                          f'got {loop.start!r}.')
    if not 0 <= loop.cutout < 1:
        raise ConfigError(f'{field}.cutout must be at least 0 and under 1 (a share of the image\'s side), got '
                          f'{loop.cutout!r}.')


def check_views(data: Any) -> None:
    """`data.views`: how many augmented views to pre-draw per image (0: a fresh view every step)."""
    k = data.views
    if k and not (data.crop_padding or data.flip):
        raise ConfigError(f'data.views = {k} pre-draws augmented views, but data.crop_padding = 0 and '
                          'data.flip = False draw none; set one of them, or data.views = 0.')


def check_input(config: Any) -> None:
    """How the training images reach the step: a records folder to train on, and views it rules out."""
    d = config.data
    path = d.train_records
    if path:
        from kamal_jax.data import records
        try:
            records.open_split(os.path.expanduser(path))  # opens and counts every shard
        except ValueError as e:
            raise ConfigError(f'data.train_records = {path!r} cannot be used: {e}.') from None
    if (path or d.streaming == 'always') and d.views:
        raise ConfigError(f'data.views = {d.views} pre-draws views of every training image in host '
                          f'memory, which {"data.train_records" if path else "data.streaming = always"} avoids; '
                          'set data.views = 0' + ('.' if path else ", or data.streaming = 'never'."))


class FolderFields(NamedTuple):
    """The data fields of your own images, and where their records are written."""
    train_folder: str
    eval_folder: str
    holdout_fraction: float
    data_dir: str  # where the records of a folder are written (as TFDS's builds: DEFAULT_DATA_DIR)


def folder_fields(data: Any) -> FolderFields:
    """`data.train_folder`, `data.eval_folder`, `data.holdout_fraction` of a resolved config, and the
    folder the records go to (`data.data_dir`, else TFDS's default)."""
    from kamal_jax.data.datasets import DEFAULT_DATA_DIR
    return FolderFields(data.train_folder, data.eval_folder, data.holdout_fraction,
                        os.path.expanduser(str(data.data_dir or DEFAULT_DATA_DIR)))


def check_folders(config: Any) -> FolderFields:
    """`data.train_folder`, `data.eval_folder`, `data.holdout_fraction`: folders that exist, an image
    size to resize them to, and a share of the training folder to hold out when nothing is labelled."""
    d = config.data
    f = folder_fields(d)
    if not d.name and not f.train_folder:
        raise ConfigError("data.name is missing: name a TFDS data set (e.g. 'kamal_cifar10'), or give your own "
                          'images as data.train_folder.')
    for key in ('train_folder', 'eval_folder'):
        path = getattr(f, key)
        if path and not os.path.isdir(os.path.expanduser(path)):
            raise ConfigError(f'data.{key} = {path!r} is not a folder.')
        if path and not d.image_size:
            raise ConfigError(f'data.{key} = {path!r} holds images of any size, so data.image_size must say '
                              'the size to resize them to, e.g. (32, 32).')
    if f.train_folder and d.train_records:
        raise ConfigError(f'data.train_folder = {f.train_folder!r} and data.train_records = {d.train_records!r} '
                          'both name the training images; keep one.')
    if not 0 < f.holdout_fraction < 1:
        raise ConfigError(f'data.holdout_fraction must be a number between 0 and 1 (the share of data.train_folder '
                          f'held out when data.eval_folder is not set), got {f.holdout_fraction!r}.')
    return f


def check_cache(config: Any, section: str, switch: str) -> None:
    """A cache of frozen nets' outputs needs fixed views and a known dtype."""
    cfg = config[section]
    if not cfg[switch]:
        return
    d = config.data
    if (d.crop_padding or d.flip) and not d.views:
        field = 'data.crop_padding' if d.crop_padding else 'data.flip'
        raise ConfigError(f'{section}.{switch} = True needs fixed views, but {field} = '
                          f'{d[field.split(".")[1]]!r} draws a random view each step; set '
                          f'{field} to {0 if field == "data.crop_padding" else False}, pre-draw a '
                          f'fixed number of views (data.views = K), or set '
                          f'{section}.{switch} = False.')
    if cfg.cache_dtype not in teacher_cache.FEATURE_DTYPES:
        raise ConfigError(f'{section}.cache_dtype must be one of {tuple(teacher_cache.FEATURE_DTYPES)}, '
                          f'got {cfg.cache_dtype!r}.')


def check_recipes(config: Any) -> tuple[str, tuple[str, ...]]:
    """The main recipe (`recipe`) and the baselines (`baselines`), each a known name, none twice."""
    valid = ', '.join(RECIPES)
    main = config.recipe
    if main not in RECIPES:
        raise ConfigError(f'recipe = {main!r} is unknown; valid recipes: {valid}.')
    names = tuple(config.baselines)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ConfigError(f'baselines names {unknown}, which are not baselines; valid baselines: {valid}.')
    if len(set(names)) != len(names):
        raise ConfigError(f'baselines lists a baseline twice: {list(names)}.')
    if main in names:
        raise ConfigError(f'baselines lists {main!r}, the main recipe (recipe = {main!r}); remove it from baselines.')
    return main, names


def check_teaching(config: Any, plan: Plan) -> None:
    """The per-teacher recipes learn a task from teachers that know all its classes in one slice of
    their logits (`Plan.group`); a task picked across teachers that each know some has none."""
    for field, name in (('recipe', config.recipe), *(('baselines', n) for n in config.baselines)):
        if not isinstance(RECIPES[name], (OneStage, TwoStage, student_loop.StudentLoop)):
            continue
        for task in plan.target_tasks:
            if not plan.group(task):
                some = ', '.join(dict.fromkeys(m.teacher for m in plan.members(task)))
                raise ConfigError(f"{field} names {name!r}, which learns each task from teachers that know all its "
                                  f"classes in one slice of their logits, but no teacher knows all of task {task!r}'s "
                                  f"({some} know some); use the recipe 'unified' or 'naive_union'.")


def validate(config: Any, workdir: str = '') -> Plan:
    """Everything that can be checked without touching data or weights (on the resolved config)."""
    config = config_schema.resolve(config)
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
    check_cache(config, 'stage1', 'teacher_cache')
    check_cache(config, 'stage2', 'component_cache')
    check_recipes(config)
    check_student_loop(config)
    check_teaching(config, plan)
    for teacher in plan.used_teachers:
        if generic.is_generic(teacher.arch) and generic.arch_error(teacher.arch):
            raise ConfigError(f'teachers.{teacher.name}.arch = {teacher.arch!r} is malformed: '
                              f'{generic.arch_error(teacher.arch)}.')
        if teacher.arch not in models.BACKBONES and teacher.arch != 'auto' and not generic.is_generic(teacher.arch):
            raise ConfigError(f'teachers.{teacher.name}.arch = {teacher.arch!r} is unknown; supported: '
                              f'{models.BACKBONES.describe()}, \'auto\' (read from the checkpoint), or any '
                              f'PyTorch classifier as \'torch:package.module:function\' or \'torchvision:NAME\'.')
    zoo = config.zoo
    if zoo:  # teachers the run trains itself: their output width is known now
        widths = {name: len(t.classes) if 'classes' in t and t.classes else sum(len(c) for _, c in t.heads)
                  for name, t in zoo.teachers.items()}  # one softmax, or several heads
        check_logit_slices(Plan(plan.tasks, tuple(t for t in plan.teachers if t.name in widths),
                                plan.target_tasks), widths)
    return plan


# ----------------------------------------------------------------------------- checks against the data

def check_data(config: Any, plan: Plan, train: Any, held_out: Any, devices: int) -> None:
    """What the loaded images can refute, before the workdir is claimed (the evaluation labels are
    checked as they are read, `pipeline.load_data`): both splits have one image shape, the supervised
    recipe finds its labels, a streamed split is not asked to sit in memory, every batch fits the
    images and devices, and the student loop's refits fit its steps."""
    if tuple(train.images.shape[1:]) != tuple(held_out.images.shape[1:]):
        field = 'data.train_records' if config.data.train_records else 'data.train_split'
        hint = ('write the records at the evaluation size' if field == 'data.train_records'
                else 'set data.image_size')
        raise ConfigError(f'{field} holds images of {tuple(train.images.shape[1:])}, but data.eval_split = '
                          f'{config.data.eval_split!r} of {tuple(held_out.images.shape[1:])}; {hint} '
                          f'(data.image_size = {tuple(config.data.image_size)}).')
    if 'supervised' in (config.recipe, *config.baselines):
        task_label_arrays(plan, train)  # raises ConfigError naming the missing label
    check_streaming_needs(config, train)
    check_budget(config, len(train.images), devices)
    if 'student_loop' in (config.recipe, *config.baselines):
        cfg = one_stage_config(config)
        student_loop.schedule(student_loop.total_steps(len(train.images), cfg), cfg.student_loop.start,
                              cfg.student_loop.refits)


def check_streaming_needs(config: Any, train: Any) -> None:
    """What needs the whole training split in host memory cannot run on a streamed one: say which."""
    from kamal_jax.data.records import RecordImages
    if not isinstance(train.images, RecordImages):
        return
    why = (f'the training images are read from disk ({train.images.nbytes / 2 ** 30:.1f} GiB decoded; '
           f"data.streaming = {config.data.streaming!r}, data.memory_limit_gb = "
           f"{config.data.memory_limit_gb}{', data.train_records' if config.data.train_records else ''})")
    k = views_lib.count(config.data)
    if k:
        raise ConfigError(f'data.views = {k} pre-draws {k} views of every training image in host memory, but {why}; '
                          "set data.views = 0, or data.streaming = 'never' to hold the split in memory.")
    name = config.stage1.selector
    if name in selection.SELECTORS and selection.SELECTORS[name].views:
        raise ConfigError(f'stage1.selector = {name!r} draws {selection.SELECTORS[name].views} views of every training '
                          f"image in host memory, but {why}; choose another selector, or data.streaming = 'never'.")


def check_budget(config: Any, train_size: int, devices: int) -> None:
    """Every stage's batch (and the one-stage recipes') against the training images and the devices."""
    sections = {'stage1': config.stage1, 'stage2': config.stage2}
    if config.baseline_stage.batch_size is not None:
        sections['baseline_stage'] = one_stage_config(config)
    limit = config.data.train_limit
    for section, cfg in sections.items():
        batch = int(cfg.batch_size)
        if batch > train_size:
            why = f' (data.train_limit = {limit})' if limit and limit <= train_size else ''
            raise ConfigError(f'{section}.batch_size = {batch} is larger than the {train_size} training '
                              f'images{why}; lower the batch size or use more images.')
        if batch % devices:
            raise ConfigError(f'{section}.batch_size = {batch} is not divisible by the {devices} devices of '
                              'the mesh; make it a multiple, or set num_devices.')
