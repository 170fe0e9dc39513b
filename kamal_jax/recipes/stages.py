"""The paper's two stages as steps of a recipe: stage 1 (one component net per task, from its
teachers) and stage 2 (the target net, from the components), with their selection and caches."""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import jax
import numpy as np

from kamal_jax import selection
from kamal_jax.files import sha256
from kamal_jax.layout import RecipeDirs
from kamal_jax.recipes.context import compute_dtype, loss_weights, selector_of, student_net
from kamal_jax.tasks import ConfigError, Plan
from kamal_jax.train import distributed, evaluate as eval_lib, input as input_lib, teacher_cache, views as views_lib
from kamal_jax.train.nets import Net
from kamal_jax.train.objectives import Amalgamate, Distill, make_pairs
from kamal_jax.train.trainer import train_student


def selection_context(task: str, teachers, frozen, images: np.ndarray, batch_size: int,
                      selector: selection.Selector, data: Any = None, seed: int = 0) -> selection.Context:
    """The teachers' task logits on `images` as they are, and on the selector's K augmented views
    (`selector.views`, drawn by `views.predraw` from a seed-fixed rng with `data`'s crop padding and
    flip, or 2-pixel shifts when the data has no augmentation)."""
    logits = tuple(eval_lib.predict(t, frozen[t.name], images, batch_size)[task] for t in teachers)
    if not selector.views:
        return selection.Context(logits)
    d = data or {}
    drawn = views_lib.predraw(images, selector.views, crop_padding=d.crop_padding or 2,
                              flip=d.flip, seed=seed + 0x5e1)
    view_logits = tuple(eval_lib.predict(t, frozen[t.name], drawn, batch_size)[task].reshape(
        selector.views, len(images), -1) for t in teachers)
    return selection.Context(logits, view_logits=view_logits)


def fit_selector(task: str, teachers, frozen, images: np.ndarray, batch_size: int,
                 selector: selection.Selector, data: Any = None, seed: int = 0) -> Any:
    """The selector's params, fitted on the training images (None when it fits nothing)."""
    if selector.fit is None:
        return None
    return selector.fit(selection_context(task, teachers, frozen, images, batch_size, selector, data, seed))


def offline_selection(task: str, teachers, frozen, images: np.ndarray, batch_size: int,
                      selector: selection.Selector = selection.SELECTORS['least_entropy'],
                      rng: jax.Array | None = None, data: Any = None, seed: int = 0) -> np.ndarray:
    """Per-sample teacher weights [N, teachers], once, on the un-augmented view (as the authors' code)
    and the selector's augmented views; a fitted selector is fitted on these same training images."""
    if selector.student:
        raise ConfigError(f'selector {selector.name!r} reads the student and cannot run offline.')
    context = selection_context(task, teachers, frozen, images, batch_size, selector, data, seed)
    params = selector.fit(context) if selector.fit is not None else None
    return np.asarray(selector(context, rng, params), np.float32)


def fitted_target(task: str, teachers, frozen, images: np.ndarray, batch_size: int,
                  combiner: selection.Combiner, temperature: float) -> np.ndarray:
    """[N, classes] float32: a fitted combiner's target for every training row (each pre-drawn view
    is a row), fitted label-free on those same rows at its default hyper-parameters, once."""
    context = selection.Context(tuple(eval_lib.predict(t, frozen[t.name], images, batch_size)[task]
                                      for t in teachers))
    return np.asarray(combiner(context, temperature, combiner.fit_default(context)), np.float32)


def selection_arrays(weights: np.ndarray, selector: selection.Selector) -> dict:
    """The batch arrays an offline selection travels as: teacher indices when hard, else weights."""
    if selector.hard:
        return {'selected': np.asarray(selection.choice(weights))}
    return {'teacher_weights': weights}


def selection_report(task: str, teachers, frozen, split, plan: Plan, batch_size: int,
                     selector: selection.Selector = selection.SELECTORS['least_entropy'], params: Any = None,
                     data: Any = None, seed: int = 0, student: tuple | None = None) -> dict:
    """On labelled held-out data: each teacher's share of the selector's weight, and how often the
    selected teacher is right (weighted by the selector's weights), against the oracle. `params` are
    the selector's, fitted on the training images (`fit_selector`); a selector that reads the student
    sees `student` = (net, variables), the trained component, i.e. what it picks at the end."""
    t = plan.tasks[task]
    if t.label_key not in split.labels:
        return {}
    target = eval_lib.task_targets(t, split.labels, split.label_names)
    valid = target >= 0
    context = selection_context(task, teachers, frozen, split.images, batch_size, selector, data, seed)
    logits = [l[valid] for l in context.teacher_logits]
    views = context.view_logits and tuple(v[:, valid] for v in context.view_logits)
    student_logits = None
    if selector.student and student is not None:
        student_logits = eval_lib.predict(student[0], student[1], split.images, batch_size)[task][valid]
    context = selection.Context(tuple(logits), student_logits, views)
    weights = np.asarray(selector(context, jax.random.key(0), params), np.float64)
    correct = np.stack([np.argmax(l, -1) == target[valid] for l in logits])
    return {
        'selected_fraction': {n.name: float(np.mean(weights[:, i])) for i, n in enumerate(teachers)},
        'selected_teacher_accuracy': float(np.mean(np.sum(weights * correct.T, axis=-1))),
        'oracle_accuracy': float(np.mean(correct.any(0))),
    }


def _task_rng(seed: int, task: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(task.encode()) % (1 << 30))


def run_stage1(task, plan, teachers, frozen, train, config, mesh, dirs: RecipeDirs, monitoring=None):
    """Trains (or resumes) the component net of `task` in `dirs.stage1(task)`; `monitoring(logdir, net)`
    (optional) says how its curves are recorded (`Run.monitoring`)."""
    where = dirs.stage1(task)
    cfg = config.stage1
    dtype = compute_dtype(config)
    group = [teachers[t.name] for t in plan.group(task)]
    student = student_net(f'component_{task}', cfg, [(task, plan.tasks[task].num_classes)], config.data,
                          dtype)
    overrides = cfg.tap_pairs
    pairs = {t.name: (make_pairs(t, student, overrides[t.name] if t.name in overrides else None)
                      if cfg.feature_weight else ())
             for t in group}
    selector, offline = selector_of(cfg), cfg.selection == 'offline'
    cached = cfg.teacher_cache
    stage = Distill(student, ((task, tuple(t.with_compute_dtype(dtype) for t in group)),), {task: pairs},
                    loss_weights(cfg), selector=selector, offline=offline, by_task=False, cached=cached)
    arrays = {'image': train.images}
    group_frozen = {t.name: frozen[t.name] for t in group}
    # Cached, offline, hard selection: the cache build selects from the logits it computes and stores
    # only the selected teacher's features, so the teachers run once per image.
    # A selector that needs views or a fit selects here, and the cache build stores its choice.
    selected_only = cached and offline and selector.hard
    if offline and (not selected_only or selector.views or selector.fit is not None):
        arrays.update(selection_arrays(offline_selection(task, group, frozen, train.images, config.eval_batch_size,
                                                         selector, _task_rng(config.seed, task), config.data,
                                                         config.seed), selector))
    if cached:
        if selected_only:
            stage = dataclasses.replace(stage, selected_slots=teacher_cache.selected_slots(
                stage.cache_spec(), group_frozen, train.images.shape[1:]))
        arrays.update(_stage1_cache(task, plan, stage, group_frozen, train, config, where.cache,
                                    arrays.get('selected')))
        group_frozen = {}  # the step never runs the teachers
    variables, metrics = train_student(
        name=f'stage1/{task}', student=student, loss_fn=stage.loss,
        bridges=stage.init_bridges(_task_rng(config.seed, task), cfg.bridge_width_ratio), cfg=cfg,
        arrays=arrays, frozen=group_frozen, mesh=mesh, seed=config.seed,
        ckpt_dir=where.checkpoints, log_every=config.log_every,
        steps_per_call=config.steps_per_call, prefetch=input_lib.prefetch_of(config),
        monitoring=monitoring and monitoring(where.tb, student),
        **views_lib.step_augmentation(config.data))
    return student, variables, metrics


def run_stage2(plan, components, train, config, mesh, dirs: RecipeDirs, monitoring=None):
    """Trains (or resumes) the target net from the component nets in `dirs.stage2()` (curves there
    when `monitoring` is given, as in `run_stage1`)."""
    where = dirs.stage2()
    cfg = config.stage2
    dtype = compute_dtype(config)
    target = student_net('target', cfg, [(t, plan.tasks[t].num_classes) for t in plan.target_tasks],
                         config.data, dtype)
    comps = tuple((task, components[task][0].with_compute_dtype(dtype)) for task in plan.target_tasks)
    overrides = cfg.tap_pairs
    pairs = {c.name: (make_pairs(c, target, overrides[c.name] if c.name in overrides else None)
                      if cfg.feature_weight else ())
             for _, c in comps}
    cached = cfg.component_cache
    stage = Amalgamate(target, comps, pairs, loss_weights(cfg), cached=cached)
    arrays = {'image': train.images}
    frozen = {c.name: components[t][1] for t, c in comps}
    if cached:
        arrays.update(_stage2_cache(stage, frozen, train, config, where.cache))
        frozen = {}  # the step never runs the component nets
    variables, metrics = train_student(
        name='stage2', student=target, loss_fn=stage.loss,
        bridges=stage.init_bridges(jax.random.fold_in(jax.random.key(config.seed), 2)), cfg=cfg,
        arrays=arrays, frozen=frozen, mesh=mesh,
        seed=config.seed + 1, ckpt_dir=where.checkpoints, log_every=config.log_every,
        steps_per_call=config.steps_per_call, prefetch=input_lib.prefetch_of(config),
        monitoring=monitoring and monitoring(where.tb, target),
        **views_lib.step_augmentation(config.data))
    return target, variables, metrics


# ----------------------------------------------------------------------------- caches

def _data_key(config: Any, train) -> dict:
    """What the training images are and how the frozen nets see them: part of every cache's key."""
    d = config.data
    return {'data': {'name': d.name, 'split': d.train_split, 'size': len(train.images),
                     'train_limit': d.train_limit, 'seed': config.seed,
                     'image_size': list(d.image_size)},
            'views': views_lib.cache_key(d, train.images.shape[1:])}


def _net_key(net: Net, digest: str, widths) -> dict:
    return {'sha256': digest, 'arch': net.arch, 'widths': list(widths), 'mean': list(net.mean),
            'std': list(net.std), 'compute_dtype': str(net.dtype or 'float32')}


def _load_cache(what, path, spec, frozen, train, config, section, switch, key, selected=None) -> dict:
    """The stage's cached frozen outputs on the fixed views (process 0 builds, the others then read)."""
    cfg = config[section]

    def build():
        try:
            return teacher_cache.load_or_build(
                path, spec=spec, frozen=frozen, images=train.images, key={**key, **_data_key(config, train)},
                selected=selected, batch_size=config.eval_batch_size, limit_gb=cfg.cache_limit_gb,
                feature_dtype=cfg.cache_dtype)
        except teacher_cache.CacheTooLarge as e:
            raise ConfigError(f'The {what} would take {e.nbytes / 2 ** 30:.2f} GiB, more than '
                              f'{section}.cache_limit_gb = {e.limit_gb:g}; raise the limit, use fewer or smaller '
                              f'images, or set {section}.{switch} = False.') from None
    return distributed.primary_first(build, f'building the {what.split(" of ")[0]}')


def _stage1_cache(task, plan, stage, frozen, train, config, path, selected=None) -> dict:
    """The teachers' cached outputs, keyed by their checkpoints' hashes."""
    specs = {t.name: t for t in plan.group(task)}
    key = {'teachers': {t.name: _net_key(t, sha256(specs[t.name].checkpoint), specs[t.name].widths)
                        for t in stage.teachers}}
    return _load_cache(f'stage-1 teacher cache of task {task!r}', path,
                       stage.cache_spec(), frozen, train, config, 'stage1', 'teacher_cache', key, selected)


def _stage2_cache(stage, frozen, train, config, path) -> dict:
    """The component nets' cached outputs, keyed by hashes of their trained variables."""
    key = {'components': {c.name: {**_net_key(c, teacher_cache.variables_sha256(frozen[c.name]), c.widths),
                                   'task': task} for task, c in stage.components}}
    return _load_cache('stage-2 component cache', path, stage.cache_spec(),
                       frozen, train, config, 'stage2', 'component_cache', key)
