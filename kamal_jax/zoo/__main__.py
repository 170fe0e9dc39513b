"""Trains a teacher zoo: `python -m kamal_jax.zoo --config configs/zoo/NAME.py --out DIR`.

Each teacher of the config (`config.zoo.teachers`, or `config.teachers` for a zoo-only config)
is trained with PyTorch on its classes and its part of the data, and written as `DIR/NAME.pth`
plus its card `DIR/NAME.json`. Teachers already in DIR are skipped. See `kamal_jax.zoo.train`.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
# OpenMP threads that sleep instead of spinning: on a small shared CPU (another process training
# alongside) spinning threads made PyTorch steps ~6x slower. Read when torch loads, so set first.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import torch  # noqa: E402,F401  Before TensorFlow (imported by the data loader): the reverse aborts.
import torchvision  # noqa: E402,F401

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Zoo config file (configs/zoo/NAME.py).',
                                          lock_config=False)
_OUT = flags.DEFINE_string('out', None, 'Output directory for NAME.pth and NAME.json '
                           '(default: the config\'s zoo.out_dir).')
_CONFIG_JSON = flags.DEFINE_string('config_json', None, 'A zoo config as JSON (what launch.py writes '
                                   'to WORKDIR/zoo/zoo_config.json); instead of --config.')
_ONLY = flags.DEFINE_list('only', None, 'Train only these teachers (comma separated).')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # TFDS reports every split it reads at INFO.
    from kamal_jax.zoo import train
    config = _CONFIG.value
    if _CONFIG_JSON.value:
        import json
        import ml_collections
        with open(_CONFIG_JSON.value) as f:
            config = ml_collections.ConfigDict(json.load(f))
    if config is None:
        raise app.UsageError('--config (or --config_json) is required.')
    out = _OUT.value or train._get(train.zoo_section(config), 'out_dir')
    if not out:
        raise app.UsageError('--out is required (the config has no zoo.out_dir).')
    try:
        cards = train.train_zoo(config, out, only=_ONLY.value)
    except train.ZooConfigError as e:
        raise app.UsageError(str(e)) from None
    for name, card in cards.items():
        acc = card.get('eval_accuracy')
        print(f'{name}: {card["arch"]}, {card["num_classes"]} classes, eval accuracy '
              f'{"n/a" if acc is None else f"{acc:.4f}"}')


if __name__ == '__main__':
    app.run(main)
