"""The notebooks execute top to bottom from any folder (so they cannot rot), and the copies in git
carry the outputs of a real run with no path of the machine it ran on.

quickstart.ipynb runs the tiny quickstart; own_teachers.ipynb runs on stand-ins for a user's files
that `write_stand_ins` writes (random-weight checkpoints and a folder of small images, no labels),
and its Colab-only cell, which downloads, runs with Colab and the downloads faked. Its saved copy
is refreshed with `python tests/test_notebook.py`.
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, 'notebooks')
QUICKSTART = os.path.join(NOTEBOOKS, 'quickstart.ipynb')
OWN_TEACHERS = os.path.join(NOTEBOOKS, 'own_teachers.ipynb')
STAND_IN_IMAGES = 80  # files in the image folder: 76 images and 4 that are none (tests/photos.py)


def execute(path, cwd, env):
    """The notebook run in a kernel started in `cwd`, `env` added to its environment (with this
    checkout on its path standing for an installed kamal_jax: the install cell skips)."""
    nb = nbformat.read(path, as_version=4)
    old = dict(os.environ)
    os.environ.update(env, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    try:
        NotebookClient(nb, timeout=1200, kernel_name='python3', resources={'metadata': {'path': str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def outputs(nb):
    return ''.join(o.get('text', '') + str(o.get('data', {}).get('text/markdown', ''))
                   for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))


def write_stand_ins(files):
    """What own_teachers.ipynb reads from its FILES folder, small: two CIFAR ResNet-8s of 10 classes
    with random weights in the layouts of the public files it downloads on Colab (teacher_a.th as
    akamaster/pytorch_resnet_cifar10's: option A, classifier `linear`, `module.` prefix, wrapped under
    `state_dict`, torch's pre-1.6 format; teacher_b.pt as chenyaofo/pytorch-cifar-models': option B
    with `downsample`, a plain state_dict), written by PyTorch in a process of its own, and a folder
    of mixed small image files (`photos.write_mixed`)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import photos
    photos.write_mixed(os.path.join(files, 'images'), count=STAND_IN_IMAGES)
    code = f'''
import torch
from kamal_jax import torch_models
torch.manual_seed(0)
a = torch_models.cifar_resnet(8, 10, shortcut='zero_pad')
state = {{'module.' + k.replace('fc.', 'linear.'): v for k, v in a.state_dict().items()}}
torch.save({{'epoch': 200, 'state_dict': state, 'best_prec1': 10.0}}, {os.path.join(files, 'teacher_a.th')!r},
           _use_new_zipfile_serialization=False)
torch.manual_seed(1)
torch.save(torch_models.cifar_resnet(8, 10).state_dict(), {os.path.join(files, 'teacher_b.pt')!r})
'''
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT,
                   env={**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')})


def test_quickstart_notebook_runs_from_any_folder(tmp_path):
    cwd = tmp_path / 'elsewhere'
    cwd.mkdir()
    nb = execute(QUICKSTART, cwd, {'KAMAL_NOTEBOOK_WORKDIR': str(tmp_path / 'run'),
                                   'KAMAL_NOTEBOOK_DATA_DIR': str(tmp_path / 'tfds')})
    text = outputs(nb)
    assert 'nothing to install' in text
    assert '| target | target |' in text
    assert "'variables.msgpack', 'variables.safetensors'" in text
    assert (tmp_path / 'run' / 'export' / 'student.json').is_file()
    assert os.listdir(cwd) == []  # nothing relative to the working folder


def test_own_teachers_notebook_runs_offline_on_stand_ins_from_any_folder(tmp_path):
    write_stand_ins(str(tmp_path / 'files'))
    cwd = tmp_path / 'elsewhere'
    cwd.mkdir()
    run = tmp_path / 'run'
    nb = execute(OWN_TEACHERS, cwd, {'KAMAL_NOTEBOOK_FILES': str(tmp_path / 'files'),
                                     'KAMAL_NOTEBOOK_WORKDIR': str(run),
                                     'KAMAL_NOTEBOOK_DATA_DIR': str(tmp_path / 'data')})
    text = outputs(nb)
    assert 'nothing to install' in text
    assert 'not on Colab: nothing downloaded' in text
    # arch='auto' read both layouts
    assert 'shortcut option A (zero-pad, parameter-free) from' in text and 'shortcut option B' in text
    summary = json.load(open(run / 'summary.json'))
    held_out = len(open(run / 'held_out_images.txt').read().split())
    assert summary['data']['labelled_eval'] is False and summary['data']['eval'] == held_out == 8
    assert not summary['models']['target']['accuracy']  # no labels, no accuracies: diagnostics instead
    diagnostics = summary['models']['target']['diagnostics']
    assert set(diagnostics) == {'animals', 'ship_truck'} and diagnostics['animals']['images'] == held_out
    assert 'Label-free diagnostics' in text
    assert 'curves_target.png' in text
    assert '76 images predicted, 4 skipped' in text
    assert (run / 'export' / 'student.json').is_file() and (run / 'predictions.csv').is_file()
    assert os.listdir(cwd) == []  # nothing relative to the working folder


def test_own_teachers_notebook_installs_as_the_quickstart_and_downloads_only_on_colab():
    cells = [c.source for c in nbformat.read(OWN_TEACHERS, as_version=4).cells if c.cell_type == 'code']
    first = next(c.source for c in nbformat.read(QUICKSTART, as_version=4).cells if c.cell_type == 'code')
    assert cells[0] == first  # one install cell, which tests/test_package.py checks
    fetching = [c for c in cells if re.search(r'https?://|download', c)]
    assert fetching and all("ON_COLAB = 'google.colab' in sys.modules" in c and '\nif ON_COLAB:' in c
                            for c in fetching)


def test_the_colab_cell_fetches_once_and_writes_the_folders_the_run_reads(tmp_path, monkeypatch):
    """own_teachers.ipynb's Colab-only cell, run here with Colab, its downloads and torchvision's
    CIFAR-10 faked: the two published checkpoints land in FILES once; the tasks' classes only are
    written, the training images without labels, the test images in one sub-folder per class."""
    import types

    import numpy as np
    from PIL import Image
    cells = [c.source for c in nbformat.read(OWN_TEACHERS, as_version=4).cells if c.cell_type == 'code']
    settings = next(c for c in cells if 'TEACHERS = {' in c)
    colab = next(c for c in cells if 'ON_COLAB = ' in c)
    fetched = []

    def download(url, path):
        fetched.append(url)
        open(path, 'wb').write(b'weights')

    class Cifar10:
        def __init__(self, root, train, download):
            assert download and root.startswith(str(tmp_path / 'files'))
            n = 40 if train else 30
            self.data = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(n)]

    fakes = {'google.colab': types.ModuleType('google.colab'),
             'torchvision': types.SimpleNamespace(datasets=types.SimpleNamespace(CIFAR10=Cifar10))}
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv('KAMAL_NOTEBOOK_FILES', str(tmp_path / 'files'))
    namespace = {'os': os, 'sys': sys, 'torch': types.SimpleNamespace(hub=types.SimpleNamespace(
        download_url_to_file=download))}
    exec(settings, namespace)
    exec(colab, namespace)
    exec(colab, namespace)  # again: nothing is fetched or written twice
    files = tmp_path / 'files'
    assert fetched == [namespace['PUBLIC']['teacher_a.th'], namespace['PUBLIC']['teacher_b.pt']]
    assert all(url.startswith('https://github.com/') for url in fetched)
    assert {'teacher_a.th', 'teacher_b.pt', 'images', 'labelled'} <= set(os.listdir(files))
    assert not [p for p in os.listdir(files) if p.endswith('.partial')]
    wanted = {i for start, stop in namespace['TASKS'].values() for i in range(start, stop)}
    assert sorted(os.listdir(files / 'images')) == [f'{i:05d}.png' for i in range(40) if i % 10 in wanted]
    classes = namespace['CLASSES']
    assert sorted(os.listdir(files / 'labelled')) == sorted(classes[i] for i in wanted)
    test = Cifar10(str(files), False, True)
    for i in range(30):
        path = files / 'labelled' / classes[i % 10] / f'{i:05d}.png'
        assert path.is_file() == (i % 10 in wanted)
        if path.is_file():
            np.testing.assert_array_equal(np.asarray(Image.open(path)), test.data[i])


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(NOTEBOOKS, '*.ipynb'))), ids=os.path.basename)
def test_saved_notebook_has_outputs_and_no_machine_paths(path):
    assert os.path.getsize(path) < 1_000_000
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert all(c.execution_count and c.outputs for c in code), 'save the notebook with the outputs of a run'
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    text = json.dumps([c.outputs for c in code])
    # The folder holding this checkout (and its neighbours) is this machine's own.
    checkout = re.escape(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + '/')
    home = re.escape(os.path.expanduser('~') + '/')
    paths = re.findall(rf'(?:{checkout}|{home}|/home/|/tmp/|/Users/|site-packages)[^\s"\\]*', text)
    assert not paths, f'the saved outputs name paths of the machine they ran on: {paths[:3]}'


def save_own_teachers():
    """Runs own_teachers.ipynb as a user would, from a fresh folder holding the stand-ins under its
    default FILES and WORKDIR, and saves it with its outputs (that folder written as '.')."""
    with tempfile.TemporaryDirectory() as cwd:
        write_stand_ins(os.path.join(cwd, 'own_files'))
        nb = execute(OWN_TEACHERS, cwd, {'KAMAL_NOTEBOOK_DATA_DIR': os.path.join(cwd, 'data')})
        for cell in nb.cells:
            for o in cell.get('outputs', []):
                if 'text' in o:
                    o['text'] = o['text'].replace(os.path.realpath(cwd), '.').replace(cwd, '.')
    nbformat.write(nb, OWN_TEACHERS)


if __name__ == '__main__':
    save_own_teachers()
