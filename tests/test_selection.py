"""Each selector alone, the registry, and the config checks on selectors and recipes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy
from kamal_jax import ambiguity, config_checks, losses, selection
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
    cfg.selection = 'offline'
    config_checks.check_selection(cfg)


def test_unknown_selector_and_old_mode_field_are_refused_with_the_valid_names():
    with pytest.raises(ValueError, match='least_entropy, random, uniform'):
        selection.get('oracle')
    with pytest.raises(ConfigError, match=r"stage1\.selector = 'oracle' is unknown; valid selectors: least_entropy"):
        config_checks.check_selection(toy.stage_config(selection='online', selector='oracle'))
    with pytest.raises(ConfigError, match=r"stage1\.mode was replaced by stage1\.selector.*'uniform'"):
        config_checks.check_selection(toy.stage_config(selection='online', mode='average'))


def test_recipe_field_is_checked_before_work():
    config = toy.quickstart_config()
    assert config_checks.check_recipes(config) == ('paper', ())
    config.recipe = 'average'
    config.baselines = ('paper', 'one_stage')
    assert config_checks.check_recipes(config) == ('average', ('paper', 'one_stage'))
    config.recipe = 'distil_harder'
    with pytest.raises(ConfigError, match=r"recipe = 'distil_harder' is unknown; valid recipes: paper, random"):
        config_checks.validate(config)
    config.recipe = 'paper'
    with pytest.raises(ConfigError, match=r"baselines lists 'paper', the main recipe"):
        config_checks.validate(config)
