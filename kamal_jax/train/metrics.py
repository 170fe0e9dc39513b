"""A training run's numbers for people: TensorBoard through clu, and a JSONL file the report reads.

clu's TensorBoard writer imports TensorFlow, so it is imported here only when a writer opens
(never at module import: TensorFlow before PyTorch aborts a process). Where TensorBoard cannot be
written (no tensorflow or tensorboard), the JSONL file alone is written and one line says so; a
failing write turns TensorBoard off for the run, never stops training. Only process 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Callable, Mapping

import jax

log = logging.getLogger('kamal_jax')

JSONL = 'metrics.jsonl'    # one object per line: {"step": N, "<scalar>": value, ...}
HPARAMS = 'hparams.json'
_said: set[str] = set()


def _say_once(key: str, message: str) -> None:
    if key not in _said:
        _said.add(key)
        log.warning(message)


@dataclasses.dataclass(frozen=True)
class Monitoring:
    """Where a trained net's curves go (`logdir`), the config to show beside them (`hparams`), and
    the held-out evaluation run every `eval_every` steps (`evaluate(variables) -> {task: accuracy}`);
    `profile_steps` > 0: a `jax.profiler` trace of that many steps under `logdir`/plugins/profile."""
    logdir: str
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    evaluate: Callable[[Any], Mapping[str, float]] | None = None
    eval_every: int = 0
    profile_steps: int = 0  # steps traced with jax.profiler into logdir, after the first call
    eval_label: str = 'held-out accuracy'  # the log line's words: says when only a subset is scored


class JsonlWriter:
    """The subset of clu's MetricWriter the loop uses, as plain files (appended: a resumed run adds)."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        self.logdir = logdir
        self._file = open(os.path.join(logdir, JSONL), 'a')

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._file.write(json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}}) + '\n')
        self._file.flush()

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        with open(os.path.join(self.logdir, HPARAMS), 'w') as f:
            json.dump(dict(hparams), f, indent=1, sort_keys=True)

    def close(self) -> None:
        self._file.close()


def _open_tensorboard(logdir: str):
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], 'GPU')  # summaries need no GPU; leave its memory to JAX
    except (RuntimeError, ValueError):  # TensorFlow already initialised its devices
        pass
    from clu import metric_writers
    return metric_writers.SummaryWriter(logdir)


def flat_hparams(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    """Nested config -> {'a.b': value}; values TensorBoard cannot show as hparams become strings."""
    out = {}
    for k, v in tree.items():
        key = f'{prefix}{k}'
        if isinstance(v, Mapping):
            out.update(flat_hparams(v, key + '.'))
        else:
            out[key] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)
    return out


class Writers:
    """JSONL always; TensorBoard (clu) beside it when it can be opened and written."""

    def __init__(self, logdir: str, *, tensorboard: bool = True):
        self.jsonl = JsonlWriter(logdir)
        self.tb = None
        if tensorboard:
            try:
                self.tb = _open_tensorboard(logdir)
            except Exception as e:  # noqa: BLE001 (no TensorFlow, no tensorboard, a broken install)
                _say_once('open', f'TensorBoard events cannot be written ({type(e).__name__}: {e}); '
                                  f'metrics go to {JSONL} files only.')

    def _tb(self, method: str, *args) -> None:
        if self.tb is None:
            return
        try:
            getattr(self.tb, method)(*args)
        except Exception as e:  # noqa: BLE001
            _say_once('write', f'TensorBoard writing failed ({type(e).__name__}: {e}); '
                               f'metrics go to {JSONL} files only from here on.')
            self.tb = None

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.jsonl.write_scalars(step, scalars)
        self._tb('write_scalars', step, scalars)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        flat = flat_hparams(hparams)
        self.jsonl.write_hparams(flat)
        self._tb('write_hparams', flat)

    def close(self) -> None:
        self.jsonl.close()
        self._tb('flush')
        self._tb('close')


def window_scalars(means: Mapping[str, float]) -> dict[str, float]:
    """The loop's window means under TensorBoard names: loss terms under train/, teacher shares
    under selected/ (as the step names them)."""
    return {k if k.startswith('selected/') else f'train/{k}': v for k, v in means.items()
            if k not in ('finite', 'compile_seconds', 'train_seconds')}


def _on_host(schedule: Callable[[int], Any], step: int) -> float:
    """A schedule's value computed on the CPU: no work queued behind the training steps. Pass it
    jitted: evaluated eagerly, an optax schedule compiles several tiny programs at a process's
    first log line (0.35-0.5 s); jitted, one (about 0.1 s)."""
    try:
        cpu = jax.devices('cpu')[0]
    except RuntimeError:  # JAX_PLATFORMS without cpu
        return float(schedule(step))
    with jax.default_device(cpu):
        return float(schedule(step))


class TrainingMetrics:
    """The loop's hooks. `on_log(step, means, images_per_second)`: a window's means (already on the
    host) and the learning rates of its last update. `on_step(step, state)`: held-out accuracy every
    `eval_every` steps and at the last one. Writers open at the first write (a finished stage that
    resumes writes nothing); `write=False` on processes other than 0, which still evaluate."""

    def __init__(self, name: str, monitoring: Monitoring, *, learning_rates: Mapping[str, Callable[[int], Any]],
                 variables_of: Callable[[Any], Any], num_steps: int, write: bool = True):
        self.name, self.monitoring = name, monitoring
        self.learning_rates = {k: jax.jit(fn) for k, fn in learning_rates.items()}
        self.variables_of, self.num_steps, self.write = variables_of, num_steps, write
        self.writers: Writers | None = None

    def _write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.write:
            return
        if self.writers is None:
            self.writers = Writers(self.monitoring.logdir)
            self.writers.write_hparams(self.monitoring.hparams)
        self.writers.write_scalars(step, scalars)

    def on_log(self, step: int, means: Mapping[str, float], images_per_second: float) -> None:
        scalars = window_scalars(means)
        scalars.update({f'lr/{k}': _on_host(fn, step - 1) for k, fn in self.learning_rates.items()})
        if math.isfinite(images_per_second):
            scalars['images_per_second'] = images_per_second
        self._write(step, scalars)

    def on_step(self, step: int, state: Any) -> None:
        every, evaluate = self.monitoring.eval_every, self.monitoring.evaluate
        if evaluate is None or not every or (step % every and step != self.num_steps):
            return
        accuracy = evaluate(self.variables_of(state))
        log.info('%s: step %d %s %s', self.name, step, self.monitoring.eval_label,
                 ' '.join(f'{t}={a:.4f}' for t, a in accuracy.items()))
        self._write(step, {f'eval/{t}': float(a) for t, a in accuracy.items()})

    def close(self) -> None:
        if self.writers is not None:
            self.writers.close()
