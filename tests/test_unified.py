"""Teachers that know different classes: tasks picked by class names, the unified (UHC) target, its recipes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy
from kamal_jax import config_checks, config_schema, losses, pipeline, recipes, unified
from kamal_jax.data.datasets import ArraySplit
from kamal_jax.tasks import ConfigError, plan_from_config
from kamal_jax.train import sharding
from kamal_jax.train.augment import to_unit
from kamal_jax.train.objectives import Distill, LossWeights

NORM = dict(mean=toy.MEAN, std=toy.STD)


def _config(teachers, tasks=None, target_tasks=('pick',), **extra):
    tree = {'data': {'name': 'toy'}, 'teachers': {n: dict(checkpoint=f'{n}.pth', **NORM, **t) for n, t in teachers.items()},
            'target_tasks': target_tasks, **extra}
    if tasks is not None:
        tree['tasks'] = tasks
    return config_schema.resolve(tree)


ANIMALS = dict(classes=['cat', 'dog', 'horse', 'bird'])
VEHICLES = dict(classes=['truck', 'ship', 'horse'])


def test_a_teacher_serves_a_task_with_some_of_its_classes():
    plan = plan_from_config(_config({'animals': ANIMALS, 'vehicles': VEHICLES, 'birds': dict(classes=['bird', 'owl'])},
                                     {'pick': dict(classes=['dog', 'horse', 'truck'])}))
    members = plan.members('pick')
    # 'birds' knows none of the task's classes: it does not serve it, and is not ported.
    assert [m.teacher for m in members] == ['animals', 'vehicles']
    assert [t.name for t in plan.used_teachers] == ['animals', 'vehicles']
    assert members[0].names == ('cat', 'dog', 'horse', 'bird') and members[0].columns == ((0,), (1,), (2,), (3,))
    # Neither knows all three classes in one slice: no teacher teaches it in the per-teacher recipes.
    assert plan.group('pick') == ()
    union = unified.union_of(plan, 'pick')
    assert union.names == ('dog', 'horse', 'truck', 'cat', 'bird', 'ship') and union.task_size == 3
    np.testing.assert_array_equal(union.mask(), [[1, 1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 1]])


def test_a_teacher_knowing_a_whole_task_in_one_slice_teaches_it_in_every_recipe():
    plan = plan_from_config(_config({'animals': ANIMALS, 'vehicles': VEHICLES},
                                     {'pick': dict(classes=['dog', 'horse'])}))
    assert [t.name for t in plan.group('pick')] == ['animals'] and plan.teachers[0].heads == {'pick': (1, 3)}
    assert plan.teachers[1].heads == {}  # it knows horse only


def test_a_many_to_one_mapping_merges_classes_and_sums_their_probabilities():
    breeds = dict(classes=['husky', 'beagle', 'tabby', 'truck'], class_map={'husky': 'dog', 'beagle': 'dog',
                                                                             'tabby': 'cat'})
    plan = plan_from_config(_config({'breeds': breeds, 'vehicles': VEHICLES},
                                     {'pick': dict(classes=['cat', 'dog'])}))
    (member,) = plan.members('pick')
    assert member.names == ('dog', 'cat', 'truck') and member.columns == ((0, 1), (2,), (3,))
    logits = np.log(np.array([[0.1, 0.3, 0.2, 0.4]]))
    union = unified.union_of(plan, 'pick')
    probs = unified.member_probabilities(union, [logits])
    np.testing.assert_allclose(probs[0, 0, :3], [0.2, 0.4, 0.4])  # cat, dog = husky + beagle, truck
    target = unified.task_target(union, [logits], kind='cross_entropy', temperature=1.0, outside='keep')
    np.testing.assert_allclose(target.probabilities[0], [1 / 3, 2 / 3], rtol=1e-5)
    np.testing.assert_allclose(target.inside, [0.6], rtol=1e-5)


@pytest.mark.parametrize('teachers, tasks, says', [
    ({'animals': ANIMALS}, {'pick': dict(classes=['dog', 'zebra'])},
     "tasks.pick.classes names 'zebra', which no teacher knows; the teachers know bird, cat, dog, horse."),
    ({'animals': dict(ANIMALS, class_map={'wolf': 'dog'})}, {'pick': dict(classes=['dog', 'cat'])},
     "teachers.animals.class_map renames 'wolf', which is not one of its classes"),
    ({'animals': dict(classes=[])}, {'pick': dict(classes=['dog', 'cat'])}, 'teachers.animals declares no task'),
])
def test_a_class_no_teacher_knows_is_one_sentence(teachers, tasks, says):
    with pytest.raises(ConfigError) as e:
        plan_from_config(_config(teachers, tasks))
    assert says in str(e.value) and str(e.value).count('. ') == 0


def test_a_per_teacher_recipe_on_a_task_no_teacher_knows_whole_is_one_sentence():
    config = _config({'animals': ANIMALS, 'vehicles': VEHICLES}, {'pick': dict(classes=['dog', 'truck'])},
                     recipe='product')
    with pytest.raises(ConfigError) as e:
        config_checks.validate(config)
    assert str(e.value) == ("recipe names 'product', which learns each task from teachers that know all its classes "
                            "in one slice of their logits, but no teacher knows all of task 'pick''s (animals, "
                            "vehicles know some); use the recipe 'unified' or 'naive_union'.")
    config_checks.validate(_config(
        {'animals': ANIMALS, 'vehicles': VEHICLES}, {'pick': dict(classes=['dog', 'truck'])}, recipe='unified',
        baselines=('naive_union', 'supervised')))


def test_head_declared_and_binary_tasks_keep_working_beside_picked_ones():
    heads = {'digits': dict(classes=list('01234'), logits=(0, 5)),
             'odd': dict(classes=['even', 'odd'], logits=(5, 6), kind='binary')}
    plan = plan_from_config(_config({'old': dict(heads=heads), 'new': dict(classes=list('3456'))},
                                    {'pick': dict(classes=['4', '5'])}, target_tasks=('digits', 'odd', 'pick')))
    assert plan.tasks['odd'].kind == 'binary' and [t.name for t in plan.group('odd')] == ['old']
    assert [t.name for t in plan.group('digits')] == ['old']  # 'new' knows 3 and 4 only
    # The multiclass head serves by its class names; the binary one does not.
    assert [(m.teacher, m.names) for m in plan.members('pick')] == [('old', tuple('01234')), ('new', tuple('3456'))]
    assert [(m.teacher, m.columns) for m in plan.members('digits')][0] == ('old', tuple((i,) for i in range(5)))


def _restricted(q, subsets):
    """[batch, members, classes]: q restricted to each subset and renormalised, zero elsewhere."""
    mask = np.zeros((len(subsets), q.shape[1]))
    for j, s in enumerate(subsets):
        mask[j, s] = 1
    p = q[:, None, :] * mask[None]
    return p / p.sum(-1, keepdims=True), mask


def test_the_cross_entropy_estimate_recovers_a_known_distribution_from_restricted_teachers():
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.full(7, 0.5), size=256)
    q = (q + 1e-4) / (q + 1e-4).sum(-1, keepdims=True)
    probs, mask = _restricted(q, [[0, 1, 2, 3], [2, 3, 4], [4, 5, 6, 0], [1, 5]])
    got = unified.cross_entropy_estimate(probs, mask, iterations=500)
    np.testing.assert_allclose(got, q, atol=2e-3)
    assert np.abs(got - q).max() < 2e-3
    # The naive extension (each teacher's probabilities on its classes, averaged) does not.
    assert np.abs(unified.naive_estimate(probs, mask) - q).max() > 0.1
    # The task's target and the chance of being one of its classes follow.
    target, inside = unified.restrict(got, 3)
    np.testing.assert_allclose(inside, q[:, :3].sum(-1), atol=3e-3)
    np.testing.assert_allclose(target, q[:, :3] / q[:, :3].sum(-1, keepdims=True), atol=2e-2)


def test_outside_weights_have_mean_one_and_follow_the_inside_chance():
    inside = np.array([0.9, 0.6, 0.3, 0.2])
    np.testing.assert_allclose(unified.sample_weights(inside, 'weight'), inside / 0.5)
    np.testing.assert_allclose(unified.sample_weights(inside, 'drop'), [2, 2, 0, 0])
    np.testing.assert_allclose(unified.sample_weights(inside, 'keep'), 1.0)


def test_the_precombined_loss_weights_each_sample():
    """A fake student of fixed logits: the loss is the per-sample KL's mean, weighted by 'combined_weight'."""
    stage = Distill(None, (('a', ()),), {}, LossWeights(temperature=2.0), combine=lambda *_: None, precombined=True)
    rng = np.random.default_rng(1)
    logits = {'a': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    target = jnp.asarray(rng.dirichlet(np.ones(3), 4), jnp.float32)
    per_sample = np.asarray(losses.soft_target_kl(logits['a'], target, temperature=2.0))
    plain = float(stage._combined_loss(logits, None, {'combined_target': {'a': target}})[0])
    w = jnp.asarray([2.0, 0.0, 2.0, 0.0])
    weighted = float(stage._combined_loss(logits, None, {'combined_target': {'a': target},
                                                         'combined_weight': {'a': w}})[0])
    np.testing.assert_allclose(plain, per_sample.mean(), rtol=1e-5)
    np.testing.assert_allclose(weighted, (2 * per_sample[0] + 2 * per_sample[2]) / 4, rtol=1e-5)
    assert abs(weighted - plain) > 1e-3 * plain


CLASSES = [f'c{i}' for i in range(6)]


def test_the_unified_recipes_train_a_student_of_a_picked_task(tmp_path):
    """Two random teachers knowing c0-c3 and c2-c5 teach a task of c1, c4 (neither knows both)."""
    low, low_vars = toy.teacher('low', 'cifar_resnet8', 4, {}, seed=1)
    high, high_vars = toy.teacher('high', 'cifar_resnet8', 4, {}, seed=2)
    config = config_schema.resolve({
        'data': {'name': 'toy', **NORM}, 'target_tasks': ('pick',), 'tasks': {'pick': dict(classes=['c1', 'c4'])},
        'teachers': {'low': dict(checkpoint='low.pth', **NORM, classes=CLASSES[:4]),
                     'high': dict(checkpoint='high.pth', **NORM, classes=CLASSES[2:])},
        'baseline_stage': dict(epochs=1, batch_size=8, temperature=2.0), 'eval_batch_size': 16, 'log_every': 1,
        'unified': dict(outside='drop')})
    plan = plan_from_config(config)
    rng = np.random.default_rng(0)
    train = ArraySplit(toy.images(16), {'label': rng.integers(0, 6, 16)}, {'label': CLASSES}, 'toy', 'train')
    held_out = ArraySplit(toy.images(16, seed=1), {'label': rng.integers(0, 6, 16)}, {'label': CLASSES}, 'toy', 'test')
    run = recipes.Run(config, plan, {'low': low, 'high': high}, {'low': low_vars, 'high': high_vars}, train,
                      held_out, sharding.make_mesh(1), str(tmp_path))
    targets = recipes.unified.task_targets(run, train.images, 'cross_entropy', 2.0)
    logits = [recipes.unified.whole_logits(run, n, train.images) for n in ('low', 'high')]
    union = unified.union_of(plan, 'pick')
    assert union.names == ('c1', 'c4', 'c0', 'c2', 'c3', 'c5')
    expected = unified.task_target(union, logits, kind='cross_entropy', temperature=2.0, outside='drop')
    np.testing.assert_allclose(targets['pick'].probabilities, expected.probabilities)
    assert set(np.unique(targets['pick'].weights)) <= {0.0, float(16 / max((expected.inside >= 0.5).sum(), 1))}
    naive = recipes.unified.task_targets(run, train.images, 'naive', 2.0)['pick']
    np.testing.assert_allclose(naive.probabilities, unified.task_target(
        union, logits, kind='naive', temperature=2.0, outside='drop').probabilities)
    assert not np.allclose(naive.probabilities, targets['pick'].probabilities, atol=1e-3)
    assert recipes.RECIPES['naive_union'].estimate == 'naive' and recipes.RECIPES['unified'].estimate == 'cross_entropy'
    entries, _ = pipeline.run_recipes(run, ('unified',))
    entry = entries['baseline_unified']
    assert entry['tasks'] == ['pick'] and 0.0 <= entry['accuracy']['pick'] <= 1.0 and entry['epochs'] == 1
    assert np.isfinite(entry['final_train_metrics']['loss']) and 'outside: drop' in entry['method']


def test_the_target_screen_scores_teachers_on_the_classes_they_know_and_each_estimate():
    from kamal_jax.benchmarks.unified_targets import score_task
    plan = plan_from_config(_config({'animals': ANIMALS, 'vehicles': VEHICLES},
                                     {'pick': dict(classes=['dog', 'horse', 'truck'])}))
    union = unified.union_of(plan, 'pick')
    labels = np.asarray(['dog', 'horse', 'truck', 'cat', 'ship', 'bird'])
    # animals (cat dog horse bird) says dog, dog, cat, cat, horse, bird; vehicles (truck ship horse) truck, horse,
    # truck, ship, ship, horse: on the images of classes they know, 3 of 4 and 3 of 3 right.
    animals = np.log(np.eye(4)[[1, 1, 0, 0, 2, 3]] * 0.97 + 0.01)
    vehicles = np.log(np.eye(3)[[0, 2, 0, 1, 1, 2]] * 0.97 + 0.01)
    got = score_task(union, [animals, vehicles], labels, temperature=4.0, iterations=200)
    assert got['teachers']['animals']['accuracy'] == 0.75 and got['teachers']['animals']['images'] == 4
    assert got['teachers']['vehicles']['accuracy'] == 1.0 and got['teachers']['vehicles']['images'] == 3
    assert got['images'] == 3 and got['other_images'] == 3
    for kind in unified.ESTIMATES:
        e = got['estimates'][kind]
        assert 0 <= e['accuracy_T1'] <= 1 and 0 <= e['inside_on_other_images'] <= 1
    # The cat image (both teachers sure it is outside the task) gets a low chance of being inside it.
    assert got['estimates']['cross_entropy']['inside_on_task_images'] > got['estimates']['cross_entropy'][
        'inside_on_other_images']
