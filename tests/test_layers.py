"""The layers of the code: every import of every module under symbols/ and crunet/ goes to its own
layer or one below, and nothing imports an entry point. Read off the source with ``ast`` (nothing
is imported), so a new upward import fails here naming the file, the line and both layers."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the layers, bottom first: a module may import its own layer and those below it (README, "Layout").
#: A name maps to the layer of its longest listed prefix.
LAYERS = (
    ('zoo', ('symbols',)),
    ('foundation', ('crunet', 'crunet.errors', 'crunet.files', 'crunet.log', 'crunet.args')),
    ('platform', ('crunet.perf', 'crunet.cudabuild', 'crunet.gpu', 'crunet.devices', 'crunet.isa')),
    ('data', ('crunet.data',)),
    ('work', ('crunet.evaluate', 'crunet.classify', 'crunet.quantize', 'crunet.train', 'crunet.launch',
              'crunet.cluster')),
    ('commands', ('crunet.cli',)),
)
#: outside the standard library, the zoo imports MXNet, NumPy and (the ONNX export, on first use)
#: onnx / onnxruntime only
ZOO_PACKAGES = ('mxnet', 'numpy', 'onnx', 'onnxruntime')
#: entry points: run, never imported; they (and ``if __name__ == '__main__':`` blocks) may import any layer
ENTRY_POINTS = ('score', 'train_imagenet', 'setup', 'tools', 'bench', 'symbols.__main__')


def layer_of(name):
    """Index in :data:`LAYERS` of the module ``name``, or None for one outside them."""
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + '.')) and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    return None if best is None else best[0]


def is_entry_point(name):
    return any(name == e or name.startswith(e + '.') for e in ENTRY_POINTS)


def modules():
    """``(dotted name, path)`` of every module of symbols/ and crunet/ (entry points included)."""
    found = []
    for top in ('symbols', 'crunet', 'tools', 'bench'):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for f in sorted(files):
                if f.endswith('.py'):
                    rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                    if rel[-1] == '__init__':
                        rel = rel[:-1]
                    found.append(('.'.join(rel), os.path.join(folder, f)))
    for f in ('score.py', 'train_imagenet.py'):
        found.append((f[:-3], os.path.join(ROOT, f)))
    return found


def _is_main_guard(node):
    test = getattr(node, 'test', None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == '__name__' and any(isinstance(c, ast.Constant) and c.value == '__main__'
                                                    for c in test.comparators))


def imports(name, path):
    """``(line, imported module)`` of every import in the module (at any depth, functions included),
    those under an ``if __name__ == '__main__':`` guard left out (entry-point code)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    found = []

    def visit(node):
        if _is_main_guard(node):
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                parts = parts[:len(parts) - (node.level - 1)]
                base = '.'.join(parts + ([node.module] if node.module else []))
            for a in node.names:         # ``from pkg import mod`` imports the module pkg.mod
                sub = '%s.%s' % (base, a.name)
                is_module = any(os.path.exists(os.path.join(ROOT, *sub.split('.')) + ext)
                                for ext in ('.py', os.sep + '__init__.py'))
                found.append((node.lineno, sub if is_module else base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def upward_imports():
    """One line per import that breaks the layers: ``file:line: what``."""
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for name, path in modules():
        where = os.path.relpath(path, ROOT)
        own = layer_of(name)
        for line, target in imports(name, path):
            if is_entry_point(name):
                continue
            top = target.split('.')[0]
            if is_entry_point(target):
                problems.append('%s:%d: %s imports the entry point %s (entry points are run, never imported)'
                                % (where, line, name, target))
                continue
            theirs = layer_of(target)
            if theirs is not None and theirs > own:
                problems.append('%s:%d: %s (layer %s) imports %s (layer %s): an import up the layers'
                                % (where, line, name, LAYERS[own][0], target, LAYERS[theirs][0]))
            if own == 0 and theirs is None and top not in stdlib and top not in ZOO_PACKAGES:
                problems.append('%s:%d: %s (layer zoo) imports %s: the zoo imports only MXNet, NumPy, the '
                                'standard library and itself' % (where, line, name, target))
    return problems


def import_cycles():
    """Cycles of module-level imports (those that run at import time) among the modules."""
    names = dict(modules())
    graph = {}
    for name, path in names.items():
        with open(path) as f:
            body = ast.parse(f.read(), path).body
        top_lines = {n.lineno for n in body if isinstance(n, (ast.Import, ast.ImportFrom))}
        graph[name] = set()
        for line, target in imports(name, path):
            while line in top_lines and target and target not in names:
                target = target.rpartition('.')[0]
            if line in top_lines and target and target != name:
                graph[name].add(target)
    cycles, state, stack = [], {}, []

    def visit(name):
        state[name] = 'open'
        stack.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == 'open':
                cycles.append(' -> '.join(stack[stack.index(other):] + [other]))
            elif other not in state:
                visit(other)
        stack.pop()
        state[name] = 'done'

    for name in sorted(graph):
        if name not in state:
            visit(name)
    return cycles


def test_every_module_is_in_a_layer_or_an_entry_point():
    unplaced = [name for name, _ in modules() if layer_of(name) is None and not is_entry_point(name)]
    assert unplaced == []


def test_no_import_goes_up_a_layer():
    problems = upward_imports()
    assert not problems, '\n'.join(problems)


def test_module_level_imports_form_no_cycle():
    assert import_cycles() == []


def test_the_check_names_an_upward_import(tmp_path, monkeypatch):
    """A zoo module importing crunet, and a data module importing the commands, are reported with
    their file and line."""
    bad = tmp_path / 'bad.py'
    bad.write_text('import os\n\ndef f():\n    import crunet.errors\n    from crunet.cli import score\n')
    assert imports('symbols.bad', str(bad)) == [(1, 'os'), (4, 'crunet.errors'), (5, 'crunet.cli.score')]
    real = modules()
    monkeypatch.setattr(sys.modules[__name__], 'modules',
                        lambda: real + [('symbols.bad', str(bad)), ('crunet.data.bad', str(bad))])
    problems = upward_imports()
    rel = os.path.relpath(str(bad), ROOT)
    assert '%s:4: symbols.bad (layer zoo) imports crunet.errors (layer foundation): an import up the layers' % rel \
        in problems
    assert '%s:5: crunet.data.bad (layer data) imports crunet.cli.score (layer commands): an import up the ' \
           'layers' % rel in problems


@pytest.mark.parametrize('module', ['crunet.cli.train', 'crunet.cli.score', 'symbols', 'crunet.errors',
                                    'crunet.files', 'crunet.args', 'crunet.perf'])
def test_importing_a_module_changes_nothing_in_the_process(module):
    """Importing the train or score command (crunet.perf.configure() runs in their run()), the zoo
    package or the helpers that serve code running before MXNet is loaded neither loads MXNet
    nor changes os.environ."""
    code = ('import os, sys; before = dict(os.environ); import %s; '
            'print(dict(os.environ) == before, "mxnet" in sys.modules)' % module)
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS', 'MXNET_CPU_WORKER_NTHREADS')}
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    unchanged, loaded_mxnet = proc.stdout.split()
    assert unchanged == 'True'
    assert loaded_mxnet == 'False'
