"""The docs name no placeholder repository, every training command in them names its recipe, so
a command stays the run it reports when the default recipe changes, and every relative link and
`#anchor` in them leads somewhere, so moving a section does not strand its readers."""
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


# An inline link or image, `[text](target)` or `![alt](target "title")`.
LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')


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


def outside_fences(markdown: str) -> list:
    """The lines outside fenced code blocks."""
    lines, fence = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith('```'):
            fence = not fence
        elif not fence:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text without link targets, lower case, every character
    other than a letter, digit, space, hyphen or underscore dropped (backticks, quotes, brackets),
    spaces as hyphens."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading).strip().lower()
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(markdown: str) -> set:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen, found = {}, set()
    for line in outside_fences(markdown):
        heading = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
        if heading:
            base = slug(heading.group(1))
            found.add(base if base not in seen else '%s-%d' % (base, seen[base]))
            seen[base] = seen[base] + 1 if base in seen else 1
    return found


def broken_links(path: str) -> list:
    """The relative links and anchors in the Markdown file at `path` that lead nowhere: a file or
    folder that does not exist, or an anchor no heading of the target Markdown file has."""
    broken = []
    for line in outside_fences(open(path, encoding='utf-8').read()):
        for target in LINK.findall(re.sub(r'`[^`]*`', '``', line)):
            if re.match(r'[a-z][a-z0-9+.-]*:', target, re.I):      # http:, https:, mailto:
                continue
            file, _, anchor = target.partition('#')
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(resolved):
                broken.append(target)
            elif anchor and (not resolved.endswith('.md')
                             or anchor not in anchors(open(resolved, encoding='utf-8').read())):
                broken.append(target)
    return broken


def test_the_link_check_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'GUIDE.md').write_text(
        '# Guide\n\n## Real-data benchmarks (the paper\'s protocol)\n\n## `data.views`, K views\n\n'
        '## Notes\n\n## Notes\n\n```bash\n# not a heading\n```\n'
        'Back to the [README](../README.md#install) and [here](#notes-1).\n')
    (tmp_path / 'README.md').write_text(
        '# Project\n\n## Install\n\n'
        'See [the guide](docs/GUIDE.md), [benchmarks](docs/GUIDE.md#real-data-benchmarks-the-papers-protocol), '
        '[views](docs/GUIDE.md#dataviews-k-views), ![a plot](docs/GUIDE.md "title"), [the web](https://jax.dev#x), '
        '[above](#install), [the docs folder](docs/).\n\n'
        'Broken: [gone](docs/GONE.md), [no heading](docs/GUIDE.md#not-a-heading), [case](docs/GUIDE.md#Notes), '
        '[here](#nowhere), [third](docs/GUIDE.md#notes-2).\n\n'
        '```markdown\n[in code](docs/NOT_CHECKED.md)\n```\nand `[in a span](docs/NOR_THIS.md)`.\n')
    assert broken_links(str(tmp_path / 'README.md')) == [
        'docs/GONE.md', 'docs/GUIDE.md#not-a-heading', 'docs/GUIDE.md#Notes', '#nowhere', 'docs/GUIDE.md#notes-2']
    assert broken_links(str(tmp_path / 'docs' / 'GUIDE.md')) == []


def test_every_relative_link_and_anchor_in_the_docs_resolves():
    broken = {os.path.relpath(p, ROOT): broken_links(p) for p in DOCS}
    assert not {p: b for p, b in broken.items() if b}, broken


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
