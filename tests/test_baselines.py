"""Recipes as baselines: their pure losses, every recipe through `run_recipes` on tiny random nets, config checks."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy
from kamal_jax import config_schema, losses, models, pipeline, recipes, selection
from kamal_jax.data.datasets import ArraySplit
from kamal_jax.tasks import ConfigError, Plan, Task, TeacherSpec
from kamal_jax.train import sharding
from kamal_jax.train.augment import to_unit
from kamal_jax.train.nets import Net
from kamal_jax.train.objectives import Distill, LossWeights, make_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = [f'c{i}' for i in range(7)]
NAMES = ('average', 'random', 'logits_only', 'one_stage', 'supervised')  # the benchmarks' baselines


def _target(tasks=(('a', 5),), arch='cifar_resnet8'):
    return Net('target', arch, models.multihead(arch, list(tasks)), toy.MEAN, toy.STD)


def _init(net, bridges=None, seed=0):
    variables = net.module.init(jax.random.key(seed), jnp.zeros((1, 12, 12, 3)))
    return {'net': variables['params'], 'bridges': bridges or {}}, variables['batch_stats']


def test_average_distils_towards_the_mean_of_teacher_probabilities():
    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    t2, v2 = toy.teacher('t2', 'cifar_resnet8', 7, {'a': (2, 7)}, seed=2)
    # Make the teachers confident and different, so that averaging probabilities and averaging
    # logits give clearly different targets.
    v1 = {**v1, 'params': {**v1['params'], 'fc': jax.tree.map(lambda x: 30 * x, v1['params']['fc'])}}
    target = _target()
    temperature = 2.0
    stage = Distill(target, (('a', (t1, t2)),), {}, LossWeights(temperature=temperature),
                    combine=selection.COMBINERS['average'])
    params, stats = _init(target)
    x = to_unit(jnp.asarray(toy.images(8)))
    frozen = {'t1': v1, 't2': v2}
    loss, (_, metrics) = jax.jit(stage.loss)(params, stats, frozen, x, {})

    (s_logits, _), _ = jax.jit(lambda v, x: target.module.apply(v, target.prepare(x), train=True,
                                                                mutable=['batch_stats']))(
        {'params': params['net'], 'batch_stats': stats}, x)
    s = np.asarray(s_logits['a'], np.float64) / temperature
    log_q = s - np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True)) - s.max(-1, keepdims=True)

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    t_logits = [np.asarray(jax.jit(t.apply_eval)(v, x)[0]['a'], np.float64) for t, v in ((t1, v1), (t2, v2))]
    p = np.mean([softmax(l / temperature) for l in t_logits], axis=0)
    expected = np.mean(np.sum(p * (np.log(p) - log_q), -1)) * temperature ** 2
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    np.testing.assert_allclose(float(metrics['kl/a']), expected, rtol=1e-4)
    # Not the distillation from the averaged logits (a different, wrong target here).
    p_wrong = softmax(np.mean(t_logits, axis=0) / temperature)
    wrong = np.mean(np.sum(p_wrong * (np.log(p_wrong) - log_q), -1)) * temperature ** 2
    assert abs(wrong - expected) > 1e-2 * abs(expected)
    np.testing.assert_allclose(losses.average_probabilities([jnp.asarray(l) for l in t_logits], temperature),
                               p, rtol=1e-5)


def test_product_distils_towards_the_normalised_product_of_teacher_probabilities():
    """'product': KL from softmax(mean logits / T), which is the normalised geometric mean of the
    teachers' softmax(logits / T), and not their arithmetic mean ('average')."""
    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    t2, v2 = toy.teacher('t2', 'cifar_resnet8', 7, {'a': (2, 7)}, seed=2)
    v1 = {**v1, 'params': {**v1['params'], 'fc': jax.tree.map(lambda x: 30 * x, v1['params']['fc'])}}
    target, temperature = _target(), 2.0
    x = to_unit(jnp.asarray(toy.images(8)))
    frozen = {'t1': v1, 't2': v2}
    params, stats = _init(target)
    got = {}
    for name in ('product', 'average'):
        stage = Distill(target, (('a', (t1, t2)),), {}, LossWeights(temperature=temperature),
                        combine=selection.COMBINERS[name])
        got[name] = float(jax.jit(stage.loss)(params, stats, frozen, x, {})[0])
    (s_logits, _), _ = jax.jit(lambda v, x: target.module.apply(v, target.prepare(x), train=True,
                                                                mutable=['batch_stats']))(
        {'params': params['net'], 'batch_stats': stats}, x)
    t_logits = [np.asarray(jax.jit(t.apply_eval)(v, x)[0]['a'], np.float64) for t, v in ((t1, v1), (t2, v2))]

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    geometric = np.exp(np.mean([log_softmax(l / temperature) for l in t_logits], axis=0))
    p = geometric / geometric.sum(-1, keepdims=True)
    log_q = log_softmax(np.asarray(s_logits['a'], np.float64) / temperature)
    expected = np.mean(np.sum(p * (np.log(p) - log_q), -1)) * temperature ** 2
    np.testing.assert_allclose(got['product'], expected, rtol=1e-4)
    assert abs(got['product'] - got['average']) > 1e-2 * abs(expected)
    np.testing.assert_allclose(losses.normalised_product([jnp.asarray(l) for l in t_logits], temperature), p,
                               rtol=1e-5)


def test_one_stage_takes_signal_only_from_the_unambiguous_teacher():
    flat, flat_vars = toy.uniform_teacher('flat', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    good, good_vars = toy.teacher('good', 'cifar_resnet14', 7, {'a': (2, 7), 'b': (0, 2)}, seed=2)
    target = _target((('a', 5), ('b', 2)))
    groups = (('a', (flat, good)), ('b', (good,)))
    pairs = {task: {t.name: make_pairs(t, target, None) for t in ts} for task, ts in groups}
    stage = Distill(target, groups, pairs, LossWeights())
    params, stats = _init(target, stage.init_bridges(jax.random.key(3)))
    x = to_unit(jnp.asarray(toy.images(8)))
    frozen = {'flat': flat_vars, 'good': good_vars}
    (loss, (_, m)), grads = jax.jit(jax.value_and_grad(stage.loss, has_aux=True))(params, stats, frozen, x, {})
    assert np.isfinite(float(loss))
    assert float(m['selected/a/good']) == 1.0 and float(m['selected/a/flat']) == 0.0
    assert float(m['selected/b/good']) == 1.0
    # The flat teacher's student-side bridges get no gradient; the good teacher's do, per task.
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads['bridges']['a']['flat']['student']))
    for task in ('a', 'b'):
        assert float(jnp.abs(grads['bridges'][task]['good']['student']['stage3__stage3']['kernel']).max()) > 0
    # Both heads learn: each gets gradient from its own task's logit term.
    assert float(jnp.abs(grads['net']['head_a']['kernel']).max()) > 0
    assert float(jnp.abs(grads['net']['head_b']['kernel']).max()) > 0

    # Task 'a' alone from the good teacher alone gives the same 'a' terms: the flat teacher adds
    # only its bridges' weight-norm term, never signal.
    groups_good = (('a', (good,)), ('b', (good,)))
    alone = Distill(target, groups_good, {t: {'good': pairs[t]['good']} for t in ('a', 'b')},
                               LossWeights())
    alone_params = {'net': params['net'], 'bridges': {t: {'good': params['bridges'][t]['good']} for t in ('a', 'b')}}
    loss_alone, (_, m_alone) = jax.jit(alone.loss)(alone_params, stats, {'good': good_vars}, x, {})
    wn_flat = sum(losses.weight_norm_penalty(b['kernel']) for b in params['bridges']['a']['flat']['teacher'].values())
    np.testing.assert_allclose(float(loss), float(loss_alone + wn_flat), rtol=1e-5)
    for k in ('feature/a', 'logit/a', 'feature/b', 'logit/b'):
        np.testing.assert_allclose(float(m[k]), float(m_alone[k]), rtol=1e-5)


def test_one_stage_with_one_task_is_stage1_on_the_target():
    """One task, one target forward: the loss equals stage 1's with the target as the student."""
    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    t2, v2 = toy.teacher('t2', 'cifar_resnet14', 7, {'a': (2, 7)}, seed=2)
    s1 = toy.stage1([t1, t2])
    comp = s1.student
    one = Distill(comp, (('a', (t1, t2)),), s1.pairs, LossWeights())
    params, stats = _init(comp, s1.init_bridges(jax.random.key(4)))
    x = to_unit(jnp.asarray(toy.images(8)))
    frozen = {'t1': v1, 't2': v2}
    loss1, (_, m1) = jax.jit(s1.loss)(params, stats, frozen, x, {})
    loss2, (_, m2) = jax.jit(one.loss)({'net': params['net'], 'bridges': {'a': params['bridges']}}, stats, frozen,
                                       x, {})
    np.testing.assert_allclose(float(loss1), float(loss2), rtol=1e-5)
    assert float(m1['selected/t1']) == float(m2['selected/a/t1'])


def test_task_label_arrays_mark_other_classes_minus_one():
    plan = Plan({'a': Task('a', 'multiclass', ('c3', 'c1'))}, (), ('a',))
    split = ArraySplit(np.zeros((5, 2, 2, 3), np.uint8), {'label': np.array([0, 1, 3, 6, 1])},
                       {'label': CLASSES}, 'toy', 'train')
    np.testing.assert_array_equal(recipes.task_label_arrays(plan, split)['a'], [-1, 1, 0, -1, 1])
    with pytest.raises(ConfigError, match="reads label 'label'"):
        recipes.task_label_arrays(plan, ArraySplit(split.images, {}, {}, 'toy', 'train'))


def test_random_draws_teachers_the_least_ambiguous_rule_would_not():
    config = _config(NAMES)
    changed = recipes.RECIPES['random'].config(config)
    assert changed.stage1.selector == 'random' and config.stage1.selector == 'least_entropy'  # main config untouched
    only_logits = recipes.RECIPES['logits_only'].config(config)
    assert only_logits.stage1.feature_weight == 0.0 and only_logits.stage2.feature_weight == 0.0
    flat, flat_vars = toy.uniform_teacher('flat', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    good, good_vars = toy.teacher('good', 'cifar_resnet8', 7, {'a': (2, 7)}, seed=2)
    stage = toy.stage1([flat, good], selector=changed.stage1.selector)
    params, stats = _init(stage.student, stage.init_bridges(jax.random.key(1)))
    x = to_unit(jnp.asarray(toy.images(64)))
    _, (_, m) = jax.jit(stage.loss)(params, stats, {'flat': flat_vars, 'good': good_vars}, x, {},
                                    jax.random.key(0))
    assert 0.3 < float(m['selected/flat']) < 0.7  # least ambiguous would give 0


# ----------------------------------------------------------------------------- run_all end to end

def _config(names):
    return toy.run_config(
        data=dict(mean=toy.MEAN, std=toy.STD, crop_padding=1, flip=True),
        stage1=toy.stage_config(epochs=1, selection='online', selector='least_entropy', checkpoint_every=100),
        stage2=toy.stage_config(epochs=1, widths=(8, 8, 16, 32), checkpoint_every=100), baselines=names,
        baseline_stage=dict(epochs=2, temperature=2.0), eval_batch_size=16, log_every=1)


@pytest.fixture(scope='module')
def run_all(tmp_path_factory):
    flat, flat_vars = toy.uniform_teacher('flat', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    good, good_vars = toy.teacher('good', 'cifar_resnet8', 7, {'a': (2, 7)}, seed=2)
    task = Task('a', 'multiclass', tuple(CLASSES[:5]))
    specs = tuple(TeacherSpec(t.name, t.arch, 'unused', t.heads) for t in (flat, good))
    plan = Plan({'a': task}, specs, ('a',))
    rng = np.random.default_rng(0)
    train = ArraySplit(toy.images(16), {'label': rng.integers(0, 7, 16)}, {'label': CLASSES}, 'toy', 'train')
    held_out = ArraySplit(toy.images(16, seed=1), {'label': rng.integers(0, 7, 16)}, {'label': CLASSES}, 'toy',
                          'test')
    mesh = sharding.make_mesh(1)
    workdir = str(tmp_path_factory.mktemp('baselines'))
    # Every baseline but 'paper' (the main recipe) and 'random' (its two stages are logits_only's
    # with another stage-1 selector, checked above; leaving it out saves a third of this test's time).
    # And 'dawid_skene': a fitted combiner's target, computed once before training.
    names = tuple(n for n in NAMES if n != 'random') + ('dawid_skene',)
    args = (_config(names), plan, {'flat': flat, 'good': good}, {'flat': flat_vars, 'good': good_vars},
            train, held_out, mesh, workdir)
    reported = []
    entries, wall = pipeline.run_recipes(recipes.Run(*args), names, on_result=lambda *r: reported.append(r))
    # Each result is handed over as it finishes, in the config's order.
    assert [name for name, _ in reported] == list(names)
    assert all(outcome.entries[f'baseline_{name}'] is entries[f'baseline_{name}'] and
               outcome.wall[f'baseline_{name}'] == wall[f'baseline_{name}'] for name, outcome in reported)
    return args, entries, wall


def test_every_baseline_trains_and_enters_the_summary(run_all):
    args, entries, wall = run_all
    workdir = args[-1]
    assert list(entries) == [f'baseline_{n}' for n in NAMES if n != 'random'] + ['baseline_dawid_skene']
    assert set(wall) == set(entries) and all(w > 0 for w in wall.values())
    for name, entry in entries.items():
        assert entry['role'] == 'baseline' and entry['tasks'] == ['a']
        assert entry['arch'] == 'cifar_resnet8' and entry['params'] > 0
        assert 0.0 <= entry['accuracy']['a'] <= 1.0
        assert np.isfinite(entry['final_train_metrics']['loss']), name
    # The one-stage baselines train the target for the configured budget (baseline_stage.epochs).
    for name in ('average', 'one_stage', 'supervised', 'dawid_skene'):
        assert entries[f'baseline_{name}']['epochs'] == 2
        assert os.path.isdir(os.path.join(workdir, 'baselines', name))
    assert os.path.isdir(os.path.join(workdir, 'baselines', 'logits_only', 'stage1', 'a'))
    assert os.path.isdir(os.path.join(workdir, 'baselines', 'logits_only', 'stage2'))
    # logits_only: no feature term in either stage, and still the least ambiguous teacher.
    comp_metrics = entries['baseline_logits_only']['component_train_metrics']['a']
    assert comp_metrics['feature'] == 0.0 and comp_metrics['selected/flat'] == 0.0
    assert entries['baseline_logits_only']['final_train_metrics']['feature/a'] == 0.0
    assert set(entries['baseline_logits_only']['component_accuracy']) == {'a'}
    assert entries['baseline_one_stage']['final_train_metrics']['selected/a/flat'] == 0.0
    assert entries['baseline_average']['method'].endswith('T=2')
    assert entries['baseline_dawid_skene']['method'].endswith('T=2')  # a fitted combiner's target, once


def test_every_baseline_is_exported_like_the_target(run_all):
    """WORKDIR/export/baselines/NAME loads with load_student and scores what the summary says."""
    import kamal_jax
    args, entries, _ = run_all
    held_out, workdir = args[5], args[-1]
    labels = held_out.labels['label']
    valid = labels < 5  # task 'a' is classes c0..c4, in that order
    outputs = {}
    for name in ('average', 'one_stage', 'supervised', 'logits_only'):
        student = kamal_jax.load_student(os.path.join(workdir, 'export', 'baselines', name))
        assert student.card['heads'] == [['a', 5]] and student.card['image_size'] == [12, 12]
        probs = outputs[name] = np.asarray(student.predict(held_out.images.astype(np.float32) / 255.0)['a'])
        acc = float(np.mean(np.argmax(probs[valid], -1) == labels[valid]))
        assert acc == pytest.approx(entries[f'baseline_{name}']['accuracy']['a'], abs=1e-6), name
    # Each baseline wrote its own net, not one shared set of variables.
    assert not np.allclose(outputs['average'], outputs['supervised'])
    assert not np.allclose(outputs['one_stage'], outputs['logits_only'])


def test_any_recipe_can_be_the_main_one(run_all, tmp_path):
    """recipe = 'average': the same net as the 'average' baseline, entered and exported as the target."""
    args, entries, _ = run_all
    got, wall = pipeline.run_recipes(recipes.Run(*args[:-1], str(tmp_path)), ('average',), main='average')
    assert list(got) == ['target'] and got['target']['role'] == 'target' and list(wall) == ['target']
    assert got['target']['accuracy'] == pytest.approx(entries['baseline_average']['accuracy'], abs=1e-9)
    assert got['target']['method'] == entries['baseline_average']['method']
    assert os.path.isdir(tmp_path / 'target') and not os.path.exists(tmp_path / 'baselines')
    assert (tmp_path / 'export' / 'student.json').is_file()


def test_rerun_resumes_a_baseline(run_all):
    args, entries, _ = run_all
    config = toy.run_config(**{**args[0].to_dict(), 'baselines': ('supervised',)})  # one is enough to see the checkpoint read back (and cheaper)
    again, _ = pipeline.run_recipes(recipes.Run(config, *args[1:]), config.baselines)
    assert list(again) == ['baseline_supervised']
    assert again['baseline_supervised']['accuracy'] == pytest.approx(entries['baseline_supervised']['accuracy'])
    assert again['baseline_supervised']['final_train_metrics'] == {}  # nothing retrained


# ----------------------------------------------------------------------------- configs

def _load(path, arg=''):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_a_config_without_a_recipe_runs_the_default_the_matrix_measured_best():
    from kamal_jax import config_checks
    config = _load('configs/quickstart.py', 'tiny')
    del config['recipe']
    assert config_checks.check_recipes(config_schema.resolve(config)) == (recipes.DEFAULT_RECIPE, ())
    assert recipes.DEFAULT_RECIPE == 'product' and recipes.DEFAULT_RECIPE in recipes.RECIPES
    assert config_schema.SCHEMA.fields['recipe'].default == recipes.DEFAULT_RECIPE
    config.recipe = 'paper'  # the paper's two stages stay one name away
    assert config_checks.check_recipes(config_schema.resolve(config))[0] == 'paper'


def test_unknown_baseline_is_refused_before_work(tmp_path):
    config = _load('configs/quickstart.py', 'tiny')
    config.recipe = 'paper'
    config.baselines = ('average', 'oracle')
    with pytest.raises(ConfigError, match=r"baselines names \['oracle'\].*paper, random, logits_only, "
                                          r"one_stage, average, product, student_loop, supervised"):
        pipeline.run(config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()
    config.baselines = ('average',)
    config.baseline_stage = dict(epoch=3)
    with pytest.raises(ConfigError, match=r"baseline_stage.epoch is not a config field; did you mean baseline_stage.epochs"):
        pipeline.validate(config)


@pytest.mark.parametrize('path, arg', [
    (path, arg) for path in ('configs/bench_cifar10_parts.py', 'configs/bench_utkface_attributes.py',
                             'configs/bench_imagewoof_parts.py') for arg in ('tiny', '')
] + [('configs/bench_imagewoof_parts.py', 'cpu')])
def test_bench_configs_validate(path, arg):
    config = config_schema.resolve(_load(path, arg))
    plan = pipeline.validate(config)
    assert set(config.baselines) == set(NAMES)
    assert len(plan.target_tasks) == 2
    for task in plan.target_tasks:
        assert len(plan.group(task)) >= 2  # a choice of teachers per task
    # The target has fewer parameters than the component nets together.
    def params(cfg, heads):
        net = models.multihead(cfg.arch, heads, tuple(cfg.widths) or None)
        shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))
    heads = [(t, plan.tasks[t].num_classes) for t in plan.target_tasks]
    assert params(config.stage2, heads) < sum(params(config.stage1, [h]) for h in heads)


@pytest.mark.parametrize('path', ['configs/bench_cifar10_parts.py', 'configs/bench_utkface_attributes.py'])
def test_reduced_budget_cuts_the_students_data_and_epochs_but_keeps_zoo_and_test_split(path):
    full, reduced = config_schema.resolve(_load(path, '')), config_schema.resolve(_load(path, 'reduced'))
    pipeline.validate(reduced)
    assert (reduced.data.train_limit, reduced.stage1.epochs, reduced.stage2.epochs) == (10000, 5, 5)
    assert reduced.zoo.to_dict() == full.zoo.to_dict() and reduced.teachers.to_dict() == full.teachers.to_dict()
    assert reduced.data.eval_split == full.data.eval_split and reduced.data.eval_limit == full.data.eval_limit
    assert reduced.recipe == 'paper' and set(reduced.baselines) == {'average', 'product', 'one_stage'}


def test_one_stage_budget_equals_the_epochs_of_all_two_stage_nets_together():
    from kamal_jax.recipes import one_stage_config
    config = toy.quickstart_config('')  # two target tasks, 40 + 40 epochs
    assert one_stage_config(config_schema.resolve(config)).epochs == 2 * 40 + 40
    config.target_tasks = ('digits_0to4',)
    assert one_stage_config(config_schema.resolve(config)).epochs == 40 + 40
    config.baseline_stage = dict(epochs=7)
    assert one_stage_config(config_schema.resolve(config)).epochs == 7
