"""The quickstart notebook executes top to bottom from any folder (so it cannot rot), and the copy
in git carries the outputs of a real run."""
import json
import os
import re

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'quickstart.ipynb')


def test_quickstart_notebook_runs_from_any_folder(tmp_path, monkeypatch):
    # The checkout on the kernel's path stands for an installed kamal_jax: the install cell skips.
    monkeypatch.setenv('PYTHONPATH', ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    monkeypatch.setenv('KAMAL_NOTEBOOK_WORKDIR', str(tmp_path / 'run'))
    monkeypatch.setenv('KAMAL_NOTEBOOK_DATA_DIR', str(tmp_path / 'tfds'))
    cwd = tmp_path / 'elsewhere'
    cwd.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name='python3',
                   resources={'metadata': {'path': str(cwd)}}).execute()
    outputs = ''.join(o.get('text', '') + str(o.get('data', {}).get('text/markdown', ''))
                      for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
    assert 'nothing to install' in outputs
    assert '| target | target |' in outputs
    assert "'variables.msgpack', 'variables.safetensors'" in outputs
    assert (tmp_path / 'run' / 'export' / 'student.json').is_file()
    assert os.listdir(cwd) == []  # nothing relative to the working folder


def test_saved_notebook_has_outputs_and_no_machine_paths():
    assert os.path.getsize(NOTEBOOK) < 1_000_000
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert all(c.execution_count and c.outputs for c in code), 'save the notebook with the outputs of a run'
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    text = json.dumps([c.outputs for c in code])
    # The folder holding this checkout (and its neighbours) is this machine's own.
    checkout = re.escape(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + '/')
    home = re.escape(os.path.expanduser('~') + '/')
    paths = re.findall(rf'(?:{checkout}|{home}|/home/|/tmp/|/Users/|site-packages)[^\s"\\]*', text)
    assert not paths, f'the saved outputs name paths of the machine they ran on: {paths[:3]}'
