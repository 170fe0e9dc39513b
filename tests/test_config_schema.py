"""One schema (kamal_jax.config_schema): a short user config runs, every mistake is one sentence,
nothing below the door reads a default of its own, and docs/CONFIG.md is the schema's."""
import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import toy
from kamal_jax import config_schema, pipeline, workdir as workdir_lib
from kamal_jax.tasks import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_CONFIG = '''\
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.data = dict(name='kamal_digits', image_size=(16, 16))
    mine = dict(arch='auto', mean=(0.3,) * 3, std=(0.4,) * 3)
    low = dict(low=dict(classes=list('01234'), logits=(0, 5)))
    high = dict(high=dict(classes=list('56789'), logits=(2, 7)))
    c.teachers = dict(low=dict(mine, checkpoint=LOW, heads=low),
                      high=dict(mine, checkpoint=HIGH, heads=high))
    c.target_tasks = ('low', 'high')
    return c
'''


@pytest.fixture(scope='module')
def user_files(tmp_path_factory):
    """Two teacher checkpoints of the user's own (7-class cifar_resnet8s) and a 13-line config."""
    out = tmp_path_factory.mktemp('mine')
    code = f'''
import torch
from kamal_jax import torch_models
for seed, name in enumerate(('low', 'high')):
    torch.manual_seed(seed)
    torch.save(torch_models.build('cifar_resnet8', 7).state_dict(), {str(out)!r} + f'/{{name}}.pth')
'''
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)
    text = USER_CONFIG.replace('LOW', repr(str(out / 'low.pth'))).replace('HIGH', repr(str(out / 'high.pth')))
    (out / 'mine.py').write_text(text)
    return out


def _launch(args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=900)


TINY = ['--config.stage1.epochs=1', '--config.stage2.epochs=1', '--config.stage2.arch=cifar_resnet8',
        '--config.data.train_limit=128', '--config.data.eval_limit=64', '--config.eval_every=0']


def test_a_short_config_of_ones_own_runs_from_anywhere_and_exports(user_files, tmp_path):
    lines = USER_CONFIG.splitlines()
    assert len(lines) <= 15 and max(map(len, lines)) <= 100
    assert 'kamal_jax' not in USER_CONFIG
    result = _launch(['--config', str(user_files / 'mine.py'), '--workdir', str(tmp_path / 'run'), *TINY],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = json.load(open(tmp_path / 'run' / 'config.json'))
    assert stored['recipe'] == 'product' and stored['stage1']['lr'] == 1e-3  # the resolved config
    assert stored['teachers']['high']['heads']['high']['kind'] == 'multiclass'
    from kamal_jax import load_student
    student = load_student(str(tmp_path / 'run' / 'export'))
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    out = student.predict(images / 255.0)
    assert set(out) == {'low', 'high'} and out['low'].shape == (4, 5) and out['high'].shape == (4, 5)
    np.testing.assert_allclose(out['low'].sum(-1), 1.0, rtol=1e-5)


def _refused(result, *names):
    err = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr + result.stdout
    assert 1 <= len(err) <= 3 and err[-1].startswith('error: '), result.stderr
    for name in names:
        assert name in err[-1], err[-1]


@pytest.mark.parametrize('config_text, overrides, names', [
    ('c.target_tasks = ()\ndel c.target_tasks', [], ['target_tasks is missing']),
    ("del c.teachers['low']['mean']", [], ['teachers.low.mean is missing']),
    ("del c.data['name']", [], ['data.name is missing']),
    ('', ['--config.stage1.lrr=1'], ['--config.stage1.lrr is not a config field', 'stage1.lr?']),
    ("c.data['flipp'] = True", [], ['data.flipp is not a config field', 'data.flip?']),
    ('', ['--config.stage1.lr=abc'], ['--config.stage1.lr=abc is not a float']),
    ('', ['--config.stage1.lr=-1'], ['--config.stage1.lr must be > 0, got -1']),
    ('', ['--config.data.streaming=sometimes'], ['data.streaming must be one of']),
    ("c.stage2 = dict(epochs='3')", [], ['stage2.epochs must be a whole number']),
    ('c = (', [], ['mine.py', 'line 13']),
    ('raise KeyError("boom")', [], ['mine.py', 'line 13', 'KeyError']),
])
def test_every_mistake_is_one_sentence_naming_the_field(user_files, tmp_path, config_text, overrides, names):
    text = (user_files / 'mine.py').read_text().replace('    return c', '    ' + config_text.replace(
        '\n', '\n    ') + '\n    return c')
    (tmp_path / 'mine.py').write_text(text)
    result = _launch(['--config', str(tmp_path / 'mine.py'), '--workdir', str(tmp_path / 'run'), *overrides])
    _refused(result, *names)
    assert not (tmp_path / 'run').exists()


def test_a_missing_config_file_is_one_sentence(tmp_path):
    _refused(_launch(['--config', str(tmp_path / 'absent.py'), '--workdir', str(tmp_path / 'run')]),
             'absent.py', 'does not exist')
    assert not (tmp_path / 'run').exists()


def test_a_field_the_recipe_never_reads_is_one_warning_and_print_config_marks_defaults(user_files):
    result = _launch(['--config', str(user_files / 'mine.py'), '--print_config', '--config.stage1.lr=1e9',
                      '--config.stage2.lr=3e-3'])
    assert result.returncode == 0, result.stderr
    warnings = [l for l in result.stderr.splitlines() if l.startswith('warning:')]
    assert warnings == ["warning: --config.stage1.lr is set, but recipe 'product' never reads it."]
    shown = dict(l.split(' = ', 1) for l in result.stdout.splitlines())
    assert shown['stage1.lr'] == '1000000000.0' and shown['stage2.lr'] == '0.003'
    assert shown['stage2.epochs'] == '30  # default' and shown['data.name'] == "'kamal_digits'"
    paper = _launch(['--config', str(user_files / 'mine.py'), '--print_config', '--config.recipe=paper',
                     '--config.stage1.lr=1e-2'])
    assert paper.returncode == 0 and 'warning' not in paper.stderr


def test_the_resolved_config_is_read_only_and_refuses_get():
    config = config_schema.resolve(toy.quickstart_config())
    with pytest.raises(AttributeError, match='no .get'):
        config.get('seed')
    assert not hasattr(config.stage1, 'get')
    with pytest.raises(TypeError, match='read-only'):
        config.seed = 3
    with pytest.raises(AttributeError, match='stage1.lrr is not a config field'):
        config.stage1.lrr
    assert config.stage1.checkpoint_every == 200 and config.stage2.checkpoint_min_interval_s == 60.0
    assert config_schema.resolve(config) == config  # resolving twice changes nothing


_CONFIG_NAMES = {'config', 'cfg', 'c', 'd', 'data', 's1', 'tc', 'hc', 'stage1', 'stage2', 'zoo', 'overrides'}


def _receiver(node) -> str:
    while isinstance(node, ast.Attribute):
        if node.attr in ('config', 'data', 'stage1', 'stage2', 'baseline_stage', 'zoo', 'teachers'):
            return node.attr
        node = node.value
    return node.id if isinstance(node, ast.Name) else ''


def test_no_code_outside_the_schema_guesses_a_config_default():
    """No `.get(` on a config object (by its name) anywhere in the package but config_schema.py."""
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, 'kamal_jax')):
        for name in files:
            path = os.path.join(folder, name)
            where = path.replace(os.sep, '/')
            if not name.endswith('.py') or name == 'config_schema.py' or '/zoo/' in where or '/porting/' in where:
                continue  # the zoo's own JSON settings (its own process); porting reads checkpoints' metadata
            for node in ast.walk(ast.parse(open(path).read())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'get'
                        and _receiver(node.func.value) in _CONFIG_NAMES):
                    found.append(f'{os.path.relpath(path, ROOT)}:{node.lineno}')
    assert not found, found


def test_docs_config_md_is_generated_from_the_schema():
    with open(os.path.join(ROOT, 'docs', 'CONFIG.md')) as f:
        assert f.read() == config_schema.reference(), 'run: python -m kamal_jax.config_schema > docs/CONFIG.md'
    documented = {line.split('`')[1] for line in config_schema.reference().splitlines() if line.startswith('| `')}
    assert {'data.name', 'teachers.NAME.mean', 'teachers.NAME.heads.TASK.logits', 'stage1.selector',
            'baseline_stage.epochs', 'recipe'} <= documented


def test_a_workdir_stored_before_recipes_resumes_as_the_paper(tmp_path):
    """A config stored without `recipe` (and without later fields) ran the paper's two stages; the
    same config file relaunched resumes as that, and an explicit recipe is a different run."""
    user = toy.quickstart_config()
    del user['recipe']
    stored = user.to_dict()
    stored['stage1']['mode'] = 'select'  # before selectors
    os.makedirs(tmp_path / 'run')
    (tmp_path / 'run' / 'config.json').write_text(json.dumps(stored))
    resolved = pipeline.resolve(user, str(tmp_path / 'run'))
    assert resolved.recipe == 'paper' and 'recipe' not in resolved.defaulted
    assert workdir_lib.prepare(str(tmp_path / 'run'), resolved.to_dict()) is True
    assert json.load(open(tmp_path / 'run' / 'config.json'))['recipe'] == 'paper'
    again = pipeline.resolve(user, str(tmp_path / 'run'))  # the rewritten, resolved form: still the paper
    assert again.recipe == 'paper' and workdir_lib.prepare(str(tmp_path / 'run'), again.to_dict()) is True
    assert pipeline.resolve(user, str(tmp_path / 'fresh')).recipe == 'product'  # a new workdir: the default
    user.recipe = 'product'
    with pytest.raises(workdir_lib.WorkdirError, match="recipe was 'paper', now 'product'"):
        workdir_lib.prepare(str(tmp_path / 'run'), pipeline.resolve(user, str(tmp_path / 'run')).to_dict())


def test_a_run_stored_while_the_logits_cache_was_off_by_default_resumes_live(tmp_path):
    """`baseline_stage.logits_cache` became 'auto' by default: a run stored with 'off' (written out
    while that was the default) resumes with the teachers live; a new workdir takes 'auto'."""
    user = toy.quickstart_config()
    resolved = config_schema.resolve(user)
    assert resolved.baseline_stage.logits_cache == 'auto' and 'baseline_stage.logits_cache' in resolved.defaulted
    stored = resolved.to_dict()
    stored['baseline_stage']['logits_cache'] = 'off'
    os.makedirs(tmp_path / 'run')
    (tmp_path / 'run' / 'config.json').write_text(json.dumps(stored))
    again = pipeline.resolve(user, str(tmp_path / 'run'))
    assert again.baseline_stage.logits_cache == 'off'
    assert workdir_lib.prepare(str(tmp_path / 'run'), again.to_dict()) is True  # the same run: it resumes
    assert pipeline.resolve(user, str(tmp_path / 'fresh')).baseline_stage.logits_cache == 'auto'
    assert 'baseline_stage' not in user
    user.baseline_stage = dict(logits_cache='on')  # set by the user: a different run, refused in one sentence
    with pytest.raises(workdir_lib.WorkdirError, match="logits_cache was 'off', now 'on'"):
        workdir_lib.prepare(str(tmp_path / 'run'), pipeline.resolve(user, str(tmp_path / 'run')).to_dict())


def test_migrated_and_one_stage_fields():
    old = toy.quickstart_config()
    old.stage1.mode = 'average'
    assert config_schema.resolve(old).stage1.selector == 'uniform'
    config = config_schema.resolve(toy.quickstart_config(), {'baseline_stage.temperature': '2'})
    budget = config_schema.one_stage_budget(config)
    assert budget.epochs == 2 * 8 + 8 and budget.temperature == 2.0 and budget.lr == config.stage2.lr
    inside = config_schema.resolve(toy.quickstart_config(), {'zoo.teachers.low_resnet8.epochs': '1'})
    assert inside.zoo.teachers.low_resnet8.epochs == 1 and inside.zoo.teachers.high_resnet8.epochs == 6
    with pytest.raises(ConfigError, match='baseline_stage.epochs must be >= 1'):
        config_schema.resolve(toy.quickstart_config(), {'baseline_stage.epochs': '0'})
