"""Loss functions and train steps for stage 1 (extraction), stage 2 (amalgamation) and baselines.

Every loss here has the signature `loss_fn(params, batch_stats, frozen, images, batch)`:
`params`/`batch_stats` belong to the student (the only thing differentiated), `frozen` holds
the variables of teachers or component nets, `images` is the augmented view all nets share.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from kamal_jax import ambiguity, losses
from kamal_jax.models.bridges import apply_bridge, init_bridge
from kamal_jax.models.taps import Tap, pair_by_depth
from kamal_jax.train import teacher_cache
from kamal_jax.train.augment import augment
from kamal_jax.train.nets import Net
from kamal_jax.train.state import TrainState

Pairs = tuple[tuple[Tap, Tap], ...]  # (frozen-side tap, student tap)


def pair_key(pair: tuple[Tap, Tap]) -> str:
    return f'{pair[0].name}__{pair[1].name}'


@dataclasses.dataclass(frozen=True)
class LossWeights:
    feature: float = 1.0
    logit: float = 1.0
    weight_norm: float = 1.0
    logit_loss: str = 'mse'
    temperature: float = 1.0

    @classmethod
    def from_config(cls, cfg: Any) -> 'LossWeights':
        return cls(feature=float(cfg.feature_weight), logit=float(cfg.logit_weight),
                   weight_norm=float(cfg.get('weight_norm', 1.0)), logit_loss=cfg.get('logit_loss', 'mse'),
                   temperature=float(cfg.get('temperature', 1.0)))


def make_pairs(frozen: Net, student: Net, override: Sequence[Sequence[str]] | None) -> Pairs:
    return pair_by_depth(frozen.taps(), student.taps(), override)


def frozen_outputs(net: Net, task: str, pairs: Pairs, frozen, images, batch, cached: bool, slots=None,
                   index: int = 0):
    """A frozen net's `task` logits and features: read from the batch's cache, or computed on the view."""
    if cached:
        return teacher_cache.read_outputs(batch, net, [pair[0].name for pair in pairs], slots, index)
    logits, feats = jax.lax.stop_gradient(net.apply_eval(frozen[net.name], images))
    return logits[task], feats


# ----------------------------------------------------------------------------- stage 1

@dataclasses.dataclass(frozen=True, eq=False)
class Stage1:
    """One component net learning one task from a group of teachers."""
    task: str
    student: Net
    teachers: tuple[Net, ...]
    pairs: Mapping[str, Pairs]  # teacher name -> tap pairs
    weights: LossWeights
    selection: str = 'online'   # 'online': least ambiguous on this view; 'offline': batch['selected']
    mode: str = 'select'         # 'select' | 'random' | 'average' (baselines)
    cached: bool = False         # teachers' outputs from the batch (see train/teacher_cache.py)
    # With `cached` and offline selection: teacher -> tap -> (batch key, shape) of the cache that
    # holds only each sample's selected teacher's features (teacher_cache.selected_slots).
    selected_slots: Mapping[str, Mapping[str, tuple[str, tuple[int, ...]]]] | None = None

    def init_bridges(self, rng: jax.Array, width_ratio: float = 0.5) -> dict:
        """Both sides map into a common space of `width_ratio` x the teacher's channels."""
        bridges = {}
        for k, teacher in enumerate(self.teachers):
            student_side, teacher_side = {}, {}
            for p, pair in enumerate(self.pairs[teacher.name]):
                common = max(1, round(pair[0].channels * width_ratio))
                r = jax.random.fold_in(jax.random.fold_in(rng, k), p)
                student_side[pair_key(pair)] = init_bridge(jax.random.fold_in(r, 0), pair[1].channels, common)
                teacher_side[pair_key(pair)] = init_bridge(jax.random.fold_in(r, 1), pair[0].channels, common)
            bridges[teacher.name] = {'student': student_side, 'teacher': teacher_side}
        return bridges

    def loss(self, params, batch_stats, frozen, images, batch, rng=None):
        (logits, feats), updated = self.student.module.apply(
            {'params': params['net'], 'batch_stats': batch_stats}, self.student.prepare(images),
            train=True, mutable=['batch_stats'])
        student_logits = logits[self.task]
        feat_terms, logit_terms, entropies = [], [], []
        for i, teacher in enumerate(self.teachers):
            slots = (self.selected_slots or {}).get(teacher.name)
            t_logits, t_feats = frozen_outputs(teacher, self.task, self.pairs[teacher.name], frozen, images,
                                               batch, self.cached, slots, i)
            entropies.append(ambiguity.entropy(t_logits))
            bridges = params['bridges'][teacher.name]
            feat = 0.0
            for pair in self.pairs[teacher.name]:
                key = pair_key(pair)
                feat = feat + losses.feature_mse(apply_bridge(bridges['student'][key], feats[pair[1].name]),
                                                 apply_bridge(bridges['teacher'][key], t_feats[pair[0].name]))
            feat_terms.append(jnp.broadcast_to(feat, student_logits.shape[:1]))
            logit_terms.append(losses.logit_loss(student_logits, t_logits, kind=self.weights.logit_loss,
                                                 temperature=self.weights.temperature))
        entropies = jnp.stack(entropies)
        k = len(self.teachers)
        if self.mode == 'average':  # baseline: every teacher, equal weight
            mask = jnp.full((student_logits.shape[0], k), 1.0 / k)
        else:
            if self.mode == 'random':
                selected = jax.random.randint(rng, student_logits.shape[:1], 0, k)
            elif self.selection == 'offline':
                selected = batch['selected']
            else:
                selected = ambiguity.select_least_ambiguous(entropies)
            mask = ambiguity.selection_mask(selected, k)
        feat_loss = jnp.mean(losses.select_per_sample(jnp.stack(feat_terms), mask))
        logit_loss = jnp.mean(losses.select_per_sample(jnp.stack(logit_terms), mask))
        wn = sum((losses.weight_norm_penalty(b['kernel'])
                  for t in params['bridges'].values() for b in t['teacher'].values()), jnp.zeros(()))
        w = self.weights
        loss = w.feature * feat_loss + w.logit * logit_loss + w.weight_norm * wn
        metrics = {'loss': loss, 'feature': feat_loss, 'logit': logit_loss, 'weight_norm': wn}
        for i, teacher in enumerate(self.teachers):
            metrics[f'selected/{teacher.name}'] = jnp.mean(mask[:, i])
        return loss, (updated['batch_stats'], metrics)


# ----------------------------------------------------------------------------- stage 2

@dataclasses.dataclass(frozen=True, eq=False)
class Stage2:
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
        (logits, feats), updated = self.target.module.apply(
            {'params': params['net'], 'batch_stats': batch_stats}, self.target.prepare(images),
            train=True, mutable=['batch_stats'])
        total = jnp.zeros(images.shape[:1])
        metrics = {}
        for task, comp in self.components:
            c_logits, c_feats = frozen_outputs(comp, task, self.pairs[comp.name], frozen, images, batch,
                                               self.cached)
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
        return loss, (updated['batch_stats'], metrics)


# ----------------------------------------------------------------------------- supervised

@dataclasses.dataclass(frozen=True, eq=False)
class Supervised:
    """Cross-entropy on true labels per task (the upper reference, and the speed baseline)."""
    student: Net
    tasks: tuple[str, ...]

    def loss(self, params, batch_stats, frozen, images, batch, rng=None):
        (logits, _), updated = self.student.module.apply(
            {'params': params['net'], 'batch_stats': batch_stats}, self.student.prepare(images),
            train=True, mutable=['batch_stats'])
        total = 0.0
        for task in self.tasks:
            labels = batch['labels'][task]
            valid = (labels >= 0).astype(jnp.float32)
            ce = optax.softmax_cross_entropy_with_integer_labels(
                logits[task].astype(jnp.float32), jnp.maximum(labels, 0))
            total = total + jnp.sum(ce * valid) / jnp.maximum(valid.sum(), 1.0)
        return total, (updated['batch_stats'], {'loss': total})


# ----------------------------------------------------------------------------- the step

def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, *, crop_padding: int = 0,
                    flip: bool = False) -> Callable:
    """`step(state, frozen, batch, rng) -> (state, metrics)`; pure, ready for `jax.jit`.

    Randomness per step is `fold_in(rng, state.step)`, so a resumed run draws the same views.
    """
    def step(state: TrainState, frozen: Any, batch: Mapping[str, jax.Array], rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        view_rng, loss_rng = jax.random.split(rng)
        images = augment(view_rng, batch['image'], crop_padding=crop_padding, flip=flip)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (batch_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, frozen, images,
                                                     batch, loss_rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics['grad_norm'] = optax.global_norm(grads)
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                             opt_state=opt_state), metrics
    return step
