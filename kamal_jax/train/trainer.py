"""Train one student (component, target or baseline) with a given loss: state, jit, resume, loop."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from kamal_jax.train import sharding
from kamal_jax.train.checkpoint import Checkpointer
from kamal_jax.train.distributed import is_primary
from kamal_jax.train.input import AUTO, EpochBatches
from kamal_jax.train.loop import fit
from kamal_jax.train.metrics import Monitoring, TrainingMetrics
from kamal_jax.train.nets import Net
from kamal_jax.train.state import create_state, learning_rates, make_optimizer
from kamal_jax.train.steps import make_multi_step, make_train_step


def train_student(*, name: str, student: Net, loss_fn: Callable, bridges: Any, cfg: Any,
                  arrays: dict[str, np.ndarray], frozen: Any, mesh, seed: int,
                  crop_padding: int = 0, flip: bool = False, views: int = 1, ckpt_dir: str | None = None,
                  log_every: int = 50, steps_per_call: int = 1, prefetch: int = AUTO,
                  stop_after: int | None = None,
                  monitoring: Monitoring | None = None) -> tuple[dict, dict]:
    """Returns the student's variables and the last logged metrics.

    `cfg` carries epochs, batch_size and the optimiser fields; `views` > 1 means `arrays` hold that
    many pre-drawn views of each sample (`kamal_jax.train.views`); `stop_after` ends early at that
    step (used to test that an interrupted run resumes to the same result); `monitoring` says where
    TensorBoard and JSONL metrics go and what held-out evaluation runs during training;
    `steps_per_call` > 1 runs that many steps in one jitted call (`steps.make_multi_step`);
    `prefetch` batches are gathered ahead on worker threads (`input.BatchStream`; AUTO: where that
    pays, `input.resolve_prefetch`).
    """
    sharding.check_batch_size(cfg.batch_size, mesh, f'{name}.batch_size')
    batches = EpochBatches(arrays, cfg.batch_size, seed, views)
    total = int(cfg.epochs) * batches.steps_per_epoch
    if total <= 0:
        raise ValueError(f'{name}: epochs = {cfg.epochs} gives no training steps.')
    tx = make_optimizer(cfg, total)
    rng = jax.random.key(seed)
    h, w, c = arrays['image'].shape[1:]
    sample = jnp.zeros((1, *(student.input_size or (h, w)), c))
    init = jax.jit(lambda r: create_state(r, student.module, sample, bridges, tx),
                   out_shardings=sharding.replicated(mesh))
    state = init(jax.random.fold_in(rng, 1))
    checkpointer = None
    if ckpt_dir:
        checkpointer = Checkpointer(ckpt_dir, cfg.checkpoint_every, min_interval_s=cfg.checkpoint_min_interval_s)
        if checkpointer.latest_step() is not None:
            state = checkpointer.restore(state)
    one_step = make_train_step(loss_fn, tx, crop_padding=crop_padding, flip=flip)
    step = sharding.jit_train_step(one_step, mesh)
    multi_step = sharding.jit_train_step(make_multi_step(one_step), mesh, stacked=True) if steps_per_call > 1 else None
    frozen = sharding.put_replicated(frozen, mesh)
    hooks = monitoring and TrainingMetrics(name, monitoring, learning_rates=learning_rates(cfg, total),
                                           variables_of=_variables, num_steps=total, write=is_primary())
    failed = True
    try:
        state, metrics = fit(name=name, step=step, state=state, frozen=frozen, batches=batches,
                             num_steps=min(total, stop_after or total), rng=jax.random.fold_in(rng, 2),
                             mesh=mesh, checkpointer=checkpointer, log_every=log_every,
                             on_log=hooks and hooks.on_log, on_step=hooks and hooks.on_step,
                             multi_step=multi_step, steps_per_call=steps_per_call,
                             eval_every=monitoring.eval_every if monitoring else 0, prefetch=prefetch,
                             profile_steps=monitoring.profile_steps if monitoring else 0,
                             profile_dir=monitoring.logdir if monitoring else None)
        failed = False
    finally:
        if hooks:
            hooks.close()
        if checkpointer is not None:
            checkpointer.close(after_error=failed)
    return _variables(state), metrics


def _variables(state) -> dict:
    return {'params': state.params['net'], 'batch_stats': state.batch_stats}

