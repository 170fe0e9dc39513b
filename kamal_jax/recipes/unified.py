"""One-stage recipes for teachers that know different classes: the target learns each task from the
unified soft target of every teacher that knows some of its classes (`kamal_jax.unified`), computed
once on the training rows before training, each row weighted as `unified.outside` says."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from kamal_jax import unified
from kamal_jax.recipes.context import Outcome, Run
from kamal_jax.recipes.one_stage import ONE_STAGE_READS, _train, one_stage_config, one_stage_job
from kamal_jax.train import evaluate as eval_lib
from kamal_jax.train.job import Frozen
from kamal_jax.train.nets import Net
from kamal_jax.train.objectives import Distill, LossWeights


@functools.lru_cache(maxsize=64)
def _whole(net: Net) -> Net:
    """`net` with one head over all its logits (one object per net, so it compiles once)."""
    return dataclasses.replace(net, heads={'all': (0, int(net.module.num_classes))})


def whole_logits(run: Run, teacher: str, images: Any) -> np.ndarray:
    """[rows, outputs]: a teacher's whole classifier output (not only its declared task slices)."""
    return eval_lib.predict(_whole(run.teachers[teacher]), run.frozen[teacher], images,
                            run.config.eval_batch_size)['all']


def task_targets(run: Run, images: Any, kind: str, temperature: float) -> dict[str, unified.Target]:
    """Per target task, its unified target on `images` (each teacher run once)."""
    unions = {task: unified.union_of(run.plan, task) for task in run.plan.target_tasks}
    names = dict.fromkeys(m.teacher for u in unions.values() for m in u.members)
    logits = {name: whole_logits(run, name, images) for name in names}
    u = run.config.unified
    return {task: unified.task_target(union, [logits[m.teacher] for m in union.members], kind=kind,
                                      temperature=temperature, outside=u.outside, iterations=u.iterations)
            for task, union in unions.items()}


def _precomputed(*_):
    raise RuntimeError('the unified target is computed before training and read from the batch')


@dataclasses.dataclass(frozen=True)
class Unified:
    """KL (x T^2) from the unified target per head, at the one-stage budget's temperature; logits only."""
    method: str
    estimate: str  # kamal_jax.unified.ESTIMATES
    reads = property(lambda self: ONE_STAGE_READS + ('unified.',))

    def run(self, run: Run, name: str, main: bool) -> Outcome:
        cfg = one_stage_config(run.config)
        target = run.target_net('target' if main else f'baseline_{name}', cfg)
        targets = task_targets(run, run.train.images, self.estimate, cfg.temperature)
        arrays = {'image': run.train.images,
                  'combined_target': {t: v.probabilities for t, v in targets.items()},
                  'combined_weight': {t: v.weights for t, v in targets.items()}}
        stage = Distill(target, tuple((t, ()) for t in run.plan.target_tasks), {},
                        LossWeights(temperature=cfg.temperature), combine=_precomputed, precombined=True)
        method = self.method.format(temperature=cfg.temperature, outside=run.config.unified.outside)
        return _train(run, name, main, method, cfg,
                      one_stage_job(run, name, main, cfg, target, stage.loss, {}, arrays, Frozen()))
