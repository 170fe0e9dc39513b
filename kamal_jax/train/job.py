"""One training job: everything a trainer needs to train one net, said once (`trainer.train` runs it).

A recipe builds a job per net (a component, a target, a baseline): the net, its loss, the frozen
inputs the loss reads, the per-sample data, the settings, where it writes. Nothing here reads a
config or a workdir: the recipe resolves both into these fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from kamal_jax.train.batches import AUTO
from kamal_jax.train.metrics import Monitoring
from kamal_jax.train.nets import Net


@dataclasses.dataclass(frozen=True)
class Frozen:
    """What the loss reads of the nets that do not train (teachers, component nets), in one of two forms:

    `variables`: the nets' weights by name, replicated over the mesh; the step runs the nets.
    `arrays`: their outputs, computed once per training row (a cache), gathered into each batch
    beside the data; the step runs nothing but the student.

    The loss must be built for the form it gets (e.g. `Distill(..., cached=True)` reads `arrays`);
    nothing else of a job changes between the two.
    """
    variables: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    arrays: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def live(cls, variables: Mapping[str, Any]) -> 'Frozen':
        return cls(variables=dict(variables))

    @classmethod
    def cached(cls, arrays: Mapping[str, Any]) -> 'Frozen':
        return cls(arrays=dict(arrays))


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a job trains. `optimiser`: the stage's section (epochs, batch_size, learning rates and
    schedule, checkpoint_every, checkpoint_min_interval_s; `state.make_optimizer` reads it);
    `seed` fixes the initialisation, the batch order and the step's randomness; `views` > 1: the data
    holds that many pre-drawn views of each sample (`train.views`, then no crop or flip in the step);
    `cutout` > 0 cuts a square of that share of the side out of every view (`augment.cutout`);
    `stop_after` ends early at that step (tests of resuming, a recipe that trains in segments)."""
    optimiser: Any
    seed: int
    log_every: int = 50
    steps_per_call: int = 1
    prefetch: int = AUTO
    crop_padding: int = 0
    flip: bool = False
    views: int = 1
    cutout: float = 0.0
    stop_after: int | None = None


@dataclasses.dataclass(frozen=True)
class Job:
    """One net to train.

    `name` is how log lines and errors call it ('stage1/<task>', 'stage2', 'target', 'baseline/<name>');
    `stage` ('stage1', 'stage2', 'one_stage') and `task` (a component's task, else None) are what a
    failure reports. `loss(params, batch_stats, frozen variables, images, batch, rng)` is the loss
    object's (`objectives`); `bridges` its initial trainable bridges. `data` holds the per-sample
    arrays ('image' and what the loss reads: selection, labels, a combined target). `checkpoints`:
    the folder it saves to and resumes from (None: neither); `monitoring`: its curves and evaluation.
    """
    name: str
    stage: str | None
    task: str | None
    student: Net
    loss: Callable
    bridges: Any
    data: Mapping[str, Any]
    frozen: Frozen
    settings: Settings
    mesh: Any
    checkpoints: str | None = None
    monitoring: Monitoring | None = None

    def arrays(self) -> dict[str, Any]:
        """The per-sample arrays the batches gather: the data, then the frozen nets' cached outputs."""
        return {**self.data, **self.frozen.arrays}
