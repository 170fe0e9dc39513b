"""Runs a kamal_jax config: teachers -> stage 1 -> stage 2 -> summary and exported student.

    python launch.py --config configs/quickstart.py --workdir runs/quickstart
    python launch.py --config configs/quickstart.py --workdir runs/q --config.stage1.epochs=3

All logic lives in `kamal_jax.pipeline`; this file only parses flags. Relaunching with the same
workdir and config resumes from the last checkpoints.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # Before anything imports TensorFlow.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # TF only decodes images here; keep it quiet.

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from kamal_jax import xla  # noqa: E402

xla.apply_cpu_defaults()  # Before JAX initialises its backend.

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, summary and export.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Delete what the workdir holds and start afresh.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    from kamal_jax import logs
    logs.setup_console()
    from kamal_jax.train import distributed
    try:  # several processes (KAMAL_COORDINATOR_ADDRESS, ...): join them before any JAX use
        distributed.maybe_initialize()
    except distributed.DistributedError as e:
        sys.exit(f'error: {e}')
    from kamal_jax import pipeline
    from kamal_jax.tasks import ConfigError
    from kamal_jax.workdir import WorkdirError
    try:
        pipeline.run(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
    except (ConfigError, WorkdirError, distributed.DistributedError) as e:
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    app.run(main)
