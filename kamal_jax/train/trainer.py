"""The trainer: runs one `Job` (state, jit, resume, loop) and returns the trained net's variables."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from kamal_jax.train import sharding
from kamal_jax.train.checkpoint import Checkpointer
from kamal_jax.train.distributed import is_primary
from kamal_jax.train.batches import AUTO, EpochBatches
from kamal_jax.train.job import Frozen, Job, Settings
from kamal_jax.train.loop import NonFiniteLoss, fit
from kamal_jax.train.metrics import Monitoring, TrainingMetrics
from kamal_jax.train.nets import Net
from kamal_jax.train.state import create_state, learning_rates, make_optimizer
from kamal_jax.train.steps import make_multi_step, make_train_step


def train(job: Job) -> tuple[dict, dict]:
    """Trains (or resumes from `job.checkpoints`) the job's net; returns its variables and the last
    logged metrics. A non-finite loss stops it with `NonFiniteLoss` naming the job's stage and task."""
    s, mesh = job.settings, job.mesh
    sharding.check_batch_size(s.optimiser.batch_size, mesh, f'{job.name}.batch_size')
    batches = EpochBatches(job.arrays(), s.optimiser.batch_size, s.seed, s.views)
    total = int(s.optimiser.epochs) * batches.steps_per_epoch
    if total <= 0:
        raise ValueError(f'{job.name}: epochs = {s.optimiser.epochs} gives no training steps.')
    tx = make_optimizer(s.optimiser, total)
    rng = jax.random.key(s.seed)
    state = _initial_state(job, tx, jax.random.fold_in(rng, 1))
    checkpointer = None
    if job.checkpoints:
        checkpointer = Checkpointer(job.checkpoints, s.optimiser.checkpoint_every,
                                    min_interval_s=s.optimiser.checkpoint_min_interval_s)
        if checkpointer.latest_step() is not None:
            state = checkpointer.restore(state)
    monitoring = job.monitoring
    hooks = monitoring and TrainingMetrics(job.name, monitoring, learning_rates=learning_rates(s.optimiser, total),
                                           variables_of=_variables, num_steps=total, write=is_primary())
    failed = True
    try:
        state, metrics = _fit(job, state, tx, batches, min(total, s.stop_after or total), rng, checkpointer, hooks)
        failed = False
    except NonFiniteLoss as e:
        e.stage, e.task = job.stage, job.task
        raise
    finally:
        if hooks:
            hooks.close()
        if checkpointer is not None:
            checkpointer.close(after_error=failed)
    return _variables(state), metrics


def _initial_state(job: Job, tx, rng: jax.Array):
    """The student's and bridges' fresh state (with the optimiser's), replicated over the mesh."""
    h, w, c = job.arrays()['image'].shape[1:]
    sample = jnp.zeros((1, *(job.student.input_size or (h, w)), c))
    init = jax.jit(lambda r: create_state(r, job.student.module, sample, job.bridges, tx),
                   out_shardings=sharding.replicated(job.mesh))
    return init(rng)


def _fit(job: Job, state, tx, batches: EpochBatches, num_steps: int, rng: jax.Array,
         checkpointer: Checkpointer | None, hooks: TrainingMetrics | None):
    """The jitted step (and k-step call), the frozen variables on the devices, then the loop."""
    s, mesh, monitoring = job.settings, job.mesh, job.monitoring
    one_step = make_train_step(job.loss, tx, crop_padding=s.crop_padding, flip=s.flip, cutout=s.cutout,
                               fill=job.student.mean)
    step = sharding.jit_train_step(one_step, mesh)
    multi_step = (sharding.jit_train_step(make_multi_step(one_step), mesh, stacked=True)
                  if s.steps_per_call > 1 else None)
    frozen = sharding.put_replicated(job.frozen.variables, mesh)
    return fit(name=job.name, step=step, state=state, frozen=frozen, batches=batches, num_steps=num_steps,
               rng=jax.random.fold_in(rng, 2), mesh=mesh, checkpointer=checkpointer, log_every=s.log_every,
               on_log=hooks and hooks.on_log, on_step=hooks and hooks.on_step, multi_step=multi_step,
               steps_per_call=s.steps_per_call, eval_every=monitoring.eval_every if monitoring else 0,
               prefetch=s.prefetch, profile_steps=monitoring.profile_steps if monitoring else 0,
               profile_dir=monitoring.logdir if monitoring else None)


def _variables(state) -> dict:
    return {'params': state.params['net'], 'batch_stats': state.batch_stats}


def train_student(*, name: str, student: Net, loss_fn: Callable, bridges: Any, cfg: Any,
                  arrays: dict[str, np.ndarray], frozen: Any, mesh, seed: int,
                  crop_padding: int = 0, flip: bool = False, views: int = 1, ckpt_dir: str | None = None,
                  log_every: int = 50, steps_per_call: int = 1, prefetch: int = AUTO,
                  stop_after: int | None = None,
                  monitoring: Monitoring | None = None) -> tuple[dict, dict]:
    """`train` of the job these keywords describe (for scripts and tests that train one net by hand):
    `arrays` are the job's data (cached frozen outputs included), `frozen` the frozen nets'
    variables, `cfg` its settings' optimiser section, `ckpt_dir` its checkpoints."""
    settings = Settings(cfg, seed, log_every=log_every, steps_per_call=steps_per_call, prefetch=prefetch,
                        crop_padding=crop_padding, flip=flip, views=views, stop_after=stop_after)
    return train(Job(name, None, None, student, loss_fn, bridges, arrays, Frozen.live(frozen), settings, mesh,
                     checkpoints=ckpt_dir, monitoring=monitoring))
