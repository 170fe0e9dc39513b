"""The label-free combination screen: its calibration and rules, on crafted teachers."""
import numpy as np
import pytest

from kamal_jax import selection
from kamal_jax.benchmarks import combiners


def test_confidence_temperature_undoes_a_teachers_scale():
    logits = np.random.default_rng(0).normal(size=(500, 5)).astype(np.float32)
    t1 = combiners.confidence_temperature(logits, 0.6)
    t3 = combiners.confidence_temperature(3.0 * logits, 0.6)
    assert t3 == pytest.approx(3.0 * t1, rel=1e-3)
    top = combiners._softmax(logits, t1).max(-1).mean()
    assert top == pytest.approx(0.6, abs=1e-4)


def test_calibration_takes_away_a_teachers_overconfidence_but_plain_averaging_follows_it():
    """Teacher B is right on the first 60 samples only, A on the last 40; B's logits are 20x
    sharper, so the plain average follows B everywhere; calibrated to one mean confidence, each
    sample goes to the teacher relatively surer of it."""
    rng = np.random.default_rng(1)
    n, k = 100, 5
    truth = rng.integers(0, k, n)
    wrong = (truth + 1) % k

    def teacher(right_rows, scale):
        logits = rng.normal(scale=0.1, size=(n, k)).astype(np.float32)
        labels = np.where(right_rows, truth, wrong)
        logits[np.arange(n), labels] += 1.0 + right_rows  # surer where right
        return scale * logits
    a = teacher(np.arange(n) >= 60, 1.0)
    b = teacher(np.arange(n) < 60, 20.0)
    context = selection.Context((a, b))
    rules = combiners.rules(temperature=4.0)
    plain = np.argmax(rules['average (T=1)'](context, context), -1)
    calibrated = np.argmax(rules['calibrated_average'](context, context), -1)
    assert np.mean(plain == truth) == pytest.approx(0.6)
    assert np.mean(calibrated == truth) > 0.95


def test_view_agreement_rule_prefers_the_teacher_whose_answer_holds_across_views():
    """Teacher A is sharper on the plain view but wrong and unstable: its views spread over all
    classes; B is less sure and right on every view. Least entropy follows A, view agreement B."""
    n, k, views = 50, 5, 4
    truth = np.arange(n) % k
    a_plain = np.full((n, k), 0.0, np.float32)
    a_plain[np.arange(n), (truth + 1) % k] = 8.0
    b_plain = np.full((n, k), 0.0, np.float32)
    b_plain[np.arange(n), truth] = 4.0
    a_views = np.zeros((views, n, k), np.float32)
    for v in range(views):
        a_views[v, np.arange(n), (truth + 1 + v) % k] = 8.0  # a different wrong class per view
    b_views = np.repeat(b_plain[None], views, 0)
    context = selection.Context((a_plain, b_plain), view_logits=(a_views, b_views))
    rules = combiners.rules(temperature=4.0)
    assert np.mean(np.argmax(rules['least_entropy'](context, context), -1) == truth) == 0.0
    assert np.mean(np.argmax(rules['view_agreement'](context, context), -1) == truth) == 1.0


def test_agreement_accuracy_ranks_teachers_by_how_often_they_are_right_and_weights_them_so():
    """Three teachers, right on 95%, 80% and 40% of the images, wrong ones at random, confident
    alike: their agreement with each other's confident answers ranks them as their accuracy does,
    and the weighted product follows the strong pair where the plain product is pulled around by
    the weak teacher; with equally reliable teachers it is the plain product."""
    rng = np.random.default_rng(2)
    n, k = 2000, 10
    truth = rng.integers(0, k, n)

    def teacher(accuracy):
        right = rng.random(n) < accuracy
        answer = np.where(right, truth, (truth + rng.integers(1, k, n)) % k)
        logits = rng.normal(scale=0.5, size=(n, k)).astype(np.float32)
        logits[np.arange(n), answer] += 4.0
        return logits
    logits = (teacher(0.95), teacher(0.8), teacher(0.4))
    estimate = combiners.agreement_accuracy(logits)
    assert estimate[0] > estimate[1] > estimate[2]
    context = selection.Context(logits)
    rules = combiners.rules(temperature=1.0)
    weighted = np.argmax(rules['agreement_weighted_product'](context, context), -1)
    plain = np.argmax(rules['product'](context, context), -1)
    assert np.mean(weighted == truth) > np.mean(plain == truth) + 0.005
    twins = selection.Context((logits[0], logits[0]))
    np.testing.assert_allclose(rules['agreement_weighted_product'](twins, twins),
                               rules['product'](twins, twins), atol=1e-6)


def test_partial_teachers_are_those_outside_the_group_covering_two_or_more_of_the_tasks_classes():
    import ml_collections
    from kamal_jax import config_schema, tasks
    low, high = ['0', '1', '2', '3', '4'], ['5', '6', '7', '8', '9']
    outputs = {'a': low + ['5', '6'], 'b': ['8', '9'] + low, 'c': high + ['0'], 'd': ['3', '1', '7'] + high}
    main = {'a': 'low', 'b': 'low', 'c': 'high', 'd': 'high'}
    config = ml_collections.ConfigDict({
        'zoo': {'teachers': {n: {'classes': c} for n, c in outputs.items()}},
        'data': {'name': 'kamal_digits'},
        'teachers': {n: {'arch': 'cifar_resnet8', 'checkpoint': f'{n}.pth', 'mean': (0.5,), 'std': (0.5,), 'heads': {main[n]: {
            'classes': low if main[n] == 'low' else high,
            'logits': [c.index((low if main[n] == 'low' else high)[0]), c.index((low if main[n] == 'low' else high)[0]) + 5]}}}
            for n, c in outputs.items()},
        'target_tasks': ['low', 'high']})
    resolved = config_schema.resolve(config)
    plan = tasks.plan_from_config(resolved)
    # 'c' covers only '0' of the low task: too few to rank anything. 'd' covers '3' and '1' at logits 0 and 1.
    assert combiners.partial_teachers(resolved, plan, 'low') == [('d', [1, 0], [1, 3])]
    # For the high task, 'a' covers 5, 6 (logits 5, 6) and 'b' covers 8, 9 (logits 0, 1).
    assert combiners.partial_teachers(resolved, plan, 'high') == [('a', [5, 6], [0, 1]), ('b', [0, 1], [3, 4])]
    # Without the zoo's class lists nothing is known of a teacher's other outputs.
    del config['zoo']
    assert combiners.partial_teachers(config_schema.resolve(config), plan, 'low') == []


def _entry(rng, n_train=400, n_test=200, k=5):
    """A task's screen inputs: teacher 'a' right on the first half of every split, 'b' everywhere
    but sharper where wrong; one partial teacher."""
    def split(n):
        labels = rng.integers(0, k, n)
        a = rng.normal(scale=0.1, size=(n, k)).astype(np.float32)
        b = a.copy()
        a[np.arange(n), np.where(np.arange(n) < n // 2, labels, (labels + 1) % k)] += 2.0
        b[np.arange(n), labels] += 1.0
        return labels, a, b
    tl, ta, tb = split(n_train)
    el, ea, eb = split(n_test)
    return {'classes': [str(i) for i in range(k)], 'teachers': ['a', 'b'], 'partial': [['p', [1, 0], [2, 3]]],
            'train': {'a': ta, 'b': tb}, 'test': {'a': ea, 'b': eb},
            'train_partial': {'p': rng.normal(size=(n_train, 4)).astype(np.float32)},
            'test_partial': {'p': rng.normal(size=(n_test, 4)).astype(np.float32)},
            'test_views': {'a': np.stack([ea] * 2), 'b': np.stack([eb] * 2)},
            'train_labels': tl, 'test_labels': el}


def test_screen_inputs_round_trip_through_a_compressed_file(tmp_path):
    entry = _entry(np.random.default_rng(5))
    path = str(tmp_path / 'run.npz')
    combiners.save_inputs({'temperature': 4.0, 'views': 2, 'tasks': {'t': entry}}, path, 'the command')
    back = combiners.load_inputs(path)
    assert back['command'] == 'the command' and back['temperature'] == 4.0 and back['views'] == 2
    got = back['tasks']['t']
    assert got['teachers'] == ['a', 'b'] and got['partial'] == [['p', [1, 0], [2, 3]]]
    for part in ('train', 'test', 'train_partial', 'test_partial', 'test_views'):
        for name, a in entry[part].items():
            np.testing.assert_allclose(got[part][name], a, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(got['test_labels'], entry['test_labels'])
    context = combiners.contexts(got)
    assert context['train'].view_logits is None and len(context['test'].view_logits) == 2
    assert context['test'].partial[0].classes == [2, 3]
    np.savez(tmp_path / 'other.npz', x=np.zeros(3))
    with pytest.raises(ValueError, match='holds no screen inputs'):
        combiners.load_inputs(str(tmp_path / 'other.npz'))


def test_hyper_parameters_are_chosen_on_the_validation_share_and_the_default_needs_beating():
    """`weighted_product`'s tilt towards teacher 'a' (right on the first half of the images) or 'b'
    (right everywhere): validation says 'b', and the evaluation images are never read for it."""
    entry = _entry(np.random.default_rng(6))
    context = combiners.contexts(entry)
    validation = combiners.validation_rows(400, 0.25)
    assert len(validation) == 100 and len(set(validation)) == 100
    combiner = selection.COMBINERS['weighted_product']
    hidden = context['test']._replace(teacher_logits=tuple(np.zeros_like(l) for l in context['test'].teacher_logits))
    picked = combiners.choose_on_validation(combiner, context['train'], hidden, entry['train_labels'], validation)
    assert picked['hyper']['tilt'] < -0.2 and picked['validation_accuracy'] > 0.95
    picked = combiners.choose_on_validation(combiner, context['train'], context['test'], entry['train_labels'],
                                            validation)
    assert np.mean(np.argmax(picked['prediction'], -1) == entry['test_labels']) > 0.95
    np.testing.assert_allclose(picked['default'], selection.COMBINERS['product'](context['test']), atol=1e-6)
    # A gain of fewer than `min_gain` validation images keeps the default (here 'b' gains about 50).
    for min_gain, tilt in ((40, picked['hyper']['tilt']), (80, 0.0)):
        kept = combiners.choose_on_validation(combiner, context['train'], context['test'], entry['train_labels'],
                                              validation, min_gain=min_gain)
        assert kept['hyper']['tilt'] == tilt


def test_view_product_counts_an_answer_by_how_it_holds_across_views_and_teachers():
    """Teacher A is sure of a wrong class on the plain view only (its views say the truth mildly);
    B leans slightly to the truth everywhere. The plain product follows A; over the views, A's
    plain view is outvoted by its own views."""
    n, k, views = 40, 4, 4
    truth = np.arange(n) % k
    a_plain = np.zeros((n, k), np.float32)
    a_plain[np.arange(n), (truth + 1) % k] = 6.0
    a_views = np.zeros((views, n, k), np.float32)
    a_views[:, np.arange(n), truth] = 3.0
    b_plain = np.zeros((n, k), np.float32)
    b_plain[np.arange(n), truth] = 1.0
    b_views = np.repeat(b_plain[None], views, 0)
    context = selection.Context((a_plain, b_plain), view_logits=(a_views, b_views))
    rules = combiners.rules(temperature=4.0)
    assert np.mean(np.argmax(rules['product'](context, context), -1) == truth) == 0.0
    assert np.mean(np.argmax(rules['view_product'](context, context), -1) == truth) == 1.0
    # It is the product of the view-averaged logits: a softmax of their mean over teachers.
    mean = (np.concatenate([a_plain[None], a_views]).mean(0) + b_plain) / 2
    np.testing.assert_allclose(rules['view_product'](context, context), combiners._softmax(mean, 4.0), atol=1e-6)


def test_without_partial_teachers_each_partial_rule_scores_as_its_rule_alone():
    entry = _entry(np.random.default_rng(7))
    with_partial = combiners.score_task(entry, 4.0, 0.2)
    alone = combiners.score_task(dict(entry, partial=[], train_partial={}, test_partial={}), 4.0, 0.2)
    assert set(with_partial['rules']) == set(alone['rules'])
    for name, rule in combiners.pooled_alone(4.0).items():
        assert alone['rules'][name] == alone['rules'][rule]
    assert any(with_partial['rules'][n] != with_partial['rules'][r] for n, r in combiners.pooled_alone(4.0).items())
