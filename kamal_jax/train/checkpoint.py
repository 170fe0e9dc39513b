"""Orbax checkpoints of a train state: save every N steps, resume from the latest."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str, every_steps: int, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.every_steps = max(1, int(every_steps))
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state: Any) -> Any:
        """Restores the latest checkpoint onto the shardings of `abstract_state`."""
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              abstract_state)
        return self.manager.restore(self.latest_step(), args=ocp.args.StandardRestore(target))

    def maybe_save(self, step: int, state: Any, *, force: bool = False) -> None:
        if force or step % self.every_steps == 0:
            if self.manager.latest_step() != step:
                self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
