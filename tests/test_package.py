"""kamal-jax as an installed package: the wheel builds offline and runs from any folder, and the
notebook's install keeps the jax, torch and TensorFlow an environment (Colab) already has."""
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILT_FROM = ('pyproject.toml', 'setup.py', 'README.md', 'kamal_jax', 'configs')
# Colab's TensorFlow is the `tensorflow` distribution; any of these next to it is a second one.
TENSORFLOWS = {'tensorflow', 'tensorflow-cpu', 'tensorflow-gpu', 'tensorflow-intel', 'tensorflow-macos',
               'tf-nightly', 'tf-nightly-cpu'}
KEPT = {'jax', 'jaxlib', 'torch', 'torchvision'} | TENSORFLOWS


def _canonical(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def _clean_env():
    """This environment without a Python path or pip settings: no index, find-links or constraints."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'PYTHONHOME') and not k.startswith('PIP_')}
    env['PIP_CONFIG_FILE'] = os.devnull
    return env


def _new_venv(path):
    """A venv of this interpreter's base Python without pip: returns (python, site-packages)."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    python = path / 'bin' / 'python'
    site = subprocess.check_output([python, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
                                   text=True).strip()
    return python, Path(site)


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """A copy of what the package is built from: building in the checkout would leave build/ there."""
    dst = tmp_path_factory.mktemp('source')
    for name in BUILT_FROM:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copy(src, dst / name)
    return dst


@pytest.fixture(scope='module')
def wheel(source, tmp_path_factory):
    out = tmp_path_factory.mktemp('dist')
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-build-isolation', '--no-deps', '--no-index',
                    '-q', '-w', out, source], check=True, env=_clean_env())
    (path,) = out.glob('kamal_jax-*.whl')
    return path


def test_wheel_holds_every_module_and_the_configs_as_kamal_jax_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / 'kamal_jax').rglob('*.py')}
    expected |= {'kamal_jax/' + p.relative_to(ROOT).as_posix() for p in (ROOT / 'configs').rglob('*.py')}
    missing = sorted(expected - names)
    assert not missing, f'not in the wheel (see the package list in setup.py): {missing}'
    entry_points = next(n for n in names if n.endswith('.dist-info/entry_points.txt'))
    assert 'kamal-jax = kamal_jax.cli:main' in zipfile.ZipFile(wheel).read(entry_points).decode()


LOAD_EXPORT = """
import json
import jax, numpy as np
import kamal_jax
from kamal_jax import config_files
student = kamal_jax.load_student('run/export')
same = kamal_jax.load_student('run/export', format='safetensors')
probs = student.predict(np.zeros((2, 16, 16, 3)))
print(json.dumps({'file': kamal_jax.__file__, 'configs': config_files.directory().as_posix(),
                  'tasks': sorted(probs), 'shapes': [list(p.shape) for p in probs.values()],
                  'equal': all(np.array_equal(a, b) for a, b in
                               zip(jax.tree.leaves(student.variables), jax.tree.leaves(same.variables)))}))
"""


def test_installed_wheel_runs_the_quickstart_from_any_folder(wheel, tmp_path):
    python, site = _new_venv(tmp_path / 'venv')
    # The new venv reuses this one's dependencies (jax, torch, TensorFlow, ...) through a .pth file;
    # its own site-packages comes first, so the wheel's kamal_jax is the one imported.
    reused = [p for p in sys.path if os.path.basename(p) in ('site-packages', 'dist-packages')]
    (site / 'reuse_test_env.pth').write_text('\n'.join(reused) + '\n')
    subprocess.run([python, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', '--force-reinstall',
                    wheel], check=True, env=_clean_env())
    cwd = tmp_path / 'elsewhere'
    cwd.mkdir()
    env = _clean_env()
    bad = subprocess.run([tmp_path / 'venv' / 'bin' / 'kamal-jax', '--config', 'kamal_jax:quickstrat',
                          '--workdir', 'run'], cwd=cwd, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "no config 'quickstrat'" in bad.stderr and 'quickstart' in bad.stderr
    teachers = ('low_resnet8', 'low_resnet14', 'high_resnet14', 'high_resnet8')
    shrink = [f'--config.zoo.teachers.{t}.epochs=1' for t in teachers] + [
        '--config.stage1.epochs=1', '--config.stage2.epochs=1', '--config.data.eval_limit=64']
    subprocess.run([tmp_path / 'venv' / 'bin' / 'kamal-jax', '--config=kamal_jax:quickstart:tiny',
                    '--workdir', 'run', f'--config.data.data_dir={tmp_path / "tfds"}', *shrink],
                   cwd=cwd, env=env, check=True)
    summary = json.loads((cwd / 'run' / 'summary.json').read_text())
    assert set(summary['tasks']) == {'digits_0to4', 'digits_5to9'}
    out = json.loads(subprocess.run([python, '-c', LOAD_EXPORT], cwd=cwd, env=env, check=True,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1])
    assert out['file'].startswith(str(tmp_path / 'venv')) and out['configs'].startswith(str(tmp_path / 'venv'))
    assert out['tasks'] == ['digits_0to4', 'digits_5to9'] and out['shapes'] == [[2, 5], [2, 5]]
    assert out['equal']


def _colab_like_venv(path):
    """A venv holding this one's distributions as records only (metadata, no code) except that its
    TensorFlow is a `tensorflow` record, as on Colab; pip and setuptools are real (linked)."""
    python, site = _new_venv(path)
    seen = set()
    for dist in importlib.metadata.distributions():
        name = _canonical(dist.metadata['Name'])
        if name in seen or name in TENSORFLOWS or name == 'kamal-jax':
            continue
        seen.add(name)
        if name in ('pip', 'setuptools'):
            for top in {Path(f).parts[0] for f in dist.files if not str(f).startswith('..')}:
                if not (site / top).exists():
                    (site / top).symlink_to(dist.locate_file(top))
            continue
        record = site / f'{name.replace("-", "_")}-{dist.version}.dist-info'
        record.mkdir()
        (record / 'METADATA').write_text(dist.read_text('METADATA'))
    tf_version = next((importlib.metadata.version(n) for n in ('tensorflow-cpu', 'tensorflow')
                       if _installed(n)), '2.20.0')
    record = site / f'tensorflow-{tf_version}.dist-info'
    record.mkdir()
    (record / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: tensorflow\nVersion: {tf_version}\n')
    return python, site


def _installed(name):
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_notebook_install_keeps_jax_torch_and_tensorflow(source, tmp_path):
    python, _ = _colab_like_venv(tmp_path / 'colab')
    cell = next(c for c in nbformat.read(ROOT / 'notebooks' / 'quickstart.ipynb', 4).cells
                if c.cell_type == 'code').source
    cell, n = re.subn(r'^KAMAL_JAX_SOURCE = .*$', f'KAMAL_JAX_SOURCE = {str(source)!r}', cell, count=1, flags=re.M)
    assert n == 1, "the notebook's first code cell should set KAMAL_JAX_SOURCE"
    report = tmp_path / 'report.json'
    dry_run = ('import subprocess, sys\n_run = subprocess.run\n'
               'subprocess.run = lambda cmd, **kw: sys.exit(_run([*cmd, "--dry-run", "--no-index", '
               f'"--no-build-isolation", "--report", {str(report)!r}], **kw).returncode)\n')
    # The cell's own `import kamal_jax` fails here (records only), so it goes on to pip, which is
    # given the dry-run flags; the cell stops after it.
    result = subprocess.run([python, '-c', dry_run + cell], cwd=tmp_path, env=_clean_env(), capture_output=True,
                            text=True)
    assert result.returncode == 0 and report.is_file(), result.stderr[-3000:]
    installs = {_canonical(i['metadata']['name']): i for i in json.loads(report.read_text())['install']}
    others = sorted(set(installs) - {'kamal-jax'})
    assert not others, f'the install would add or replace {others}'
    assert installs['kamal-jax'].get('requested_extras') == ['torch']
    assert not KEPT & set(installs)
