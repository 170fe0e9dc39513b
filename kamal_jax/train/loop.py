"""The thin loop around a jitted step: deterministic batches, progress, NaN stop, checkpoints."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

from kamal_jax.train.checkpoint import Checkpointer
from kamal_jax.train.sharding import put_batch, to_host

log = logging.getLogger('kamal_jax')


class EpochBatches:
    """Batches that depend only on (seed, step): a resumed run sees exactly the same data order.

    With `views = K > 1` the arrays hold K pre-drawn views of each sample, view-major (row
    v * N + i); an epoch still shows each of the N samples once, each in a view picked at random.
    """

    def __init__(self, arrays: Mapping[str, Any], batch_size: int, seed: int, views: int = 1):
        self.arrays = arrays
        rows = len(next(iter(jax.tree.leaves(arrays))))
        if views < 1 or rows % views:
            raise ValueError(f'{rows} rows cannot hold {views} views of each sample.')
        self.views = views
        self.size = rows // views
        if self.size < batch_size:
            raise ValueError(f'batch_size = {batch_size} exceeds the {self.size} training samples.')
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = self.size // batch_size
        self._epoch, self._order = -1, None

    def batch(self, step: int) -> Any:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(self.size)
            if self.views > 1:
                self._order = self._order + self.size * rng.integers(0, self.views, self.size)
        idx = self._order[i * self.batch_size:(i + 1) * self.batch_size]
        return jax.tree.map(lambda a: a[idx], self.arrays)


def fit(*, name: str, step: Callable, state: Any, frozen: Any, batches: EpochBatches, num_steps: int,
        rng: jax.Array, mesh, checkpointer: Checkpointer | None = None, log_every: int = 50) -> tuple[Any, dict]:
    """Runs `step` from `state.step` to `num_steps`; returns the state and the last metrics."""
    start = int(to_host(state.step))
    if start >= num_steps:
        log.info('%s: already trained (%d/%d steps), skipping.', name, start, num_steps)
        return state, {}
    log.info('%s: steps %d..%d (%d per epoch, batch %d)%s', name, start, num_steps,
             batches.steps_per_epoch, batches.batch_size, ' [resumed]' if start else '')
    pending, last = [], {}
    t_start = time.perf_counter()
    t_window, n_window, compile_s = None, 0, 0.0
    for s in range(start, num_steps):
        state, metrics = step(state, frozen, put_batch(batches.batch(s), mesh), rng)
        if t_window is None:  # the first call compiles; time it apart from throughput
            jax.block_until_ready(metrics)
            compile_s = time.perf_counter() - t_start
            t_window = time.perf_counter()
            log.info('%s: first step (compilation included) took %.1fs', name, compile_s)
        else:
            n_window += 1
        pending.append(metrics)
        done = s + 1
        if done % log_every == 0 or done == num_steps:
            window = to_host(pending)
            pending = []
            last = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
            if not math.isfinite(last['loss']):
                raise FloatingPointError(f'{name}: loss became {last["loss"]} at step {done}; '
                                         'lower the learning rate or check the inputs.')
            elapsed = time.perf_counter() - t_window
            rate = n_window * batches.batch_size / elapsed if elapsed > 0 and n_window else float('nan')
            eta = (num_steps - done) * batches.batch_size / rate if rate == rate and rate > 0 else 0.0
            shown = ' '.join(f'{k}={v:.4g}' for k, v in last.items() if not k.startswith('selected/'))
            sel = ' '.join(f'{k.split("/", 1)[1]}:{v:.0%}' for k, v in last.items() if k.startswith('selected/'))
            log.info('%s: step %d/%d epoch %.1f %s%s | %.0f img/s, eta %.0fs', name, done, num_steps,
                     done / batches.steps_per_epoch, shown, f' | selected {sel}' if sel else '', rate, eta)
        if checkpointer is not None:
            checkpointer.maybe_save(done, state)
    if checkpointer is not None:
        checkpointer.maybe_save(num_steps, state, force=True)
        checkpointer.manager.wait_until_finished()
    last['compile_seconds'] = compile_s
    last['train_seconds'] = time.perf_counter() - t_start
    return state, last
