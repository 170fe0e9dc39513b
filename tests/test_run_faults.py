"""One run per workdir, signals, write failures and bad records or teachers, on one tiny run.

Every run here is the quickstart cut to one task, two random-weight teachers (no zoo), 128
training images and one stage of 8 steps, so a fault's run and its relaunch take seconds. Each
fault is injected in-process where the process boundary is not the point; the export of every
faulted-and-relaunched run is compared bit for bit with one uninterrupted run's.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import toy
from kamal_jax import locks, pipeline, workdir as workdir_lib
from kamal_jax.tasks import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8  # 2 epochs of 128 images at batch 32


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """Two cifar_resnet8 teachers (7 classes, random weights) and a torchvision resnet18 of 3 classes."""
    out = tmp_path_factory.mktemp('teachers')
    toy.write_random_teachers(
        out, f'torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), {str(out / "short.pth")!r})')
    return out


def tiny_config(checkpoints):
    return toy.one_task_config(checkpoints, 'product')


def write_config(config, path):
    """`config` as a config file for the command line (a Python literal: its tuples stay tuples)."""
    path.write_text(f'import ml_collections\n\n\ndef get_config():\n'
                    f'    return ml_collections.ConfigDict({config.to_dict()!r})\n')
    return path


def export_of(workdir):
    from safetensors.numpy import load_file
    return load_file(os.path.join(workdir, 'export', 'variables.safetensors'))


def assert_same_student(workdir, reference):
    a, b = export_of(workdir), reference
    assert set(a) == set(b) and len(a) > 10
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope='module')
def reference(checkpoints, tmp_path_factory):
    """The uninterrupted run's exported student."""
    workdir = str(tmp_path_factory.mktemp('reference') / 'run')
    pipeline.run(tiny_config(checkpoints), workdir)
    return export_of(workdir)


def _launch(args, **kw):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, **kw)


def _listing(folder):
    return sorted((os.path.relpath(os.path.join(r, f), folder), os.path.getsize(os.path.join(r, f)))
                  for r, _, files in os.walk(folder) for f in files)


def _settled_listing(folder, timeout_s=120):
    """The listing once no checkpoint save is in flight (orbax finishes saves on its own thread)."""
    deadline = time.time() + timeout_s
    while any('orbax-checkpoint-tmp' in name for name, _ in _listing(folder)) and time.time() < deadline:
        time.sleep(0.1)
    return _listing(folder)


def _one_error_line(result, *words):
    assert result.returncode != 0, result.stdout[-2000:]
    assert 'Traceback' not in result.stderr + result.stdout, result.stderr[-3000:]
    lines = [l for l in (result.stdout + result.stderr).strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), lines
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- item 1: the workdir lock

def test_a_second_run_on_a_held_workdir_is_refused_naming_the_first(checkpoints, reference, tmp_path, monkeypatch):
    """While the first run is mid-stage, a second launch and a second with --overwrite are refused in
    one line naming the holder, before reading any data; the first run then ends as if alone."""
    config = tiny_config(checkpoints)
    workdir = str(tmp_path / 'run')
    config_file = write_config(config, tmp_path / 'config.py')
    from kamal_jax.train import batches as batches_lib
    seen, real_next = {}, batches_lib.BatchStream.next

    def next_batch(self, step):
        if step == 3 and not seen:  # mid-stage, the lock held: launch two more runs on the workdir
            before = _settled_listing(workdir)
            seen['plain'] = _launch(['--config', str(config_file), '--workdir', workdir])
            seen['overwrite'] = _launch(['--config', str(config_file), '--workdir', workdir, '--overwrite'])
            seen['unchanged'] = (before, _listing(workdir))
        return real_next(self, step)
    monkeypatch.setattr(batches_lib.BatchStream, 'next', next_batch)
    pipeline.run(config, workdir)
    for kind in ('plain', 'overwrite'):
        line = _one_error_line(seen[kind], f'workdir {workdir!r} is in use by another run', f'process {os.getpid()}',
                               'host ', 'started ')
        assert 'training images' not in seen[kind].stdout  # refused before reading any data
    assert seen['unchanged'][0] == seen['unchanged'][1]  # the refused runs wrote nothing, deleted nothing
    assert_same_student(workdir, reference)
    # The lock went with the run: the workdir is free, and --overwrite keeps the lock file.
    workdir_lib.check_unlocked(workdir)
    resumed, lock = workdir_lib.claim(workdir, {'other': 1}, overwrite=True)
    assert not resumed and sorted(os.listdir(workdir)) == ['config.json', workdir_lib.LOCK_FILE]
    lock.release()


def test_a_refused_claim_leaves_no_lock_file_and_a_killed_holder_no_stale_lock(tmp_path):
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'notes.txt').write_text('mine')
    with pytest.raises(workdir_lib.WorkdirError, match='is not empty and holds no kamal_jax run'):
        workdir_lib.claim(str(mine), {'a': 1})
    assert os.listdir(mine) == ['notes.txt']
    # A holder killed with SIGKILL leaves its lock file but no lock.
    run = tmp_path / 'run'
    holder = subprocess.Popen([sys.executable, '-c', f'''
import sys, time
sys.path.insert(0, {ROOT!r})
from kamal_jax import workdir
_, lock = workdir.claim({str(run)!r}, {{'a': 1}})
print('held', flush=True)
time.sleep(600)
'''], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(locks.LockHeld, match=rf'process {holder.pid}, started'):
        workdir_lib.claim(str(run), {'a': 1})
    holder.kill()
    holder.wait()
    resumed, lock = workdir_lib.claim(str(run), {'a': 1})
    assert resumed
    lock.release()


def test_a_wait_that_does_not_end_stops_naming_what_it_waited_for():
    from kamal_jax.train import waits
    release = threading.Event()
    t0 = time.perf_counter()
    with pytest.raises(waits.Hung, match=r"^orbax's wait for checkpoint step 6 in d did not finish within 0.2 s"):
        waits.bounded(release.wait, "orbax's wait for checkpoint step 6 in d", 0.2)
    assert time.perf_counter() - t0 < 5
    release.set()
    assert waits.bounded(lambda: 7, 'a quick one', 5) == 7
    with pytest.raises(ZeroDivisionError):  # its own error comes back as it was
        waits.bounded(lambda: 1 / 0, 'a failing one', 5)


# ----------------------------------------------------------------------------- item 4: signals

SLOW_STEP = '''
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever the parent left
sys.argv = {argv!r}
from kamal_jax import cli
from kamal_jax.train import batches as batches_lib, stopping
real_next = batches_lib.BatchStream.next

def next_batch(self, step):  # step {at} waits for the signal, as a slow step would
    if step == {at}:
        print('at step {at}', flush=True)
        deadline = time.time() + 120
        while not stopping.requested() and time.time() < deadline:
            time.sleep(0.02)
    return real_next(self, step)
batches_lib.BatchStream.next = next_batch
cli.main()
'''


def test_sigint_is_one_line_and_exit_130_and_the_relaunch_is_exact(checkpoints, reference, tmp_path):
    workdir = str(tmp_path / 'run')
    config = tiny_config(checkpoints)
    argv = ['kamal-jax', '--config', str(write_config(config, tmp_path / 'config.py')), '--workdir', workdir]
    proc = subprocess.Popen([sys.executable, '-c', SLOW_STEP.format(argv=argv, at=4)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, 'KAMAL_JAX_PLAIN_XLA': '1'})  # the XLA of this process
    for line in proc.stdout:
        if line.startswith('at step 4'):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert 'Traceback' not in out + err
    # Checkpoints every 3 steps: the run stopped after step 5, and the relaunch starts from step 3.
    assert err.strip().splitlines() == [f"stopped by SIGINT in target at step 5 of {STEPS}; relaunching the same "
                                        f"command resumes target from its checkpoint of step 3 in "
                                        f"{os.path.join(workdir, 'target')}."]
    pipeline.run(config, workdir)
    assert_same_student(workdir, reference)


def test_sigterm_mid_stage_saves_that_step_and_the_relaunch_resumes_from_it(checkpoints, reference, tmp_path,
                                                                           monkeypatch, caplog):
    from kamal_jax.train import batches as batches_lib, stopping
    workdir = str(tmp_path / 'run')
    config = tiny_config(checkpoints)
    real_next = batches_lib.BatchStream.next

    def next_batch(self, step):
        if step == 3:  # while step 4 trains, as a scheduler would
            os.kill(os.getpid(), signal.SIGTERM)
        return real_next(self, step)
    monkeypatch.setattr(batches_lib.BatchStream, 'next', next_batch)
    before = signal.getsignal(signal.SIGTERM)
    with stopping.handling_signals(), pytest.raises(stopping.Stopped) as err:
        pipeline.run(config, workdir)
    assert str(err.value) == (f'stopped by SIGTERM in target at step 4 of {STEPS}, saved as checkpoint step 4 in '
                              f"{os.path.join(workdir, 'target')}; relaunching the same command resumes from it.")
    assert err.value.exit_code == 143
    assert '4' in os.listdir(os.path.join(workdir, 'target'))  # 4 is no multiple of checkpoint_every = 3
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers went with the block
    monkeypatch.undo()
    with caplog.at_level('INFO', logger='kamal_jax'):
        pipeline.run(config, workdir)
    assert f'target: steps 4..{STEPS}' in caplog.text and '[resumed]' in caplog.text
    assert_same_student(workdir, reference)


# ----------------------------------------------------------------------------- item 2: write failures

FULL_DISK_AT_SAVE = '''
import sys
sys.argv = {argv!r}
import orbax.checkpoint as ocp
from kamal_jax import cli
real_save = ocp.CheckpointManager.save

def save(self, step, *args, **kwargs):  # what orbax raises when TensorStore finds the disk full
    if step == 6:
        raise ValueError('Save failed: RESOURCE_EXHAUSTED: Error writing local file "d/0.zarray": '
                         'No space left on device [OS error: No space left on device]')
    return real_save(self, step, *args, **kwargs)
ocp.CheckpointManager.save = save
cli.main()
'''


def test_a_full_disk_at_a_checkpoint_save_is_one_line_and_the_relaunch_is_exact(checkpoints, reference, tmp_path):
    workdir = str(tmp_path / 'run')
    config = tiny_config(checkpoints)
    argv = ['kamal-jax', '--config', str(write_config(config, tmp_path / 'config.py')), '--workdir', workdir]
    result = subprocess.run([sys.executable, '-c', FULL_DISK_AT_SAVE.format(argv=argv)], cwd=ROOT, text=True,
                            capture_output=True, timeout=300, env={**os.environ, 'KAMAL_JAX_PLAIN_XLA': '1'})
    assert result.returncode == 1 and 'Traceback' not in result.stdout + result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint step 6 could not be written to {os.path.join(workdir, 'target')} (no space left on "
        'device); the last good checkpoint (step 3) is kept; free space and relaunch the same command to resume '
        'from it.']
    assert sorted(os.listdir(os.path.join(workdir, 'target'))) == ['3']
    pipeline.run(config, workdir)
    assert_same_student(workdir, reference)


def test_a_full_disk_at_the_export_is_one_sentence_and_the_relaunch_writes_it(checkpoints, reference, tmp_path,
                                                                            monkeypatch):
    import errno
    from kamal_jax import export
    from kamal_jax.files import WriteError
    workdir = str(tmp_path / 'run')
    config = tiny_config(checkpoints)

    def full(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(export.safetensors_np, 'save_file', full)
    with pytest.raises(WriteError) as err:
        pipeline.run(config, workdir)
    assert str(err.value) == (f"the export could not be written to {os.path.join(workdir, 'export')} (no space left "
                              'on device); the checkpoints are kept: free space and relaunch the same command to '
                              'write it.')
    assert not [n for n in os.listdir(workdir) if 'export' in n]  # no half export, no temporary folder
    monkeypatch.undo()
    pipeline.run(config, workdir)
    assert_same_student(workdir, reference)


def _labelled(n, seed=0):
    return toy.images(n, 8, seed), {'label': np.arange(n) % 3}


def test_records_written_under_a_lock_and_a_full_disk_leaves_the_old_folder(tmp_path, monkeypatch):
    import errno
    from array_record.python import array_record_module
    from kamal_jax.data import records
    from kamal_jax.files import WriteError
    out = str(tmp_path / 'records')
    kw = dict(shape=(8, 8, 3), label_names={'label': ['a', 'b', 'c']})
    records.write(out, [_labelled(10)], **kw)
    with locks.acquire(out + '.lock', 'a test'):  # another writer holds it
        with pytest.raises(locks.LockHeld, match=rf"records folder '{out}' is in use by another run \(host .*, "
                                                 rf'process {os.getpid()}, started '):
            records.write(out, [_labelled(20, 1)], **kw)
    real_writer = array_record_module.ArrayRecordWriter

    class FullDisk:
        def __init__(self, *args):
            self.writer, self.n = real_writer(*args), 0

        def write(self, data):
            self.n += 1
            if self.n > 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.writer.write(data)

        def close(self):
            self.writer.close()
    monkeypatch.setattr(array_record_module, 'ArrayRecordWriter', FullDisk)
    with pytest.raises(WriteError, match=rf'the records folder {out} could not be written \(no space left on '
                                         r'device\); nothing of it was kept'):
        records.write(out, [_labelled(20, 1)], **kw)
    assert sorted(os.listdir(tmp_path)) == ['records', 'records.lock']  # no temporary folder left
    np.testing.assert_array_equal(records.open_split(out).images[:], _labelled(10)[0])  # the old one, whole
    monkeypatch.undo()
    records.write(out, [_labelled(20, 1)], **kw)  # space freed: the rewrite is exact
    np.testing.assert_array_equal(records.open_split(out).images[:], _labelled(20, 1)[0])


# ----------------------------------------------------------------------------- item 3: refused before the claim

def _randomise(path, size=None):
    size = os.path.getsize(path) if size is None else size
    with open(path, 'wb') as f:
        f.write(np.random.default_rng(0).bytes(size))


def _truncate(path):
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)


SHARD = 'images-00000-of-00001.array_record'
DAMAGE = {  # what is done to a good records folder -> the file the refusal must name
    'random bytes in the shard': (lambda d: _randomise(os.path.join(d, SHARD)), SHARD),
    'a truncated shard': (lambda d: _truncate(os.path.join(d, SHARD)), SHARD),
    'random labels': (lambda d: _randomise(os.path.join(d, 'labels.npz')), 'labels.npz'),
    'a folder of random files': (lambda d: [_randomise(os.path.join(d, n), 1000) for n in os.listdir(d)], 'info.json'),
}


@pytest.mark.parametrize('damage', list(DAMAGE))
def test_a_damaged_records_folder_is_refused_before_the_claim_naming_the_file(damage, checkpoints, tmp_path):
    from kamal_jax.data import records
    folder = str(tmp_path / 'records')
    records.write(folder, [_labelled(10)], shape=(8, 8, 3), label_names={'label': ['a', 'b', 'c']})
    spoil, name = DAMAGE[damage]
    spoil(folder)
    config = tiny_config(checkpoints)
    config.data.train_records = folder
    with pytest.raises(ConfigError, match=rf"data\.train_records = '{folder}' cannot be used: .*"
                                          rf"'{os.path.join(folder, name)}'") as err:
        pipeline.run(config, str(tmp_path / 'run'))
    assert '\n' not in str(err.value)
    assert not (tmp_path / 'run').exists()


def test_a_torchvision_teacher_with_a_short_classifier_is_refused_before_the_claim(checkpoints, tmp_path):
    config = tiny_config(checkpoints)
    config.teachers.low_resnet8.arch = 'torchvision:resnet18'
    config.teachers.low_resnet8.checkpoint = str(checkpoints / 'short.pth')  # 3 classes; the head slices [0, 5)
    with pytest.raises(ConfigError, match=r"teachers\.low_resnet8\.heads\.digits_0to4\.logits = \[0, 5\) runs past "
                                          r"the teacher's 3 output logits"):
        pipeline.run(config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()  # no config.json, no log, no exported graph
