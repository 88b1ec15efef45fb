"""`python -m symbols summary|export`, graph drawing, and the errors for unknown choices."""
import json
import os
import shutil
import subprocess
import sys

import mxnet as mx
import pytest

from symbols import ChoiceError, get_symbol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, env=None):
    return subprocess.run([sys.executable, '-m', 'symbols'] + list(args), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_summary_table_lists_every_model(tmp_path):
    res = run('summary', '--json', str(tmp_path / 'zoo.json'))
    assert res.returncode == 0, res.stderr
    rows = json.load(open(tmp_path / 'zoo.json'))
    by_model = {r['model']: r for r in rows}
    assert by_model['CRU-Net-56 @x14 32x4d']['params'] == 25609384
    assert abs(by_model['CRU-Net-116 @x28x14 32x4d']['gmacs'] - 12.65) < 0.01 * 12.65
    assert len(rows) >= 29 and len(res.stdout.strip().splitlines()) == len(rows) + 2
    assert '| CRU-Net-56 @x14 32x4d |' in res.stdout and '25,609,384' in res.stdout
    # the README carries the same table
    readme = open(os.path.join(ROOT, 'README.md')).read()
    for line in res.stdout.strip().splitlines()[2:]:
        assert line in readme, 'README table is out of date: %s' % line


def test_export_writes_loadable_json(tmp_path):
    prefix = str(tmp_path / 'out' / 'sha50')
    res = run('export', '--network', 'sharesnet', '--num-layers', '50', '--prefix', prefix)
    assert res.returncode == 0, res.stderr
    loaded = mx.sym.load(prefix + '-symbol.json')
    assert loaded.list_arguments() == get_symbol('sharesnet', num_layers=50).list_arguments()
    assert loaded.list_arguments().count('conv3_x__x_3x3_shared_weight') == 1


@pytest.mark.skipif(shutil.which('dot') is None, reason="graphviz 'dot' not installed (make graphviz)")
@pytest.mark.parametrize('fmt,magic', [('png', b'\x89PNG'), ('pdf', b'%PDF')])
def test_export_draws_graph(tmp_path, fmt, magic):
    prefix = str(tmp_path / 'crunet22')
    res = run('export', '--network', 'crunet', '--num-layers', '22', '--setting', 'cifar',
              '--image-shape', '3,32,32', '--num-classes', '10', '--prefix', prefix, '--draw', fmt)
    assert res.returncode == 0, res.stderr
    with open('%s.%s' % (prefix, fmt), 'rb') as f:
        assert f.read(4) == magic


def test_draw_without_graphviz_is_a_clear_error(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no `dot` reachable
    res = run('export', '--network', 'resnet', '--num-layers', '50', '--prefix', str(tmp_path / 'r'),
              '--draw', 'png', env=env)
    assert res.returncode != 0
    assert res.stderr.strip().count('\n') == 0 and 'graphviz' in res.stderr and 'dot' in res.stderr


@pytest.mark.parametrize('network,kwargs,listed', [
    ('vgg', {}, ['crunet', 'resnext', 'resnet', 'sharesnet']),
    ('crunet', dict(num_layers=57), ['22', '56', '116']),
    ('crunet', dict(num_layers=56, setting='64x4d'), ['32x4d', '136x1d', 'tiny']),
    ('crunet', dict(num_layers=116, setting='tiny'), ['32x4d', 'wider']),
    ('resnext', dict(num_layers=101, setting='Nx1d'), ['32x4d', '64x4d']),
    ('resnet', dict(num_layers=34), ['50', '101', '152', '200']),
    ('sharesnet', dict(num_layers=18), ['34', '50', '101', '152', '164']),
    ('sharesnet', dict(num_layers=30, widen_factor=4), ['16', '22', '28', '40']),
])
def test_unknown_choice_lists_valid_ones(network, kwargs, listed):
    with pytest.raises(ChoiceError) as err:
        get_symbol(network, **kwargs)
    for choice in listed:
        assert choice in str(err.value)


def test_cli_unknown_depth_is_one_line_error(tmp_path):
    res = run('export', '--network', 'crunet', '--num-layers', '57', '--prefix', str(tmp_path / 'x'))
    assert res.returncode != 0
    assert res.stderr.strip() == 'error: crunet: unknown num_layers 57; valid choices: 22, 56, 116'


def test_bad_image_shape():
    with pytest.raises(ValueError, match='image_shape'):
        get_symbol('resnet', num_layers=50, image_shape='224,224')
