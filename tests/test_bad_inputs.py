"""Bad input stops before any work with one sentence; expected failures reach the user as one line.

Each refusal here happens before the workdir is claimed: no `config.json`, no zoo training.
"""
import errno
import json
import os
import subprocess
import sys
import tempfile

import pytest

import toy
from kamal_jax import config_schema, pipeline, workdir as workdir_lib
from kamal_jax.tasks import ConfigError
from kamal_jax.workdir import WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_TRAIN = 1347  # kamal_digits' training split (75% of scikit-learn's 1797 scans)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """A plain cifar_resnet8 teacher (7 classes), the same with a NaN weight, and with int8 weights."""
    out = tmp_path_factory.mktemp('ckpt')
    code = f'''
import torch
from kamal_jax import torch_models
torch.manual_seed(0)
sd = torch_models.build('cifar_resnet8', 7).state_dict()
torch.save(sd, {str(out / 'good.pth')!r})
bad = dict(sd); bad['fc.weight'] = bad['fc.weight'].clone(); bad['fc.weight'][0, 0] = float('nan')
torch.save(bad, {str(out / 'nan.pth')!r})
q = dict(sd); q['conv1.weight'] = (q['conv1.weight'] * 50).to(torch.int8)
torch.save(q, {str(out / 'int8.pth')!r})
'''
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)
    return out


def _own_teacher(config, path, logits=(0, 5)):
    """low_resnet8 read from `path` instead of trained by the zoo."""
    del config.zoo.teachers['low_resnet8']
    config.teachers.low_resnet8.checkpoint = str(path)
    config.teachers.low_resnet8.heads.digits_0to4.logits = logits


CASES = {
    'batch above the data': (lambda c, _: c.stage1.update(batch_size=5000),
                             rf'stage1\.batch_size = 5000 is larger than the {DIGITS_TRAIN} training images'),
    'train_limit below one batch': (lambda c, _: c.data.update(train_limit=16),
                                    r'stage1\.batch_size = 64 is larger than the 16 training images '
                                    r'\(data\.train_limit = 16\)'),
    'baseline batch above the data': (lambda c, _: (c.update(baselines=('average',)),
                                                    c.update(baseline_stage=dict(batch_size=4096))),
                                      r'baseline_stage\.batch_size = 4096 is larger'),
    'missing checkpoint': (lambda c, d: _own_teacher(c, d / 'absent.pth'),
                           r"teachers\.low_resnet8\.checkpoint = '.*absent\.pth' does not exist\."),
    'zoo teacher at another path': (lambda c, d: c.teachers.low_resnet8.update(checkpoint=str(d / 'x.pth')),
                                    r"does not exist; the zoo writes teacher 'low_resnet8' to"),
    'logit slice past the classifier': (lambda c, d: _own_teacher(c, d / 'good.pth', (4, 9)),
                                        r"teachers\.low_resnet8\.heads\.digits_0to4\.logits = \[4, 9\) runs past "
                                        r"the teacher's 7 output logits"),
    'NaN weights': (lambda c, d: _own_teacher(c, d / 'nan.pth'),
                    r"teachers\.low_resnet8\.checkpoint = .* fc\.weight holds non-finite values"),
    'int8 weights': (lambda c, d: _own_teacher(c, d / 'int8.pth'),
                     r'conv1\.weight is a int8 tensor where float weights belong'),
    'factory whose state_dict does not load': (
        lambda c, d: (_own_teacher(c, d / 'good.pth'), c.teachers.low_resnet8.update(arch='torchvision:resnet18')),
        r"teachers\.low_resnet8\.checkpoint = .*good\.pth' cannot be used with arch 'torchvision:resnet18'"),
}


@pytest.mark.parametrize('case', list(CASES))
def test_refused_before_the_workdir_is_claimed(case, checkpoints, tmp_path):
    mutate, message = CASES[case]
    config = toy.quickstart_config()
    mutate(config, checkpoints)
    with pytest.raises(ConfigError, match=message) as err:
        pipeline.run(config, str(tmp_path / 'run'))
    assert '\n' not in str(err.value)
    assert not (tmp_path / 'run').exists()  # nothing claimed, no zoo started


def test_a_train_limit_above_the_data_warns_and_uses_all_of_it(caplog):
    config = toy.quickstart_config()
    config.data.train_limit = 10 ** 6
    config = config_schema.resolve(config)
    with caplog.at_level('WARNING', logger='kamal_jax'):
        split = pipeline.load_split(config, config.data.train_split)
    assert len(split.images) == DIGITS_TRAIN
    assert f'data.train_limit = 1000000 is above the {DIGITS_TRAIN} images' in caplog.text


def test_a_workdir_that_is_a_file_or_cannot_be_written_is_refused(tmp_path, monkeypatch):
    path = tmp_path / 'file'
    path.write_text('mine')
    with pytest.raises(WorkdirError, match='is a file, not a folder'):
        workdir_lib.check_writable(str(path))
    assert path.read_text() == 'mine'

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(tempfile, 'TemporaryFile', read_only)
    with pytest.raises(WorkdirError, match=r'cannot be written \(Read-only file system\)'):
        workdir_lib.check_writable(str(tmp_path / 'new' / 'run'))
    with pytest.raises(WorkdirError, match='Read-only'):
        pipeline.run(toy.quickstart_config(), str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()


def test_a_nan_stop_lets_the_relaunch_retune_that_stage_only(tmp_path):
    run = str(tmp_path / 'run')
    stored = {'stage1': {'lr': 0.1, 'epochs': 3}, 'stage2': {'lr': 0.1}}
    workdir_lib.prepare(run, stored)
    retuned = {'stage1': {'lr': 0.01, 'epochs': 3}, 'stage2': {'lr': 0.1}}
    with pytest.raises(WorkdirError, match=r'stage1\.lr was 0\.1, now 0\.01'):
        workdir_lib.prepare(run, retuned)  # no stop recorded: a different config
    workdir_lib.record_stop(run, 'stage1/a', 40, ['stage1'])
    with pytest.raises(WorkdirError, match=r'stage2\.lr'):
        workdir_lib.prepare(run, {**retuned, 'stage2': {'lr': 0.5}})  # not the stage that stopped
    assert workdir_lib.prepare(run, retuned) is True
    saved = json.load(open(os.path.join(run, 'config.json')))
    assert saved['stage1']['lr'] == 0.01
    assert saved['relaunches'] == [{'stage': 'stage1/a', 'step': 40, 'changed': {'stage1.lr': [0.1, 0.01]}}]
    assert not os.path.exists(os.path.join(run, workdir_lib.STOP_FILE))
    assert workdir_lib.prepare(run, retuned) is True  # and it resumes as usual afterwards


def _launch(args, **kw):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600, **kw)


def _one_line(result, *names):
    err = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr and 'Traceback' not in result.stdout
    assert err and err[-1].startswith('error: ') and len([l for l in err if l.startswith('error')]) == 1
    for name in names:
        assert name in err[-1], err[-1]
    return err[-1]


def test_a_mistyped_config_field_is_one_line(tmp_path):
    result = _launch(['--config', 'configs/quickstart.py:tiny', '--workdir', str(tmp_path / 'run'),
                      '--config.stage1.epoch=3'])
    line = _one_line(result, '--config.stage1.epoch is not a config field', 'did you mean stage1.epochs?')
    assert len(result.stderr.strip().splitlines()) <= 3, line
    assert not (tmp_path / 'run').exists()


def test_a_config_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    args = ['--config', 'configs/quickstart.py:tiny', '--workdir', str(tmp_path / 'run'), '--config.stage1.lr=-1']
    _one_line(_launch(args), '--config.stage1.lr must be > 0, got -1.0')
    assert 'Traceback' in _launch([*args, '--debug']).stderr
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('code, words', [(errno.ENOSPC, 'No space left on device'),
                                         (errno.EACCES, 'Permission denied')])
def test_os_errors_during_a_run_are_one_line(tmp_path, code, words):
    """A full disk or a permission error mid-run (injected: CI runs as root) ends in one sentence."""
    script = f'''
import errno, os, sys
from kamal_jax import cli, pipeline
def run(*args, **kwargs):
    raise OSError({code}, os.strerror({code}), {str(tmp_path / 'run' / 'summary.json')!r})
pipeline.run = run
sys.argv = ['kamal-jax', '--config', 'configs/quickstart.py:tiny', '--workdir', {str(tmp_path / 'run')!r}]
cli.main()
'''
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    _one_line(result, words, 'summary.json')
