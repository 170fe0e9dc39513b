"""Several processes (hosts) running one config: JAX's multi-process runtime.

Every process runs the same program on the same config; `jax.devices()` then lists the devices
of all processes and the mesh spans them. Each process feeds only its own rows of every global
batch (`sharding.put_batch`); only process 0 writes the workdir files (config, log, summary,
export), while orbax checkpoints are written and restored by all processes together.

`maybe_initialize()` (called by launch.py before any JAX computation) starts the runtime when
the environment says this process is one of several:

- ``KAMAL_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``KAMAL_NUM_PROCESSES`` and
  ``KAMAL_PROCESS_ID`` (0..N-1): explicit, works anywhere (several machines, or several
  processes on one machine); optionally ``KAMAL_LOCAL_DEVICE_IDS`` (comma-separated).
- ``KAMAL_DISTRIBUTED=auto``: let JAX detect the cluster itself (SLURM, Open MPI, Cloud TPU, ...)
  and call ``jax.distributed.initialize()`` without arguments.

With neither, nothing happens and the run is the usual single process. On CPU the collectives
between processes go through gloo (`jax_cpu_collectives_implementation`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Mapping

import numpy as np

from kamal_jax.train import waits

log = logging.getLogger('kamal_jax')

ENV_ADDRESS = 'KAMAL_COORDINATOR_ADDRESS'
ENV_NUM = 'KAMAL_NUM_PROCESSES'
ENV_ID = 'KAMAL_PROCESS_ID'
ENV_LOCAL_DEVICES = 'KAMAL_LOCAL_DEVICE_IDS'
ENV_AUTO = 'KAMAL_DISTRIBUTED'

_initialized = False


class DistributedError(ValueError):
    pass


def settings(environ: Mapping[str, str] = os.environ) -> dict | None:
    """The `jax.distributed.initialize` arguments the environment asks for, or None (one process)."""
    if environ.get(ENV_AUTO, '').lower() == 'auto':
        return {}
    given = [k for k in (ENV_ADDRESS, ENV_NUM, ENV_ID) if environ.get(k)]
    if not given:
        return None
    missing = [k for k in (ENV_ADDRESS, ENV_NUM, ENV_ID) if not environ.get(k)]
    if missing:
        raise DistributedError(f'{", ".join(given)} set but {", ".join(missing)} missing; a multi-process '
                               f'run needs all of {ENV_ADDRESS}, {ENV_NUM} and {ENV_ID}.')
    try:
        num, pid = int(environ[ENV_NUM]), int(environ[ENV_ID])
    except ValueError:
        raise DistributedError(f'{ENV_NUM} and {ENV_ID} must be integers, got '
                               f'{environ[ENV_NUM]!r} and {environ[ENV_ID]!r}.') from None
    if num < 1 or not 0 <= pid < num:
        raise DistributedError(f'{ENV_ID} = {pid} must lie in [0, {ENV_NUM}) with {ENV_NUM} = {num} >= 1.')
    out = {'coordinator_address': environ[ENV_ADDRESS], 'num_processes': num, 'process_id': pid}
    if environ.get(ENV_LOCAL_DEVICES):
        out['local_device_ids'] = [int(d) for d in environ[ENV_LOCAL_DEVICES].split(',')]
    return out


def maybe_initialize(environ: Mapping[str, str] = os.environ) -> bool:
    """Starts `jax.distributed` when the environment names several processes; True if it did."""
    global _initialized
    kwargs = settings(environ)
    if kwargs is None or _initialized:
        return _initialized
    import jax
    if kwargs.get('num_processes') == 1:
        return False
    # CPU processes exchange data through gloo; harmless where the devices are accelerators.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(**kwargs)
    _initialized = True
    log.info('process %d of %d; %d local / %d global devices', jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def process_index() -> int:
    import jax
    return jax.process_index()


def is_primary() -> bool:
    """True on the process that writes the workdir files (process 0)."""
    return process_index() == 0


def multi_process() -> bool:
    import jax
    return jax.process_count() > 1


def barrier(name: str, timeout_s: float = waits.COLLECTIVE_S) -> None:
    """Waits for every process (bounded: `waits.Hung` names the barrier)."""
    if multi_process():
        from jax.experimental import multihost_utils
        waits.bounded(lambda: multihost_utils.sync_global_devices(name),
                      f'the barrier {name!r} between the processes', timeout_s)


def broadcast_status(failed: bool, what: str = 'a status broadcast') -> bool:
    """Process 0's flag, seen by every process (so a failure there stops all, not just one).
    A failure is announced within `waits.CLEANUP_S`; the others wait for process 0's work up to
    `waits.COLLECTIVE_S`."""
    if not multi_process():
        return failed
    from jax.experimental import multihost_utils
    return bool(waits.bounded(lambda: multihost_utils.broadcast_one_to_all(np.int32(1 if failed else 0)),
                              f'the processes\' wait for {what}',
                              waits.CLEANUP_S if failed else waits.COLLECTIVE_S))


def _allgather_bytes(data: bytes) -> list[bytes]:
    from jax.experimental import multihost_utils
    n = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
    buf = np.zeros(int(n.max()), np.uint8)
    buf[:len(data)] = np.frombuffer(data, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(n), -1)
    return [rows[i, :n[i]].tobytes() for i in range(len(n))]


def _flat(tree: Any, prefix: str = '') -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, sub in tree.items():
        out.update(_flat(sub, f'{prefix}.{key}' if prefix else str(key)))
    return out


def plain_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """The first field (dotted) in which two nested dicts differ, as a sentence; None when they agree."""
    a, b = _flat(dict(old)), _flat(dict(new))
    for key in sorted(set(a) | set(b)):
        if a.get(key, '<absent>') != b.get(key, '<absent>'):
            return f'{key} was {a.get(key, "<absent>")!r}, now {b.get(key, "<absent>")!r}'
    return None


def check_same_config(config_dict: Mapping[str, Any],
                      first_difference: Callable[[dict, dict], str | None] = plain_difference) -> None:
    """Stops a multi-process run whose processes got different configs, naming the first field
    (`first_difference(a, b)`: a sentence 'FIELD was A, now B', or None; the run passes the workdir's,
    which reads configs as stored)."""
    if not multi_process():
        return
    mine = json.dumps(config_dict, sort_keys=True, default=repr).encode()
    configs = [json.loads(b) for b in _allgather_bytes(mine)]
    for pid, other in enumerate(configs[1:], start=1):
        diff = first_difference(configs[0], other)
        if diff is not None:
            diff = diff.replace(' was ', ' is ', 1).replace(', now ', f' on process 0, ', 1)
            raise DistributedError(f'the processes of this run disagree on the config: {diff} on '
                                   f'process {pid}; launch every process with the same config and flags.')


def primary_first(fn, what: str):
    """Runs `fn` on process 0 first (it may write shared files), then on the others.

    A failure on process 0 stops every process (the others raise naming `what`) instead of
    leaving them waiting. With one process this is just `fn()`.
    """
    if not multi_process():
        return fn()
    if is_primary():
        try:
            result = fn()
        except BaseException:
            waits.quietly(lambda: broadcast_status(True, what), f'telling the other processes that {what} failed')
            raise
        broadcast_status(False, what)
        return result
    if broadcast_status(False, what):
        raise DistributedError(f'{what} failed on process 0; see its output.')
    return fn()
