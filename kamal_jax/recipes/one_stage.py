"""One-stage recipes: the multi-head target learns straight from the source nets (or the labels).

Budget: they train the target with `config.stage2`'s optimiser and batch size for
`T x stage1.epochs + stage2.epochs` epochs, T the number of target tasks: as many epochs as a
two-stage run spends over all its nets together (T component nets, then the target); any field of
`config.baseline_stage` (optional, e.g. `dict(epochs=60, temperature=4.0)`) overrides them.
Checkpoints: WORKDIR/target (main recipe) or WORKDIR/baselines/NAME (baseline; `kamal_jax.layout`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import numpy as np

from kamal_jax import config_schema, selection
from kamal_jax.recipes import caches
from kamal_jax.recipes.context import Outcome, Run, floats, job_settings, loss_weights, selector_of
from kamal_jax.recipes.teacher_passes import fitted_target, offline_selection, selection_arrays
from kamal_jax.tasks import ConfigError, Plan
from kamal_jax.train import evaluate as eval_lib, views as views_lib
from kamal_jax.train.job import Frozen, Job
from kamal_jax.train.nets import Net
from kamal_jax.train.objectives import Distill, LossWeights, Supervised, make_pairs
from kamal_jax.train.trainer import train


log = logging.getLogger('kamal_jax')

# Every one-stage recipe trains with stage2's optimiser, the baseline_stage overrides and a budget
# counted in stage1's epochs.
ONE_STAGE_READS = ('stage2.', 'baseline_stage.', 'stage1.epochs')


def one_stage_config(config: Any) -> Any:
    """Optimiser, batch size and budget of the one-stage recipes (see the module docstring)."""
    return config_schema.one_stage_budget(config)


def one_stage_job(run: Run, name: str, main: bool, cfg: Any, target: Net, loss, bridges, data,
                  frozen: Frozen, views: int = 0) -> Job:
    """The target of a one-stage recipe as a job, in `Layout.recipe(name, main).one_stage()`; `views`
    > 0: `data` holds that many pre-drawn views per image (the logits cache's), shown as they are."""
    dirs = run.layout.recipe(name, main).one_stage()
    settings = job_settings(run.config, cfg, run.config.seed + 1)
    if views:
        settings = dataclasses.replace(settings, crop_padding=0, flip=False, views=views)
    return Job('target' if main else f'baseline/{name}', 'one_stage', None, target, loss, bridges, data, frozen,
               settings, run.mesh, dirs.checkpoints, run.monitoring(dirs.tb, target, run.config))


def _train(run: Run, name: str, main: bool, method: str, cfg: Any, job: Job) -> Outcome:
    """Trains (or resumes) the job; its net scored as the summary's 'target' or 'baseline_NAME'."""
    t0 = time.perf_counter()
    variables, metrics = train(job)
    key = 'target' if main else f'baseline_{name}'
    entry = run.entry(key if main else 'baseline', job.student, variables, run.plan.target_tasks, method=method,
                      epochs=int(cfg.epochs), final_train_metrics=floats(metrics))
    return Outcome({key: entry}, {key: time.perf_counter() - t0}, job.student, variables)


@dataclasses.dataclass(frozen=True)
class OneStage:
    """Per task, stage 1's distillation into the target's trunk and that task's head, all tasks in one
    loss: from each sample's selected teachers (stage1's selector, selection, loss weights, bridge
    width ratio; taps paired by depth), or with `combine`, from the teachers' combined soft target
    at `temperature` of the one-stage budget (logits only; a fitted combiner's target is computed
    once before training, at its default hyper-parameters)."""
    method: str
    combine: str = ''

    @property
    def reads(self) -> tuple[str, ...]:
        """The stage fields it reads (the command line warns of others it is given)."""
        if self.combine:
            return ONE_STAGE_READS
        return ONE_STAGE_READS + tuple(f'stage1.{k}' for k in (
            'selector', 'selection', 'feature_weight', 'logit_weight', 'weight_norm', 'logit_loss', 'temperature',
            'bridge_width_ratio'))

    def run(self, run: Run, name: str, main: bool) -> Outcome:
        cfg = one_stage_config(run.config)
        target = run.target_net('target' if main else f'baseline_{name}', cfg)
        groups = run.groups()
        frozen = Frozen.live({t.name: run.frozen[t.name] for _, ts in groups for t in ts})
        if self.combine:
            method, job = self.combined_job(run, name, main, cfg, target, groups, frozen)
            return _train(run, name, main, method, cfg, job)
        method, loss, bridges, data = self._selected(run, cfg, target, groups)
        return _train(run, name, main, method, cfg,
                      one_stage_job(run, name, main, cfg, target, loss, bridges, data, frozen))

    def combined_job(self, run: Run, name: str, main: bool, cfg: Any, target: Net, groups, frozen: Frozen):
        """(method, job) from the teachers' combined soft target (`combine`): a fitted combiner's
        target computed once; the others' from the teachers live or from their cached logits
        (`baseline_stage.logits_cache`, `caches.logits_cache_decision`)."""
        temperature = cfg.temperature
        method = self.method.format(temperature=temperature)
        combiner = selection.get_combiner(self.combine)
        data = {'image': run.train.images}
        stage = Distill(target, groups, {}, LossWeights(temperature=temperature), combine=combiner,
                        precombined=combiner.fit is not None)
        if combiner.fit is not None:
            data['combined_target'] = {
                task: fitted_target(task, ts, run.frozen, run.train.images, run.config.eval_batch_size,
                                    combiner, temperature) for task, ts in groups}
            return method, one_stage_job(run, name, main, cfg, target, stage.loss, {}, data, frozen)
        dirs = run.layout.recipe(name, main).one_stage()
        decision = caches.logits_cache_decision(run, cfg, stage, target, dirs)
        log.info('%s: %s', 'target' if main else f'baseline/{name}', decision.line())
        if not decision.cached:
            return method, one_stage_job(run, name, main, cfg, target, stage.loss, {}, data, frozen)
        d = run.config.data
        images = run.train.images
        if not views_lib.count(d) and decision.views > 1:  # the views the cache holds, as data.views draws them
            images = views_lib.predraw(images, decision.views, crop_padding=d.crop_padding, flip=d.flip,
                                       seed=run.config.seed)
        stage = dataclasses.replace(stage, cached=True)
        arrays = caches.one_stage_cache(stage, run.plan, run.frozen, images, run.config, cfg, dirs.cache,
                                        decision.views)
        return method, one_stage_job(run, name, main, cfg, target, stage.loss, {}, {'image': images},
                                     Frozen.cached(arrays), views=decision.views)

    def _selected(self, run: Run, cfg: Any, target: Net, groups):
        """(method, loss, bridges, data) from each sample's selected teachers (stage 1's selection)."""
        s1 = run.config.stage1
        pairs = {task: {t.name: (make_pairs(t, target, None) if s1.feature_weight else ()) for t in ts}
                 for task, ts in groups}
        selector, offline = selector_of(s1), s1.selection == 'offline'
        stage = Distill(target, groups, pairs, loss_weights(s1), selector=selector, offline=offline)
        data = {'image': run.train.images}
        if offline:
            data.update(_offline_arrays(run, groups, selector))
        bridges = stage.init_bridges(jax.random.fold_in(jax.random.key(run.config.seed), 3),
                                     s1.bridge_width_ratio)
        method = self.method.format(selection=s1.selection, selector=selector.name.replace('_', ' '))
        return method, stage.loss, bridges, data


def _offline_arrays(run: Run, groups, selector) -> dict:
    """Each task's offline selection, as the batch arrays it travels as ('selected' or
    'teacher_weights', each by task)."""
    weights = {task: offline_selection(task, ts, run.frozen, run.train.images, run.config.eval_batch_size,
                                       selector, jax.random.fold_in(jax.random.key(run.config.seed), i),
                                       run.config.data, run.config.seed)
               for i, (task, ts) in enumerate(groups)}
    arrays = {}
    for key in ('selected', 'teacher_weights'):
        per_task = {t: a[key] for t, a in ((t, selection_arrays(w, selector)) for t, w in weights.items())
                    if key in a}
        if per_task:
            arrays[key] = per_task
    return arrays


def task_label_arrays(plan: Plan, split: Any) -> dict[str, np.ndarray]:
    """Per target task: index into the task's classes per sample, -1 outside the task (int32)."""
    out = {}
    for name in plan.target_tasks:
        task = plan.tasks[name]
        if task.label_key not in split.labels or not split.label_names.get(task.label_key):
            raise ConfigError(f'recipe supervised: task {name!r} reads label {task.label_key!r}, which the '
                              f'training split does not have as classes; it has {sorted(split.labels)}.')
        out[name] = eval_lib.task_targets(task, split.labels, split.label_names).astype(np.int32)
    return out


@dataclasses.dataclass(frozen=True)
class Labelled:
    """The target trained with cross-entropy on the true training labels, each head on the samples of
    its task's classes (the upper reference; the only recipe that sees labels)."""
    method: str
    reads = property(lambda self: ONE_STAGE_READS)

    def run(self, run: Run, name: str, main: bool) -> Outcome:
        cfg = one_stage_config(run.config)
        target = run.target_net('target' if main else f'baseline_{name}', cfg)
        stage = Supervised(target, run.plan.target_tasks)
        arrays = {'image': run.train.images, 'labels': task_label_arrays(run.plan, run.train)}
        return _train(run, name, main, self.method, cfg,
                      one_stage_job(run, name, main, cfg, target, stage.loss, {}, arrays, Frozen()))
