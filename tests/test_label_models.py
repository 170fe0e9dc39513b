"""Label models on planted teachers: Dawid-Skene recovers who is right per class where `product`
follows the confidently wrong teacher; the combiner registry; a fitted combiner in a recipe."""
import numpy as np
import pytest

from kamal_jax import label_models, selection

K, N = 5, 3000
WRONG = {0: 1, 2: 3}  # the confident teacher's two mistaken classes: 0 read as 1, 2 as 3


def _teacher(rng, truth, accuracy, scale, swap=None):
    """Logits whose argmax is right with probability `accuracy` (else another class at random), or
    `swap[class]` always for the classes it names; `scale` is the teacher's confidence."""
    right = rng.random(len(truth)) < accuracy
    answer = np.where(right, truth, (truth + rng.integers(1, K, len(truth))) % K)
    for true, said in (swap or {}).items():
        answer[truth == true] = said
    logits = rng.normal(scale=0.3, size=(len(truth), K))
    logits[np.arange(len(truth)), answer] += 1.0
    return (scale * logits).astype(np.float32), answer


def _planted_confusion(truth, answer, m=K):
    c = np.zeros((K, m))
    np.add.at(c, (truth, answer), 1.0)
    return c / c.sum(-1, keepdims=True)


@pytest.fixture(scope='module')
def planted():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, K, N)
    a, a_answer = _teacher(rng, truth, 0.8, 1.5)
    b, b_answer = _teacher(rng, truth, 0.95, 12.0, swap=WRONG)  # confident, and always wrong on 0 and 2
    c, c_answer = _teacher(rng, truth, 0.75, 1.5)
    return truth, (a, b, c), (a_answer, b_answer, c_answer)


def _accuracy(prediction, truth, rows=slice(None)):
    return float(np.mean(np.argmax(np.asarray(prediction), -1)[rows] == truth[rows]))


def test_dawid_skene_recovers_planted_confusions_and_labels_with_three_voters(planted):
    truth, logits, answers = planted
    context = selection.Context(logits)
    product = selection.COMBINERS['product'](context)
    wronged = np.isin(truth, list(WRONG))
    # The product follows the confident teacher on its two wrong classes.
    assert _accuracy(product, truth, wronged) < 0.05
    combiner = selection.COMBINERS['dawid_skene']
    params = combiner.fit(context, votes='hard', strength=0.01, partial=False, class_prior=True, init='vote')
    posterior = combiner(context, 1.0, params)
    assert _accuracy(posterior, truth, wronged) > 0.8
    assert _accuracy(posterior, truth) > _accuracy(product, truth) + 0.3
    # The confusion matrices are the planted ones (answers counted against the truth).
    for log_confusion, answer in zip(params.model.log_confusions, answers):
        np.testing.assert_allclose(np.exp(log_confusion), _planted_confusion(truth, answer), atol=0.08)
    b = np.exp(params.model.log_confusions[1])
    assert b[0, 1] > 0.9 and b[2, 3] > 0.9 and b[1, 1] > 0.9


def test_dawid_skene_with_two_teachers_and_a_partial_one(planted):
    """Two teachers disagree on classes 0 and 2 and nothing says which is right but a third teacher
    that knows only classes 0, 1 and 2 (among its own others): voting as 'one of these, or other',
    it settles them; the product of the two full teachers does not."""
    truth, (a, b, _), (a_answer, b_answer, _) = planted
    rng = np.random.default_rng(1)
    covered = [0, 1, 2]
    own = rng.normal(scale=0.3, size=(N, 4))  # its four other outputs, the task's classes 3 and 4 among them
    knows = np.isin(truth, covered)
    partial_answer = np.where(knows, truth, 3)
    right = rng.random(N) < 0.85
    partial_answer = np.where(right, partial_answer, rng.integers(0, 4, N))
    whole = np.concatenate([rng.normal(scale=0.3, size=(N, 3)), own], -1)
    columns = [4, 0, 2]  # task classes 0, 1, 2 sit at these logits of its output
    said = np.where(partial_answer < 3, np.asarray(columns)[np.minimum(partial_answer, 2)], 5)
    whole[np.arange(N), said] += 2.0
    partial = selection.Partial(whole.astype(np.float32), columns, covered)
    context = selection.Context((a, b), partial=(partial,))
    product = selection.COMBINERS['product'](context)
    wronged = np.isin(truth, list(WRONG))
    assert _accuracy(product, truth, wronged) < 0.05
    combiner = selection.COMBINERS['dawid_skene']
    params = combiner.fit(context, votes='hard', strength=0.01, partial=True, class_prior=True, init='vote')
    posterior = combiner(context, 1.0, params)
    assert _accuracy(posterior, truth, wronged) > 0.8
    assert _accuracy(posterior, truth) > _accuracy(product, truth) + 0.25
    # The full teachers' matrices are the planted ones; the partial one says 'other' off its classes.
    for log_confusion, answer in zip(params.model.log_confusions[:2], (a_answer, b_answer)):
        np.testing.assert_allclose(np.exp(log_confusion), _planted_confusion(truth, answer), atol=0.08)
    p = np.exp(params.model.log_confusions[2])
    assert p.shape == (K, 4)
    assert p[0, 0] > 0.7 and p[1, 1] > 0.7 and p[2, 2] > 0.7 and p[3, 3] > 0.7 and p[4, 3] > 0.7
    # Without the partial voter the two full teachers alone cannot tell who is right on 0 and 2.
    alone = combiner(context, 1.0, combiner.fit(context, votes='hard', strength=0.01, partial=False, class_prior=True, init='vote'))
    assert _accuracy(alone, truth, wronged) < 0.5


def test_partial_votes_and_answers():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))
    np.testing.assert_allclose(label_models.partial_votes(logits, [3, 1]), [[0.4, 0.2, 0.4]], atol=1e-9)
    np.testing.assert_array_equal(label_models.partial_answers([2, 0], 3),
                                  [[0, 1, 0], [0, 0, 1], [1, 0, 0]])


def test_soft_votes_under_a_prior_that_outweighs_the_data_give_the_average():
    """With every confusion row at its prior (0.7 on the right answer, the rest even) and equal class
    priors, the soft-vote log posterior is a multiple of the summed probabilities: `average`."""
    rng = np.random.default_rng(3)
    truth = rng.integers(0, K, 500)
    logits = tuple(_teacher(rng, truth, 0.6, 2.0)[0] for _ in range(3))
    context = selection.Context(logits)
    average = np.argmax(selection.COMBINERS['average'](context), -1)
    combiner = selection.COMBINERS['dawid_skene']
    params = combiner.fit(context, votes='soft', strength=1e4, partial=False, class_prior=False, init='product')
    assert np.mean(np.argmax(combiner(context, 1.0, params), -1) == average) > 0.98
    # The hard-vote model under the same prior is the majority vote, and differs.
    hard = selection.COMBINERS['dawid_skene']
    params = hard.fit(context, votes='hard', strength=1e4, partial=False, class_prior=False, init='product')
    assert np.mean(np.argmax(hard(context, 1.0, params), -1) == average) < 0.95


def test_fit_dawid_skene_refuses_bad_input():
    v = [np.full((4, 3), 1 / 3)]
    with pytest.raises(ValueError, match="prior must be 'diagonal' or 'one_coin'"):
        label_models.fit_dawid_skene(v, [np.eye(3)], v[0], prior='flat')
    with pytest.raises(ValueError, match='1 voters but 2 answer maps'):
        label_models.fit_dawid_skene(v, [np.eye(3)] * 2, v[0])


def test_every_combiner_alone_gives_probabilities_and_the_registry_names_the_valid_ones():
    rng = np.random.default_rng(4)
    truth = rng.integers(0, K, 200)
    context = selection.Context(tuple(_teacher(rng, truth, 0.8, 2.0)[0] for _ in range(2)))
    for name, combiner in selection.COMBINERS.items():
        params = combiner.fit_default(context)
        target = np.asarray(combiner(context, 4.0, params))
        assert target.shape == (200, K), name
        np.testing.assert_allclose(target.sum(-1), 1.0, atol=1e-5)
        assert _accuracy(target, truth) > 0.7, name
        if combiner.fit is not None:  # a label model's target is its tempered posterior
            logits = np.log(np.asarray(combiner(context, 1.0, params), np.float64))
            expected = np.exp(logits / 4.0) / np.exp(logits / 4.0).sum(-1, keepdims=True)
            np.testing.assert_allclose(target, expected, atol=1e-5)
    with pytest.raises(ValueError, match='valid combiners: average, product'):
        selection.get_combiner('median')


def test_a_fitted_combiners_target_is_computed_once_and_read_by_the_step():
    """The 'dawid_skene' recipe's target is the registry's combiner fitted on the training images'
    teachers' logits (label-free, default hyper-parameters), given to every step in the batch; the
    step's loss is the KL from exactly that target. (The recipe itself trains at a tiny budget in
    tests/test_baselines.py, with every other baseline.)"""
    import jax
    import jax.numpy as jnp

    import toy
    from kamal_jax import losses, models
    from kamal_jax.recipes.stages import fitted_target
    from kamal_jax.train import evaluate as eval_lib
    from kamal_jax.train.augment import to_unit
    from kamal_jax.train.nets import Net
    from kamal_jax.train.objectives import Distill, LossWeights

    t1, v1 = toy.teacher('t1', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=1)
    t2, v2 = toy.teacher('t2', 'cifar_resnet8', 7, {'a': (2, 7)}, seed=2)
    images = toy.images(16)
    combiner = selection.COMBINERS['dawid_skene']
    target = fitted_target('a', (t1, t2), {'t1': v1, 't2': v2}, images, 8, combiner, 2.0)
    context = selection.Context(tuple(eval_lib.predict(t, v, images, 8)['a'] for t, v in ((t1, v1), (t2, v2))))
    np.testing.assert_allclose(target, combiner(context, 2.0, combiner.fit_default(context)), atol=1e-6)

    student = Net('target', 'cifar_resnet8', models.multihead('cifar_resnet8', [('a', 5)]), toy.MEAN, toy.STD)
    stage = Distill(student, (('a', (t1, t2)),), {}, LossWeights(temperature=2.0), combine=combiner,
                    precombined=True)
    variables = student.module.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
    params, stats = {'net': variables['params'], 'bridges': {}}, variables['batch_stats']
    x = to_unit(jnp.asarray(images[:8]))
    loss, _ = jax.jit(stage.loss)(params, stats, {'t1': v1, 't2': v2}, x, {'combined_target': {'a': target[:8]}})
    (s_logits, _), _ = student.module.apply(variables, student.prepare(x), train=True, mutable=['batch_stats'])
    expected = jnp.mean(losses.soft_target_kl(s_logits['a'], jnp.asarray(target[:8]), temperature=2.0))
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)

