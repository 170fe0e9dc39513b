"""The quickstart notebook executes top to bottom (so it cannot rot)."""
import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv('KAMAL_NOTEBOOK_WORKDIR', str(tmp_path / 'run'))
    monkeypatch.setenv('KAMAL_NOTEBOOK_DATA_DIR', str(tmp_path / 'tfds'))
    nb = nbformat.read(os.path.join(ROOT, 'notebooks', 'quickstart.ipynb'), as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name='python3',
                   resources={'metadata': {'path': os.path.join(ROOT, 'notebooks')}}).execute()
    outputs = ''.join(o.get('text', '') + str(o.get('data', {}).get('text/markdown', ''))
                      for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
    assert '| target | target |' in outputs
    assert (tmp_path / 'run' / 'export' / 'student.json').is_file()
