"""The package's shape, read from its source (ast; nothing is imported): dependencies point down, the
core imports no tool and the tools only its API, and only the layout joins paths under a workdir."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'kamal_jax'

# What `kamal_jax/train/` may import of the package besides itself: the method's pure pieces, models,
# data and small utilities. The run's layers above it (what it needs of them arrives as arguments):
LOWER = {'ambiguity', 'losses', 'selection', 'label_models', 'files', 'progress', 'locks', 'models', 'data'}
UPPER = {'workdir', 'tasks', 'recipes', 'pipeline', 'summary', 'layout', 'config_schema', 'config_checks',
         'config_files', 'cli', 'teachers', 'own_images', 'plots', 'export', 'diagnostics', 'budgets', 'porting',
         'zoo', 'benchmarks', 'predict', 'xla', 'api'}
TOOLS = ('benchmarks', 'zoo')  # programs on top of the core: `kamal_jax.<tool>` and below
API = 'api'  # the core's one module the tools import from


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


def test_no_function_over_a_screen_in_the_core_and_the_zoo_training():
    paths = [p for p in _modules() if not any(p.is_relative_to(PACKAGE / t) for t in TOOLS)]
    paths.append(PACKAGE / 'zoo' / 'train.py')
    assert PACKAGE / 'pipeline.py' in paths and PACKAGE / 'porting' / '__main__.py' in paths
    found = {str(p.relative_to(PACKAGE.parent)): long for p in paths for long in [_long_functions(p)] if long}
    assert not found, f'functions over {MAX_LINES} lines: {found}'


# ----------------------------------------------------------------------------- the core and its tools

def _import_edges(root: pathlib.Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """(importing module, imported module, names taken from it) for every import of the package at
    `root` of itself, at module or function level. `from P import X` counts as importing P.X when X
    is a module or folder of P, else as taking the name X from P."""
    out = []
    for path in sorted(root.rglob('*.py')):
        parts = path.relative_to(root.parent).with_suffix('').parts
        module = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out += [(module, a.name, ()) for a in node.names if a.name.split('.')[0] == root.name]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == root.name:
                where = root.parent / node.module.replace('.', '/')
                names = tuple(a.name for a in node.names)
                modules = [n for n in names if (where / n).is_dir() or (where / f'{n}.py').exists()]
                out += [(module, f'{node.module}.{n}', ()) for n in modules]
                if len(modules) < len(names):
                    out.append((module, node.module, tuple(n for n in names if n not in modules)))
    return out


def _api_names(root: pathlib.Path) -> set[str]:
    """The names the API module offers: the keys of its `WHERE` table."""
    for node in ast.parse((root / f'{API}.py').read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ['WHERE']:
            return set(ast.literal_eval(node.value))
    raise AssertionError(f'{root.name}/{API}.py has no WHERE table')


def _layer_faults(root: pathlib.Path) -> list[str]:
    """Every breach of the layering of the package at `root`, one sentence each.

    How it decides: a module is a tool's when it lies under `root/<tool>` for a tool of TOOLS, else it
    is the core's. (1) The core imports nothing of a tool. (2) A tool imports of the package only
    itself, another tool, and names that `root/api.py`'s WHERE table lists, taken from that module.
    (3) Packages are each folder below `root` and each module directly in it; no two of them import
    each other, directly or through others (a circle in the graph of their imports).
    """
    pkg = root.name
    tools = {f'{pkg}.{t}' for t in TOOLS}
    api, offered = f'{pkg}.{API}', _api_names(root)

    def tool_of(module: str) -> str | None:
        return next((t for t in tools if module == t or module.startswith(t + '.')), None)

    faults, graph = [], {}
    for module, imported, names in _import_edges(root):
        if tool_of(module) is None and tool_of(imported) is not None:
            faults.append(f'core module {module} imports the tool {imported}')
        if tool_of(module) is not None and tool_of(imported) is None:
            if imported != api and not (imported == pkg and set(names) <= {API}):
                faults.append(f'tool module {module} imports {imported}, not through {api}')
            elif imported == api and set(names) - offered:
                faults.append(f'tool module {module} takes {sorted(set(names) - offered)} from {api}, '
                              f'which does not offer them')
        a, b = ('.'.join(m.split('.')[:2]) for m in (module, imported))
        if a != b:
            graph.setdefault(a, set()).add(b)

    def reached(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for b in graph.get(todo.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen

    circles = {tuple(sorted((a, b))) for a in graph for b in reached(a) if a != b and a in reached(b)}
    faults += [f'{a} and {b} import each other' for a, b in sorted(circles)]
    return faults


def _tree(root: pathlib.Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source)


def test_the_layer_check_reports_each_breach_of_a_hand_made_package(tmp_path):
    pkg = tmp_path / 'pkg'
    good = {'pkg/__init__.py': '', 'pkg/api.py': "WHERE = {'run': ('pkg.core', 'run')}\n",
            'pkg/core.py': 'import subprocess\ndef run():\n    subprocess.run(["python", "-m", "pkg.zoo"])\n',
            'pkg/low/__init__.py': '', 'pkg/low/a.py': 'X = 1\n', 'pkg/high/__init__.py': '',
            'pkg/high/b.py': 'from pkg.low import a\n', 'pkg/zoo/__init__.py': '',
            'pkg/zoo/__main__.py': 'from pkg.api import run\nfrom pkg.zoo import helpers\n', 'pkg/zoo/helpers.py': '',
            'pkg/benchmarks/__init__.py': '', 'pkg/benchmarks/b.py': 'from pkg.zoo import helpers\n'}
    _tree(tmp_path, good)
    assert _layer_faults(pkg) == []
    _tree(tmp_path, {'pkg/core.py': 'def run():\n    from pkg.zoo import helpers\n',
                     'pkg/benchmarks/b.py': 'import pkg.low.a\nfrom pkg.api import run, secret\n',
                     'pkg/low/a.py': 'def f():\n    from pkg.high import b\n'})
    assert sorted(_layer_faults(pkg)) == [
        'core module pkg.core imports the tool pkg.zoo.helpers',
        'pkg.high and pkg.low import each other',
        'tool module pkg.benchmarks.b imports pkg.low.a, not through pkg.api',
        "tool module pkg.benchmarks.b takes ['secret'] from pkg.api, which does not offer them"]


def test_the_core_imports_no_tool_and_the_tools_only_its_api():
    assert _layer_faults(PACKAGE) == []


def test_every_name_of_the_api_is_where_it_says():
    """Each WHERE entry names a module of the package and an attribute defined at its top level."""
    from kamal_jax import api
    for name, (module, attribute) in api.WHERE.items():
        path = PACKAGE.parent / module.replace('.', '/')
        path = path / '__init__.py' if path.is_dir() else path.with_suffix('.py')
        assert path.exists(), f'api.{name}: no module {module}'
        if attribute is None:
            continue
        tree = ast.parse(path.read_text())
        top = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                top.add(node.name)
            elif isinstance(node, ast.Assign):
                top |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                top |= {(a.asname or a.name).split('.')[0] for a in node.names}
        assert attribute in top, f'api.{name}: {module} defines no {attribute}'
