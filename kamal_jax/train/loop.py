"""The thin loop around a jitted step: deterministic batches, progress, NaN stop, checkpoints."""

from __future__ import annotations

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
from kamal_jax.train.input import AUTO, BatchStream, EpochBatches, resolve_prefetch
from kamal_jax.train.sharding import process_rows, put_batch, to_host

log = logging.getLogger('kamal_jax')


class NonFiniteLoss(FloatingPointError):
    """A step's loss or updates were not finite; no state after `last_good` was saved."""

    def __init__(self, name: str, step: int, term: str, value: float, last_good: int | None,
                 hint: str = 'lower this stage\'s learning rates or loss weights and relaunch to resume from it'):
        kept = (f'the last good checkpoint (step {last_good}) is kept' if last_good is not None
                else 'no checkpoint was saved')
        super().__init__(f'{name}: {term} became {value} at step {step}; {kept}; {hint}.')
        self.name, self.step, self.term, self.value, self.last_good = name, step, term, value, last_good


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
    multi_process = jax.process_count() > 1  # each process gathers only its devices' rows
    # One step per call: batches reach the devices ahead, on the stream's thread. k per call: the
    # loop stacks k host batches and puts them at once.
    put = (lambda b: put_batch(b, mesh, local=multi_process)) if k == 1 else None
    stream = BatchStream(batches, num_steps, prefetch=resolve_prefetch(prefetch, batches.arrays), put=put,
                         rows=process_rows(batches.batch_size, mesh) if multi_process else None)
    saved = checkpointer.restored_data if checkpointer is not None else None
    stream.restore(saved, start)
    if saved is not None:
        log.info('%s: input resumed at step %d from the checkpoint\'s iterator state', name, stream.position)
    window, last = _Window(name), {}
    periods = (log_every, eval_every, checkpointer.every_steps if checkpointer is not None else 0)

    def last_good():
        return checkpointer.latest_step() if checkpointer is not None else None
    t_start = time.perf_counter()
    t_window, n_window, compile_s = None, 0, 0.0
    s = start
    profile = _Profile(name, profile_steps, profile_dir, num_steps)
    stopping.enter_loop()
    try:
        while s < num_steps:
            done = _call_end(s, num_steps, k, periods) if k > 1 else s + 1
            scanned = done - s == k > 1
            if scanned:
                stacked = jax.tree.map(lambda *b: np.stack(b), *[stream.next(i) for i in range(s, done)])
                state, metrics = multi_step(state, frozen, put_batch(stacked, mesh, stacked=True, local=multi_process),
                                            rng)
                window.add(s + 1, metrics, count=k)
            else:
                for i in range(s, done):
                    with jax.profiler.StepTraceAnnotation(str(name), step_num=i + 1):
                        batch = stream.next(i)
                        if put is None:  # a call cut short at a log, eval or save step
                            batch = put_batch(batch, mesh, local=multi_process)
                        state, metrics = step(state, frozen, batch, rng)
                    window.add(i + 1, metrics)
            if t_window is None:  # the first call compiles; time it apart from throughput
                jax.block_until_ready(metrics)
                compile_s = time.perf_counter() - t_start
                t_window = time.perf_counter()
                log.info('%s: first %s (compilation included) took %.1fs', name,
                         f'call of {k} steps' if scanned else 'step' if done - s == 1 else f'{done - s} steps',
                         compile_s)
            else:
                n_window += done - s
            s = done
            profile.after_call(done, state)
            if done % log_every == 0 or done == num_steps:
                window.fetch_and_check(last_good)
                last = window.means()
                elapsed = time.perf_counter() - t_window
                rate = n_window * batches.batch_size / elapsed if elapsed > 0 and n_window else float('nan')
                _log_line(name, done, num_steps, batches, last, rate)
                if on_log is not None:  # the window's means, already on the host
                    on_log(done, last, rate)
            if on_step is not None:  # e.g. held-out evaluation every so many steps
                on_step(done, state)
            if checkpointer is not None:
                force = done == num_steps
                if checkpointer.due(done, force=force):
                    window.fetch_and_check(last_good)
                    checkpointer.maybe_save(done, state, due=True, data=stream.state())
            signum = _stop_requested(multi_process)
            if signum:
                _stop(signum, name, done, num_steps, state, checkpointer, window, last_good, stream)
    except BaseException:
        stopping.leave_loop(failed=True)
        profile.close()
        waits.quietly(stream.close, f"{name}: stopping the input's worker threads")
        raise
    stopping.leave_loop()
    profile.close()
    waits.bounded(stream.close, f"{name}: stopping the input's worker threads", waits.CLEANUP_S)
    if checkpointer is not None:
        checkpointer.wait()
    last['compile_seconds'] = compile_s
    last['train_seconds'] = time.perf_counter() - t_start
    return state, last
