"""Label-free diagnostics: each value against a direct count on a small hand-made case."""
import numpy as np
import pytest

from kamal_jax import diagnostics as dg


def test_each_value_counts_what_it_says():
    student = np.array([[.9, .1, 0], [.1, .8, .1], [.2, .2, .6], [.5, .4, .1]])
    sharp = np.array([[.98, .01, .01], [.01, .98, .01], [.01, .01, .98], [.01, .98, .01]])  # low entropy
    flat = np.array([[.3, .4, .3], [.4, .3, .3], [.2, .2, .6], [.6, .2, .2]])
    d = dg.task_diagnostics(student, {'sharp': sharp, 'flat': flat})
    # student tops 0,1,2,0; sharp 0,1,2,1; flat 1,0,2,0
    assert d['agreement'] == {'sharp': 0.75, 'flat': 0.5}
    assert d['agreement_with_combined'] == 0.75  # sharp is always the less ambiguous
    assert d['selected_fraction'] == {'sharp': 1.0, 'flat': 0.0}
    assert d['teacher_disagreement'] == 0.75
    assert d['images'] == 4
    h = lambda p: float(np.mean(-np.sum(p * np.log(p + (p == 0)), -1)))
    assert d['mean_entropy'] == pytest.approx({'student': h(student), 'sharp': h(sharp), 'flat': h(flat)})


def test_identical_teachers_agree_fully_and_ties_go_to_the_first():
    p = dg.probabilities(np.random.default_rng(0).normal(size=(50, 4)))
    d = dg.task_diagnostics(p[::-1], {'a': p, 'b': p.copy()})
    assert d['teacher_disagreement'] == 0.0 and d['selected_fraction'] == {'a': 1.0, 'b': 0.0}
    assert d['agreement']['a'] == d['agreement']['b'] == d['agreement_with_combined'] < 1.0


def test_probabilities_of_one_sigmoid_logit():
    np.testing.assert_allclose(dg.probabilities(np.array([[0.0], [np.log(3.0)]])), [[.5, .5], [.25, .75]])


def test_the_log_line_says_agreement_and_disagreement_per_task():
    d = {'images': 8, 'agreement_with_combined': 0.875, 'teacher_disagreement': 0.25}
    text = dg.line({'a': d, 'b': dict(d, agreement_with_combined=0.5)})
    assert text.startswith('a agrees with the least ambiguous teacher on 87.5% of 8 held-out images '
                           '(teachers disagree on 25.0%); b agrees with the least ambiguous teacher on 50.0%')
    assert 'no teacher' in dg.line({})
