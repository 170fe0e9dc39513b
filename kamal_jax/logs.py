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
