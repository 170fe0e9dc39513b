"""The `kamal-jax` command (and `python launch.py`): teachers -> stage 1 -> stage 2 -> summary and export.

    kamal-jax --config kamal_jax:quickstart --workdir runs/quickstart
    kamal-jax --config kamal_jax:quickstart:tiny --workdir runs/q --config.stage1.epochs=3
    kamal-jax --config my_config.py --workdir runs/mine
    kamal-jax predict runs/mine/export ~/photos --out predictions.csv    (kamal_jax.predict)

`kamal_jax:NAME[:ARG]` is a config that ships with the package (`configs/NAME.py` of the
repository); any other value is a config file's path. All logic lives in `kamal_jax.pipeline`;
this module only parses flags. Relaunching with the same workdir and config resumes from the last
checkpoints.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from kamal_jax import config_files, xla

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A config file (configs/*.py), or a shipped config as kamal_jax:NAME[:ARG], '
    'e.g. kamal_jax:quickstart:tiny.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, summary and export.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Delete what the workdir holds and start afresh.')
_DEBUG = flags.DEFINE_bool('debug', False, 'Show the traceback of an expected failure instead of one line.')
flags.mark_flags_as_required(['config', 'workdir'])


def expand_config_flag(argv):
    """argv with `--config kamal_jax:NAME[:ARG]` (or `--config=...`) replaced by the shipped file's path."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg in ('--config', '-config') and i + 1 < len(argv):
            argv[i + 1] = config_files.resolve(argv[i + 1])
        elif arg.startswith(('--config=', '-config=')):
            flag, _, value = arg.partition('=')
            argv[i] = f'{flag}={config_files.resolve(value)}'
    return argv


def _run(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    from kamal_jax.train import stopping
    with stopping.handling_signals():  # SIGINT, SIGTERM: one line, after saving for SIGTERM
        try:
            _run_pipeline()
        except stopping.Stopped as e:
            if _DEBUG.value:
                raise
            _exit(str(e), e.exit_code)
        except KeyboardInterrupt:  # before the handlers were in place
            _exit('stopped by SIGINT; relaunching the same command resumes from the last checkpoints.', 130)
        except Exception:  # a bug: its traceback, then out at once as after any error
            if _DEBUG.value:
                raise
            import traceback
            traceback.print_exc()
            _exit('error: the run failed unexpectedly (the traceback above); relaunching the same command resumes '
                  'from the last checkpoints.', 1)


def _run_pipeline():
    from kamal_jax import logs
    logs.setup_console()
    if not _DEBUG.value:
        logs.quiet_orbax_errors()
    from kamal_jax.train import distributed
    try:  # several processes (KAMAL_COORDINATOR_ADDRESS, ...): join them before any JAX use
        distributed.maybe_initialize()
    except distributed.DistributedError as e:
        sys.exit(f'error: {e}')
    from kamal_jax import pipeline
    from kamal_jax.files import WriteError
    from kamal_jax.locks import LockHeld
    from kamal_jax.tasks import ConfigError
    from kamal_jax.train.loop import NonFiniteLoss
    from kamal_jax.train.waits import Hung
    from kamal_jax.workdir import WorkdirError
    try:
        pipeline.run(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
    except (ConfigError, WorkdirError, LockHeld, WriteError, Hung, distributed.DistributedError, NonFiniteLoss,
            OSError) as e:
        if _DEBUG.value:
            raise
        _exit(f'error: {_one_line(e)}', 1)


def _exit(line: str, code: int) -> None:
    """Prints `line` and ends the process now: a thread a failed save or collective left behind
    (orbax's, grain's, JAX's) must not hold the exit. Whatever was written is complete on disk
    (checkpoints, exports and records are renamed into place whole)."""
    import logging
    print(line, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _one_line(e: BaseException) -> str:
    """An expected failure as one sentence; an OS error (disk full, read-only, ...) with its file."""
    if isinstance(e, OSError) and e.strerror:
        return f'{e.strerror}: {e.filename!r}' if e.filename else e.strerror
    return ' '.join(str(e).split())


def _parse_flags(argv) -> list:
    """Parses the flags first, so a mistyped `--config.FIELD` is one line, not a traceback."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f'error: {e}')
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # raised by a --config override
        if '--debug' in argv:
            raise
        text = str(e.args[0] if e.args else e).replace('\\n', ' ').replace('\\', '').replace("'", '')
        field, _, hint = ' '.join(text.split()).partition(' ')
        sys.exit(f'error: a --config override names {field!r}, which the config does not have'
                 f'{"; " + hint if hint else ""}.' if isinstance(e, (AttributeError, KeyError)) else
                 f'error: a --config override does not fit the config: {" ".join(str(e).split())}')
    return rest


def main():
    """Entry point of the console script."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # Before anything imports TensorFlow.
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # TF only decodes images here; keep it quiet.
    xla.apply_cpu_defaults()  # Before JAX initialises its backend.
    if sys.argv[1:2] == ['predict']:  # the student applied to a folder: its own arguments
        from kamal_jax import predict
        sys.exit(predict.main(sys.argv[2:]))
    try:
        argv = expand_config_flag(sys.argv)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f'error: {e}')
    rest = _parse_flags(argv)
    app.run(_run, argv=rest)  # flags already parsed: absl reads none of them twice
