"""Each selector alone, the registry, and the config checks on selectors and recipes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy
from kamal_jax import ambiguity, config_checks, config_schema, losses, selection
from kamal_jax.layout import Layout
from kamal_jax.tasks import ConfigError

# Three teachers, four samples: teacher 0 sure on sample 0, teacher 1 on samples 1 and 3, teacher 2 on 2.
LOGITS = (jnp.array([[9.0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]]),
          jnp.array([[1.0, 0, 0], [0, 8, 0], [1, 0, 0], [0, 0, 7]]),
          jnp.array([[0.0, 0, 0], [0, 0, 0], [0, 0, 20], [2, 0, 0]]))


def test_least_entropy_gives_one_hot_weights_of_the_least_ambiguous_teacher():
    w = np.asarray(selection.SELECTORS['least_entropy'](selection.Context(LOGITS)))
    assert w.shape == (4, 3) and w.dtype == np.float32
    np.testing.assert_array_equal(w, np.eye(3, dtype=np.float32)[[0, 1, 2, 1]])
    entropies = np.stack([np.asarray(ambiguity.entropy(l)) for l in LOGITS])
    np.testing.assert_array_equal(np.asarray(selection.choice(w)), np.argmin(entropies, 0))


def test_random_draws_one_teacher_per_sample_from_the_rng():
    logits = tuple(jnp.zeros((4000, 3)) for _ in range(4))
    w = np.asarray(selection.SELECTORS['random'](selection.Context(logits), jax.random.key(0)))
    np.testing.assert_array_equal(w.sum(1), 1.0)
    assert set(np.unique(w)) == {0.0, 1.0}
    np.testing.assert_allclose(w.mean(0), 0.25, atol=0.03)  # each of the four teachers a quarter of the time
    again = selection.SELECTORS['random'](selection.Context(logits), jax.random.key(0))
    other = selection.SELECTORS['random'](selection.Context(logits), jax.random.key(1))
    np.testing.assert_array_equal(w, again)
    assert not np.array_equal(w, np.asarray(other))


def test_uniform_weighs_every_teacher_alike():
    w = np.asarray(selection.SELECTORS['uniform'](selection.Context(LOGITS)))
    np.testing.assert_allclose(w, np.full((4, 3), 1 / 3), rtol=1e-6)
    assert not selection.SELECTORS['uniform'].hard and selection.SELECTORS['least_entropy'].hard
    # Mixing losses by uniform weights is their mean.
    per_teacher = jnp.array([[1.0, 2.0, 3.0, 4.0], [4.0, 5.0, 6.0, 7.0], [7.0, 8.0, 9.0, 1.0]])
    np.testing.assert_allclose(losses.weighted_per_sample(per_teacher, w), per_teacher.mean(0), rtol=1e-6)


def test_average_combiner_is_the_mean_of_tempered_probabilities():
    target = np.asarray(selection.COMBINERS['average'](LOGITS[:2], 2.0))
    p = [np.exp(np.asarray(l) / 2) / np.exp(np.asarray(l) / 2).sum(-1, keepdims=True) for l in LOGITS[:2]]
    np.testing.assert_allclose(target, (p[0] + p[1]) / 2, rtol=1e-5)


def test_a_new_selector_is_one_decorated_function(monkeypatch):
    monkeypatch.setattr(selection, 'SELECTORS', dict(selection.SELECTORS))

    @selection.selector('last_teacher', online=False)
    def last_teacher(context, rng=None, params=None):
        k = len(context.teacher_logits)
        return selection.one_hot(jnp.full(context.teacher_logits[0].shape[:1], k - 1), k)

    assert selection.get('last_teacher').fn is last_teacher
    np.testing.assert_array_equal(selection.choice(selection.get('last_teacher')(selection.Context(LOGITS))), 2)
    cfg = toy.stage_config(selection='online', selector='last_teacher')
    with pytest.raises(ConfigError, match=r"stage1\.selector = 'last_teacher' can only run offline"):
        config_checks.check_selection(cfg)
    config_checks.check_selection(toy.stage_config(selection='offline', selector='last_teacher'))


def test_unknown_selector_and_old_mode_field_are_refused_with_the_valid_names():
    with pytest.raises(ValueError, match='least_entropy, random, uniform, student_agreement, entropy_percentile'):
        selection.get('oracle')
    with pytest.raises(ConfigError, match=r"stage1\.selector = 'oracle' is unknown; valid selectors: least_entropy"):
        config_checks.check_selection(toy.stage_config(selection='online', selector='oracle'))
    old = toy.quickstart_config()  # a config from before selectors: its mode is read as the selector
    old.stage1.mode = 'average'
    said = []
    assert config_schema.resolve(old, warn=said.append).stage1.selector == 'uniform'
    assert said == ["stage1.mode = 'average' was renamed: read as stage1.selector = 'uniform'."]


def test_recipe_field_is_checked_before_work():
    config = toy.quickstart_config()
    assert config_checks.check_recipes(config_schema.resolve(config)) == ('paper', ())
    config.recipe = 'average'
    config.baselines = ('paper', 'one_stage')
    assert config_checks.check_recipes(config_schema.resolve(config)) == ('average', ('paper', 'one_stage'))
    config.recipe = 'distil_harder'
    with pytest.raises(ConfigError, match=r"recipe = 'distil_harder' is unknown; valid recipes: paper, random"):
        config_checks.validate(config)
    config.recipe = 'paper'
    with pytest.raises(ConfigError, match=r"baselines lists 'paper', the main recipe"):
        config_checks.validate(config)


# ----------------------------------------------------------------------------- the selectors of issue 20

def _register_view_selector(monkeypatch):
    """A selector that asks the offline pass for augmented views: least entropy of each teacher's
    prediction averaged over the plain view and 4 views (the measured-and-dropped view agreement)."""
    monkeypatch.setattr(selection, 'SELECTORS', dict(selection.SELECTORS))

    @selection.selector('stable_teacher', online=False, views=4)
    def stable_teacher(context, rng=None, params=None):
        entropies = [ambiguity.entropy(jnp.log(jnp.concatenate([ambiguity.probabilities(p)[None],
                                                                ambiguity.probabilities(v)]).mean(0)))
                     for p, v in zip(context.teacher_logits, context.view_logits)]
        return selection.one_hot(jnp.argmin(jnp.stack(entropies), axis=0), len(context.teacher_logits))
    return selection.get('stable_teacher')


def test_a_selector_can_ask_for_augmented_views_of_each_image(monkeypatch):
    # Sample 0: teacher 0 is the more confident on the plain view but flips class on every
    # augmented view; teacher 1 is less sure and stable. Sample 1: both stable, teacher 0 surer.
    s = _register_view_selector(monkeypatch)
    plain = (jnp.array([[6.0, 0, 0], [6.0, 0, 0]]), jnp.array([[3.0, 0, 0], [3.0, 0, 0]]))
    flipping = jnp.array([[0.0, 6, 0], [6.0, 0, 0]])
    views = (jnp.stack([flipping] * 4), jnp.stack([plain[1]] * 4))
    w = np.asarray(s(selection.Context(plain, view_logits=views)))
    np.testing.assert_array_equal(w, [[0, 1], [1, 0]])
    # Plain least entropy picks teacher 0 for both: the views are what changed sample 0.
    np.testing.assert_array_equal(selection.SELECTORS['least_entropy'](selection.Context(plain)), [[1, 0], [1, 0]])
    assert s.views == 4 and not s.online and s.hard
    assert 'view_agreement' not in selection.SELECTORS  # measured level with least entropy, dropped


def test_student_agreement_is_uniform_for_a_random_student_and_follows_a_confident_one():
    # Teacher 0 says class 0, teacher 1 class 2; both equally sure.
    logits = (jnp.array([[4.0, 0, 0]] * 2), jnp.array([[0.0, 0, 4]] * 2))
    sel = selection.SELECTORS['student_agreement']
    flat = np.asarray(sel(selection.Context(logits, student_logits=jnp.zeros((2, 3)))))
    np.testing.assert_allclose(flat, 0.5, atol=1e-6)  # a uniform student: no signal yet
    np.testing.assert_allclose(np.asarray(sel(selection.Context(logits))), 0.5)  # no student at all
    w = np.asarray(sel(selection.Context(logits, student_logits=jnp.array([[0.0, 0, 12], [12.0, 0, 0]]))))
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    assert w[0, 1] > 0.99 and w[1, 0] > 0.99  # the teacher that agrees with the student
    # Half-confident student: a weaker preference for the same teacher.
    half = np.asarray(sel(selection.Context(logits, student_logits=jnp.array([[0.0, 0, 1.5]] * 2))))
    assert 0.5 < half[0, 1] < w[0, 1]
    assert sel.student and sel.online and not sel.hard


def test_student_agreement_passes_no_gradient_to_the_student():
    logits = (jnp.array([[4.0, 0, 0]]), jnp.array([[0.0, 0, 4]]))
    g = jax.grad(lambda s: selection.SELECTORS['student_agreement'](
        selection.Context(logits, student_logits=s))[0, 1])(jnp.array([[0.0, 0, 3]]))
    np.testing.assert_array_equal(g, 0.0)


def test_entropy_percentile_ranks_each_teacher_against_its_own_entropies():
    # Teacher 0 is confident on everything (entropy low everywhere), teacher 1 only on samples 2, 3.
    t0 = jnp.array([[9.0, 0, 0], [8.0, 0, 0], [7.0, 0, 0], [6.0, 0, 0]])
    t1 = jnp.array([[0.0, 0, 0], [0.5, 0, 0], [5.0, 0, 0], [4.0, 0, 0]])
    context = selection.Context((t0, t1))
    params = selection.fit_entropy_quantiles(context)
    assert params.shape == (2, selection.PERCENTILE_QUANTILES)
    np.testing.assert_allclose(params[:, 0], [ambiguity.entropy(t0).min(), ambiguity.entropy(t1).min()], rtol=1e-6)
    w = np.asarray(selection.SELECTORS['entropy_percentile'](context, None, params))
    # Least entropy gives all four to teacher 0; by percentile, teacher 1's two surest samples (its
    # 0th and 33rd percentiles, teacher 0's 67th and 100th) go to it.
    np.testing.assert_array_equal(selection.choice(selection.SELECTORS['least_entropy'](context)), [0, 0, 0, 0])
    np.testing.assert_array_equal(selection.choice(w), [0, 0, 1, 1])
    sel = selection.SELECTORS['entropy_percentile']
    assert sel.fit is selection.fit_entropy_quantiles and not sel.online and sel.hard


def test_student_selector_is_refused_offline():
    with pytest.raises(ConfigError, match=r"'student_agreement' reads the student, so it runs online only"):
        config_checks.check_selection(toy.stage_config(selection='offline', selector='student_agreement'))
    for name in ('entropy_percentile',):
        with pytest.raises(ConfigError, match='can only run offline'):
            config_checks.check_selection(toy.stage_config(selection='online', selector=name))


@pytest.mark.parametrize('name, where', [('stable_teacher', 'offline'), ('student_agreement', 'online'),
                                         ('entropy_percentile', 'offline')])
def test_each_new_selector_runs_one_stage1_step_from_the_config(tmp_path, monkeypatch, name, where):
    import types

    from kamal_jax.recipes import stages
    from kamal_jax.tasks import Plan, Task, TeacherSpec
    from kamal_jax.train import sharding
    if name == 'stable_teacher':  # a selector that needs the offline pass's augmented views
        _register_view_selector(monkeypatch)
    a, a_vars = toy.teacher('a_t', 'cifar_resnet8', 7, {'a': (0, 5)}, seed=3)
    b, b_vars = toy.teacher('b_t', 'cifar_resnet14', 6, {'a': (1, 6)}, seed=4)
    plan = Plan({'a': Task('a', 'multiclass', tuple('01234'))},
                (TeacherSpec('a_t', 'cifar_resnet8', 'a.pth', {'a': (0, 5)}),
                 TeacherSpec('b_t', 'cifar_resnet14', 'b.pth', {'a': (1, 6)})), ('a',))
    stage = dict(toy.stage_config(epochs=1, batch_size=8).to_dict(), selection=where, selector=name)
    data = dict(name='toy', image_size=(12, 12), mean=toy.MEAN, std=toy.STD, crop_padding=2)
    config = toy.run_config(eval_batch_size=8, log_every=1, data=data, stage1=stage)
    config_checks.check_selection(config.stage1)
    train = types.SimpleNamespace(images=toy.images(8))  # one batch: one step
    _, variables, metrics = stages.run_stage1('a', plan, {'a_t': a, 'b_t': b}, {'a_t': a_vars, 'b_t': b_vars},
                                              train, config, sharding.make_mesh(1),
                                              Layout(str(tmp_path)).recipe('paper', main=True))
    assert np.isfinite(float(metrics['loss']))
    assert float(metrics['selected/a_t']) + float(metrics['selected/b_t']) == pytest.approx(1.0, abs=1e-5)
