"""Two-stage recipes: stage 1 trains one component net per task from its teachers, stage 2 the
target from the components. The paper's recipe, and the baselines that change one thing in it."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Mapping

from kamal_jax.recipes.context import Outcome, Run, fmt, floats, selector_of, with_changes
from kamal_jax.recipes.stages import run_stage1, run_stage2
from kamal_jax.recipes.teacher_passes import fit_selector, selection_on_held_out

log = logging.getLogger('kamal_jax')


@dataclasses.dataclass(frozen=True)
class TwoStage:
    """The paper's two stages, with some fields of `stage1` / `stage2` changed from the config's."""
    method: str
    reads = ('stage1.', 'stage2.')  # the stage fields it reads
    stage1: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    stage2: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def config(self, config: Any) -> Any:
        return with_changes(config, stage1=self.stage1, stage2=self.stage2)

    def run(self, run: Run, name: str, main: bool) -> Outcome:
        """As the main recipe: component entries, then 'target'; as a baseline: one 'baseline_NAME'."""
        config = self.config(run.config)
        t0 = time.perf_counter()
        components, entries, dirs = {}, {}, run.layout.recipe(name, main)

        def monitoring(logdir, net):
            return run.monitoring(logdir, net, config)
        for task in run.plan.target_tasks:
            student, variables, metrics = run_stage1(task, run.plan, run.teachers, run.frozen, run.train, config,
                                                     run.mesh, dirs, monitoring)
            components[task] = (student, variables)
            acc = run.evaluate(student, variables)
            if main:
                teachers = [run.teachers[t.name] for t in run.plan.group(task)]
                selector = selector_of(config.stage1)
                params = fit_selector(task, teachers, run.frozen, run.train.images, config.eval_batch_size,
                                      selector, config.data, config.seed)
                report = selection_on_held_out(task, teachers, run.frozen, run.held_out, run.plan,
                                          config.eval_batch_size, selector, params, config.data, config.seed,
                                          (student, variables))
                entries[student.name] = run.entry('component', student, variables, [task], accuracy=acc,
                                                  selection=report, final_train_metrics=floats(metrics))
                log.info('component %s: %s; selection on held-out data: %s', task, fmt(acc), report)
            else:
                entries[task] = (acc.get(task), floats(metrics))
        stage1_s = time.perf_counter() - t0
        target, variables, metrics = run_stage2(run.plan, components, run.train, config, run.mesh, dirs, monitoring)
        wall = {'stage1': stage1_s, 'stage2': time.perf_counter() - t0 - stage1_s}
        if main:
            entries['target'] = run.entry('target', target, variables, run.plan.target_tasks,
                                          final_train_metrics=floats(metrics))
            return Outcome(entries, wall, target, variables)
        entry = run.entry('baseline', target, variables, run.plan.target_tasks, method=self.method,
                          epochs=[int(config.stage1.epochs), int(config.stage2.epochs)],
                          component_accuracy={t: a for t, (a, _) in entries.items()},
                          component_train_metrics={t: m for t, (_, m) in entries.items()},
                          final_train_metrics=floats(metrics))
        return Outcome({f'baseline_{name}': entry}, {f'baseline_{name}': sum(wall.values())}, target, variables)
