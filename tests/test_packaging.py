"""What an install puts on a machine: two packages (``symbols`` and ``crunet``) and nothing generic,
the console commands, the data recipes; and the size limits that keep the code navigable."""
import ast
import configparser
import os
import subprocess
import sys

from train_helpers import ROOT

GENERIC = {'common', 'data', 'tools', 'bench', 'score', 'train_imagenet', 'tests', 'utils'}


def _setup(tmp_path, *cmd):
    return subprocess.run([sys.executable, 'setup.py', '-q'] + list(cmd), cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONDONTWRITEBYTECODE='1'))


def test_install_holds_only_the_two_packages_the_commands_and_the_recipes(tmp_path):
    egg = tmp_path / 'egg'
    egg.mkdir()
    r = _setup(tmp_path, 'egg_info', '--egg-base', str(egg))
    assert r.returncode == 0, r.stderr
    info = next(p for p in egg.iterdir() if p.name.endswith('.egg-info'))
    assert set((info / 'top_level.txt').read_text().split()) == {'crunet', 'symbols'}
    entry = configparser.ConfigParser()
    entry.read(str(info / 'entry_points.txt'))
    assert set(entry['console_scripts']) == {'crunet-train', 'crunet-score', 'crunet-im2rec', 'crunet-export',
                                             'crunet-launch'}
    lib = tmp_path / 'lib'
    r = _setup(tmp_path, 'build_py', '--build-lib', str(lib))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in lib.iterdir()) == ['crunet', 'symbols']
    assert not GENERIC & set(os.listdir(str(lib)))
    recipes = lib / 'crunet' / 'recipes'
    assert {'imagenet.sh', 'places365.sh', 'recipe_env.sh'} <= set(os.listdir(str(recipes)))


def test_installed_recipe_runs_outside_the_repository(tmp_path):
    """The recipes find their helper beside themselves and work from any directory."""
    lib = tmp_path / 'lib'
    assert _setup(tmp_path, 'build_py', '--build-lib', str(lib)).returncode == 0
    r = subprocess.run(['bash', str(lib / 'crunet' / 'recipes' / 'imagenet.sh'), '--help'], cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and 'ImageNet' in r.stdout + r.stderr, r.stdout + r.stderr
    r = subprocess.run(['bash', str(lib / 'crunet' / 'recipes' / 'places365.sh'), str(tmp_path / 'nowhere')],
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and 'error' in r.stderr and 'recipe_env' not in r.stderr, r.stderr


def _product_files():
    for top in ('crunet', 'symbols', 'tools'):
        for d, _, fs in os.walk(os.path.join(ROOT, top)):
            for f in fs:
                if f.endswith('.py'):
                    yield os.path.join(d, f)
    for f in ('train_imagenet.py', 'score.py', 'setup.py'):
        yield os.path.join(ROOT, f)


def _excused(src):
    """A module may exceed the limits when a ``# size-exempt: why`` comment before its imports says why."""
    top = src.split('\nimport ', 1)[0].split('\nfrom ', 1)[0]
    return '# size-exempt: ' in top


def test_product_functions_and_modules_stay_small():
    """No function over 80 lines, no module over 450, unless a comment at its top says why."""
    too_long = []
    for path in _product_files():
        src = open(path, encoding='utf-8').read()
        if _excused(src):
            continue
        rel = os.path.relpath(path, ROOT)
        if src.count('\n') > 450:
            too_long.append('%s: %d lines' % (rel, src.count('\n')))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                too_long.append('%s: %s() is %d lines' % (rel, node.name, node.end_lineno - node.lineno + 1))
    assert not too_long, '\n'.join(too_long)


def test_model_files_hold_no_graph_code():
    """A network file is a preset table and a get_symbol that calls build_network: no mx.sym calls."""
    for name in ('crunet', 'resnext', 'resnet', 'sharesnet'):
        src = open(os.path.join(ROOT, 'symbols', name + '.py'), encoding='utf-8').read()
        assert 'mx.sym' not in src and 'import mxnet' not in src, name
        assert 'build_network(' in src and '**kwargs' not in src, name
