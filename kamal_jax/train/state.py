"""Train state and optimisers. Only the student's params (net + bridges) are ever differentiated."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any        # {'net': student params, 'bridges': bridge params}
    batch_stats: Any
    opt_state: Any


def schedule(kind: str, lr: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """Learning rate per optimiser step (schedules here are in steps, never epochs)."""
    if kind == 'constant':
        main = optax.constant_schedule(lr)
    elif kind == 'cosine':
        main = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup_steps))
    elif kind == 'step':  # the paper's halving, at 1/2 and 3/4 of training
        main = optax.piecewise_constant_schedule(
            lr, {int(total_steps * 0.5): 0.5, int(total_steps * 0.75): 0.5})
    else:
        raise ValueError(f"schedule must be 'constant', 'cosine' or 'step', got {kind!r}.")
    if warmup_steps:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), main], [warmup_steps])
    return main


def learning_rates(cfg: Any, total_steps: int) -> dict[str, optax.Schedule]:
    """The net's and the bridges' learning rate per step (also what the metrics show)."""
    warmup = cfg.warmup_steps
    return {'net': schedule(cfg.schedule, cfg.lr, total_steps, warmup),
            'bridges': schedule(cfg.schedule, cfg.bridge_lr, total_steps, warmup)}


def make_optimizer(cfg: Any, total_steps: int) -> optax.GradientTransformation:
    """Adam on the net and on the bridges, each with its own learning rate (the paper: 5e-4, 1e-3)."""
    def adam(sched):
        wd = cfg.weight_decay
        return optax.adamw(sched, weight_decay=wd) if wd else optax.adam(sched)
    return optax.multi_transform({k: adam(s) for k, s in learning_rates(cfg, total_steps).items()},
                                 {'net': 'net', 'bridges': 'bridges'})


def create_state(rng: jax.Array, module, sample: jax.Array, bridges: Any,
                 tx: optax.GradientTransformation) -> TrainState:
    variables = module.init(rng, sample, train=False)
    params = {'net': variables['params'], 'bridges': bridges}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))


def count_params(tree: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))
