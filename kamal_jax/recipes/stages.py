"""The paper's two stages as jobs of a recipe: stage 1 (one component net per task, from its
teachers) and stage 2 (the target net, from the components), with their selection and caches."""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import jax

from kamal_jax.layout import Layout, RecipeDirs
from kamal_jax.recipes.caches import stage1_cache, stage2_cache
from kamal_jax.recipes.context import compute_dtype, job_settings, loss_weights, selector_of, student_net
# The teachers' passes, also read from here by earlier callers.
from kamal_jax.recipes.teacher_passes import (fit_selector, fitted_target, offline_selection,  # noqa: F401
                                              selection_arrays, selection_context, selection_on_held_out)
from kamal_jax.train import teacher_cache
from kamal_jax.train.job import Frozen, Job
from kamal_jax.train.nets import Net
from kamal_jax.train.objectives import Amalgamate, Distill, make_pairs
from kamal_jax.train.trainer import train


def _task_rng(seed: int, task: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(task.encode()) % (1 << 30))


def _pairs(cfg: Any, frozen_nets, student: Net) -> dict:
    """Per frozen net, its taps paired with the student's (`cfg.tap_pairs` where it names the net;
    none when the stage has no feature term)."""
    overrides = cfg.tap_pairs
    return {n.name: (make_pairs(n, student, overrides[n.name] if n.name in overrides else None)
                     if cfg.feature_weight else ())
            for n in frozen_nets}


def stage1_job(task, plan, teachers, frozen, train_split, config, mesh, dirs: RecipeDirs, monitoring=None) -> Job:
    """The component net of `task` as a job, in `dirs.stage1(task)`; `monitoring(logdir, net)`
    (optional) says how its curves are recorded (`Run.monitoring`)."""
    cfg, dtype, where = config.stage1, compute_dtype(config), dirs.stage1(task)
    group = [teachers[t.name] for t in plan.group(task)]
    student = student_net(f'component_{task}', cfg, [(task, plan.tasks[task].num_classes)], config.data, dtype)
    stage = Distill.component(task, student, [t.with_compute_dtype(dtype) for t in group],
                              _pairs(cfg, group, student), loss_weights(cfg), selector=selector_of(cfg),
                              offline=cfg.selection == 'offline', cached=cfg.teacher_cache)
    stage, data, inputs = _stage1_inputs(task, plan, stage, group, frozen, train_split, config, where.cache)
    return Job(f'stage1/{task}', 'stage1', task, student, stage.loss,
               stage.init_bridges(_task_rng(config.seed, task), cfg.bridge_width_ratio), data, inputs,
               job_settings(config, cfg, config.seed), mesh, where.checkpoints,
               monitoring and monitoring(where.tb, student))


def _stage1_inputs(task, plan, stage: Distill, group, frozen, train_split, config, cache_dir):
    """The stage-1 job's loss, data and frozen inputs: an offline selection when the stage selects
    once, and the teachers live or, with `stage1.teacher_cache`, their cached outputs."""
    selector, offline, cached = stage.selector, stage.offline, stage.cached
    arrays = {'image': train_split.images}
    group_frozen = {t.name: frozen[t.name] for t in group}
    # Cached, offline, hard selection: the cache build selects from the logits it computes and stores
    # only the selected teacher's features, so the teachers run once per image.
    # A selector that needs views or a fit selects here, and the cache build stores its choice.
    selected_only = cached and offline and selector.hard
    if offline and (not selected_only or selector.views or selector.fit is not None):
        arrays.update(selection_arrays(offline_selection(task, group, frozen, train_split.images,
                                                       config.eval_batch_size, selector, _task_rng(config.seed, task),
                                                       config.data, config.seed), selector))
    if not cached:
        return stage, arrays, Frozen.live(group_frozen)
    if selected_only:
        stage = dataclasses.replace(stage, selected_slots=teacher_cache.selected_slots(
            stage.cache_spec(), group_frozen, train_split.images.shape[1:]))
    outputs = stage1_cache(task, plan, stage, group_frozen, train_split, config, cache_dir, arrays.get('selected'))
    return stage, arrays, Frozen.cached(outputs)  # the step never runs the teachers


def stage2_job(plan, components, train_split, config, mesh, dirs: RecipeDirs, monitoring=None) -> Job:
    """The target net learning from the component nets (`components`: task -> (net, variables)) as a
    job, in `dirs.stage2()` (curves there when `monitoring` is given, as in `stage1_job`)."""
    cfg, dtype, where = config.stage2, compute_dtype(config), dirs.stage2()
    target = student_net('target', cfg, [(t, plan.tasks[t].num_classes) for t in plan.target_tasks],
                         config.data, dtype)
    comps = tuple((task, components[task][0].with_compute_dtype(dtype)) for task in plan.target_tasks)
    stage = Amalgamate(target, comps, _pairs(cfg, [c for _, c in comps], target), loss_weights(cfg),
                       cached=cfg.component_cache)
    frozen = {c.name: components[t][1] for t, c in comps}
    inputs = (Frozen.cached(stage2_cache(stage, frozen, train_split, config, where.cache)) if stage.cached
              else Frozen.live(frozen))  # cached: the step never runs the component nets
    return Job('stage2', 'stage2', None, target, stage.loss,
               stage.init_bridges(jax.random.fold_in(jax.random.key(config.seed), 2)), {'image': train_split.images},
               inputs, job_settings(config, cfg, config.seed + 1), mesh, where.checkpoints,
               monitoring and monitoring(where.tb, target))


def _recipe_dirs(dirs: RecipeDirs | str) -> RecipeDirs:
    """A recipe's folders; a workdir's path stands for its main recipe's."""
    return dirs if isinstance(dirs, RecipeDirs) else Layout(dirs).recipe('', main=True)


def run_stage1(task, plan, teachers, frozen, train_split, config, mesh, dirs: RecipeDirs | str, monitoring=None):
    """Trains (or resumes) `stage1_job`; returns the component net, its variables and last metrics."""
    job = stage1_job(task, plan, teachers, frozen, train_split, config, mesh, _recipe_dirs(dirs), monitoring)
    return (job.student, *train(job))


def run_stage2(plan, components, train_split, config, mesh, dirs: RecipeDirs | str, monitoring=None):
    """Trains (or resumes) `stage2_job`; returns the target net, its variables and last metrics."""
    job = stage2_job(plan, components, train_split, config, mesh, _recipe_dirs(dirs), monitoring)
    return (job.student, *train(job))
