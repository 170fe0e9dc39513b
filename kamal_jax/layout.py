"""Where a run keeps what it writes: every path under a workdir, in one place.

    WORKDIR/config.json, run.lock, stopped.json, log.txt     identity, lock, a non-finite stop, the log
    WORKDIR/summary.json, summary.md, report/                the results
    WORKDIR/zoo/NAME.pth, zoo/zoo_config.json                teachers the run trains itself
    WORKDIR/teachers/                                        ported teachers, cached by content hash
    WORKDIR/skipped_images.tsv, held_out_images.txt          notes on your own image folders
    WORKDIR/tb/diagnostics                                   the label-free diagnostics as scalars
    WORKDIR/export[/baselines/NAME]                          the trained nets, as `load_student` reads them
    RECIPE/stage1/TASK, stage2, target                       checkpoints (RECIPE: WORKDIR for the main
    RECIPE/tb/stage1/TASK, tb/stage2, tb/target              recipe, WORKDIR/baselines/NAME for a
    RECIPE/cache/stage1/TASK, cache/stage2                   baseline); curves; frozen nets' outputs
    RECIPE/cache/target, cache/target_decision.json          a one-stage target's teacher logits cache
    RECIPE/refits/target/step_N.npz                          the student loop's targets refitted at step N

A one-stage baseline keeps its checkpoints in RECIPE itself (no `target` folder), as runs always have.
Nothing here touches the disk but the listings (`zoo_cards`, `contents`, `refit_steps`); the modules that write a file
ask this one where.
"""

from __future__ import annotations

import dataclasses
import glob
import os

CONFIG_FILE = 'config.json'
LOCK_FILE = 'run.lock'
STOP_FILE = 'stopped.json'
TB = 'tb'  # the folder of curves (TensorBoard and JSONL) under a recipe's folder
DIAGNOSTICS = 'diagnostics'  # under WORKDIR/tb: the label-free diagnostics' scalars
BASELINES = 'baselines'


@dataclasses.dataclass(frozen=True)
class JobDirs:
    """The folders of one trained net: its checkpoints, its curves and its frozen nets' cached outputs
    (and, for a one-stage target, the file that keeps whether it reads its teachers from a cache, and
    the folder of the targets the student loop refits)."""
    checkpoints: str
    tb: str
    cache: str
    cache_decision: str = ''
    refits: str = ''

    def refit(self, step: int) -> str:
        """The per-sample targets refitted at `step` (`recipes.student_loop`)."""
        return os.path.join(self.refits, f'step_{int(step)}.npz')

    def refit_steps(self) -> list[int]:
        """The steps whose refitted targets are stored, ascending."""
        if not os.path.isdir(self.refits):
            return []
        names = (n[len('step_'):-len('.npz')] for n in os.listdir(self.refits)
                 if n.startswith('step_') and n.endswith('.npz'))
        return sorted(int(n) for n in names if n.isdigit())


@dataclasses.dataclass(frozen=True)
class RecipeDirs:
    """The folders of one recipe's nets: under the workdir itself (main) or WORKDIR/baselines/NAME."""
    root: str
    main: bool

    def _join(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def stage1(self, task: str) -> JobDirs:
        return JobDirs(self._join('stage1', task), self._join(TB, 'stage1', task), self._join('cache', 'stage1', task))

    def stage2(self) -> JobDirs:
        return JobDirs(self._join('stage2'), self._join(TB, 'stage2'), self._join('cache', 'stage2'))

    def one_stage(self) -> JobDirs:
        """The target of a one-stage recipe (a baseline's checkpoints sit in its folder itself)."""
        return JobDirs(self._join('target') if self.main else self.root, self._join(TB, 'target'),
                       self._join('cache', 'target'), self._join('cache', 'target_decision.json'),
                       self._join('refits', 'target'))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Every path of the run in `root` (see the module docstring)."""
    root: str

    def _join(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    config = property(lambda self: self._join(CONFIG_FILE))
    lock = property(lambda self: self._join(LOCK_FILE))
    stop = property(lambda self: self._join(STOP_FILE))
    log = property(lambda self: self._join('log.txt'))
    summary_json = property(lambda self: self._join('summary.json'))
    summary_md = property(lambda self: self._join('summary.md'))
    report = property(lambda self: self._join('report'))
    zoo = property(lambda self: self._join('zoo'))
    zoo_config = property(lambda self: self._join('zoo', 'zoo_config.json'))
    teachers = property(lambda self: self._join('teachers'))
    skipped_images = property(lambda self: self._join('skipped_images.tsv'))
    held_out_images = property(lambda self: self._join('held_out_images.txt'))
    diagnostics_tb = property(lambda self: self._join(TB, DIAGNOSTICS))

    def zoo_checkpoint(self, teacher: str) -> str:
        """Where the zoo writes teacher `teacher` (what '{workdir}/zoo/NAME.pth' in a config names)."""
        return self._join('zoo', f'{teacher}.pth')

    def recipe(self, name: str, main: bool) -> RecipeDirs:
        """The folders of recipe `name`'s nets: the workdir itself for the run's main recipe."""
        return RecipeDirs(self.root if main else self._join(BASELINES, name), main)

    def export(self, name: str, main: bool) -> str:
        """Where recipe `name`'s trained net is exported: WORKDIR/export, or export/baselines/NAME."""
        return self._join('export') if main else self._join('export', BASELINES, name)

    def zoo_cards(self) -> list[str]:
        """The zoo's teacher cards (zoo/NAME.json; not its zoo_config.json), sorted."""
        return sorted(path for path in glob.glob(self._join('zoo', '*.json')) if path != self.zoo_config)

    def contents(self) -> list[str]:
        """The paths of what the workdir holds but its lock (what `--overwrite` deletes)."""
        return [self._join(name) for name in sorted(os.listdir(self.root)) if name != LOCK_FILE]
