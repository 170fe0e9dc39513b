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


def _softmax_np(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_pooled_target_without_partial_teachers_is_the_plain_average_or_product():
    rng = np.random.default_rng(0)
    logits = [jnp.asarray(rng.normal(size=(6, 5)) * s, jnp.float32) for s in (1.0, 3.0)]
    np.testing.assert_array_equal(losses.pooled_target(logits, kind='product', temperature=4.0),
                                  losses.normalised_product(logits, 4.0))
    np.testing.assert_array_equal(losses.pooled_target(logits, kind='average', temperature=4.0),
                                  losses.average_probabilities(logits, 4.0))


@pytest.mark.parametrize('kind', ['product', 'average'])
def test_pooled_target_minimises_its_objective_with_a_partial_teacher(kind):
    """The gradient of the documented objective, written out here in numpy, vanishes at the result:
    sum over teachers of KL(q on S || p) ('product') or KL(p || q on S) ('average')."""
    rng = np.random.default_rng(1)
    n, k = 8, 5
    full = [rng.normal(size=(n, k)).astype(np.float32) * s for s in (1.0, 2.0)]
    partial, covered = [rng.normal(size=(n, 2)).astype(np.float32) * 3.0], [np.array([3, 1])]
    q = np.asarray(losses.pooled_target([jnp.asarray(l) for l in full], [jnp.asarray(partial[0])], covered,
                                        kind=kind, steps=20000), np.float64)
    grad = np.zeros((n, k))
    for logits, classes in [(l, np.arange(k)) for l in full] + list(zip(partial, covered)):
        p = _softmax_np(logits.astype(np.float64))
        q_s = q[:, classes] / q[:, classes].sum(-1, keepdims=True)
        if kind == 'average':  # d/dz KL(p || softmax(z_S)) = q_S - p
            g = q_s - p
        else:  # d/dz KL(softmax(z_S) || p) = q_S * (log q_S - log p - KL)
            log_ratio = np.log(q_s) - np.log(p)
            g = q_s * (log_ratio - (q_s * log_ratio).sum(-1, keepdims=True))
        grad[:, classes] += g
    assert np.abs(grad).max() < 1e-4
    # And the partial teacher moved the target: it differs from the full teachers' own combination.
    plain = np.asarray(losses.pooled_target([jnp.asarray(l) for l in full], kind=kind))
    assert np.abs(q - plain).max() > 0.01


@pytest.mark.parametrize('kind', ['product', 'average'])
def test_a_partial_teacher_settles_what_the_full_teachers_leave_open(kind):
    """Two full teachers split evenly between classes 0 and 2; a teacher that knows only classes
    {0, 2} (and is sure of 2) decides it. Classes it does not cover keep the full teachers' ratio."""
    full = [jnp.asarray([[3.0, 0.0, 3.0, 1.0]]), jnp.asarray([[2.0, 0.5, 2.0, 0.0]])]
    partial = [jnp.asarray([[0.0, 4.0]])]  # columns: task classes 0 and 2
    q = np.asarray(losses.pooled_target(full, partial, [np.array([0, 2])], kind=kind))[0]
    plain = np.asarray(losses.pooled_target(full, kind=kind))[0]
    assert plain[0] == pytest.approx(plain[2]) and q[2] > q[0] + 0.1
    if kind == 'product':  # the uncovered classes' odds are the product's
        assert q[1] / q[3] == pytest.approx(plain[1] / plain[3], rel=1e-4)


def test_a_partial_teacher_weighted_zero_changes_nothing():
    rng = np.random.default_rng(2)
    full = [jnp.asarray(rng.normal(size=(4, 5)), jnp.float32) for _ in range(2)]
    partial = [jnp.asarray(rng.normal(size=(4, 3)) * 4.0, jnp.float32)]
    weights = [jnp.asarray([0.0, 1.0, 0.0, 1.0])]
    q = np.asarray(losses.pooled_target(full, partial, [np.array([0, 2, 4])], partial_weights=weights))
    plain = np.asarray(losses.pooled_target(full))
    np.testing.assert_allclose(q[[0, 2]], plain[[0, 2]], atol=1e-6)
    assert np.abs(q[[1, 3]] - plain[[1, 3]]).max() > 0.01
