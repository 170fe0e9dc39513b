"""A run killed with SIGKILL mid-stage and relaunched ends with exactly an uninterrupted run's student.

The uninterrupted run holds its images in memory; the killed one streams them from records on disk
and its relaunch restores the input iterator's state from the checkpoint: the same student from
both shows that the two input paths feed the same batches and that a streamed resume is exact.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = '''
import importlib.util
spec = importlib.util.spec_from_file_location('quickstart', {quickstart!r})
quickstart = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quickstart)


def get_config():
    """The quickstart's two stages cut to one task and two teachers, saving every 5 steps."""
    c = quickstart.get_config('tiny')
    c.data.data_dir = {data_dir!r}
    c.data.streaming = {streaming!r}
    c.recipe = 'paper'  # the two stages: the kill comes in stage 1
    c.target_tasks = ('digits_0to4',)
    for name in ('high_resnet8', 'high_resnet14'):
        del c.teachers[name], c.zoo.teachers[name]
    for t in c.zoo.teachers.values():
        t.epochs = 1
    for stage in (c.stage1, c.stage2):
        stage.epochs, stage.checkpoint_every, stage.checkpoint_min_interval_s = 2, 5, 0.0
    c.log_every = 5
    return c
'''


def _launch(config, workdir, log):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'launch.py'), '--config', config,
                             '--workdir', workdir], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def _variables(workdir):
    from safetensors.numpy import load_file
    return load_file(os.path.join(workdir, 'export', 'variables.safetensors'))


def test_sigkill_mid_stage_resumes_to_the_same_student(tmp_path):
    in_memory, streamed = tmp_path / 'in_memory.py', tmp_path / 'streamed.py'
    for path, streaming in ((in_memory, 'never'), (streamed, 'always')):
        path.write_text(CONFIG.format(quickstart=os.path.join(ROOT, 'configs', 'quickstart.py'),
                                      data_dir=str(tmp_path / 'tfds'), streaming=streaming))
    whole, killed = str(tmp_path / 'whole'), str(tmp_path / 'killed')
    with open(tmp_path / 'whole.log', 'w') as log:
        assert _launch(str(in_memory), whole, log).wait(timeout=900) == 0
    assert 'streamed from the records' not in (tmp_path / 'whole.log').read_text()
    # The same zoo (PyTorch training is not bit-identical across processes' thread pools) and config.
    os.makedirs(killed)
    shutil.copytree(os.path.join(whole, 'zoo'), os.path.join(killed, 'zoo'))
    shutil.copy(os.path.join(whole, 'config.json'), killed)
    log_path = tmp_path / 'killed.log'
    with open(log_path, 'w') as log:
        proc = _launch(str(streamed), killed, log)
        deadline = time.time() + 900
        while 'stage1/digits_0to4: step 25/' not in log_path.read_text():
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(killed, 'stage2'))  # it died in stage 1
    with open(tmp_path / 'relaunch.log', 'w') as log:
        assert _launch(str(streamed), killed, log).wait(timeout=900) == 0
    relaunch = (tmp_path / 'relaunch.log').read_text()
    assert '[resumed]' in relaunch and 'streamed from the records' in relaunch
    resumed_at = int(relaunch.split("input resumed at step ")[1].split()[0])
    assert resumed_at >= 5 and resumed_at % 5 == 0  # a saved step (the one at 25 may not have been written)
    a, b = _variables(whole), _variables(killed)
    assert set(a) == set(b) and len(a) > 10
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
