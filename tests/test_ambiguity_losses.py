"""The pure math: entropy, least-ambiguity selection, losses, weight-norm term."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kamal_jax import ambiguity, losses, selection


def test_entropy_matches_definition():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    p = np.exp(np.array(logits)) / np.exp(np.array(logits)).sum(-1, keepdims=True)
    expected = -(p * np.log(p)).sum(-1)
    np.testing.assert_allclose(ambiguity.entropy(logits), expected, rtol=1e-6)
    np.testing.assert_allclose(ambiguity.entropy(logits)[1], np.log(3), rtol=1e-6)


def test_entropy_is_finite_for_extreme_logits():
    logits = jnp.array([[1e30, 0.0], [-1e30, 1e30], [1e4, 1e4], [-1e38, 3.0]])
    h = np.asarray(ambiguity.entropy(logits))
    assert np.all(np.isfinite(h))
    np.testing.assert_allclose(h, [0.0, 0.0, np.log(2), 0.0], atol=1e-6)


def test_sigmoid_logit_is_two_way():
    z = jnp.array([[1.3], [-0.2]])
    p = 1 / (1 + np.exp(-np.array(z[:, 0])))
    expected = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    np.testing.assert_allclose(ambiguity.entropy(z), expected, rtol=1e-5)


def test_selection_picks_least_ambiguous_per_sample():
    # Teacher 0 is confident on sample 0, teacher 1 on sample 1, teacher 2 on sample 2.
    t0 = jnp.array([[9.0, 0, 0], [0, 0, 0], [1, 0, 0]])
    t1 = jnp.array([[1.0, 0, 0], [0, 8, 0], [1, 0, 0]])
    t2 = jnp.array([[0.0, 0, 0], [0, 0, 0], [0, 0, 20]])
    np.testing.assert_array_equal(selection.choice(selection.least_entropy(selection.Context((t0, t1, t2)))),
                                  [0, 1, 2])


def test_selection_ties_go_to_first_teacher():
    same = jnp.array([[2.0, 1.0], [0.0, 0.0]])
    least = selection.SELECTORS['least_entropy']
    np.testing.assert_array_equal(selection.choice(least(selection.Context((same,) * 3))), [0, 0])
    # Logit shift does not change entropy: still a tie, still the first teacher.
    np.testing.assert_array_equal(selection.choice(least(selection.Context((same + 100.0, same)))), [0, 0])


def test_weight_norm_zero_exactly_at_unit_filters():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 8)))  # orthonormal columns
    assert float(losses.weight_norm_penalty(jnp.asarray(q, jnp.float32))) < 1e-10
    assert float(losses.weight_norm_penalty(jnp.zeros((16, 8)))) == pytest.approx(1.0)
    assert float(losses.weight_norm_penalty(2 * jnp.asarray(q, jnp.float32))) == pytest.approx(9.0, rel=1e-5)
    # Mean over filters, not sum: one filter off by norm^2 = 2 out of 4 gives 1/4.
    k = np.eye(4, dtype=np.float32)
    k[:, 0] *= np.sqrt(2.0)
    assert float(losses.weight_norm_penalty(jnp.asarray(k))) == pytest.approx(0.25, rel=1e-5)


def test_feature_mse_resizes_teacher_to_student_grid():
    student = jnp.ones((2, 4, 4, 3))
    teacher = jnp.ones((2, 8, 8, 3)) * 3.0
    np.testing.assert_allclose(losses.feature_mse(student, teacher), [4.0, 4.0], rtol=1e-6)


def test_logit_losses_per_sample():
    s = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    t = jnp.array([[1.0, 2.0], [2.0, 0.0]])
    np.testing.assert_allclose(losses.logit_mse(s, t), [0.0, 2.0])
    kl = losses.soft_kl(s, t, temperature=2.0)
    assert kl[0] == pytest.approx(0.0, abs=1e-7) and kl[1] > 0


def test_weighted_per_sample_uses_weights():
    per_teacher = jnp.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])  # (teachers, batch)
    mask = selection.one_hot(jnp.array([1, 0, 1]), 2)
    np.testing.assert_allclose(losses.weighted_per_sample(per_teacher, mask), [10.0, 2.0, 30.0])
