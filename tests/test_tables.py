"""Every results table in the checked docs is what `kamal_jax.benchmarks.tables` prints from its results
files, and no results-looking table there is typed by hand without saying so."""
import pytest

from kamal_jax.benchmarks import tables

RECORD = 'docs/results/bench_utkface_attributes.json'
MARKER = f'<!-- table: python -m kamal_jax.benchmarks.tables models {RECORD} -->'


def test_the_docs_tables_are_what_their_results_files_print():
    problems = tables.check()
    assert not problems, '\n'.join(problems)


def test_the_docs_with_results_are_checked_and_hold_marked_tables():
    docs = tables.checked_docs()
    assert 'docs/CONFIG.md' not in docs
    for doc in ('README.md', 'docs/BENCHMARKS.md', 'docs/PERFORMANCE.md'):
        assert doc in docs
        with open(f'{tables.ROOT}/{doc}', encoding='utf-8') as f:
            assert tables.blocks(f.read()), f'{doc} has no marked table'


def _doc(body: str, before: str = '') -> str:
    return f'Some prose.\n\n{before}{MARKER}\n{body}\n{tables.END}\n\nMore prose.\n'


def test_a_figure_changed_by_hand_is_caught_and_write_restores_it():
    table = tables.render(['models', RECORD])
    assert '| target | target | resnet18 | 1,096,667 | 26.4 | 88.2 | 76.2 |' in table  # the file's 0.88209, 0.76165
    assert tables.problems(_doc(table), 'doc.md') == []
    edited = _doc(table.replace('| 88.2 | 76.2 |', '| 88.3 | 76.2 |'))
    (problem,) = tables.problems(edited, 'doc.md')
    assert problem.startswith('doc.md:3: the table of `python -m kamal_jax.benchmarks.tables models')
    assert tables.rewritten(edited) == _doc(table)
    assert tables.rewritten(_doc('')) == _doc(table)  # an empty marker is filled


def test_a_results_looking_table_needs_a_marker_or_a_reason():
    numeric = '| step | img/s |\n|---|---:|\n| stage1 | **14.0** |\n'
    words = '| field | meaning |\n|---|---|\n| `epochs` | passes over the data |\n'
    assert tables.unmarked(f'Intro.\n\n{numeric}') == [3]
    assert tables.unmarked(f'Intro.\n\n{words}') == []
    assert tables.unmarked(f'Intro.\n<!-- not results: the options, by name -->\n{numeric}') == []
    assert tables.unmarked(f'Intro.\n<!-- no results file: figures from the run\'s log -->\n{numeric}') == []
    assert tables.unmarked(f'Intro.\n<!-- not results: -->\n{numeric}') == [3]  # a reason is required
    assert tables.unmarked(f'```\n{numeric}```\n') == []  # a fenced block is code, not a table


@pytest.mark.parametrize('words, message', [
    (['no_such_kind', RECORD], "unknown table kind 'no_such_kind'; valid: ["),
    (['models', 'docs/results/missing.json'], "results file 'docs/results/missing.json' does not exist"),
])
def test_a_bad_marker_is_named(words, message):
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace('(', r'\(')):
        tables.render(words)


def test_an_unclosed_marker_is_named():
    with pytest.raises(ValueError, match='line 1: a table marker without'):
        tables.blocks(f'{MARKER}\n| a |\n')


def test_points_round_a_zero_to_plus_zero_and_seeds_read_as_ranges():
    assert tables.points(-2e-17) == '+0.0' and tables.points(-0.0004) == '+0.0' and tables.points(-0.0006) == '-0.1'
    assert [tables.seeds_text(s) for s in ([0, 1, 2, 3, 4], [1], [0, 2], [0, 1])] == ['0-4', '1', '0,2', '0,1']


def test_a_screen_table_keeps_only_the_runs_it_names():
    quickstart = 'docs/results/combiners_label_models_quickstart.json'
    whole = tables.render(['screen_summary', quickstart, 'against=product'])
    one = tables.render(['screen_summary', quickstart, 'against=product', 'runs=seed3'])
    rows = tables.render(['screen', quickstart, 'rules=product', 'summary=no', 'runs=seed3;seed4']).splitlines()[2:]
    assert one != whole and [r.split(' |')[0] for r in rows] == ['| 3, digits_0to4', '| 3, digits_5to9',
                                                                  '| 4, digits_0to4', '| 4, digits_5to9']
