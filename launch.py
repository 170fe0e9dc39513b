"""Runs a kamal_jax config: teachers -> stage 1 -> stage 2 -> summary and exported student.

    python launch.py --config configs/quickstart.py --workdir runs/quickstart
    python launch.py --config configs/quickstart.py --workdir runs/q --config.stage1.epochs=3

The same command as the installed `kamal-jax` (flags in `kamal_jax.cli`); this file only calls it.
"""

from kamal_jax import cli

if __name__ == '__main__':
    cli.main()
