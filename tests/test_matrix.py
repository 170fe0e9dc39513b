"""The recipe x selector matrix: rows, selectors and points against the best teacher from a run's files."""
import json
import os

import pytest

from kamal_jax.benchmarks import matrix


def _run(tmp_path, recipe, selector):
    teacher = lambda acc: {'role': 'teacher', 'accuracy': acc}
    summary = {'models': {
        'ta': teacher({'a': 0.80}), 'tb': teacher({'a': 0.70}), 'tc': teacher({'b': 0.60}), 'td': teacher({'b': 0.65}),
        'component_a': {'role': 'component', 'accuracy': {'a': 0.81},
                        'selection': {'selected_fraction': {'ta': 0.4, 'tb': 0.6}, 'selected_teacher_accuracy': 0.75,
                                      'oracle_accuracy': 0.9}},
        'component_b': {'role': 'component', 'accuracy': {'b': 0.66},
                        'selection': {'selected_fraction': {'tc': 0.5, 'td': 0.5}, 'selected_teacher_accuracy': 0.62,
                                      'oracle_accuracy': 0.7}},
        'target': {'role': 'target', 'accuracy': {'a': 0.83, 'b': 0.64}, 'epochs': 5},
        'baseline_average': {'role': 'baseline', 'accuracy': {'a': 0.78, 'b': 0.69}, 'epochs': 15},
        'baseline_one_stage': {'role': 'baseline', 'accuracy': {'a': 0.80, 'b': 0.65}, 'epochs': 15},
    }}
    config = {'recipe': recipe, 'seed': 3, 'target_tasks': ['a', 'b'],
              'stage1': {'selector': selector, 'selection': 'offline'}}
    d = tmp_path / 'run'
    d.mkdir()
    (d / 'summary.json').write_text(json.dumps(summary))
    (d / 'config.json').write_text(json.dumps(config))
    return str(d)


def test_rows_score_every_net_against_the_best_teacher_with_the_selector_each_recipe_uses(tmp_path):
    rows = {r['net']: r for r in matrix.rows(_run(tmp_path, 'paper', 'entropy_percentile'))}
    assert list(rows) == ['target', 'baseline_average', 'baseline_one_stage']
    assert rows['target']['selector'] == 'entropy_percentile (offline)'
    assert rows['baseline_one_stage']['selector'] == 'entropy_percentile (offline)'
    assert rows['baseline_average']['selector'] == '-'
    assert rows['target']['tasks']['a']['minus_best_teacher'] == pytest.approx(0.03)
    assert rows['target']['tasks']['b']['minus_best_teacher'] == pytest.approx(-0.01)
    assert rows['baseline_average']['tasks']['b']['minus_best_teacher'] == pytest.approx(0.04)
    # Selection diagnostics belong to the two-stage target's components only.
    assert rows['target']['tasks']['a']['selection']['selected_teacher_accuracy'] == 0.75
    assert 'selection' not in rows['baseline_average']['tasks']['a']
    text = matrix.table(list(rows.values()))
    assert '| run | paper | entropy_percentile (offline) | +3.0 / -1.0 | 75.0 / 62.0 | 80.0 / 65.0 | 90.0 / 70.0 |' in text


def test_a_recipe_that_changes_the_selector_is_named_by_its_own(tmp_path):
    assert matrix.recipe_selector('random', {'stage1': {'selector': 'least_entropy'}}) == 'random (online)'
    assert matrix.recipe_selector('product', {'stage1': {}}) == '-'
    assert matrix.recipe_selector('logits_only', {'stage1': {}}) == 'least_entropy (online)'


def test_a_workdir_without_a_summary_is_named(tmp_path):
    (tmp_path / 'config.json').write_text('{}')
    with pytest.raises(SystemExit, match='summary.json is missing'):
        matrix.rows(str(tmp_path))


def test_rows_of_earlier_files_join_and_each_recipe_gets_mean_spread_and_worst_task_over_seeds(tmp_path):
    def run(seed, recipe, a, b):
        task = lambda d: {'teachers': {'t': 0.8}, 'best_teacher': 0.8, 'target': 0.8 + d, 'target_minus_best_teacher': d}
        return {'seed': seed, 'recipe': recipe, 'tasks': {'a': task(a), 'b': task(b)}}
    path = tmp_path / 'old.json'
    path.write_text(json.dumps({'runs': [run(0, 'average', 0.01, 0.04), run(1, 'average', 0.03, -0.02),
                                         run(0, 'product', 0.02, 0.00)]}))
    rows = matrix.included(str(path))
    assert [r['selector'] for r in rows] == ['-', '-', '-'] and rows[1]['tasks']['b']['result'] == pytest.approx(0.78)
    rows += matrix.rows(_run(tmp_path, 'paper', 'least_entropy'))[:1]  # seed 3
    rows.append(dict(rows[0], tasks={t: dict(e, minus_best_teacher=-0.5) for t, e in rows[0]['tasks'].items()}))
    summary = matrix.summarise(rows)
    avg = summary['average | -']
    assert avg['seeds'] == [0, 1]  # the second seed-0 row is the same run again: counted once
    assert avg['tasks']['a'] == pytest.approx({'mean': 0.02, 'min': 0.01, 'max': 0.03, 'n': 2})
    assert avg['worst'] == {'minus_best_teacher': pytest.approx(-0.02), 'seed': 1, 'task': 'b'}
    assert summary['paper | least_entropy (offline)']['worst']['seed'] == 3
    assert '| average | - | 0,1 | +2.0 [+1.0, +3.0] / +1.0 [-2.0, +4.0] | -2.0 (seed 1, b) |' in matrix.summary_table(summary)
