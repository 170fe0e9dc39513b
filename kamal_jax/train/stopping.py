"""Stopping on a signal between training steps: SIGINT ends the run, SIGTERM saves the step first.

A signal handler only sets a flag (`requested`); the training loop looks at it after each call and
raises `Stopped` there, having saved a checkpoint of the current step for SIGTERM, what a
preemptible machine or a cluster scheduler sends before it takes the machine. Nothing is ever saved
from inside a handler. Outside a training loop (reading data, porting, evaluating) there is no step
to save: the handler raises `Stopped` at once, as Python's own SIGINT handler would. A second
signal while the first waits for the step to end stops at once too.

The handlers are installed only inside `handling_signals()` (the command line does so); a program
that imports kamal_jax keeps its own.
"""

from __future__ import annotations

import contextlib
import signal
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report it

_requested: int | None = None
_loops = 0  # training loops running (they look at the flag between steps)


class Stopped(BaseException):
    """The run stopped on a signal; one sentence says where, and what a relaunch resumes from.

    A BaseException, like KeyboardInterrupt: code that catches Exception to go on (a damaged
    checkpoint skipped, a plot not drawn) must not swallow it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + int(self.signum))


def name(signum: int) -> str:
    return signal.Signals(signum).name


def requested() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _requested


def _handler(signum, frame) -> None:
    global _requested
    if _loops and _requested is None:
        _requested = signum  # the loop stops (and for SIGTERM saves) after the step it is in
        return
    where = 'again before the step ended' if _loops else 'outside a training step'
    _requested = signum
    raise Stopped(signum, f'stopped by {name(signum)} {where}; relaunching the same command resumes from the last '
                          'checkpoints.')


@contextlib.contextmanager
def handling_signals():
    """SIGINT and SIGTERM stop the run as this module says, inside the block (main thread only)."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in EXIT_CODES}
    _requested = None
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _requested = None


def enter_loop() -> None:
    """A training loop starts: a signal now waits for the end of its step (`requested`)."""
    global _loops
    _loops += 1


def leave_loop(*, failed: bool = False) -> None:
    """The loop ends; a signal that came after its last look at `requested` stops the run here
    (unless the loop failed: its own error is the one to report)."""
    global _loops
    _loops -= 1
    if _requested is not None and not failed:
        raise Stopped(_requested, f'stopped by {name(_requested)} at the end of a training loop; relaunching the '
                                  'same command resumes from the last checkpoints.')
