"""The whole run: config -> teachers -> stage 1 (components) -> stage 2 (target) -> summary, export.

Data flows one way; every check on the config happens before the first training step, and a
rerun with the same workdir resumes each stage from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
import zlib
from typing import Any

import jax
import numpy as np

from kamal_jax import ambiguity, baselines as baselines_lib, export, models, summary as summary_lib
from kamal_jax import workdir as workdir_lib
from kamal_jax.tasks import ConfigError, Plan, check_data_labels, check_logit_slices, plan_from_config
from kamal_jax.teachers import load_teacher
from kamal_jax.files import sha256
from kamal_jax.train import distributed, evaluate as eval_lib, sharding, teacher_cache, views as views_lib
from kamal_jax.train.nets import Net
from kamal_jax.train.state import count_params
from kamal_jax.train.steps import LossWeights, Stage1, Stage2, make_pairs
from kamal_jax.train.trainer import train_student

log = logging.getLogger('kamal_jax')

SELECTIONS = ('online', 'offline')
STAGE1_MODES = ('select', 'random', 'average')


# ----------------------------------------------------------------------------- validation

def _check_stage(cfg: Any, field: str) -> None:
    if cfg.arch not in models.BACKBONES:
        raise ConfigError(f'{field}.arch = {cfg.arch!r} is unknown; supported: '
                          f'{", ".join(sorted(models.BACKBONES))}.')
    for key in ('epochs', 'batch_size'):
        if int(cfg[key]) <= 0:
            raise ConfigError(f'{field}.{key} must be positive, got {cfg[key]}.')
    if float(cfg.lr) <= 0:
        raise ConfigError(f'{field}.lr must be positive, got {cfg.lr}.')


def _check_cache(config: Any, section: str, switch: str) -> None:
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


def validate(config: Any, workdir: str = '') -> Plan:
    """Everything that can be checked without touching data or weights."""
    plan = plan_from_config(config, workdir)
    _check_stage(config.stage1, 'stage1')
    _check_stage(config.stage2, 'stage2')
    if config.stage1.selection not in SELECTIONS:
        raise ConfigError(f'stage1.selection must be one of {SELECTIONS}, got {config.stage1.selection!r}.')
    if config.stage1.get('mode', 'select') not in STAGE1_MODES:
        raise ConfigError(f'stage1.mode must be one of {STAGE1_MODES}, got {config.stage1.mode!r}.')
    if compute_dtype(config) not in models.registry.COMPUTE_DTYPES:
        raise ConfigError(f'compute_dtype = {config.compute_dtype!r} is not supported; choose one of '
                          f'{", ".join(models.registry.COMPUTE_DTYPES)}.')
    views_lib.check(config.data)
    _check_cache(config, 'stage1', 'teacher_cache')
    _check_cache(config, 'stage2', 'component_cache')
    baselines_lib.check_config(config)
    for teacher in plan.used_teachers:
        if teacher.arch not in models.BACKBONES:
            raise ConfigError(f'teachers.{teacher.name}.arch = {teacher.arch!r} is unknown; supported: '
                              f'{", ".join(sorted(models.BACKBONES))}.')
    zoo = config.get('zoo')
    if zoo:  # teachers the run trains itself: their output width is known now
        widths = {name: len(t.classes) if t.get('classes') else sum(len(c) for _, c in t.heads)
                  for name, t in zoo.teachers.items()}  # one softmax, or several heads
        check_logit_slices(Plan(plan.tasks, tuple(t for t in plan.teachers if t.name in widths),
                                plan.target_tasks), widths)
    return plan


# ----------------------------------------------------------------------------- data and teachers

def load_split(config: Any, split: str):
    from kamal_jax.data import datasets  # TensorFlow is imported only when data is read.
    d = config.data
    field = 'data.train_split' if split == d.train_split else 'data.eval_split'
    try:
        ds = datasets.load(d.name, split, data_dir=d.get('data_dir') or None,
                           manual_dir=d.get('manual_dir') or None,
                           image_size=tuple(d.image_size) if d.get('image_size') else None)
    except (ValueError, AssertionError) as e:  # TFDS reports bad split specs this way
        raise ConfigError(f'{field} = {split!r} of dataset {d.name!r} cannot be read: {e}') from None
    limit = int(d.get('train_limit' if split == d.train_split else 'eval_limit', 0) or 0)
    if limit and limit < len(ds.images):
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(ds.images))[:limit])
        ds = type(ds)(images=ds.images[keep], labels={k: v[keep] for k, v in ds.labels.items()},
                      label_names=ds.label_names, name=ds.name, split=ds.split)
    if len(ds.images) == 0:
        raise ConfigError(f'{field} = {split!r} of dataset {d.name!r} is empty.')
    return ds


def ensure_zoo_teachers(config: Any, plan: Plan, workdir: str) -> None:
    """Trains the teachers a config makes itself (config.zoo), in a separate PyTorch process."""
    missing = [t for t in plan.used_teachers if not os.path.isfile(t.checkpoint)]
    zoo = config.get('zoo')
    if not missing or not zoo:
        return
    out = os.path.join(workdir, 'zoo')
    os.makedirs(out, exist_ok=True)
    spec = os.path.join(out, 'zoo_config.json')
    with open(spec, 'w') as f:
        json.dump({'data': config.data.to_dict(), 'seed': config.seed, **zoo.to_dict()}, f, indent=2)
    log.info('training %d teacher(s) in PyTorch: %s', len(missing), ', '.join(t.name for t in missing))
    result = subprocess.run([sys.executable, '-m', 'kamal_jax.zoo', '--config_json', spec, '--out', out])
    if result.returncode:
        raise RuntimeError(f'teacher training failed (exit {result.returncode}); see the output above.')


# ----------------------------------------------------------------------------- stages

def compute_dtype(config: Any) -> str:
    """'float32' (default) or 'bfloat16': activations of trained and frozen nets in training steps;
    params, optimiser state, losses and entropies stay float32."""
    return str(config.get('compute_dtype', 'float32') or 'float32')


def student_net(name: str, cfg: Any, heads, data_cfg: Any, dtype: str = 'float32') -> Net:
    widths = tuple(cfg.get('widths') or ())
    net = Net(name, cfg.arch, models.multihead(cfg.arch, heads, widths or None),
              tuple(data_cfg.mean), tuple(data_cfg.std), widths=widths)
    return net.with_compute_dtype(dtype)


def export_net(directory: str, net: Net, variables: Any, plan: Plan, image_size) -> str:
    """Writes a trained multi-head net where `kamal_jax.load_student` reads it (call on process 0)."""
    return export.save_student(directory, arch=net.arch, widths=net.widths, heads=net.module.heads,
                               variables=sharding.to_host(variables), tasks=plan.tasks, mean=net.mean,
                               std=net.std, image_size=image_size)


def offline_selection(task: str, teachers, frozen, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The reference recipe: least-ambiguous teacher per sample, once, on the un-augmented view."""
    ent = np.stack([ambiguity.entropy(eval_lib.predict(t, frozen[t.name], images, batch_size)[task])
                    for t in teachers])
    return np.asarray(ambiguity.select_least_ambiguous(ent), np.int32)


def selection_report(task: str, teachers, frozen, split, plan: Plan, batch_size: int) -> dict:
    """On labelled held-out data: how often each teacher wins, and how often the winner is right."""
    t = plan.tasks[task]
    if t.label_key not in split.labels:
        return {}
    target = eval_lib.task_targets(t, split.labels, split.label_names)
    valid = target >= 0
    logits = [eval_lib.predict(n, frozen[n.name], split.images, batch_size)[task][valid] for n in teachers]
    selected = np.asarray(ambiguity.select_least_ambiguous(np.stack([ambiguity.entropy(l) for l in logits])))
    correct = np.stack([np.argmax(l, -1) == target[valid] for l in logits])
    return {
        'selected_fraction': {n.name: float(np.mean(selected == i)) for i, n in enumerate(teachers)},
        'selected_teacher_accuracy': float(np.mean(correct[selected, np.arange(len(selected))])),
        'oracle_accuracy': float(np.mean(correct.any(0))),
    }


def run_stage1(task, plan, teachers, frozen, train, config, mesh, workdir):
    cfg = config.stage1
    dtype = compute_dtype(config)
    group = [teachers[t.name] for t in plan.group(task)]
    student = student_net(f'component_{task}', cfg, [(task, plan.tasks[task].num_classes)], config.data,
                          dtype)
    overrides = cfg.get('tap_pairs') or {}
    pairs = {t.name: (make_pairs(t, student, overrides.get(t.name)) if cfg.feature_weight else ())
             for t in group}
    cached = bool(cfg.get('teacher_cache', False))
    stage = Stage1(task, student, tuple(t.with_compute_dtype(dtype) for t in group), pairs,
                   LossWeights.from_config(cfg),
                   selection=cfg.selection, mode=cfg.get('mode', 'select'), cached=cached)
    arrays = {'image': train.images}
    group_frozen = {t.name: frozen[t.name] for t in group}
    # Cached, offline, selecting: the cache build selects from the logits it computes and stores only
    # the selected teacher's features, so the teachers run once per image.
    selected_only = cached and stage.selection == 'offline' and stage.mode == 'select'
    if cfg.selection == 'offline' and not selected_only:
        arrays['selected'] = offline_selection(task, group, frozen, train.images, config.eval_batch_size)
    if cached:
        if selected_only:
            stage = dataclasses.replace(stage, selected_slots=teacher_cache.selected_slots(
                stage, group_frozen, train.images.shape[1:]))
        arrays.update(_stage1_cache(task, plan, stage, group_frozen, train, config, workdir,
                                    arrays.get('selected')))
        group_frozen = {}  # the step never runs the teachers
    rng = jax.random.fold_in(jax.random.key(config.seed), zlib.crc32(task.encode()) % (1 << 30))
    variables, metrics = train_student(
        name=f'stage1/{task}', student=student, loss_fn=stage.loss,
        bridges=stage.init_bridges(rng, cfg.get('bridge_width_ratio', 0.5)), cfg=cfg, arrays=arrays,
        frozen=group_frozen, mesh=mesh, seed=config.seed,
        ckpt_dir=os.path.join(workdir, 'stage1', task), log_every=config.log_every,
        **views_lib.step_augmentation(config.data))
    return student, variables, metrics


def _data_key(config: Any, train) -> dict:
    """What the training images are and how the frozen nets see them: part of every cache's key."""
    d = config.data
    return {'data': {'name': d.name, 'split': d.train_split, 'size': len(train.images),
                     'train_limit': int(d.get('train_limit', 0) or 0), 'seed': config.seed,
                     'image_size': list(d.get('image_size') or ())},
            'views': views_lib.cache_key(d, train.images.shape[1:])}


def _net_key(net: Net, digest: str, widths) -> dict:
    return {'sha256': digest, 'arch': net.arch, 'widths': list(widths), 'mean': list(net.mean),
            'std': list(net.std), 'compute_dtype': str(net.dtype or 'float32')}


def _load_cache(what, path, stage, frozen, train, config, cfg, key, selected=None) -> dict:
    """The stage's cached frozen outputs on the fixed views (process 0 builds, the others then read)."""
    return distributed.primary_first(lambda: teacher_cache.load_or_build(
        path, stage=stage, frozen=frozen, images=train.images, key={**key, **_data_key(config, train)},
        selected=selected, batch_size=config.eval_batch_size, limit_gb=float(cfg.get('cache_limit_gb', 8.0)),
        feature_dtype=cfg.get('cache_dtype', 'float16')), f'building the {what}')


def _stage1_cache(task, plan, stage, frozen, train, config, workdir, selected=None) -> dict:
    """The teachers' cached outputs, keyed by their checkpoints' hashes."""
    specs = {t.name: t for t in plan.group(task)}
    key = {'teachers': {t.name: _net_key(t, sha256(specs[t.name].checkpoint), specs[t.name].widths)
                        for t in stage.teachers}}
    return _load_cache('stage-1 teacher cache', os.path.join(workdir, 'cache', 'stage1', task), stage, frozen,
                       train, config, config.stage1, key, selected)


def _stage2_cache(stage, frozen, train, config, workdir) -> dict:
    """The component nets' cached outputs, keyed by hashes of their trained variables."""
    key = {'components': {c.name: {**_net_key(c, teacher_cache.variables_sha256(frozen[c.name]), c.widths),
                                   'task': task} for task, c in stage.components}}
    return _load_cache('stage-2 component cache', os.path.join(workdir, 'cache', 'stage2'), stage, frozen,
                       train, config, config.stage2, key)


def run_stage2(plan, components, train, config, mesh, workdir):
    cfg = config.stage2
    dtype = compute_dtype(config)
    target = student_net('target', cfg, [(t, plan.tasks[t].num_classes) for t in plan.target_tasks],
                         config.data, dtype)
    comps = tuple((task, components[task][0].with_compute_dtype(dtype)) for task in plan.target_tasks)
    overrides = cfg.get('tap_pairs') or {}
    pairs = {c.name: (make_pairs(c, target, overrides.get(c.name)) if cfg.feature_weight else ())
             for _, c in comps}
    cached = bool(cfg.get('component_cache', False))
    stage = Stage2(target, comps, pairs, LossWeights.from_config(cfg), cached=cached)
    arrays = {'image': train.images}
    frozen = {c.name: components[t][1] for t, c in comps}
    if cached:
        arrays.update(_stage2_cache(stage, frozen, train, config, workdir))
        frozen = {}  # the step never runs the component nets
    variables, metrics = train_student(
        name='stage2', student=target, loss_fn=stage.loss,
        bridges=stage.init_bridges(jax.random.fold_in(jax.random.key(config.seed), 2)), cfg=cfg,
        arrays=arrays, frozen=frozen, mesh=mesh,
        seed=config.seed + 1, ckpt_dir=os.path.join(workdir, 'stage2'), log_every=config.log_every,
        **views_lib.step_augmentation(config.data))
    return target, variables, metrics


# ----------------------------------------------------------------------------- the run

def _log_to_file(workdir: str) -> None:
    path = os.path.join(workdir, 'log.txt')
    if not any(getattr(h, 'baseFilename', None) == path for h in log.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter('%(asctime)s %(message)s'))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def run(config: Any, workdir: str, *, overwrite: bool = False) -> dict:
    """Runs both stages and returns the summary (also written to WORKDIR/summary.{json,md})."""
    workdir = os.path.abspath(workdir)
    plan = validate(config, workdir)
    train = load_split(config, config.data.train_split)  # data problems stop us before the
    held_out = load_split(config, config.data.eval_split)  # workdir is claimed
    check_data_labels(plan, held_out.label_names, config.data.eval_split)
    distributed.check_same_config(config.to_dict())  # several processes: the same config on each
    # Only process 0 writes the workdir files; orbax checkpoints are written by all processes.
    resumed = distributed.primary_first(
        lambda: workdir_lib.prepare(workdir, config.to_dict(), overwrite=overwrite)
        if distributed.is_primary() else os.path.isfile(os.path.join(workdir, workdir_lib.CONFIG_FILE)),
        'claiming the workdir')
    if distributed.is_primary():
        _log_to_file(workdir)
    log.info('%s run in %s; target tasks: %s', 'resuming' if resumed else 'starting', workdir,
             ', '.join(plan.target_tasks))
    image_size = tuple(train.images.shape[1:3])
    distributed.primary_first(lambda: ensure_zoo_teachers(config, plan, workdir)
                              if distributed.is_primary() else None, 'training the zoo teachers')
    mesh = sharding.make_mesh(config.get('num_devices', -1))
    log.info('mesh: %d device(s) (%s); %d training images of %s, %d held out', mesh.size,
             jax.devices()[0].platform, len(train.images), train.images.shape[1:], len(held_out.images))
    n_views = views_lib.count(config.data)
    if n_views:
        t0 = time.perf_counter()
        train = views_lib.expand_split(train, config.data, config.seed)
        log.info('pre-drew %d augmented views of each training image (%.1f MiB in memory, %.1fs)', n_views,
                 train.images.nbytes / 2 ** 20, time.perf_counter() - t0)

    def load_teachers():  # process 0 ports and caches them, the others then read the cache
        return {spec.name: load_teacher(spec, os.path.join(workdir, 'teachers'), image_size)
                for spec in plan.used_teachers}
    loaded = distributed.primary_first(load_teachers, 'loading the teachers')
    teachers = {name: net for name, (net, _) in loaded.items()}
    frozen = {name: variables for name, (_, variables) in loaded.items()}
    check_logit_slices(plan, {n: t.module.num_classes for n, t in teachers.items()})
    frozen = sharding.put_replicated(frozen, mesh)

    entries, wall = {}, {}
    bs = config.eval_batch_size
    for name, net in teachers.items():
        tasks = {t: plan.tasks[t] for t in net.heads if t in plan.target_tasks}
        acc = eval_lib.evaluate(net, frozen[name], held_out, tasks, bs)
        entries[name] = summary_lib.model_entry('teacher', net.arch, count_params(frozen[name]['params']),
                                                tasks, acc, flops=eval_lib.forward_flops(net, frozen[name],
                                                                                         held_out.images.shape[1:]))
        log.info('teacher %s (%s): %s', name, net.arch, _fmt(acc))

    t0 = time.perf_counter()
    components = {}
    for task in plan.target_tasks:
        student, variables, metrics = run_stage1(task, plan, teachers, frozen, train, config, mesh, workdir)
        components[task] = (student, variables)
        acc = eval_lib.evaluate(student, variables, held_out, {task: plan.tasks[task]}, bs)
        report = selection_report(task, [teachers[t.name] for t in plan.group(task)], frozen, held_out,
                                  plan, bs)
        entries[student.name] = summary_lib.model_entry(
            'component', student.arch, count_params(variables['params']), [task], acc,
            flops=eval_lib.forward_flops(student, variables, held_out.images.shape[1:]),
            selection=report, final_train_metrics=_floats(metrics))
        log.info('component %s: %s; selection on held-out data: %s', task, _fmt(acc), report)
    wall['stage1'] = time.perf_counter() - t0

    t0 = time.perf_counter()
    target, variables, metrics = run_stage2(plan, components, train, config, mesh, workdir)
    acc = eval_lib.evaluate(target, variables, held_out, {t: plan.tasks[t] for t in plan.target_tasks}, bs)
    entries['target'] = summary_lib.model_entry('target', target.arch, count_params(variables['params']),
                                                plan.target_tasks, acc, final_train_metrics=_floats(metrics),
                                                flops=eval_lib.forward_flops(target, variables,
                                                                             held_out.images.shape[1:]))
    wall['stage2'] = time.perf_counter() - t0

    log.info('target: %s', _fmt(acc))
    if distributed.is_primary():
        export_net(os.path.join(workdir, 'export'), target, variables, plan, image_size)

    data_info = {'name': config.data.name, 'train': len(train.images) // max(n_views, 1),
                 'eval': len(held_out.images)}
    pending = list(baselines_lib.check_config(config))

    def publish() -> tuple[dict, str]:
        """Writes the summary as it stands, so a long run shows its main result before its baselines."""
        extra = {'pending_baselines': list(pending)} if pending else {}
        result = summary_lib.build(plan.tasks, plan.target_tasks, entries, wall, data=data_info, **extra)
        return result, (summary_lib.write(workdir, result) if distributed.is_primary() else '')

    def add_baseline(key: str, entry: dict, seconds: float) -> None:
        entry.setdefault('flops', entries['target']['flops'])  # every baseline has the target's architecture
        entries[key], wall[key] = entry, seconds
        pending.remove(key.removeprefix('baseline_'))
        publish()

    if pending:
        publish()
        log.info('summary so far in %s; baselines to train: %s', os.path.join(workdir, 'summary.md'),
                 ', '.join(pending))
    baselines_lib.run_all(config, plan, teachers, frozen, train, held_out, mesh, workdir, on_result=add_baseline)
    result, table = publish()
    if distributed.is_primary():
        log.info('summary (also in %s):\n%s', os.path.join(workdir, 'summary.md'), table)
    distributed.barrier('kamal_jax_run_done')
    return result


def _fmt(acc: dict) -> str:
    return ', '.join(f'{t} {100 * a:.1f}%' for t, a in acc.items())


def _floats(metrics: dict) -> dict:
    return {k: round(float(v), 5) for k, v in metrics.items()}
