"""Waits with an end: a save, a collective or a thread join that never returns names itself.

Orbax's `wait_until_finished`, the collectives between processes and the input threads' joins
wait without a timeout. After a failure elsewhere (a full disk, a process gone) one of them may
never return, and the run would hang after its error instead of exiting. `bounded` runs such a
wait on a helper thread and gives up after `timeout_s`, raising `Hung` with what it waited for.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

log = logging.getLogger('kamal_jax')

SAVE_S = 1800.0  # a checkpoint save in the normal course: large states on slow disks take minutes
CLEANUP_S = 60.0  # closing after an error: the error, not the cleanup, is what the user must see
COLLECTIVE_S = 3600.0  # a barrier: the other processes may be busy with long work of their own


class Hung(RuntimeError):
    """A wait did not end in time; the message says which."""


def bounded(fn: Callable[[], Any], what: str, timeout_s: float) -> Any:
    """`fn()`, or Hung if it has not returned within `timeout_s` (it is left running on a daemon thread)."""
    outcome: dict[str, Any] = {}

    def target():
        try:
            outcome['value'] = fn()
        except BaseException as e:  # noqa: BLE001 (handed back to the waiting thread)
            outcome['error'] = e
    thread = threading.Thread(target=target, name=f'kamal_jax: {what}', daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise Hung(f'{what} did not finish within {timeout_s:g} s; stopping here (the checkpoints already '
                   'saved are kept).')
    if 'error' in outcome:
        raise outcome['error']
    return outcome.get('value')


def quietly(fn: Callable[[], Any], what: str, timeout_s: float = CLEANUP_S, *, silent: bool = False) -> None:
    """`fn()` during the cleanup after an error: bounded, and a failure of its own is one warning
    line (none if `silent`: the same failure as the one being reported), so the error that stopped
    the run stays the one the user sees. A wait that hangs is always said."""
    try:
        bounded(fn, what, timeout_s)
    except Hung as e:
        log.warning('warning: %s', ' '.join(str(e).split()))
    except BaseException as e:  # noqa: BLE001
        if not silent:
            log.warning('warning: %s failed too (%s: %s)', what, type(e).__name__, ' '.join(str(e).split())[:200])
