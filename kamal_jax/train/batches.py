"""Training batches gathered ahead of the step on worker threads (grain), resumable by position.

Why: a batch gathered between steps makes the device wait for the host at every step, and with
images read from disk (`kamal_jax.data.records`) that wait grows. Here a grain `MapDataset` over
step numbers maps step -> that step's batch (`EpochBatches.batch`, a pure function of seed and
step); its iterator gathers `prefetch` batches ahead on worker threads, and with one step per call
a thread of its own copies the next two onto the devices (by default only where that pays:
streamed images or an accelerator, `resolve_prefetch`). Its state is the next step's position;
the loop saves it in every checkpoint and a resumed run restores it, so the batches after a resume
are exactly those of an uninterrupted run.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

import grain
import jax
import numpy as np

AUTO = -1  # `data.prefetch` default: `resolve_prefetch` decides
PREFETCH = 4  # batches gathered ahead where worker threads pay


def prefetch_of(config: Any) -> int:
    """`data.prefetch` of a run's config."""
    return config.data.prefetch


def resolve_prefetch(prefetch: int, arrays: Mapping[str, Any]) -> int:
    """AUTO -> PREFETCH batches ahead when the images come from disk or the devices are
    accelerators, else 0. Why: on a CPU backend with the split in memory a batch is gathered in
    microseconds, and worker threads only take cores from XLA; measured on a 2-core CPU, they
    cost 13% of a dispatch-bound loop (3 ms steps) and nothing on cifar10_parts' 0.7 s steps
    (docs/PERFORMANCE.md). Any other value is kept."""
    if prefetch != AUTO:
        return prefetch
    from kamal_jax.data.records import RecordImages
    streamed = any(isinstance(a, RecordImages) for a in jax.tree.leaves(arrays))
    return PREFETCH if streamed or jax.default_backend() != 'cpu' else 0


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
        self._orders, self._lock = {}, threading.Lock()  # the last two epochs' orders; threads share them

    def _order(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._orders:
                rng = np.random.default_rng([self.seed, epoch])
                order = rng.permutation(self.size)
                if self.views > 1:
                    order = order + self.size * rng.integers(0, self.views, self.size)
                self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
                self._orders[epoch] = order
            return self._orders[epoch]

    def batch(self, step: int, rows: slice | None = None) -> Any:
        """The batch of `step`; `rows`: only those rows of it (one process's share)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        idx = self._order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        if rows is not None:
            idx = idx[rows]
        return jax.tree.map(lambda a: a[idx], self.arrays)


class BatchStream:
    """`next(step)` -> the host batch of `step` (numpy), from steps 0..num_steps-1 in order.

    `rows`: the rows of each global batch this process feeds (several processes: each reads only
    its own share); `prefetch` > 0 gathers that many batches ahead on min(prefetch, 2) threads
    (two keep the reads of a 2-core host ahead of the step without taking its cores from XLA);
    0 gathers each batch when it is asked for, on the caller's thread. `put` (host batch -> device
    arrays, e.g. `sharding.put_batch`): batches come out already on the devices, `ON_DEVICE` of
    them transferred ahead on a thread of their own, so a step never waits on a copy.
    """

    ON_DEVICE = 2

    def __init__(self, batches: EpochBatches, num_steps: int, *, rows: slice | None = None,
                 prefetch: int = PREFETCH, put: Callable[[Any], Any] | None = None):
        if prefetch < 0:
            raise ValueError(f'data.prefetch must be >= 0 (batches gathered ahead), got {prefetch}.')
        self.num_steps = int(num_steps)
        dataset = grain.MapDataset.range(self.num_steps).map(lambda step: (step, batches.batch(step, rows)))
        options = grain.ReadOptions(num_threads=min(prefetch, 2), prefetch_buffer_size=prefetch)
        dataset = dataset.to_iter_dataset(options)
        if put is not None and prefetch:
            dataset = grain.experimental.ThreadPrefetchIterDataset(
                dataset.map(lambda item: (item[0], put(item[1]))), prefetch_buffer_size=self.ON_DEVICE)
        elif put is not None:
            dataset = dataset.map(lambda item: (item[0], put(item[1])))
        self._iterator = iter(dataset)

    def state(self) -> dict[str, Any]:
        """The iterator's state (JSON): where the next batch is read from. Saved with each checkpoint."""
        return self._iterator.get_state()

    @property
    def position(self) -> int:
        return int(self.state()['next_index'])

    def restore(self, state: dict[str, Any] | None, step: int) -> None:
        """Starts at `step`: from a checkpoint's saved iterator `state`, which must agree with the
        train state's step, or (no saved state: a fresh start or an older checkpoint) by seeking."""
        if state is not None:
            self._iterator.set_state(state)
            if self.position != step:
                raise ValueError(f'the checkpoint of step {step} saved the input at step {self.position}; '
                                 'the checkpoint folder mixes two runs: move it aside to start the stage afresh.')
        elif step:
            self._iterator.set_state({**self.state(), 'next_index': int(step)})

    def close(self) -> None:
        """Stops the worker threads (an iterator left to the interpreter's exit complains there)."""
        close = getattr(self._iterator, 'close', None)
        if close is not None:
            close()

    def next(self, step: int) -> Any:
        got, batch = next(self._iterator)
        if got != step:  # the loop and the stream must never drift apart
            raise RuntimeError(f'input stream gave the batch of step {got} where step {step} was due')
        return batch
