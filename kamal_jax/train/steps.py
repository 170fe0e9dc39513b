"""The jitted training step around any loss of `train/objectives.py`, and k of them in one call."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from kamal_jax.train.augment import augment, cutout as cut_out
from kamal_jax.train.state import TrainState


# ----------------------------------------------------------------------------- the step

def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, *, crop_padding: int = 0,
                    flip: bool = False, cutout: float = 0.0, fill=(0.5, 0.5, 0.5)) -> Callable:
    """`step(state, frozen, batch, rng) -> (state, metrics)`; pure, ready for `jax.jit`.

    `cutout` > 0: after the crop and flip, a square of that share of the image's side is set to
    `fill` in every view (`augment.cutout`; its randomness is drawn apart, so the crops and flips
    are those of a run without it).

    Randomness per step is `fold_in(rng, state.step)`, so a resumed run draws the same views.
    `metrics['finite']` (1.0 or 0.0) says whether the loss and the updates were finite: the loop
    checks it before every save, so a checkpoint never holds a state that a NaN went into.
    """
    def step(state: TrainState, frozen: Any, batch: Mapping[str, jax.Array], rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        view_rng, loss_rng = jax.random.split(rng)
        images = augment(view_rng, batch['image'], crop_padding=crop_padding, flip=flip)
        if cutout:
            images = cut_out(jax.random.fold_in(view_rng, 1), images, fraction=cutout, fill=fill)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (batch_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, frozen, images,
                                                     batch, loss_rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics['grad_norm'] = optax.global_norm(grads)
        finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(optax.global_norm(updates))
        metrics['finite'] = finite.astype(jnp.float32)
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                             opt_state=opt_state), metrics
    return step


def make_multi_step(step: Callable) -> Callable:
    """`multi(state, frozen, batches, rng) -> (state, metrics)`: `step` over k stacked batches
    ([k, batch, ...]) in one `lax.scan`, metrics stacked [k, ...].

    Why: every call dispatches the state and the frozen nets' arrays (a thousand or more); on an
    accelerator with steps of a few milliseconds that dispatch can dominate, and k steps per call
    pay it once. On XLA:CPU the scan ran at 0.42x (docs/PERFORMANCE.md), so the default is k = 1.
    Each step is the same pure function of (state, batch), so the result does not depend on k.
    """
    def multi(state: TrainState, frozen: Any, batches: Mapping[str, jax.Array], rng: jax.Array):
        return jax.lax.scan(lambda carry, batch: step(carry, frozen, batch, rng), state, batches)
    return multi
