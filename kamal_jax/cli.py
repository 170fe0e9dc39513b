"""The `kamal-jax` command (and `python launch.py`): teachers -> stage 1 -> stage 2 -> summary and export.

    kamal-jax --config kamal_jax:quickstart --workdir runs/quickstart
    kamal-jax --config kamal_jax:quickstart:tiny --workdir runs/q --config.stage1.epochs=3
    kamal-jax --config my_config.py --workdir runs/mine
    kamal-jax --config my_config.py --print_config
    kamal-jax predict runs/mine/export ~/photos --out predictions.csv    (kamal_jax.predict)

`kamal_jax:NAME[:ARG]` is a config that ships with the package (`configs/NAME.py` of the
repository); any other value is a config file's path. `--config.FIELD=VALUE` sets any field
(docs/CONFIG.md), defaulted ones too; `--print_config` prints the resolved config and exits. The
config is resolved here, before anything runs (`kamal_jax.config_schema`); all other logic lives in
`kamal_jax.pipeline`. Relaunching with the same workdir and config resumes from the last checkpoints.
"""

import os
import sys

from absl import app, flags

from kamal_jax import xla

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, summary and export.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Delete what the workdir holds and start afresh.')
_DEBUG = flags.DEFINE_bool('debug', False, 'Show the traceback of an expected failure instead of one line.')
_PRINT_CONFIG = flags.DEFINE_bool('print_config', False, 'Print the resolved config (defaults marked) and exit.')
CONFIG_HELP = ('--config FILE[:ARG] (a config file, or a shipped config as kamal_jax:NAME[:ARG], e.g. '
               'kamal_jax:quickstart:tiny); any field as --config.FIELD=VALUE')


def split_config_args(argv) -> tuple[str | None, dict[str, str], list[str]]:
    """argv -> (the --config value, {field: text} of every --config.FIELD=VALUE, the other args)."""
    spec, overrides, rest = None, {}, []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition('=')
        bare = name.lstrip('-')
        if arg.startswith('-') and (bare == 'config' or bare.startswith('config.')):
            if not eq:
                if i + 1 >= len(args):
                    raise ValueError(f'{name} needs a value.')
                value, i = args[i + 1], i + 1
            if bare == 'config':
                spec = value
            else:
                overrides[bare[len('config.'):]] = value
        else:
            rest.append(arg)
        i += 1
    return spec, overrides, rest


def _unread_overrides(config, overrides) -> list[str]:
    """Fields set on the command line that no recipe of this run reads."""
    from kamal_jax.recipes import RECIPES
    names = (config.recipe, *config.baselines)
    reads = [prefix for n in names if n in RECIPES for prefix in RECIPES[n].reads]
    staged = ('stage1.', 'stage2.', 'baseline_stage.')
    return [f for f in overrides if f.startswith(staged) and not any(f == p or f.startswith(p) for p in reads)]


def load_config(spec: str | None, overrides: dict[str, str]):
    """The resolved config of `--config` and its overrides; ConfigError / ConfigFileError otherwise."""
    from kamal_jax import config_files, config_schema
    if not spec:
        raise config_files.ConfigFileError(f'--config is required: {CONFIG_HELP}.')
    config = config_schema.resolve(config_files.load_file(spec), overrides,
                                   warn=lambda text: print(f'warning: {text}', file=sys.stderr))
    for field in _unread_overrides(config, overrides):
        print(f'warning: --config.{field} is set, but recipe {config.recipe!r}'
              f'{" and its baselines" if config.baselines else ""} never reads it.', file=sys.stderr)
    return config


def _run(argv, config):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    from kamal_jax import config_schema
    if _PRINT_CONFIG.value:
        print(config_schema.describe(config))
        return
    if not _WORKDIR.value:
        sys.exit('error: --workdir is required: the folder for checkpoints, summary and export.')
    from kamal_jax.train import stopping
    with stopping.handling_signals():  # SIGINT, SIGTERM: one line, after saving for SIGTERM
        try:
            _run_pipeline(config)
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


def _run_pipeline(config):
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
        pipeline.run(config, _WORKDIR.value, overwrite=_OVERWRITE.value)
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


def main():
    """Entry point of the console script."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # Before anything imports TensorFlow.
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # TF only decodes images here; keep it quiet.
    xla.apply_cpu_defaults()  # Before JAX initialises its backend.
    if sys.argv[1:2] == ['predict']:  # the student applied to a folder: its own arguments
        from kamal_jax import predict
        sys.exit(predict.main(sys.argv[2:]))
    from kamal_jax.config_files import ConfigFileError
    from kamal_jax.tasks import ConfigError
    debug = '--debug' in sys.argv
    try:
        spec, overrides, rest = split_config_args(sys.argv)
        try:
            rest = flags.FLAGS(rest)
        except flags.Error as e:
            sys.exit(f'error: {e}')
        config = load_config(spec, overrides)
    except (ConfigError, ConfigFileError, ValueError) as e:
        if debug:
            raise
        sys.exit(f'error: {_one_line(e)}')
    app.run(lambda argv: _run(argv, config), argv=rest)  # flags already parsed: absl reads none twice
