"""The docs name no placeholder repository, and every training command in them names its recipe, so
a command stays the run it reports when the default recipe changes."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
PUBLISHED = DOCS + sorted(glob.glob(os.path.join(ROOT, 'notebooks', '*.ipynb'))) + [os.path.join(ROOT, 'pyproject.toml')]

# The placeholder owner in capitals only ('the owner of the workdir' is prose), spelt so that
# `git grep` for it finds none in the repository, this file included.
PLACEHOLDER = re.compile(r'\bO[W]NER\b|\bYOUR[_-]?(?:USER(?:NAME)?|NAME|ORG)\b|github\.com/<|(?i:\bexample\.(?:com|org)\b)')
# A command that trains a shipped config (whose results the docs report); a user's own file reports nothing.
TRAINS = re.compile(r'(?:\blaunch\.py|\bkamal-jax)\s+--config[\s=](?:configs/|kamal_jax:)')


def placeholders(text: str) -> list:
    return PLACEHOLDER.findall(text)


def commands(markdown: str) -> list:
    """Every line of a fenced code block (continuation lines joined), and every inline code span."""
    found, prose, fence = [], [], None
    for line in markdown.replace('\\\n', ' ').splitlines():
        if line.lstrip().startswith('```'):
            fence = None if fence else line.strip()
        elif fence:
            found.append(line)
        else:
            prose.append(line)
    found += [' '.join(span.split()) for span in re.findall(r'`([^`]+)`', '\n'.join(prose))]
    return found


def recipe_less(markdown: str) -> list:
    """The training commands (`launch.py --config ...`, `kamal-jax --config ...`) without `--config.recipe`."""
    return [c.strip() for c in commands(markdown)
            if TRAINS.search(c) and '--config.recipe' not in c and '--print_config' not in c]


def test_the_checks_catch_what_they_look_for():
    assert placeholders('pip install "kamal-jax @ git+https://github.com/%s/kamal_jax"' % 'O'.join(['', 'WNER']))
    assert not placeholders('the owner of the workdir')
    doc = ('Run\n\n```python\nx = 1\n```\n\n```bash\npython launch.py --config configs/quickstart.py \\\n    --workdir runs/q\n'
           'kamal-jax --config kamal_jax:quickstart --workdir runs/q --config.recipe=product\n```\n\n'
           'or `python launch.py --config configs/bench_cifar10_parts.py\n--workdir DIR`; `launch.py` alone is no command; '
           '`kamal-jax --config mine.py --workdir runs/mine` trains no shipped config.')
    assert recipe_less(doc) == ['python launch.py --config configs/quickstart.py      --workdir runs/q',
                                'python launch.py --config configs/bench_cifar10_parts.py --workdir DIR']


def test_no_placeholder_in_what_users_read():
    found = {os.path.relpath(p, ROOT): placeholders(open(p, encoding='utf-8').read()) for p in PUBLISHED}
    assert not {p: f for p, f in found.items() if f}, found


def test_every_training_command_in_the_docs_names_its_recipe():
    missing = {os.path.relpath(p, ROOT): recipe_less(open(p, encoding='utf-8').read()) for p in DOCS}
    assert not {p: m for p, m in missing.items() if m}, 'name the recipe (--config.recipe=...) in: %s' % missing
