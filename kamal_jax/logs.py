"""Progress output: kamal_jax's own lines on stdout, library chatter (orbax, absl) kept to warnings."""

from __future__ import annotations

import logging
import os
import sys


def setup_console(level: int = logging.INFO) -> logging.Logger:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # before TensorFlow is first imported
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    log = logging.getLogger('kamal_jax')
    if not any(getattr(h, '_kamal_console', False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', datefmt='%H:%M:%S'))
        handler._kamal_console = True
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return log


def _not_orbax(record: logging.LogRecord) -> bool:
    return f'{os.sep}orbax{os.sep}' not in (record.pathname or '')


def quiet_orbax_errors() -> None:
    """Drops orbax's own error logs (a failed save logs its traceback from every thread that sees
    it): kamal_jax reports each failure of orbax as one sentence instead (`checkpoint`). `--debug`
    keeps them."""
    from absl import logging as absl_logging
    handler = absl_logging.get_absl_handler()
    if _not_orbax not in handler.filters:
        handler.addFilter(_not_orbax)
    # After a failed save TensorStore's threads go on completing the save's futures on an event
    # loop orbax has closed; each prints 'Event loop is closed' with a traceback. Nothing is lost.
    for name in ('excepthook', 'unraisablehook'):
        setattr(sys, name, _dropping_closed_loops(getattr(sys, name)))


def _closed_loop(e) -> bool:
    return isinstance(e, RuntimeError) and str(e) == 'Event loop is closed'


def _dropping_closed_loops(hook):
    if getattr(hook, '_kamal_quiet', False):
        return hook

    def quiet(*args):
        value = args[1] if len(args) == 3 else getattr(args[0], 'exc_value', None)
        if not _closed_loop(value):
            hook(*args)
    quiet._kamal_quiet = True
    return quiet
