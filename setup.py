"""The package list for pyproject.toml, which holds everything else.

kamal_jax's subpackages are found as they are added; the repository's top-level configs/ ships
inside the package as kamal_jax.configs, so each config exists once and `kamal-jax --config
kamal_jax:NAME` finds it wherever the package is installed.
"""
from setuptools import find_namespace_packages, setup

setup(
    packages=(find_namespace_packages(include=['kamal_jax', 'kamal_jax.*'])
              + ['kamal_jax.' + p for p in find_namespace_packages(include=['configs', 'configs.*'])]),
    package_dir={'kamal_jax.configs': 'configs'},
)
