"""Baselines for the amalgamation, trained on the same data as the main run (`config.baselines`).

    c.baselines = ('average', 'random', 'logits_only', 'one_stage', 'supervised')

Each one ends in a net of the target's architecture (`config.stage2.arch` and `widths`, one head
per target task), scored on the same held-out data, and enters the summary with role 'baseline'
as `baseline_<name>`:

  average      Hinton-style multi-teacher distillation in one stage: per head, KL divergence
               (x T^2) from the mean of the task's teachers' softmax(logits / T) to the target's
               softmax(logits / T); logits only, no features.
  random       the two-stage pipeline, but every sample learns from a teacher drawn at random
               (stage1.mode = 'random') instead of the least ambiguous one.
  logits_only  the two-stage pipeline without transfer bridges (feature_weight = 0 in both stages).
  one_stage    the target learns straight from the source nets: per task and per sample the least
               ambiguous teacher of that task (stage1.selection), through bridges (feature
               matching into the shared trunk) and logits (into the task's head); all tasks in one
               loss, one forward pass of the target per step (`OneStage`).
  supervised   the target trained with cross-entropy on the true training labels, each head on the
               samples of its task's classes (the upper reference; the only one that sees labels).

Budget. The two-stage baselines use `config.stage1` and `config.stage2` as they are, so they cost
what the main run costs. The one-stage baselines (average, one_stage, supervised) train the target
with `config.stage2`'s optimiser and batch size for `stage1.epochs + stage2.epochs` epochs (as
many as the main run's component and target together); any field of `config.baseline_stage`
(optional, e.g. `dict(epochs=60, temperature=4.0)`) overrides them. The temperature of 'average'
is that config's `temperature`; one_stage uses stage 1's loss weights, logit loss, temperature,
selection and bridge width ratio, and pairs taps by depth.

Checkpoints: `WORKDIR/baselines/<name>/` (two-stage ones: `.../stage1/<task>/`, `.../stage2/`), so
a rerun resumes each baseline where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kamal_jax import ambiguity, losses, summary as summary_lib
from kamal_jax.models.bridges import apply_bridge, init_bridge
from kamal_jax.tasks import ConfigError, Plan
from kamal_jax.train import distributed, evaluate as eval_lib, views as views_lib
from kamal_jax.train.nets import Net
from kamal_jax.train.state import count_params
from kamal_jax.train.steps import LossWeights, Pairs, Supervised, make_pairs, pair_key
from kamal_jax.train.trainer import train_student

log = logging.getLogger('kamal_jax')

NAMES = ('average', 'random', 'logits_only', 'one_stage', 'supervised')


def check_config(config: Any) -> tuple[str, ...]:
    """The baselines a config asks for (`config.baselines`, default none); ConfigError if unknown."""
    if isinstance(config.get('baselines'), str):
        raise ConfigError(f'baselines must be a tuple of names, got the string {config.baselines!r}; '
                          f'valid baselines: {", ".join(NAMES)}.')
    names = tuple(config.get('baselines', ()) or ())
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ConfigError(f'baselines names {unknown}, which are not baselines; valid baselines: '
                          f'{", ".join(NAMES)}.')
    if len(set(names)) != len(names):
        raise ConfigError(f'baselines lists a baseline twice: {list(names)}.')
    overrides = config.get('baseline_stage') or {}
    extra = sorted(k for k in overrides if k not in config.stage2)
    if extra:
        raise ConfigError(f'baseline_stage sets {extra}, which are not fields of stage2 '
                          f'({", ".join(sorted(config.stage2))}).')
    if names and int(one_stage_config(config).epochs) <= 0:
        raise ConfigError('baseline_stage.epochs must be positive.')
    return names


def one_stage_config(config: Any) -> ml_collections.ConfigDict:
    """Optimiser, batch size and budget of the one-stage baselines (see the module docstring)."""
    cfg = ml_collections.ConfigDict(config.stage2.to_dict())
    cfg.epochs = int(config.stage1.epochs) + int(config.stage2.epochs)
    overrides = config.get('baseline_stage') or {}
    cfg.update(overrides.to_dict() if hasattr(overrides, 'to_dict') else dict(overrides))
    return cfg


# ----------------------------------------------------------------------------- pure losses

def average_soft_targets(teacher_logits: Sequence[jax.Array], temperature: float = 1.0) -> jax.Array:
    """Mean over teachers of softmax(logits / T): the soft target of multi-teacher distillation."""
    probs = [jax.nn.softmax(ambiguity.as_categorical(l).astype(jnp.float32) / temperature, axis=-1)
             for l in teacher_logits]
    return jnp.mean(jnp.stack(probs), axis=0)


def soft_target_kl(student_logits: jax.Array, target_probs: jax.Array,
                   temperature: float = 1.0) -> jax.Array:
    """Per-sample KL(target || softmax(student / T)) x T^2 (Hinton et al.'s scaling)."""
    logq = jax.nn.log_softmax(ambiguity.as_categorical(student_logits).astype(jnp.float32) / temperature,
                              axis=-1)
    logp = jnp.log(jnp.maximum(target_probs, 1e-12))
    return jnp.sum(jnp.where(target_probs > 0, target_probs * (logp - logq), 0.0), axis=-1) * temperature ** 2


def _frozen_outputs(cache: dict, net: Net, frozen: Any, images: jax.Array):
    """Each frozen net runs once per step even when it teaches several tasks."""
    if net.name not in cache:
        cache[net.name] = jax.lax.stop_gradient(net.apply_eval(frozen[net.name], images))
    return cache[net.name]


Groups = tuple[tuple[str, tuple[Net, ...]], ...]  # (task, the teachers that declare it)


@dataclasses.dataclass(frozen=True, eq=False)
class AverageKD:
    """Baseline 'average': every head matches its teacher group's averaged soft predictions."""
    target: Net
    groups: Groups
    temperature: float = 1.0

    def loss(self, params, batch_stats, frozen, images, batch, rng=None):
        (logits, _), updated = self.target.module.apply(
            {'params': params['net'], 'batch_stats': batch_stats}, self.target.prepare(images),
            train=True, mutable=['batch_stats'])
        cache, total, metrics = {}, jnp.zeros(()), {}
        for task, teachers in self.groups:
            soft = average_soft_targets([_frozen_outputs(cache, t, frozen, images)[0][task] for t in teachers],
                                        self.temperature)
            kl = jnp.mean(soft_target_kl(logits[task], soft, self.temperature))
            metrics[f'kl/{task}'] = kl
            total = total + kl
        metrics['loss'] = total
        return total, (updated['batch_stats'], metrics)


@dataclasses.dataclass(frozen=True, eq=False)
class OneStage:
    """Baseline 'one_stage': the multi-head target learns every task straight from the source nets.

    Per task: stage 1's recipe (least-ambiguous teacher per sample, teacher- and student-side
    bridges into a common space, logit matching) applied to the target's trunk and that task's
    head. The losses of all tasks are summed; the target runs forward once.
    """
    target: Net
    groups: Groups
    pairs: Mapping[str, Mapping[str, Pairs]]  # task -> teacher name -> (teacher tap, target tap)
    weights: LossWeights
    selection: str = 'online'  # 'offline': batch['selected'][task]

    def init_bridges(self, rng: jax.Array, width_ratio: float = 0.5) -> dict:
        bridges = {}
        for i, (task, teachers) in enumerate(self.groups):
            bridges[task] = {}
            for k, teacher in enumerate(teachers):
                student_side, teacher_side = {}, {}
                for p, pair in enumerate(self.pairs[task][teacher.name]):
                    common = max(1, round(pair[0].channels * width_ratio))
                    r = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, i), k), p)
                    student_side[pair_key(pair)] = init_bridge(jax.random.fold_in(r, 0), pair[1].channels, common)
                    teacher_side[pair_key(pair)] = init_bridge(jax.random.fold_in(r, 1), pair[0].channels, common)
                bridges[task][teacher.name] = {'student': student_side, 'teacher': teacher_side}
        return bridges

    def loss(self, params, batch_stats, frozen, images, batch, rng=None):
        (logits, feats), updated = self.target.module.apply(
            {'params': params['net'], 'batch_stats': batch_stats}, self.target.prepare(images),
            train=True, mutable=['batch_stats'])
        w = self.weights
        cache, metrics = {}, {}
        feat_total, logit_total = jnp.zeros(()), jnp.zeros(())
        for task, teachers in self.groups:
            feat_terms, logit_terms, entropies = [], [], []
            for teacher in teachers:
                t_logits, t_feats = _frozen_outputs(cache, teacher, frozen, images)
                entropies.append(ambiguity.entropy(t_logits[task]))
                bridges = params['bridges'][task][teacher.name]
                feat = jnp.zeros(images.shape[:1])
                for pair in self.pairs[task][teacher.name]:
                    key = pair_key(pair)
                    feat = feat + losses.feature_mse(apply_bridge(bridges['student'][key], feats[pair[1].name]),
                                                     apply_bridge(bridges['teacher'][key], t_feats[pair[0].name]))
                feat_terms.append(feat)
                logit_terms.append(losses.logit_loss(logits[task], t_logits[task], kind=w.logit_loss,
                                                     temperature=w.temperature))
            if self.selection == 'offline':
                selected = batch['selected'][task]
            else:
                selected = ambiguity.select_least_ambiguous(jnp.stack(entropies))
            mask = ambiguity.selection_mask(selected, len(teachers))
            feat_loss = jnp.mean(losses.select_per_sample(jnp.stack(feat_terms), mask))
            logit_loss = jnp.mean(losses.select_per_sample(jnp.stack(logit_terms), mask))
            feat_total, logit_total = feat_total + feat_loss, logit_total + logit_loss
            metrics[f'feature/{task}'], metrics[f'logit/{task}'] = feat_loss, logit_loss
            for i, teacher in enumerate(teachers):
                metrics[f'selected/{task}/{teacher.name}'] = jnp.mean(mask[:, i])
        wn = sum((losses.weight_norm_penalty(b['kernel']) for per_task in params['bridges'].values()
                  for t in per_task.values() for b in t['teacher'].values()), jnp.zeros(()))
        loss = w.feature * feat_total + w.logit * logit_total + w.weight_norm * wn
        metrics.update(loss=loss, weight_norm=wn)
        return loss, (updated['batch_stats'], metrics)


def task_label_arrays(plan: Plan, split: Any) -> dict[str, np.ndarray]:
    """Per target task: index into the task's classes per sample, -1 outside the task (int32)."""
    out = {}
    for name in plan.target_tasks:
        task = plan.tasks[name]
        if task.label_key not in split.labels or not split.label_names.get(task.label_key):
            raise ConfigError(f'baseline supervised: task {name!r} reads label {task.label_key!r}, which the '
                              f'training split does not have as classes; it has {sorted(split.labels)}.')
        out[name] = eval_lib.task_targets(task, split.labels, split.label_names).astype(np.int32)
    return out


# ----------------------------------------------------------------------------- runners

@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """What the main run already holds: config, plan, ported teachers, data, mesh, workdir."""
    config: Any
    plan: Plan
    teachers: Mapping[str, Net]
    frozen: Mapping[str, Any]
    train: Any
    held_out: Any
    mesh: Any
    workdir: str

    def groups(self) -> Groups:
        return tuple((task, tuple(self.teachers[t.name] for t in self.plan.group(task)))
                     for task in self.plan.target_tasks)

    def evaluate(self, net: Net, variables: Any) -> dict[str, float]:
        tasks = {t: self.plan.tasks[t] for t in self.plan.target_tasks if t in dict(net.module.heads)}
        return eval_lib.evaluate(net, variables, self.held_out, tasks, self.config.eval_batch_size)


class Result(NamedTuple):
    """A trained baseline: its summary entry, and the net and variables to export."""
    entry: dict
    net: Net
    variables: Any


def _floats(metrics: Mapping[str, Any]) -> dict:
    return {k: round(float(v), 5) for k, v in metrics.items()}


def _target_net(ctx: Context, name: str, cfg: Any) -> Net:
    from kamal_jax import pipeline  # pipeline imports this module
    return pipeline.student_net(f'baseline_{name}', cfg, [(t, ctx.plan.tasks[t].num_classes)
                                                          for t in ctx.plan.target_tasks], ctx.config.data)


def _train_one_stage(ctx: Context, name: str, cfg: Any, target: Net, loss_fn, bridges, arrays, frozen,
                     method: str) -> Result:
    variables, metrics = train_student(
        name=f'baseline/{name}', student=target, loss_fn=loss_fn, bridges=bridges, cfg=cfg, arrays=arrays,
        frozen=frozen, mesh=ctx.mesh, seed=ctx.config.seed + 1,
        ckpt_dir=os.path.join(ctx.workdir, 'baselines', name), log_every=ctx.config.log_every,
        **views_lib.step_augmentation(ctx.config.data))
    acc = ctx.evaluate(target, variables)
    return Result(summary_lib.model_entry('baseline', target.arch, count_params(variables['params']),
                                          ctx.plan.target_tasks, acc, method=method, epochs=int(cfg.epochs),
                                          final_train_metrics=_floats(metrics)), target, variables)


def run_average(ctx: Context) -> Result:
    cfg = one_stage_config(ctx.config)
    target = _target_net(ctx, 'average', cfg)
    groups = ctx.groups()
    stage = AverageKD(target, groups, float(cfg.get('temperature', 1.0)))
    frozen = {t.name: ctx.frozen[t.name] for _, ts in groups for t in ts}
    return _train_one_stage(ctx, 'average', cfg, target, stage.loss, {}, {'image': ctx.train.images}, frozen,
                            f'multi-teacher KD, averaged soft targets, T={stage.temperature:g}')


def run_one_stage(ctx: Context) -> Result:
    from kamal_jax import pipeline
    cfg, s1 = one_stage_config(ctx.config), ctx.config.stage1
    target = _target_net(ctx, 'one_stage', cfg)
    groups = ctx.groups()
    pairs = {task: {t.name: (make_pairs(t, target, None) if s1.feature_weight else ()) for t in ts}
             for task, ts in groups}
    stage = OneStage(target, groups, pairs, LossWeights.from_config(s1), selection=s1.selection)
    arrays = {'image': ctx.train.images}
    if s1.selection == 'offline':
        arrays['selected'] = {task: pipeline.offline_selection(task, ts, ctx.frozen, ctx.train.images,
                                                               ctx.config.eval_batch_size)
                              for task, ts in groups}
    bridges = stage.init_bridges(jax.random.fold_in(jax.random.key(ctx.config.seed), 3),
                                 s1.get('bridge_width_ratio', 0.5))
    frozen = {t.name: ctx.frozen[t.name] for _, ts in groups for t in ts}
    return _train_one_stage(ctx, 'one_stage', cfg, target, stage.loss, bridges, arrays, frozen,
                            f'one stage from the source nets, {s1.selection} least-ambiguous selection')


def run_supervised(ctx: Context) -> Result:
    cfg = one_stage_config(ctx.config)
    target = _target_net(ctx, 'supervised', cfg)
    stage = Supervised(target, ctx.plan.target_tasks)
    arrays = {'image': ctx.train.images, 'labels': task_label_arrays(ctx.plan, ctx.train)}
    return _train_one_stage(ctx, 'supervised', cfg, target, stage.loss, {}, arrays, {},
                            'cross-entropy on the true training labels')


# What the two-stage baselines change in the main run's config: (stage1 fields, stage2 fields, method).
TWO_STAGE = {
    'random': ({'mode': 'random', 'selection': 'online'}, {}, 'two stages, a random teacher per sample'),
    'logits_only': ({'feature_weight': 0.0}, {'feature_weight': 0.0},
                    'two stages without transfer bridges (logits only)'),
}


def two_stage_config(config: Any, name: str) -> ml_collections.ConfigDict:
    """A copy of the main run's config with the changes of two-stage baseline `name`."""
    stage1, stage2, _ = TWO_STAGE[name]
    config = ml_collections.ConfigDict(config.to_dict())
    config.stage1.update(stage1)
    config.stage2.update(stage2)
    return config


def _two_stage(ctx: Context, name: str) -> Result:
    from kamal_jax import pipeline
    config = two_stage_config(ctx.config, name)
    out = os.path.join(ctx.workdir, 'baselines', name)
    components, comp_acc, comp_metrics = {}, {}, {}
    for task in ctx.plan.target_tasks:
        student, variables, metrics = pipeline.run_stage1(task, ctx.plan, ctx.teachers, ctx.frozen, ctx.train,
                                                          config, ctx.mesh, out)
        components[task] = (student, variables)
        comp_acc[task] = ctx.evaluate(student, variables).get(task)
        comp_metrics[task] = _floats(metrics)
    target, variables, metrics = pipeline.run_stage2(ctx.plan, components, ctx.train, config, ctx.mesh, out)
    acc = ctx.evaluate(target, variables)
    entry = summary_lib.model_entry('baseline', target.arch, count_params(variables['params']),
                                    ctx.plan.target_tasks, acc, method=TWO_STAGE[name][2],
                                    epochs=[int(config.stage1.epochs), int(config.stage2.epochs)],
                                    component_accuracy=comp_acc, component_train_metrics=comp_metrics,
                                    final_train_metrics=_floats(metrics))
    return Result(entry, target, variables)


def run_random(ctx: Context) -> Result:
    return _two_stage(ctx, 'random')


def run_logits_only(ctx: Context) -> Result:
    return _two_stage(ctx, 'logits_only')


RUNNERS = {'average': run_average, 'random': run_random, 'logits_only': run_logits_only,
           'one_stage': run_one_stage, 'supervised': run_supervised}


def run_all(config: Any, plan: Plan, teachers: Mapping[str, Net], frozen: Mapping[str, Any], train: Any,
            held_out: Any, mesh: Any, workdir: str,
            on_result: Callable[[str, dict, float], None] | None = None) -> tuple[dict, dict]:
    """Trains (or resumes) every baseline of `config.baselines`; returns (summary entries, wall seconds).

    `on_result(key, entry, seconds)` is called as each baseline finishes (the pipeline rewrites the
    summary there, so hours-long benchmarks show each result as it comes).

    Each baseline's net is exported to `WORKDIR/export/baselines/NAME`, loadable like the target
    with `kamal_jax.load_student`: where a baseline scores higher, a user can take it instead.
    """
    from kamal_jax import pipeline
    names = check_config(config)
    if 'supervised' in names:
        task_label_arrays(plan, train)  # refuse missing labels before any baseline trains
    ctx = Context(config, plan, teachers, frozen, train, held_out, mesh, workdir)
    entries, wall = {}, {}
    for name in names:
        key, t0 = f'baseline_{name}', time.perf_counter()
        entries[key], net, variables = RUNNERS[name](ctx)
        wall[key] = time.perf_counter() - t0
        if distributed.is_primary():
            pipeline.export_net(os.path.join(workdir, 'export', 'baselines', name), net, variables, plan,
                                tuple(train.images.shape[1:3]))
        accuracy = entries[key]['accuracy']
        log.info('baseline %s: %s', name, ', '.join(f'{t} {100 * a:.1f}%' for t, a in accuracy.items()))
        if on_result is not None:
            on_result(key, entries[key], wall[key])
    return entries, wall
