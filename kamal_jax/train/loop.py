"""The thin loop around a jitted step: deterministic batches, progress, NaN stop, checkpoints."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

from kamal_jax.train import stopping, waits
from kamal_jax.train.checkpoint import Checkpointer
from kamal_jax.train.batches import AUTO, BatchStream, EpochBatches, resolve_prefetch
from kamal_jax.train.sharding import process_rows, put_batch, to_host

log = logging.getLogger('kamal_jax')


class NonFiniteLoss(FloatingPointError):
    """A step's loss or updates were not finite; no state after `last_good` was saved. `stage` and
    `task`: the job's (`job.Job`; the trainer sets them, None outside a job)."""

    def __init__(self, name: str, step: int, term: str, value: float, last_good: int | None,
                 hint: str = 'lower this stage\'s learning rates or loss weights and relaunch to resume from it',
                 stage: str | None = None, task: str | None = None):
        kept = (f'the last good checkpoint (step {last_good}) is kept' if last_good is not None
                else 'no checkpoint was saved')
        super().__init__(f'{name}: {term} became {value} at step {step}; {kept}; {hint}.')
        self.name, self.step, self.term, self.value, self.last_good = name, step, term, value, last_good
        self.stage, self.task = stage, task


def _first_bad_term(metrics: Mapping[str, float]) -> tuple[str, float]:
    """The loss term that went non-finite first (a term before the total; the gradients last)."""
    terms = [k for k in metrics if k not in ('loss', 'grad_norm', 'finite') and not k.startswith('selected/')]
    for key in (*terms, 'loss', 'grad_norm'):
        if key in metrics and not math.isfinite(metrics[key]):
            return ('the gradient norm' if key == 'grad_norm' else f'the {key} loss' if key != 'loss' else 'the loss',
                    metrics[key])
    return 'an update', float('nan')


class _Window:
    """Step metrics on their way to the host: fetched in one transfer when a log line or a save is due."""

    def __init__(self, name: str):
        self.name, self.pending, self.fetched = name, [], []

    def add(self, step: int, metrics: Any, count: int = 0) -> None:
        """The metrics of step `step`, or (`count` > 0) of steps step..step+count-1 stacked [count, ...]."""
        self.pending.append((step, count, metrics))

    def fetch_and_check(self, last_good: Callable[[], int | None]) -> None:
        """Moves pending metrics to the host; stops at the first step whose loss or updates were not finite."""
        if not self.pending:
            return
        host = []
        for (step, count, _), m in zip(self.pending, to_host([m for _, _, m in self.pending])):
            host += [(step + i, {k: v[i] for k, v in m.items()}) for i in range(count)] if count else [(step, m)]
        for step, m in host:
            if not float(m.get('finite', 1.0)):
                term, value = _first_bad_term({k: float(v) for k, v in m.items()})
                raise NonFiniteLoss(self.name, step, term, value, last_good())
        self.fetched.extend(m for _, m in host)
        self.pending = []

    def means(self) -> dict:
        window, self.fetched = self.fetched, []
        return {k: float(np.mean([m[k] for m in window])) for k in window[0] if k != 'finite'}


class _Profile:
    """A `jax.profiler` trace of `steps` steps that starts after the first call (the compilation)."""

    def __init__(self, name: str, steps: int, directory: str | None, num_steps: int):
        self.name, self.steps, self.directory, self.num_steps = name, int(steps or 0), directory, num_steps
        self.first = self.until = None

    def after_call(self, done: int, state: Any) -> None:
        if not self.steps or not self.directory:
            return
        if self.first is None and done < self.num_steps:
            self.first, self.until = done, min(done + self.steps, self.num_steps)
            jax.profiler.start_trace(self.directory)
        elif self.until is not None and done >= self.until:
            jax.block_until_ready(state)  # the trace holds the device work of the last step too
            self.close()
            log.info('%s: profile of steps %d..%d in %s (TensorBoard\'s profile tab; *.trace.json.gz opens in '
                     'Perfetto)', self.name, self.first + 1, done, os.path.join(self.directory, 'plugins', 'profile'))

    def close(self) -> None:
        if self.until is not None:
            self.until = None
            jax.profiler.stop_trace()


def _call_end(start: int, num_steps: int, steps_per_call: int, periods) -> int:
    """Where a call that starts after step `start` ends: `steps_per_call` steps on, or sooner at the
    next step a log line, an evaluation or a save may fall on, or at the end."""
    end = min(start + steps_per_call, num_steps)
    for every in periods:
        if every and every > 0:
            end = min(end, (start // every + 1) * every)
    return end


def _log_line(name, done, num_steps, batches, last, rate) -> None:
    eta = (num_steps - done) * batches.batch_size / rate if rate == rate and rate > 0 else 0.0
    shown = ' '.join(f'{k}={v:.4g}' for k, v in last.items() if not k.startswith('selected/'))
    sel = ' '.join(f'{k.split("/", 1)[1]}:{v:.0%}' for k, v in last.items() if k.startswith('selected/'))
    log.info('%s: step %d/%d epoch %.1f %s%s | %.0f img/s, eta %.0fs', name, done, num_steps,
             done / batches.steps_per_epoch, shown, f' | selected {sel}' if sel else '', rate, eta)


def _stop_requested(multi_process: bool) -> int:
    """The signal asking this run to stop, 0 if none; with several processes, any process's (all
    stop at the same step: a scheduler that preempts one host usually signals them all)."""
    signum = stopping.requested() or 0
    if multi_process:
        from jax.experimental import multihost_utils
        signum = int(np.max(multihost_utils.process_allgather(np.int32(signum))))
    return signum


def _stop(signum: int, name: str, step: int, num_steps: int, state: Any, checkpointer: Checkpointer | None,
          window: _Window, last_good: Callable[[], int | None], stream: BatchStream) -> None:
    """Raises stopping.Stopped after step `step`; for SIGTERM first saves that step (and waits for it)."""
    where = f'in {name} at step {step} of {num_steps}'
    if signum == signal.SIGTERM and checkpointer is not None:
        window.fetch_and_check(last_good)  # a non-finite state is never saved, preempted or not
        if checkpointer.latest_step() != step:
            checkpointer.maybe_save(step, state, force=True, data=stream.state())
        checkpointer.wait()
        raise stopping.Stopped(signum, f'stopped by SIGTERM {where}, saved as checkpoint step {step} in '
                                       f'{checkpointer.directory}; relaunching the same command resumes from it.')
    if checkpointer is not None:
        checkpointer.wait(waits.CLEANUP_S)  # a save in flight: say which step the relaunch finds
    kept = last_good()
    resume = (f'from its checkpoint of step {kept} in {checkpointer.directory}' if kept is not None else
              'from its first step (it had saved no checkpoint yet)')
    raise stopping.Stopped(signum, f'stopped by {stopping.name(signum)} {where}; relaunching the same command '
                                   f'resumes {name} {resume}.')


def fit(*, name: str, step: Callable, state: Any, frozen: Any, batches: EpochBatches, num_steps: int,
        rng: jax.Array, mesh, checkpointer: Checkpointer | None = None, log_every: int = 50,
        on_log: Callable[[int, dict, float], None] | None = None,
        on_step: Callable[[int, Any], None] | None = None,
        multi_step: Callable | None = None, steps_per_call: int = 1, eval_every: int = 0,
        prefetch: int = AUTO, profile_steps: int = 0,
        profile_dir: str | None = None) -> tuple[Any, dict]:
    """Runs `step` from `state.step` to `num_steps`; returns the state and the last metrics.

    `on_log(step, window means, images/s)` follows each log line; `on_step(step, state)` each call.
    `multi_step` (`steps.make_multi_step`, jitted) runs `steps_per_call` steps per call; a call
    never crosses a step where a log line, an evaluation (`eval_every`) or a save may fall, and
    the steps up to such a step that are fewer than `steps_per_call` run one per call.

    Batches come from a `BatchStream` that gathers `prefetch` of them ahead on worker threads
    (`input.AUTO`: where that pays, `input.resolve_prefetch`); its
    position is saved with every checkpoint and restored from the one `checkpointer` resumed from.

    `profile_steps` > 0 traces that many steps after the first call (which compiles) with
    `jax.profiler` into `profile_dir` (TensorBoard's profile tab reads it; `*.trace.json.gz` opens
    in Perfetto); each step is annotated with its number.

    Before every save the steps since the last check are fetched and checked: a state that a
    non-finite loss or update went into is never saved (`NonFiniteLoss`).
    """
    start = int(to_host(state.step))
    if start >= num_steps:
        log.info('%s: already trained (%d/%d steps), skipping.', name, start, num_steps)
        return state, {}
    k = steps_per_call if multi_step is not None else 1
    log.info('%s: steps %d..%d (%d per epoch, batch %d%s)%s', name, start, num_steps,
             batches.steps_per_epoch, batches.batch_size, f', {k} per call' if k > 1 else '',
             ' [resumed]' if start else '')
    loop = _Loop(name, step, multi_step, k, frozen, rng, mesh, batches, num_steps, checkpointer,
                 _Hooks(log_every, eval_every, on_log, on_step), _Profile(name, profile_steps, profile_dir, num_steps))
    loop.open_stream(prefetch, start)
    stopping.enter_loop()
    try:
        state = loop.run(state, start)
    except BaseException:
        stopping.leave_loop(failed=True)
        loop.profile.close()
        waits.quietly(loop.stream.close, f"{name}: stopping the input's worker threads")
        raise
    stopping.leave_loop()
    return state, loop.finish()


@dataclasses.dataclass(frozen=True)
class _Hooks:
    """When the loop logs (`log_every`) and may evaluate (`eval_every`), and what it calls then."""
    log_every: int
    eval_every: int
    on_log: Callable[[int, dict, float], None] | None
    on_step: Callable[[int, Any], None] | None


class _Loop:
    """One `fit`: its calls of the step, and what follows each call (log line, hooks, save, stop)."""

    def __init__(self, name, step, multi_step, k, frozen, rng, mesh, batches, num_steps, checkpointer, hooks,
                 profile):
        self.name, self.step, self.multi_step, self.k = name, step, multi_step, k
        self.frozen, self.rng, self.mesh, self.batches, self.num_steps = frozen, rng, mesh, batches, num_steps
        self.checkpointer, self.hooks, self.profile = checkpointer, hooks, profile
        self.multi_process = jax.process_count() > 1  # each process gathers only its devices' rows
        self.window, self.last = _Window(name), {}
        self.periods = (hooks.log_every, hooks.eval_every, checkpointer.every_steps if checkpointer is not None else 0)
        self.t_start, self.t_window, self.n_window, self.compile_s = None, None, 0, 0.0
        self.stream = self.put = None

    def last_good(self) -> int | None:
        return self.checkpointer.latest_step() if self.checkpointer is not None else None

    def open_stream(self, prefetch: int, start: int) -> None:
        """The batches from step `start`, resumed at the checkpoint's input position when it saved one.
        One step per call: batches reach the devices ahead, on the stream's thread; k per call: the
        loop stacks k host batches and puts them at once."""
        mesh, local = self.mesh, self.multi_process
        self.put = (lambda b: put_batch(b, mesh, local=local)) if self.k == 1 else None
        self.stream = BatchStream(self.batches, self.num_steps,
                                  prefetch=resolve_prefetch(prefetch, self.batches.arrays), put=self.put,
                                  rows=process_rows(self.batches.batch_size, mesh) if local else None)
        saved = self.checkpointer.restored_data if self.checkpointer is not None else None
        self.stream.restore(saved, start)
        if saved is not None:
            log.info('%s: input resumed at step %d from the checkpoint\'s iterator state', self.name,
                     self.stream.position)

    def run(self, state: Any, start: int) -> Any:
        """Calls the step until `num_steps`; returns the state."""
        self.t_start = time.perf_counter()
        s = start
        while s < self.num_steps:
            done = _call_end(s, self.num_steps, self.k, self.periods) if self.k > 1 else s + 1
            state, metrics = self.call(state, s, done)
            self.timed(s, done, metrics)
            s = done
            self.after_call(done, state)
        return state

    def call(self, state: Any, s: int, done: int) -> tuple[Any, Any]:
        """Steps s+1..done: in one scanned call when they are k, else one call each."""
        if done - s == self.k > 1:
            stacked = jax.tree.map(lambda *b: np.stack(b), *[self.stream.next(i) for i in range(s, done)])
            state, metrics = self.multi_step(state, self.frozen, put_batch(stacked, self.mesh, stacked=True,
                                                                           local=self.multi_process), self.rng)
            self.window.add(s + 1, metrics, count=self.k)
            return state, metrics
        for i in range(s, done):
            with jax.profiler.StepTraceAnnotation(str(self.name), step_num=i + 1):
                batch = self.stream.next(i)
                if self.put is None:  # a call cut short at a log, eval or save step
                    batch = put_batch(batch, self.mesh, local=self.multi_process)
                state, metrics = self.step(state, self.frozen, batch, self.rng)
            self.window.add(i + 1, metrics)
        return state, metrics

    def timed(self, s: int, done: int, metrics: Any) -> None:
        """The first call compiles: timed apart from the throughput of the others."""
        if self.t_window is not None:
            self.n_window += done - s
            return
        jax.block_until_ready(metrics)
        self.compile_s = time.perf_counter() - self.t_start
        self.t_window = time.perf_counter()
        scanned = done - s == self.k > 1
        log.info('%s: first %s (compilation included) took %.1fs', self.name,
                 f'call of {self.k} steps' if scanned else 'step' if done - s == 1 else f'{done - s} steps',
                 self.compile_s)

    def after_call(self, done: int, state: Any) -> None:
        """The profile, a log line, the per-call hook, a save when due, a requested stop."""
        self.profile.after_call(done, state)
        if done % self.hooks.log_every == 0 or done == self.num_steps:
            self.window.fetch_and_check(self.last_good)
            self.last = self.window.means()
            elapsed = time.perf_counter() - self.t_window
            rate = (self.n_window * self.batches.batch_size / elapsed if elapsed > 0 and self.n_window
                    else float('nan'))
            _log_line(self.name, done, self.num_steps, self.batches, self.last, rate)
            if self.hooks.on_log is not None:  # the window's means, already on the host
                self.hooks.on_log(done, self.last, rate)
        if self.hooks.on_step is not None:  # e.g. held-out evaluation every so many steps
            self.hooks.on_step(done, state)
        checkpointer = self.checkpointer
        if checkpointer is not None and checkpointer.due(done, force=done == self.num_steps):
            self.window.fetch_and_check(self.last_good)
            checkpointer.maybe_save(done, state, due=True, data=self.stream.state())
        signum = _stop_requested(self.multi_process)
        if signum:
            _stop(signum, self.name, done, self.num_steps, state, checkpointer, self.window, self.last_good,
                  self.stream)

    def finish(self) -> dict:
        """Closes the profile and the input, waits for the last save; the last metrics and the times."""
        self.profile.close()
        waits.bounded(self.stream.close, f"{self.name}: stopping the input's worker threads", waits.CLEANUP_S)
        if self.checkpointer is not None:
            self.checkpointer.wait()
        self.last['compile_seconds'] = self.compile_s
        self.last['train_seconds'] = time.perf_counter() - self.t_start
        return self.last
