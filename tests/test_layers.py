"""The package's shape, read from its source (ast; nothing is imported): dependencies point down,
and only the layout joins paths under a workdir."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'kamal_jax'

# What `kamal_jax/train/` may import of the package besides itself: the method's pure pieces, models,
# data and small utilities. The run's layers above it (what it needs of them arrives as arguments):
LOWER = {'ambiguity', 'losses', 'selection', 'label_models', 'files', 'progress', 'locks', 'models', 'data'}
UPPER = {'workdir', 'tasks', 'recipes', 'pipeline', 'summary', 'layout', 'config_schema', 'config_checks',
         'config_files', 'cli', 'teachers', 'own_images', 'plots', 'export', 'diagnostics', 'budgets', 'porting',
         'zoo', 'benchmarks', 'predict', 'xla'}


def _modules():
    return sorted(p for p in PACKAGE.rglob('*.py'))


def _dotted(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every kamal_jax module `path` imports, at any depth of its code (lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split('.')[0] == 'kamal_jax'}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == 'kamal_jax':
            out.add(node.module)
            out |= {f'{node.module}.{a.name}' for a in node.names
                    if (PACKAGE.parent / f'{node.module}.{a.name}'.replace('.', '/')).with_suffix('.py').exists()
                    or (PACKAGE.parent / f'{node.module}.{a.name}'.replace('.', '/')).is_dir()}
    return out


def _top(module: str) -> str:
    """kamal_jax.X[.Y...] -> X ('' for the package itself)."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def test_the_import_reader_sees_lazy_and_from_imports(tmp_path):
    path = tmp_path / 'm.py'
    path.write_text('from kamal_jax import summary as s\n'
                    'def f():\n    from kamal_jax.workdir import first_difference\n    import kamal_jax.tasks\n')
    assert {_top(m) for m in _imports(path)} == {'', 'summary', 'workdir', 'tasks'}


def test_train_imports_nothing_of_the_layers_above_it():
    by_module = {_dotted(p): _imports(p) for p in _modules()}
    train = [m for m in by_module if m.startswith('kamal_jax.train.')]
    assert len(train) > 10
    for module in train:
        direct = {_top(m) for m in by_module[module]} - {'', 'train'}
        assert direct <= LOWER, f'{module} imports {sorted(direct - LOWER)}, a layer above kamal_jax.train'
    # Nor through what it imports: the closure of train/'s imports holds no upper layer.
    seen, todo = set(), list(train)
    while todo:
        module = todo.pop()
        if module in seen or module not in by_module:
            continue
        seen.add(module)
        todo += [m for m in by_module[module] if _top(m) != '']  # the package's own __init__ is lazy
    reached = {_top(m) for m in seen}
    assert not reached & UPPER, f'kamal_jax.train reaches {sorted(reached & UPPER)}'


def test_recipes_import_nothing_of_the_run_above_them():
    # The run (pipeline, cli) writes the summary, the plots and the workdir's identity; recipes hand
    # it their trained nets.
    above = {'pipeline', 'cli', 'summary', 'plots', 'workdir', 'export'}
    for path in sorted((PACKAGE / 'recipes').glob('*.py')):
        reached = {_top(m) for m in _imports(path)} & above
        assert not reached, f'{_dotted(path)} imports {sorted(reached)}'


# ----------------------------------------------------------------------------- workdir paths

def _names_a_workdir(node: ast.AST) -> bool:
    """`workdir`, `run.workdir`, `args.workdir`, `self._workdir`, ...: a variable or attribute whose
    name says it holds a workdir."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ''
    return 'workdir' in name.lower()


def _call_name(node: ast.Call) -> str:
    """'join' for os.path.join / posixpath.join / join, 'Path' for pathlib.Path / Path, else ''."""
    func = node.func
    if isinstance(func, ast.Name):
        return func.id if func.id in ('join', 'Path', 'PurePath') else ''
    if isinstance(func, ast.Attribute):
        owner = func.value.attr if isinstance(func.value, ast.Attribute) else getattr(func.value, 'id', '')
        if func.attr == 'join' and owner in ('path', 'posixpath', 'ntpath'):
            return 'join'
        if func.attr in ('Path', 'PurePath') and owner == 'pathlib':
            return 'Path'
    return ''


def _under_a_workdir(node: ast.AST) -> bool:
    """A path built under a workdir: os.path.join(WORKDIR, ...), Path(WORKDIR, ...), Path(WORKDIR) / 'x',
    WORKDIR / 'x', WORKDIR + '/x', f'{WORKDIR}/x'."""
    if isinstance(node, ast.Call) and node.args and _names_a_workdir(node.args[0]):
        name = _call_name(node)
        return name == 'join' or (name in ('Path', 'PurePath') and len(node.args) > 1)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left = node.left
        return _names_a_workdir(left) or (isinstance(left, ast.Call) and _call_name(left) in ('Path', 'PurePath')
                                          and len(left.args) == 1 and _names_a_workdir(left.args[0]))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return (_names_a_workdir(node.left) and isinstance(node.right, ast.Constant)
                and str(node.right.value).startswith(('/', '\\')))
    if isinstance(node, ast.JoinedStr) and len(node.values) > 1:
        first, second = node.values[0], node.values[1]
        return (isinstance(first, ast.FormattedValue) and _names_a_workdir(first.value)
                and isinstance(second, ast.Constant) and str(second.value).startswith(('/', '\\')))
    return False


def _workdir_joins(source: str) -> list[int]:
    return sorted({node.lineno for node in ast.walk(ast.parse(source)) if _under_a_workdir(node)})


@pytest.mark.parametrize('source, hits', [
    ("os.path.join(workdir, 'stage1', task)", 1),
    ("os.path.join(run.workdir, 'export')", 1),
    ("glob.glob(os.path.join(args.workdir, 'zoo', '*.json'))", 1),
    ("pathlib.Path(workdir) / 'tb'", 1),
    ("Path(workdir, 'tb')", 1),
    ("workdir + '/summary.json'", 1),
    ("f'{workdir}/zoo/{name}.pth'", 1),
    ("os.path.join(layout.root, 'x')", 0),   # the layout's own root is how it joins
    ("os.path.join(directory, name)", 0),    # a folder that was handed over, not a workdir
    ("f'workdir {workdir!r} is a file'", 0),  # words about a workdir, no path under it
    ("os.path.abspath(workdir)", 0),
    ("', '.join(workdirs)", 0),             # str.join
])
def test_the_join_finder_on_examples(source, hits):
    assert len(_workdir_joins(source)) == hits


def test_only_the_layout_joins_paths_under_a_workdir():
    found = {str(p.relative_to(PACKAGE.parent)): lines for p in _modules() if p != PACKAGE / 'layout.py'
             for lines in [_workdir_joins(p.read_text())] if lines}
    assert not found, f'paths joined under a workdir outside kamal_jax/layout.py (file: lines): {found}'


# ----------------------------------------------------------------------------- function size

MAX_LINES = 60  # a screen


def _long_functions(path: pathlib.Path) -> dict[str, int]:
    """Functions and methods of `path` longer than MAX_LINES, decorators and docstring included."""
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if node.end_lineno - first + 1 > MAX_LINES:
                out[f'{node.name} (line {node.lineno})'] = node.end_lineno - first + 1
    return out


def test_the_size_reader_counts_a_function_from_its_decorator_to_its_end(tmp_path):
    path = tmp_path / 'm.py'
    path.write_text('@dec\ndef f():\n' + '    x = 1\n' * (MAX_LINES - 2) + '\n\ndef g():\n    pass\n')
    assert _long_functions(path) == {}
    path.write_text('@dec\ndef f():\n' + '    x = 1\n' * (MAX_LINES - 1))
    assert _long_functions(path) == {'f (line 2)': MAX_LINES + 1}


def test_no_function_over_a_screen_in_train_recipes_and_the_pipeline():
    paths = [*sorted((PACKAGE / 'train').glob('*.py')), *sorted((PACKAGE / 'recipes').glob('*.py')),
             PACKAGE / 'pipeline.py']
    found = {str(p.relative_to(PACKAGE.parent)): long for p in paths for long in [_long_functions(p)] if long}
    assert not found, f'functions over {MAX_LINES} lines: {found}'
