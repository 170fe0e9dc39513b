"""What a student learns from: the loss functions every recipe is built of.

    Distill     a student learns tasks from groups of frozen teachers: per sample the teachers'
                losses mixed by a selector's weights (stage 1, one_stage, random, ...), or one loss
                to a combined target (average). Bridges on both sides, into a common space.
    Amalgamate  a multi-head target learns each task from its one component net (stage 2).
    Supervised  cross-entropy on true labels (the upper reference).

Every loss has the signature `loss(params, batch_stats, frozen, images, batch, rng)`: `params` and
`batch_stats` belong to the student (the only thing differentiated), `frozen` holds the frozen
nets' variables, `images` is the augmented view all nets share. Nothing here reads a config.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from kamal_jax import losses, selection
from kamal_jax.models.bridges import apply_bridge, init_bridge
from kamal_jax.models.taps import Tap, pair_by_depth
from kamal_jax.train import teacher_cache
from kamal_jax.train.nets import Net

Pairs = tuple[tuple[Tap, Tap], ...]  # (frozen-side tap, student tap)
Groups = tuple[tuple[str, tuple[Net, ...]], ...]  # (task, the frozen nets that teach it)


def pair_key(pair: tuple[Tap, Tap]) -> str:
    return f'{pair[0].name}__{pair[1].name}'


def make_pairs(frozen: Net, student: Net, override: Sequence[Sequence[str]] | None) -> Pairs:
    return pair_by_depth(frozen.taps(), student.taps(), override)


@dataclasses.dataclass(frozen=True)
class LossWeights:
    feature: float = 1.0
    logit: float = 1.0
    weight_norm: float = 1.0
    logit_loss: str = 'mse'
    temperature: float = 1.0


def _forward(net: Net, params, batch_stats, images):
    """The student's (logits, features) in training mode, and its updated batch statistics."""
    (logits, feats), updated = net.module.apply({'params': params['net'], 'batch_stats': batch_stats},
                                                net.prepare(images), train=True, mutable=['batch_stats'])
    return logits, feats, updated['batch_stats']


class FrozenOutputs:
    """Each frozen net's outputs for one step: computed once on the view (even when it teaches
    several tasks), or read from the batch's cache (see train/teacher_cache.py)."""

    def __init__(self, frozen, images, batch, cached: bool = False, slots=None):
        self.frozen, self.images, self.batch, self.cached, self.slots = frozen, images, batch, cached, slots
        self._computed = {}

    def __call__(self, net: Net, task: str, pairs: Pairs, index: int = 0):
        """`net`'s `task` logits and its features (teacher `index` of the group, for cached reads)."""
        if self.cached:
            return teacher_cache.read_outputs(self.batch, net, [pair[0].name for pair in pairs],
                                              (self.slots or {}).get(net.name), index, task)
        if net.name not in self._computed:
            self._computed[net.name] = jax.lax.stop_gradient(net.apply_eval(self.frozen[net.name], self.images))
        logits, feats = self._computed[net.name]
        return logits[task], feats


# ----------------------------------------------------------------------------- distill

@dataclasses.dataclass(frozen=True, eq=False)
class Distill:
    """A student learning each task of `groups` from that task's teachers.

    Per task and sample, every teacher gives a feature term (its matched taps through a teacher-side
    and a student-side bridge into a common space) and a logit term; the selector's weights mix
    them. With `combine` instead, each task distils from one combined soft target (logits only).
    A component net (`by_task=False`, one task) keeps its bridges and metrics per teacher; a
    multi-head target keeps them per task, then teacher.
    """
    student: Net
    groups: Groups
    pairs: Mapping[str, Mapping[str, Pairs]]  # task -> teacher name -> (teacher tap, student tap)
    weights: LossWeights
    selector: Callable = dataclasses.field(default_factory=lambda: selection.SELECTORS['least_entropy'])
    offline: bool = False        # the weights come from the batch: 'selected' indices or 'teacher_weights'
    combine: Callable[[Sequence[jax.Array], float], jax.Array] | None = None
    precombined: bool = False    # with `combine`: the target is the batch's 'combined_target' (per task),
    #                              each sample's term weighted by 'combined_weight' where the batch has it
    by_task: bool = True
    cached: bool = False         # teachers' outputs from the batch (see train/teacher_cache.py)
    # With `cached` and a hard offline selection: teacher -> tap -> (batch key, shape) of the cache
    # that holds only each sample's selected teacher's features (teacher_cache.selected_slots).
    selected_slots: Mapping[str, Mapping[str, tuple[str, tuple[int, ...]]]] | None = None

    @classmethod
    def component(cls, task: str, student: Net, teachers: Sequence[Net], pairs: Mapping[str, Pairs],
                  weights: LossWeights, **kw) -> 'Distill':
        """Stage 1: one component net learning one task; `pairs` by teacher name."""
        return cls(student, ((task, tuple(teachers)),), {task: dict(pairs)}, weights, by_task=False, **kw)

    @property
    def task(self) -> str:
        (task, _), = self.groups
        return task

    @property
    def teachers(self) -> tuple[Net, ...]:
        """Every teacher once, in order of first appearance."""
        return tuple({t.name: t for _, ts in self.groups for t in ts}.values())

    def _bridges(self, params, task):
        return params['bridges'][task] if self.by_task else params['bridges']

    def init_bridges(self, rng: jax.Array, width_ratio: float = 0.5) -> dict:
        """Both sides map into a common space of `width_ratio` x the teacher's channels."""
        bridges = {}
        for i, (task, teachers) in enumerate(self.groups):
            task_rng = jax.random.fold_in(rng, i) if self.by_task else rng
            per_teacher = {}
            for k, teacher in enumerate(teachers):
                student_side, teacher_side = {}, {}
                for p, pair in enumerate(self.pairs[task][teacher.name]):
                    common = max(1, round(pair[0].channels * width_ratio))
                    r = jax.random.fold_in(jax.random.fold_in(task_rng, k), p)
                    student_side[pair_key(pair)] = init_bridge(jax.random.fold_in(r, 0), pair[1].channels, common)
                    teacher_side[pair_key(pair)] = init_bridge(jax.random.fold_in(r, 1), pair[0].channels, common)
                per_teacher[teacher.name] = {'student': student_side, 'teacher': teacher_side}
            if not self.by_task:
                return per_teacher
            bridges[task] = per_teacher
        return bridges

    def teacher_weights(self, task: str, index: int, teacher_logits, student_logits, batch, rng) -> jax.Array:
        """[batch, teachers]: the offline selection from the batch, or the selector run on this view."""
        if self.offline:
            def per_task(a):
                return a[task] if self.by_task else a
            if 'teacher_weights' in batch:
                return per_task(batch['teacher_weights'])
            return selection.one_hot(per_task(batch['selected']), len(teacher_logits))
        if rng is not None and self.by_task:
            rng = jax.random.fold_in(rng, index)
        return self.selector(selection.Context(tuple(teacher_logits), student_logits), rng, None)

    def _task_terms(self, task, teachers, logits, feats, outputs, bridges):
        """Per teacher: per-sample feature and logit terms, and its task logits."""
        w = self.weights
        feat_terms, logit_terms, teacher_logits = [], [], []
        for k, teacher in enumerate(teachers):
            pairs = self.pairs[task][teacher.name]
            t_logits, t_feats = outputs(teacher, task, pairs, k)
            teacher_logits.append(t_logits)
            b = bridges[teacher.name]
            feat = jnp.zeros(logits.shape[:1])
            for pair in pairs:
                key = pair_key(pair)
                feat = feat + losses.feature_mse(apply_bridge(b['student'][key], feats[pair[1].name]),
                                                 apply_bridge(b['teacher'][key], t_feats[pair[0].name]))
            feat_terms.append(feat)
            logit_terms.append(losses.logit_loss(logits, t_logits, kind=w.logit_loss, temperature=w.temperature))
        return feat_terms, logit_terms, teacher_logits

    def loss(self, params, batch_stats, frozen, images, batch, rng=None):
        logits, feats, batch_stats = _forward(self.student, params, batch_stats, images)
        outputs = FrozenOutputs(frozen, images, batch, self.cached, self.selected_slots)
        if self.combine is not None:
            loss, metrics = self._combined_loss(logits, outputs, batch)
            return loss, (batch_stats, metrics)
        w = self.weights
        metrics = {}
        feat_total, logit_total = jnp.zeros(()), jnp.zeros(())
        for i, (task, teachers) in enumerate(self.groups):
            feat_terms, logit_terms, teacher_logits = self._task_terms(
                task, teachers, logits[task], feats, outputs, self._bridges(params, task))
            weights = self.teacher_weights(task, i, teacher_logits, logits[task], batch, rng)
            feat_loss = jnp.mean(losses.weighted_per_sample(jnp.stack(feat_terms), weights))
            logit_loss = jnp.mean(losses.weighted_per_sample(jnp.stack(logit_terms), weights))
            feat_total, logit_total = feat_total + feat_loss, logit_total + logit_loss
            prefix = f'{task}/' if self.by_task else ''
            suffix = f'/{task}' if self.by_task else ''
            metrics[f'feature{suffix}'], metrics[f'logit{suffix}'] = feat_loss, logit_loss
            for k, teacher in enumerate(teachers):
                metrics[f'selected/{prefix}{teacher.name}'] = jnp.mean(weights[:, k])
        per_task = params['bridges'].values() if self.by_task else [params['bridges']]
        teacher_side = (b for bridges in per_task for t in bridges.values() for b in t['teacher'].values())
        wn = sum((losses.weight_norm_penalty(b['kernel']) for b in teacher_side), jnp.zeros(()))
        loss = w.feature * feat_total + w.logit * logit_total + w.weight_norm * wn
        metrics.update(loss=loss, weight_norm=wn)
        return loss, (batch_stats, metrics)

    def _combined_loss(self, logits, outputs, batch):
        """Per task: KL from the combined soft target of its teachers (logits only, no bridges),
        computed here or, for a fitted combiner, once before training and read from the batch."""
        temperature = self.weights.temperature
        total, metrics = jnp.zeros(()), {}
        for task, teachers in self.groups:
            if self.precombined:
                target = batch['combined_target'][task]
            else:
                target = self.combine([outputs(t, task, ())[0] for t in teachers], temperature)
            kl = losses.soft_target_kl(logits[task], target, temperature=temperature)
            if self.precombined and 'combined_weight' in batch:  # per-sample weights with mean one
                kl = kl * batch['combined_weight'][task]
            kl = jnp.mean(kl)
            metrics[f'kl/{task}'] = kl
            total = total + kl
        metrics['loss'] = total
        return total, metrics

    def cache_spec(self, logits_dtype: str = 'float16') -> teacher_cache.Spec:
        """What the cache must hold for this loss: for a component net (stage 1, one task) the
        teachers' logits and matched features; for a one-stage target learning a combined target,
        every teacher's logits per task it teaches, in `logits_dtype`."""
        if self.combine is not None:
            return teacher_cache.Spec(
                name='one_stage', kind='teacher', nets=tuple((t, task) for task, ts in self.groups for t in ts),
                taps={t.name: () for t in self.teachers}, logits_by_task=True, logits_dtype=logits_dtype)
        (task, teachers), = self.groups
        return teacher_cache.Spec(
            name=f'stage1/{task}', kind='teacher', nets=tuple((t, task) for t in teachers),
            taps={t.name: tuple(sorted({pair[0].name for pair in self.pairs[task][t.name]})) for t in teachers},
            selected_slots=self.selected_slots, select=self.selector)


# ----------------------------------------------------------------------------- amalgamate

@dataclasses.dataclass(frozen=True, eq=False)
class Amalgamate:
    """The target net learning every target task from its component net at once."""
    target: Net
    components: tuple[tuple[str, Net], ...]  # (task, component net)
    pairs: Mapping[str, Pairs]                # component name -> (component tap, target tap)
    weights: LossWeights
    cached: bool = False                      # components' outputs from the batch (teacher_cache.py)

    def init_bridges(self, rng: jax.Array) -> dict:
        """Target-side bridges only: target widths -> component widths."""
        bridges = {}
        for k, (_, comp) in enumerate(self.components):
            bridges[comp.name] = {
                pair_key(pair): init_bridge(jax.random.fold_in(jax.random.fold_in(rng, k), p),
                                            pair[1].channels, pair[0].channels)
                for p, pair in enumerate(self.pairs[comp.name])}
        return bridges

    def loss(self, params, batch_stats, frozen, images, batch, rng=None):
        logits, feats, batch_stats = _forward(self.target, params, batch_stats, images)
        outputs = FrozenOutputs(frozen, images, batch, self.cached)
        total = jnp.zeros(images.shape[:1])
        metrics = {}
        for task, comp in self.components:
            c_logits, c_feats = outputs(comp, task, self.pairs[comp.name])
            feat = jnp.zeros(images.shape[:1])
            for pair in self.pairs[comp.name]:
                feat = feat + losses.feature_mse(
                    apply_bridge(params['bridges'][comp.name][pair_key(pair)], feats[pair[1].name]),
                    c_feats[pair[0].name])
            logit = losses.logit_loss(logits[task], c_logits, kind=self.weights.logit_loss,
                                      temperature=self.weights.temperature)
            total = total + self.weights.feature * feat + self.weights.logit * logit
            metrics[f'feature/{task}'] = jnp.mean(feat)
            metrics[f'logit/{task}'] = jnp.mean(logit)
        loss = jnp.mean(total)
        metrics['loss'] = loss
        return loss, (batch_stats, metrics)

    def cache_spec(self) -> teacher_cache.Spec:
        """What the stage-2 cache must hold for this loss."""
        return teacher_cache.Spec(
            name='stage2', kind='component', nets=tuple((net, task) for task, net in self.components),
            taps={net.name: tuple(sorted({pair[0].name for pair in self.pairs[net.name]}))
                  for _, net in self.components})


# ----------------------------------------------------------------------------- supervised

@dataclasses.dataclass(frozen=True, eq=False)
class Supervised:
    """Cross-entropy on true labels per task (the upper reference, and the speed baseline)."""
    student: Net
    tasks: tuple[str, ...]

    def loss(self, params, batch_stats, frozen, images, batch, rng=None):
        logits, _, batch_stats = _forward(self.student, params, batch_stats, images)
        total = 0.0
        for task in self.tasks:
            labels = batch['labels'][task]
            valid = (labels >= 0).astype(jnp.float32)
            ce = optax.softmax_cross_entropy_with_integer_labels(
                logits[task].astype(jnp.float32), jnp.maximum(labels, 0))
            total = total + jnp.sum(ce * valid) / jnp.maximum(valid.sum(), 1.0)
        return total, (batch_stats, {'loss': total})
