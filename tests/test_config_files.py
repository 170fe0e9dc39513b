"""Shipped configs by name (`kamal_jax:NAME[:ARG]`): found in the checkout, loaded as config_flags would."""
import importlib.util
import os
import subprocess
import sys

import pytest

from kamal_jax import config_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _from_file(path, *args):
    spec = importlib.util.spec_from_file_location('config_under_test', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


def test_names_are_the_files_of_configs():
    names = config_files.names()
    assert {'quickstart', 'bench_cifar10_parts', 'zoo/cifar10_parts'} <= set(names)
    assert len(names) == sum(f.endswith('.py') and not f.startswith('_')
                             for _, _, files in os.walk(os.path.join(ROOT, 'configs')) for f in files)


def test_resolve_and_load():
    quickstart = os.path.join(ROOT, 'configs', 'quickstart.py')
    assert config_files.resolve('kamal_jax:quickstart:tiny') == quickstart + ':tiny'
    zoo = os.path.join(ROOT, 'configs', 'zoo', 'cifar10_parts.py')
    assert config_files.resolve('kamal_jax:zoo/cifar10_parts') == zoo
    assert config_files.resolve('configs/quickstart.py:tiny') == 'configs/quickstart.py:tiny'
    tiny = config_files.load('quickstart:tiny')
    assert tiny.to_dict() == _from_file(quickstart, 'tiny').to_dict()
    assert config_files.load('kamal_jax:quickstart').to_dict() == _from_file(quickstart).to_dict()
    assert tiny.stage1.epochs < config_files.load('quickstart').stage1.epochs


def test_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match=r"no config 'quickstrat'; shipped configs: .*quickstart"):
        config_files.resolve('kamal_jax:quickstrat:tiny')


def test_launch_py_names_an_unknown_shipped_config(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), '--config=kamal_jax:quickstrat',
                             '--workdir', str(tmp_path / 'run')], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert "error: kamal_jax ships no config 'quickstrat'" in result.stderr
    assert not (tmp_path / 'run').exists()
