"""The quickstart pipeline end to end on a tiny budget, resume, export round trip, bad configs."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

import kamal_jax
from kamal_jax import pipeline, summary as summary_lib
from kamal_jax.data import datasets
from kamal_jax.tasks import ConfigError
from kamal_jax import config_schema
from kamal_jax.workdir import WorkdirError

ROOT = os.path.dirname(os.path.dirname(__file__))


def quickstart(arg='tiny', data_dir=None):
    spec = importlib.util.spec_from_file_location('quickstart', os.path.join(ROOT, 'configs', 'quickstart.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.recipe = 'paper'  # these tests look at the paper's two stages (the quickstart's default: 'product')
    if data_dir:
        config.data.data_dir = str(data_dir)
    return config


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp('quickstart')
    config = config_schema.resolve(quickstart(data_dir=base / 'tfds'))
    workdir = str(base / 'run')
    return config, workdir, pipeline.run(config, workdir)


def test_summary_has_every_model_and_task(tiny_run):
    config, workdir, summary = tiny_run
    on_disk = json.load(open(os.path.join(workdir, 'summary.json')))
    assert on_disk == json.loads(json.dumps(summary))
    assert set(summary['tasks']) == {'digits_0to4', 'digits_5to9'}
    assert summary['tasks']['digits_0to4'] == {'kind': 'multiclass', 'classes': ['0', '1', '2', '3', '4']}
    roles = {name: m['role'] for name, m in summary['models'].items()}
    assert sorted(roles.values()) == ['component', 'component', 'target'] + ['teacher'] * 4
    target = summary['models']['target']
    assert set(target['accuracy']) == {'digits_0to4', 'digits_5to9'}
    # Eight epochs per stage put the target far above chance (20%); a broken method would not.
    assert min(target["accuracy"].values()) > 0.6
    comps = sum(m['params'] for m in summary['models'].values() if m['role'] == 'component')
    assert target['params'] < comps
    for m in summary['models'].values():
        assert m['params'] > 0 and all(0.0 <= a <= 1.0 for a in m['accuracy'].values())
    assert summary['wall_seconds']['stage1'] > 0 and summary['wall_seconds']['stage2'] > 0
    table = open(os.path.join(workdir, 'summary.md')).read()
    assert '| target | target |' in table and '| digits_0to4 | low_resnet' in table
    sel = summary['models']['component_digits_0to4']['selection']['selected_fraction']
    assert set(sel) == {'low_resnet8', 'low_resnet14'} and sum(sel.values()) == pytest.approx(1.0)
    # FLOPs grow with depth and width: ResNet-14 teachers cost more than ResNet-8 ones, and the
    # target (two heads on one trunk) less than its two components together.
    flops = {name: m['flops'] for name, m in summary['models'].items()}
    assert flops['low_resnet14'] > flops['low_resnet8'] > 0
    assert flops['target'] < flops['component_digits_0to4'] + flops['component_digits_5to9']


def test_forward_flops_counts_the_convolution_exactly():
    import flax.linen as nn
    from kamal_jax.train.evaluate import forward_flops
    from kamal_jax.train.nets import Net

    class OneConv(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return {'t': nn.Conv(8, (3, 3), padding='SAME')(x).mean((1, 2))}, {}

    module = OneConv()
    variables = module.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
    net = Net('one_conv', 'one_conv', module, (0.0,) * 3, (1.0,) * 3)
    # 3x3 SAME on 8x8: 22 valid taps per axis (2 + 6 x 3 + 2), so 22^2 x 3 in x 8 out multiply-adds
    # (2 FLOPs each), plus 8x8x8 bias adds, 8x8x8 adds of the mean; normalisation 2 x 8x8x3.
    expected = 2 * 22 * 22 * 3 * 8 + 8 * 8 * 8 + 8 * 8 * 8 + 2 * 8 * 8 * 3
    assert forward_flops(net, variables, (8, 8, 3)) == pytest.approx(expected, rel=0.02)


def test_baselines_may_be_added_to_a_finished_workdir(tmp_path):
    from kamal_jax import workdir as workdir_lib
    run = str(tmp_path / 'run')
    config = {'seed': 0, 'stage2': {'lr': 0.1}, 'baselines': []}
    assert workdir_lib.prepare(run, config) is False
    assert workdir_lib.prepare(run, {**config, 'baselines': ['supervised']}) is True  # resumes
    assert json.load(open(os.path.join(run, 'config.json')))['baselines'] == ['supervised']
    with pytest.raises(WorkdirError, match=r'stage2\.lr'):
        workdir_lib.prepare(run, {**config, 'stage2': {'lr': 0.2}})


def test_log_and_checkpoint_cadence_may_change_between_runs(tmp_path):
    """How often a run logs or saves changes nothing it computes; a real change is still refused."""
    from kamal_jax import workdir as workdir_lib
    run = str(tmp_path / 'run')
    config = {'log_every': 50, 'stage1': {'lr': 0.1, 'checkpoint_every': 200}}
    assert workdir_lib.prepare(run, config) is False
    later = {'log_every': 10, 'stage1': {'lr': 0.1, 'checkpoint_every': 1000, 'checkpoint_min_interval_s': 60.0}}
    assert workdir_lib.prepare(run, later) is True
    assert json.load(open(os.path.join(run, 'config.json')))['stage1']['checkpoint_every'] == 1000
    with pytest.raises(WorkdirError, match=r'stage1\.lr'):
        workdir_lib.prepare(run, {**later, 'stage1': {**later['stage1'], 'lr': 0.2}})
    # Processes of one run must still agree on them (each makes the same calls into orbax).
    assert workdir_lib.first_difference(config, later) == 'log_every was 50, now 10'


def test_fields_added_later_resume_at_their_default(tmp_path):
    """A run stored before `data.views` and the cache switches existed resumes under today's configs."""
    from kamal_jax import workdir as workdir_lib
    run = str(tmp_path / 'run')
    old = {'data': {'crop_padding': 2}, 'stage1': {'lr': 0.1}, 'stage2': {'lr': 0.1}}
    assert workdir_lib.prepare(run, old) is False
    today = {'data': {'crop_padding': 2, 'views': 0},
             'stage1': {'lr': 0.1, 'teacher_cache': False, 'cache_dtype': 'float16', 'cache_limit_gb': 8.0},
             'stage2': {'lr': 0.1, 'component_cache': False, 'cache_dtype': 'float16', 'cache_limit_gb': 8.0}}
    assert workdir_lib.prepare(run, today) is True
    with pytest.raises(WorkdirError, match=r'data\.views was 0, now 4'):
        workdir_lib.prepare(run, {**today, 'data': {'crop_padding': 2, 'views': 4}})
    with pytest.raises(WorkdirError, match=r'stage1\.teacher_cache'):
        workdir_lib.prepare(run, {**today, 'stage1': {**today['stage1'], 'teacher_cache': True}})


def test_run_stored_before_recipes_and_selectors_resumes_as_paper(tmp_path):
    """`stage1.mode` became `stage1.selector` and `recipe` was added: an old run resumes as 'paper'."""
    from kamal_jax import workdir as workdir_lib
    run = str(tmp_path / 'run')
    assert workdir_lib.prepare(run, {'stage1': {'mode': 'select', 'selection': 'online'}}) is False
    today = {'recipe': 'paper', 'stage1': {'selector': 'least_entropy', 'selection': 'online'}}
    assert workdir_lib.prepare(run, today) is True
    with pytest.raises(WorkdirError, match=r"recipe was 'paper', now 'average'"):
        workdir_lib.prepare(run, {**today, 'recipe': 'average'})
    with pytest.raises(WorkdirError, match=r"stage1\.selector was 'least_entropy', now 'random'"):
        workdir_lib.prepare(run, {**today, 'stage1': {'selector': 'random', 'selection': 'online'}})
    other = str(tmp_path / 'other')
    workdir_lib.prepare(other, {'stage1': {'mode': 'random', 'selection': 'online'}})
    with pytest.raises(WorkdirError, match=r"stage1\.selector was 'random', now 'least_entropy'"):
        workdir_lib.prepare(other, today)


def test_load_student_round_trip(tiny_run):
    config, workdir, summary = tiny_run
    student = kamal_jax.load_student(os.path.join(workdir, 'export'))
    assert [h[0] for h in student.card['heads']] == ['digits_0to4', 'digits_5to9']
    test = datasets.load('kamal_digits', 'test', data_dir=config.data.data_dir, image_size=(16, 16))
    probs = student.predict(test.images.astype(np.float32) / 255.0)
    names = test.label_names['label']
    for task, info in student.card['tasks'].items():
        labels = np.array([names[i] for i in test.labels['label']])
        valid = np.isin(labels, info['classes'])
        target = np.array([info['classes'].index(l) for l in labels[valid]])
        acc = float(np.mean(np.argmax(probs[task][valid], -1) == target))
        assert acc == pytest.approx(summary['models']['target']['accuracy'][task], abs=1e-6)


def test_summary_shows_the_main_result_before_the_baselines_finish(tiny_run, tmp_path, monkeypatch):
    """A run with baselines writes its summary after stage 2, marking what is still training."""
    import shutil
    from kamal_jax import recipes
    config, workdir, summary = tiny_run
    run = str(tmp_path / 'run')
    shutil.copytree(workdir, run)
    config = quickstart(data_dir=config.data.data_dir)
    config.baselines = ('supervised',)

    class Interrupted:
        def run(self, *args):
            raise KeyboardInterrupt
    monkeypatch.setitem(recipes.RECIPES, 'supervised', Interrupted())
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config, run)  # the stages resume as complete, then the baseline is stopped
    partial = json.load(open(os.path.join(run, 'summary.json')))
    assert partial['pending_baselines'] == ['supervised']
    assert partial['models']['target']['accuracy'] == pytest.approx(summary['models']['target']['accuracy'])
    assert not any(m['role'] == 'baseline' for m in partial['models'].values())
    assert 'Still training: supervised' in open(os.path.join(run, 'summary.md')).read()
    assert 'Still training' not in open(os.path.join(workdir, 'summary.md')).read()


def test_a_resumed_net_keeps_its_training_record_and_a_retrained_one_gets_this_launchs():
    previous = {'models': {'component_a': {'final_train_metrics': {'loss': 0.5}},
                           'target': {'final_train_metrics': {'loss': 0.25}}},
                'wall_seconds': {'stage1': 100.0, 'stage2': 50.0}}
    both_resumed = {'component_a': {'role': 'component', 'final_train_metrics': {}},
                    'target': {'role': 'target', 'final_train_metrics': {}}}
    entries, wall = summary_lib.keep_finished(previous, both_resumed, {'stage1': 2.0, 'stage2': 1.0})
    assert entries['target']['final_train_metrics'] == {'loss': 0.25}
    assert wall == {'stage1': 100.0, 'stage2': 50.0}
    assert both_resumed['target']['final_train_metrics'] == {}  # the caller's entries are not changed
    # stage 2 trained again in this launch: its metrics and both stages' seconds are this launch's
    partly = {'component_a': {'final_train_metrics': {}}, 'target': {'final_train_metrics': {'loss': 0.125}}}
    entries, wall = summary_lib.keep_finished(previous, partly, {'stage1': 2.0, 'stage2': 40.0})
    assert entries['component_a']['final_train_metrics'] == {'loss': 0.5}
    assert entries['target']['final_train_metrics'] == {'loss': 0.125}
    assert wall == {'stage1': 2.0, 'stage2': 40.0}
    # nothing recorded before (a first launch, or --overwrite): this launch's figures
    assert summary_lib.keep_finished({}, both_resumed, {'stage1': 2.0}) == (both_resumed, {'stage1': 2.0})


def test_rerun_resumes_and_different_config_is_refused(tiny_run):
    config, workdir, summary = tiny_run
    again = pipeline.run(config, workdir)  # every stage is complete: nothing retrains
    for name, m in summary['models'].items():
        assert again['models'][name]['accuracy'] == pytest.approx(m['accuracy'])
        # what the first launch measured while training is kept, not replaced by this launch's
        assert again['models'][name].get('final_train_metrics') == m.get('final_train_metrics')
    assert summary['models']['target']['final_train_metrics']['loss'] > 0
    assert again['wall_seconds'] == summary['wall_seconds']
    changed = quickstart(data_dir=config.data.data_dir)
    changed.stage2.lr = 0.5
    with pytest.raises(WorkdirError, match=r'stage2\.lr'):
        pipeline.run(changed, workdir)


@pytest.mark.parametrize('mutate, field', [
    (lambda c: setattr(c, 'target_tasks', ('digits_0to4', 'letters')), r"target_tasks names 'letters'"),
    (lambda c: c.teachers.low_resnet8.heads.digits_0to4.update({'logits': (4, 9)}),
     r'teachers\.low_resnet8\.heads\.digits_0to4\.logits = \[4, 9\) runs past'),
    (lambda c: c.teachers.high_resnet8.heads.digits_5to9.update({'classes': ['5', '6', '7', '8', 'nine']}),
     r'teachers\.high_resnet8\.heads\.digits_5to9 declares task'),
    (lambda c: c.stage1.update({'arch': 'resnet7'}), r"stage1\.arch = 'resnet7' is unknown"),
    (lambda c: c.stage1.update({'selection': 'sometimes'}), r'stage1\.selection'),
    (lambda c: c.stage1.update({'selector': 'oracle'}), r"stage1\.selector = 'oracle' is unknown"),
    (lambda c: setattr(c, 'recipe', 'oracle'), r"recipe = 'oracle' is unknown"),
    (lambda c: setattr(c, 'eval_every', -1), r'eval_every must be >= 0, got -1'),
])
def test_bad_config_is_refused_before_work(tmp_path, mutate, field):
    config = quickstart()
    mutate(config)
    with pytest.raises(ConfigError, match=field):
        pipeline.run(config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()  # refused before the workdir was touched


def test_empty_split_and_foreign_workdir_are_refused(tmp_path):
    config = quickstart(data_dir=tmp_path / 'tfds')
    config.data.eval_split = 'test[:0]'
    with pytest.raises(ConfigError, match=r"data\.eval_split = 'test\[:0\]'"):
        pipeline.run(config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()  # a fixed config may reuse the workdir
    foreign = tmp_path / 'mine'
    foreign.mkdir()
    (foreign / 'notes.txt').write_text('keep me')
    with pytest.raises(WorkdirError, match='--overwrite'):
        pipeline.run(quickstart(data_dir=tmp_path / 'tfds'), str(foreign))
    assert (foreign / 'notes.txt').read_text() == 'keep me'


def test_benchmark_record_records_the_run(tiny_run, tmp_path, capsys):
    from kamal_jax.benchmarks import record
    config, workdir, summary = tiny_run
    out = tmp_path / 'results.json'
    assert record.main(['--workdir', workdir, '--out', str(out)]) == 0
    result = json.load(open(out))
    # (an earlier test may have resumed the run, which rewrites the summary's wall times)
    assert result['summary'] == json.load(open(os.path.join(workdir, 'summary.json')))
    assert result['summary']['models'].keys() == summary['models'].keys()
    assert result['config']['stage1']['epochs'] == config.stage1.epochs
    assert set(result['teacher_cards']) == {'low_resnet8', 'low_resnet14', 'high_resnet8', 'high_resnet14'}
    assert '| target | target |' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='config.json is missing'):
        record.main(['--workdir', str(tmp_path)])


def _tensorboard_scalars(logdir):
    """tag -> {step: value}, read back from the TensorBoard event files of one run directory."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()['tensors']:  # (the hparams are tensors too, of another shape)
        values = {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in acc.Tensors(tag)}
        if all(v.ndim == 0 and v.dtype.kind == 'f' for v in values.values()):
            scalars[tag] = {step: float(v) for step, v in values.items()}
    return scalars


def test_tensorboard_holds_losses_selection_learning_rate_and_eval(tiny_run):
    import math
    config, workdir, summary = tiny_run
    total = summary['data']['train'] // config.stage1.batch_size * config.stage1.epochs
    logged = sorted({*range(config.log_every, total + 1, config.log_every), total})
    evals = sorted({*range(config.eval_every, total + 1, config.eval_every), total})
    s1 = _tensorboard_scalars(os.path.join(workdir, 'tb', 'stage1', 'digits_0to4'))
    assert sorted(s1['train/loss']) == logged and sorted(s1['train/feature']) == logged
    for step in logged:
        assert s1['selected/low_resnet8'][step] + s1['selected/low_resnet14'][step] == pytest.approx(1.0, abs=1e-5)
    lr = config.stage1.lr  # cosine over the stage; the window's last update used count step - 1
    for step in (config.log_every, total):
        expected = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / total))
        assert s1['lr/net'][step] == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert sorted(s1['eval/digits_0to4']) == evals  # the held-out split has < 1000 images: all of it
    assert s1['eval/digits_0to4'][total] == pytest.approx(
        summary['models']['component_digits_0to4']['accuracy']['digits_0to4'], abs=1e-6)
    s2 = _tensorboard_scalars(os.path.join(workdir, 'tb', 'stage2'))
    for task in ('digits_0to4', 'digits_5to9'):
        assert s2[f'eval/{task}'][total] == pytest.approx(summary['models']['target']['accuracy'][task], abs=1e-6)
    assert min(s2['images_per_second'].values()) > 0 and sorted(s2['train/loss']) == logged
    hparams = json.load(open(os.path.join(workdir, 'tb', 'stage2', 'hparams.json')))
    assert hparams['stage2.lr'] == config.stage2.lr and hparams['eval_every'] == config.eval_every


def test_plots_draws_every_plot(tiny_run):
    import matplotlib.image
    from kamal_jax import plots
    config, workdir, summary = tiny_run
    out = os.path.join(workdir, 'report')
    assert os.path.isfile(os.path.join(out, 'index.html'))  # the run wrote it at its end
    assert plots.main([workdir]) == 0
    expected = {'curves_stage1_digits_0to4.png', 'curves_stage1_digits_5to9.png', 'curves_stage2.png',
                'selection_stage1_digits_0to4.png', 'selection_stage1_digits_5to9.png',
                'teachers_digits_0to4.png', 'teachers_digits_5to9.png'}
    assert {f for f in os.listdir(out) if f.endswith('.png')} == expected
    page = open(os.path.join(out, 'index.html')).read()
    for name in expected:
        image = matplotlib.image.imread(os.path.join(out, name))
        assert image.ndim == 3 and image.shape[0] >= 200 and image.std() > 0.01  # decodes, not blank
        assert f'src="{name}"' in page
    target = summary['models']['target']['accuracy']['digits_0to4']
    assert f'<td>{100 * target:.1f}</td>' in page and '<td>component_digits_5to9</td>' in page
