"""What every recipe is given (`Run`) and gives back (`Outcome`), and the config reading they share."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

import numpy as np

from kamal_jax import config_schema, models, selection
from kamal_jax.data import records
from kamal_jax.layout import Layout
from kamal_jax.tasks import Plan
from kamal_jax.train import batches as batches_lib, evaluate as eval_lib, views as views_lib
from kamal_jax.train.job import Settings
from kamal_jax.train.metrics import Monitoring
from kamal_jax.train.nets import Net
from kamal_jax.train.objectives import Groups, LossWeights

EVAL_SAMPLES = 1000  # held-out images scored during training (a fixed random subset: cheap, not exact)


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """The run as the pipeline holds it: config, plan, ported teachers, data, mesh, workdir."""
    config: Any
    plan: Plan
    teachers: Mapping[str, Net]
    frozen: Mapping[str, Any]
    train: Any
    held_out: Any
    mesh: Any
    workdir: str

    @functools.cached_property
    def layout(self) -> Layout:
        """Every path of the run (`kamal_jax.layout`)."""
        return Layout(self.workdir)

    def groups(self) -> Groups:
        """Per target task, the teachers that declare it."""
        return tuple((task, tuple(self.teachers[t.name] for t in self.plan.group(task)))
                     for task in self.plan.target_tasks)

    def evaluate(self, net: Net, variables: Any) -> dict[str, float]:
        """Accuracy on the held-out split for each target task the net has a head for."""
        tasks = {t: self.plan.tasks[t] for t in self.plan.target_tasks if t in dict(net.module.heads)}
        return eval_lib.evaluate(net, variables, self.held_out, tasks, self.config.eval_batch_size)

    @functools.cached_property
    def held_out_subset(self) -> Any:
        """At most EVAL_SAMPLES held-out images, the same ones for every stage and rerun."""
        split = self.held_out
        if len(split.images) <= EVAL_SAMPLES:
            return split
        keep = np.sort(np.random.default_rng(self.config.seed).permutation(len(split.images))[:EVAL_SAMPLES])
        return records.take(split, keep)

    def monitoring(self, logdir: str, net: Net, config: Any) -> Monitoring:
        """Curves of `net`'s training under `logdir` (TensorBoard and JSONL), `config` as hparams, and
        accuracy on `held_out_subset` every `config.eval_every` steps (0: never)."""
        tasks = {t: self.plan.tasks[t] for t in self.plan.target_tasks if t in dict(net.module.heads)}
        subset, batch_size = self.held_out_subset, self.config.eval_batch_size
        scored, total = len(subset.images), len(self.held_out.images)
        label = 'held-out accuracy' if scored == total else f'held-out accuracy ({scored} of {total} images)'
        # Without labels there is nothing to score during training; the run ends with diagnostics.
        evaluate = (lambda v: eval_lib.evaluate(net, v, subset, tasks, batch_size)) if subset.labels else None
        return Monitoring(logdir, config.to_dict(),
                          evaluate=evaluate,
                          eval_every=config.eval_every,
                          profile_steps=config.profile_steps, eval_label=label)

    def target_net(self, name: str, cfg: Any) -> Net:
        """A multi-head net with one head per target task, of `cfg`'s architecture and widths."""
        return student_net(name, cfg, [(t, self.plan.tasks[t].num_classes) for t in self.plan.target_tasks],
                           self.config.data, compute_dtype(self.config))

    def entry(self, role: str, net: Net, variables: Any, tasks, **extra) -> 'Scored':
        """A trained net scored on the held-out split (`accuracy` in `extra`: already scored)."""
        acc = extra.pop('accuracy', None) or self.evaluate(net, variables)
        return Scored(role, net, variables, tuple(tasks), acc, extra)


class Scored(NamedTuple):
    """A trained net as the run's summary lists it: its role ('component', 'target', 'baseline'), the
    tasks it is scored on, its held-out accuracy and what else the entry says (`extra`); the pipeline
    adds its size and cost and writes the entry."""
    role: str
    net: Net
    variables: Any
    tasks: tuple
    accuracy: Mapping[str, float]
    extra: dict


class Outcome(NamedTuple):
    """A finished recipe: its nets by summary key (`Scored`; the pipeline hands on summary entries
    instead), wall seconds by key, and the net to export."""
    entries: dict
    wall: dict
    net: Net
    variables: Any


def compute_dtype(config: Any) -> str:
    """'float32' (default) or 'bfloat16': activations of trained and frozen nets in training steps;
    params, optimiser state, losses and entropies stay float32."""
    return config.compute_dtype


def student_net(name: str, cfg: Any, heads, data_cfg: Any, dtype: str = 'float32') -> Net:
    widths = tuple(cfg.widths)
    net = Net(name, cfg.arch, models.multihead(cfg.arch, heads, widths or None),
              tuple(data_cfg.mean), tuple(data_cfg.std), widths=widths)
    return net.with_compute_dtype(dtype)


def job_settings(config: Any, cfg: Any, seed: int) -> Settings:
    """A job's settings (`train.job.Settings`): the stage's section `cfg` (optimiser, budget, saves)
    and the run's loop and augmentation fields."""
    return Settings(cfg, seed, log_every=config.log_every, steps_per_call=config.steps_per_call,
                    prefetch=batches_lib.prefetch_of(config), **views_lib.step_augmentation(config.data))


def loss_weights(cfg: Any) -> LossWeights:
    return LossWeights(feature=float(cfg.feature_weight), logit=float(cfg.logit_weight),
                       weight_norm=cfg.weight_norm if 'weight_norm' in cfg else LossWeights.weight_norm,
                       logit_loss=cfg.logit_loss,
                       temperature=cfg.temperature)


def selector_of(cfg: Any) -> selection.Selector:
    """The stage's selector (`stageN.selector`, default the paper's least entropy)."""
    return selection.get(cfg.selector)


def with_changes(config: Any, **sections: Mapping[str, Any]) -> Any:
    """A copy of `config` with some fields of some sections changed (the main config is untouched)."""
    return config_schema.replace(config, **sections)


def floats(metrics: Mapping[str, Any]) -> dict:
    return {k: round(float(v), 5) for k, v in metrics.items()}


def fmt(acc: Mapping[str, float]) -> str:
    return ', '.join(f'{t} {100 * a:.1f}%' for t, a in acc.items())
