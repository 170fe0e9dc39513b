"""The student in the loop: a one-stage target that counts the student as one more voter.

For the first `baseline_stage.student_loop.start` share of its steps the target learns each task's
combined target (`student_loop.combiner`, default 'product') exactly as that recipe does. Then at
`student_loop.refits` steps, the first at the start and the others evenly spaced to the end, the
per-sample target of every training row is re-estimated on the clean view (the rows as they are: no
crop, flip or cutout; with `data.views` each pre-drawn view is a row), the student in eval mode: the
normalised geometric mean of the teachers' combined target, counted as the task's teachers, and the
student's softmax(logits / T), counted as `student_loop.student_weight` more (`selection.with_student_vote`;
for `product`, one more expert in the product). Between refits the
student learns that stored target under stronger noise, the run's crop and flip plus a cutout
square of `student_loop.cutout` x the side, as Noisy Student (Xie et al., CVPR 2020) trains a
student with noise on targets computed from clean views. Same budget as the other one-stage recipes.

Resuming: a refit's targets are written atomically (`JobDirs.refit(step)`) after the checkpoint of
that step is saved. A relaunch skips every segment whose closing refit is stored, reloads the last
stored targets and resumes the segment in progress from its checkpoint: it ends on the parameters of
an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import time
from typing import Any

import numpy as np

from kamal_jax import selection
from kamal_jax.files import write_atomic
from kamal_jax.recipes.context import Outcome, Run, floats
from kamal_jax.recipes.one_stage import ONE_STAGE_READS, OneStage, one_stage_config, one_stage_job
from kamal_jax.recipes.teacher_passes import fitted_target
from kamal_jax.tasks import ConfigError
from kamal_jax.train import distributed, evaluate as eval_lib, views as views_lib
from kamal_jax.train.job import Frozen, Job
from kamal_jax.train.nets import Net
from kamal_jax.train.objectives import Distill, LossWeights
from kamal_jax.train.trainer import train

log = logging.getLogger('kamal_jax')
FIELD = 'baseline_stage.student_loop'


def total_steps(samples: int, cfg: Any) -> int:
    """The one-stage budget in steps (`cfg.epochs` passes of `samples // cfg.batch_size` steps, as
    `train.batches.EpochBatches` counts them)."""
    return int(cfg.epochs) * (samples // int(cfg.batch_size))


def schedule(total: int, start: float, refits: int) -> tuple[int, ...]:
    """The refit steps: the first after `start` x `total` steps, the others evenly spaced from it to
    the end, each segment at least one step long; else one sentence naming the fields."""
    if not 0 < start < 1:
        raise ConfigError(f'{FIELD}.start must be between 0 and 1 (the share of the steps before the first '
                          f'refit), got {start!r}.')
    first = int(round(start * total))
    if first < 1 or total - first < refits:
        raise ConfigError(f'{FIELD}.refits = {refits} after step {first} of {total} leaves a segment without a '
                          f'step; lower {FIELD}.refits, move {FIELD}.start, or train longer (baseline_stage.epochs).')
    return tuple(first + k * (total - first) // refits for k in range(refits))


def samples(run: Run) -> int:
    """The training images (each once, whatever views are pre-drawn of them)."""
    return len(run.train.images) // max(views_lib.count(run.config.data), 1)


class Refits:
    """The teachers' part of every refit (their combined target on the clean rows, computed once) and
    each refit's targets, stored under `dirs.refits` keyed by step."""

    def __init__(self, run: Run, target: Net, cfg: Any, dirs):
        self.run, self.target, self.cfg, self.dirs = run, target, cfg, dirs
        self.combiner = selection.get_combiner(cfg.student_loop.combiner)
        self._teachers = None

    def teachers(self) -> dict:
        if self._teachers is None:
            run = self.run
            self._teachers = {task: fitted_target(task, ts, run.frozen, run.train.images, run.config.eval_batch_size,
                                                  self.combiner, self.cfg.temperature) for task, ts in run.groups()}
        return self._teachers

    def refit(self, step: int, variables: Any, which: str) -> dict:
        """Every row's target at `step` from the teachers and the student (`variables`), stored."""
        loop, run = self.cfg.student_loop, self.run
        student = eval_lib.predict(self.target, variables, run.train.images, run.config.eval_batch_size)
        teachers = self.teachers()
        voters = {task: len(ts) for task, ts in run.groups()}
        targets = {task: np.asarray(selection.with_student_vote(teachers[task], student[task], self.cfg.temperature,
                                                                loop.student_weight, voters[task]), np.float32)
                   for task in teachers}
        moved = ', '.join(f'{task} {np.mean(t.argmax(-1) != teachers[task].argmax(-1)):.1%}'
                          for task, t in targets.items())
        log.info('%s: refit %s at step %d: the student votes with weight %g; top class moved off the teachers\' '
                 'on %s of %d rows', self.target.name, which, step, loop.student_weight, moved, len(run.train.images))
        if distributed.is_primary():
            os.makedirs(self.dirs.refits, exist_ok=True)
            buffer = io.BytesIO()
            np.savez(buffer, **targets)
            write_atomic(self.dirs.refit(step), buffer.getvalue())
        return targets

    def load(self, step: int) -> dict:
        """The stored targets of the refit at `step`, checked against the run's rows and tasks."""
        path = self.dirs.refit(step)
        with np.load(path, allow_pickle=False) as stored:
            targets = {k: stored[k] for k in stored.files}
        want = {task: len(self.run.train.images) for task, _ in self.run.groups()}
        got = {task: len(t) for task, t in targets.items()}
        if got != want:
            raise ConfigError(f'{path} holds the targets of {got} rows by task, not of this run\'s {want}; move '
                              f'the folder {self.dirs.refits} and the checkpoints beside it aside to train the recipe '
                              'afresh.')
        log.info('%s: the targets of the refit at step %d, from %s', self.target.name, step, path)
        return targets


@dataclasses.dataclass(frozen=True)
class StudentLoop:
    """The student in the loop (see the module docstring); one job per segment between refits."""
    method: str
    reads = property(lambda self: ONE_STAGE_READS)

    def run(self, run: Run, name: str, main: bool) -> Outcome:
        t0 = time.perf_counter()
        cfg = one_stage_config(run.config)
        loop = cfg.student_loop
        target = run.target_net('target' if main else f'baseline_{name}', cfg)
        dirs = run.layout.recipe(name, main).one_stage()
        total = total_steps(samples(run), cfg)
        steps = schedule(total, loop.start, loop.refits)
        refits, stored, targets = Refits(run, target, cfg, dirs), set(dirs.refit_steps()), None
        log.info('%s: the student in the loop: %s target until step %d, then refits at steps %s of %d',
                 target.name, loop.combiner, steps[0], ', '.join(map(str, steps)), total)
        for i, end in enumerate((*steps, total)):
            if i < len(steps) and steps[i] in stored:
                continue  # a resumed run: this segment is trained and its closing refit stored
            if i == 0:
                job = self._first_job(run, name, main, cfg, target)
            else:
                job = _loop_job(run, name, main, cfg, target, targets or refits.load(steps[i - 1]))
            variables, metrics = train(dataclasses.replace(
                job, settings=dataclasses.replace(job.settings, stop_after=end)))
            if i < len(steps):
                targets = refits.refit(steps[i], variables, f'{i + 1}/{len(steps)}')
        method = self.method.format(combiner=loop.combiner, weight=loop.student_weight, start=loop.start,
                                    refits=loop.refits, cutout=loop.cutout, temperature=cfg.temperature)
        key = 'target' if main else f'baseline_{name}'
        entry = run.entry(key if main else 'baseline', target, variables, run.plan.target_tasks, method=method,
                          epochs=int(cfg.epochs), refit_steps=list(steps), final_train_metrics=floats(metrics))
        return Outcome({key: entry}, {key: time.perf_counter() - t0}, target, variables)

    def _first_job(self, run: Run, name: str, main: bool, cfg: Any, target: Net) -> Job:
        """The first segment's job: the combiner's recipe as it is (live teachers, a logits cache or a
        fitted target)."""
        groups = run.groups()
        frozen = Frozen.live({t.name: run.frozen[t.name] for _, ts in groups for t in ts})
        first = OneStage('', combine=cfg.student_loop.combiner)  # its method line is this recipe's
        return first.combined_job(run, name, main, cfg, target, groups, frozen)[1]


def _loop_job(run: Run, name: str, main: bool, cfg: Any, target: Net, targets: dict) -> Job:
    """A segment after a refit: KL at the temperature from each row's stored target, no teacher run,
    the run's crop and flip and the loop's cutout."""
    combiner = selection.get_combiner(cfg.student_loop.combiner)
    stage = Distill(target, run.groups(), {}, LossWeights(temperature=cfg.temperature), combine=combiner,
                    precombined=True)
    job = one_stage_job(run, name, main, cfg, target, stage.loss, {},
                        {'image': run.train.images, 'combined_target': targets}, Frozen())
    return dataclasses.replace(job, settings=dataclasses.replace(job.settings, cutout=cfg.student_loop.cutout))
