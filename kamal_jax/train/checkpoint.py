"""Orbax checkpoints of a train state: save every N steps (with a time floor), resume from the latest.

A step holds the item `default` (the train state; checkpoints from before the input pipeline held
only this one) and, where the loop has one, `data`: the input iterator's state as JSON.

A save that fails (a full disk: orbax raises ValueError('... RESOURCE_EXHAUSTED ...')) raises
`files.WriteError` naming the step and the folder; orbax writes a step to a temporary folder and
renames it when complete, so the steps saved before stay whole, and a relaunch resumes from them.
Waiting for saves is bounded (`waits`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from kamal_jax.files import WriteError, write_failure
from kamal_jax.train import distributed, waits

log = logging.getLogger('kamal_jax')


class Checkpointer:
    """Saves at multiples of `every_steps`, skipping those within `min_interval_s` of the last save.

    Why the time floor: a save blocks the loop for its device-to-host copy and bookkeeping (about
    0.5-0.7 s per save of a CIFAR ResNet-20 state on an H200, where 200 steps take about 2 s), so a
    step count that suits a CPU would spend a fifth of an accelerator's time saving. Resuming is
    exact from any checkpoint (batches and noise depend only on the step), so fewer saves only
    mean more steps to redo after a crash. With several processes, process 0's clock decides.
    The floor defaults to 0 here; a run's stages set 60 s (`config_schema`).
    """

    def __init__(self, directory: str, every_steps: int, max_to_keep: int = 2, min_interval_s: float = 0.0):
        self.directory = os.path.abspath(directory)
        self.every_steps = max(1, int(every_steps))
        self.min_interval_s = float(min_interval_s)
        self._last_save = time.monotonic()  # restoring or starting counts as a fresh state
        self.restored_data = None  # the input iterator's state of the step `restore` read, if it had one
        self._saving = None  # the step of the last save started
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=('default', 'data'),
            item_handlers={'default': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state: Any) -> Any:
        """Restores the newest checkpoint that reads back onto the shardings of `abstract_state`.

        A step that fails to restore (a truncated or corrupt file) is moved aside, never deleted,
        and the next newest is tried; with none left, returns `abstract_state` as it is (a fresh start).
        The step's input iterator state, where it has one, is left in `restored_data`.
        """
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              abstract_state)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                items = {'default': ocp.args.StandardRestore(target)}
                if os.path.isdir(os.path.join(self.directory, str(step), 'data')):
                    items['data'] = ocp.args.JsonRestore()
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
                self.restored_data = restored.get('data') if 'data' in items else None
                return restored['default']
            except Exception as e:  # orbax and tensorstore raise many kinds on a damaged checkpoint
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                aside = self._move_aside(step)
                log.warning('checkpoint step %d in %s does not restore (%s: %s); moved it to %s and trying '
                            'the one before.', step, self.directory, type(e).__name__, reason, aside)
        log.warning('no checkpoint in %s restores; this stage starts afresh.', self.directory)
        return abstract_state

    def _move_aside(self, step: int) -> str:
        """Renames a damaged step's folder to a name orbax does not read as a step."""
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(self.directory, f'corrupt_step_{step}_{time.strftime("%Y%m%d-%H%M%S")}')
        if distributed.is_primary():
            os.replace(src, dst)
        self.manager.reload()
        return dst

    def _interval_passed(self) -> bool:
        passed = time.monotonic() - self._last_save >= self.min_interval_s
        if jax.process_count() > 1:  # every process must make the same call into orbax
            from jax.experimental import multihost_utils
            passed = bool(multihost_utils.broadcast_one_to_all(np.asarray(passed)))
        return passed

    def due(self, step: int, *, force: bool = False) -> bool:
        """Whether `maybe_save(step, ...)` would save (the loop checks the state is finite first)."""
        if not force and (step % self.every_steps or not self._interval_passed()):
            return False
        return self.manager.latest_step() != step

    def maybe_save(self, step: int, state: Any, *, force: bool = False, due: bool | None = None,
                   data: dict | None = None) -> bool:
        """Saves `state` (and `data`, the input iterator's state) as `step` when due (or `force`);
        returns whether it saved."""
        if not (self.due(step, force=force) if due is None else due):
            return False
        items = {'default': ocp.args.StandardSave(state)}
        if data is not None:
            items['data'] = ocp.args.JsonSave(data)
        previous, self._saving = self._saving, step
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:  # noqa: BLE001 (orbax and TensorStore raise many kinds)
            # orbax first finishes the save before, which may be the one that failed
            raise self._write_error(step, e, previous) from e
        self._last_save = time.monotonic()
        return True

    def wait(self, timeout_s: float = waits.SAVE_S) -> None:
        """Waits for the saves in flight (bounded); a save that failed raises WriteError."""
        try:
            waits.bounded(self.manager.wait_until_finished,
                          f"orbax's wait for checkpoint step {self._saving} in {self.directory}", timeout_s)
        except waits.Hung:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._write_error(self._saving, e) from e

    def _write_error(self, step: int | None, e: BaseException, previous: int | None = None) -> BaseException:
        """A failed save as WriteError (what, where, why, what is kept); any other error unchanged.
        `previous`: the save started before `step`'s, which orbax finishes first."""
        reason = write_failure(e)
        if reason is None:
            return e
        try:
            self.manager.reload()
            steps = list(self.manager.all_steps())
            if previous is not None and previous not in steps:
                step = previous  # the save before never completed: that is the one that failed
            kept = [s for s in steps if s != step]
        except Exception:  # noqa: BLE001 (the folder may not even be listable)
            kept = []
        return WriteError(f'checkpoint step {step} could not be written to {self.directory} ({reason}); '
                          + (f'the last good checkpoint (step {max(kept)}) is kept; free space and relaunch the '
                             'same command to resume from it.' if kept else
                             'no earlier checkpoint of this stage exists; free space and relaunch the same command.'))

    def close(self, *, after_error: bool = False) -> None:
        """Waits for the saves in flight and closes. After an error the wait is short and its own
        failure one warning line, so the error that stopped the run is the one reported."""
        if after_error:
            waits.quietly(self.manager.wait_until_finished, f"orbax's wait for checkpoint step {self._saving} in "
                          f'{self.directory}', silent=True)
            waits.quietly(self.manager.close, f'closing the checkpoints in {self.directory}', silent=True)
            return
        self.wait()
        self.manager.close()
