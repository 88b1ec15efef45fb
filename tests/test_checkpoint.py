"""Released CRU-Net checkpoints load on stock MXNet and give the project's outputs; mismatched params are named.

The released files cannot be downloaded here, so the files these tests load stand in for them:
the project's CRU-Net graph saved in the released format (MXNet 0.9 JSON, node attributes under
``attr``, depthwise convolutions as the fork's ``ChannelwiseConvolution``) with random weights.
They test the format conversion, not the released weights; the released names and shapes are
spelled out by hand in tests/test_symbols_names.py."""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import score_helpers as H
from symbols import get_symbol, load_checkpoint as zoo_load_checkpoint
from symbols.checkpoint import (CheckpointError, ParamMismatchError, check_params, convert_symbol_json,
                                load_checkpoint, load_symbol)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERTED = {56: 6, 116: 24}      # depthwise (shared) 3x3 convolutions: conv4 x6; conv3 x6 + conv4 x18


@pytest.mark.parametrize('depth', [56, 116])
def test_released_format_loads_and_matches_get_symbol(depth):
    prefix = H.released_checkpoint(depth)
    with pytest.raises(mx.base.MXNetError, match='ChannelwiseConvolution is not registered'):
        mx.sym.load(prefix + '-symbol.json')
    sym, arg, aux = zoo_load_checkpoint(prefix, 0)
    ours = get_symbol('crunet', num_layers=depth)
    assert sym.list_arguments() == ours.list_arguments()
    assert sym.list_auxiliary_states() == ours.list_auxiliary_states()
    nodes = json.loads(sym.tojson())['nodes']
    dw = [n for n in nodes if n['op'] == 'Convolution' and n['attrs']['num_group'] == n['attrs']['num_filter']
          and n['attrs']['num_group'] != '1']
    assert len(dw) == CONVERTED[depth] and not any(n['op'] == 'ChannelwiseConvolution' for n in nodes)
    data = np.random.RandomState(depth).uniform(-2, 2, (2, 3, 64, 64)).astype(np.float32)
    got = H.forward(H.logits_of(sym), arg, aux, data)[0]
    want = H.forward(H.logits_of(ours), arg, aux, data)[0]
    assert got.shape == (2, 1000) and np.abs(want).max() > 0.1
    np.testing.assert_array_equal(got, want)             # max abs difference 0.0: the same graph


def test_convert_command_writes_stock_json(tmp_path):
    prefix = H.released_checkpoint(56)
    dst = tmp_path / 'stock-symbol.json'
    proc = subprocess.run([sys.executable, '-m', 'symbols.export', 'convert', prefix + '-symbol.json', str(dst)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '6 ChannelwiseConvolution' in proc.stdout
    stock = mx.sym.load(str(dst))                                   # plain MXNet, no conversion
    assert stock.list_arguments() == get_symbol('crunet', num_layers=56).list_arguments()
    assert json.loads(dst.read_text())['attrs']['mxnet_version'][1] >= 10900
    # the converted file with the released params is an ordinary checkpoint
    assert convert_symbol_json(str(dst), str(tmp_path / 'again-symbol.json')) == []


def test_legacy_08_layout_loads(tmp_path):
    """'param' dicts, no mxnet_version, no node_row_ptr, two-element heads (MXNet <= 0.8)."""
    graph = json.loads(H.released_json(get_symbol('crunet', num_layers=56)))
    for node in graph['nodes']:
        if node['op'] != 'null' and 'attr' in node:
            node['param'] = node.pop('attr')
    del graph['attrs'], graph['node_row_ptr']
    graph['heads'] = [h[:2] for h in graph['heads']]
    path = tmp_path / 'old-symbol.json'
    path.write_text(json.dumps(graph))
    sym = load_symbol(str(path))
    assert sym.list_arguments() == get_symbol('crunet', num_layers=56).list_arguments()


def test_project_checkpoint_roundtrip():
    prefix = H.project_checkpoint('sharesnet', num_layers=50)
    sym, arg, aux = load_checkpoint(prefix, 0)
    ref_sym, ref_arg, ref_aux = mx.model.load_checkpoint(prefix, 0)
    assert sym.tojson() == ref_sym.tojson()
    assert sorted(arg) == sorted(ref_arg) and sorted(aux) == sorted(ref_aux)


def test_network_option_binds_project_symbol():
    prefix = H.released_checkpoint(56)
    sym, arg, _ = load_checkpoint(prefix, 0, network='crunet', num_layers=56)
    assert sym.tojson() == get_symbol('crunet', num_layers=56).tojson()


# ----------------------------------------------------------------------------- mismatched parameters
def test_wrong_depth_names_first_parameter():
    prefix = H.released_checkpoint(56)
    with pytest.raises(ParamMismatchError) as err:
        load_checkpoint(prefix, 0, network='crunet', num_layers=116)
    msg = str(err.value)
    assert msg.startswith('missing parameter conv3_x__1_c1x1-w(s/key)__bn__bn_gamma (expected shape (256,))')
    assert '\n' not in msg
    # same widths but other shapes: CRU-Net-116's conv4 group bases against CRU-Net-56's
    _, arg56, aux56 = load_checkpoint(prefix, 0)
    sym116 = get_symbol('crunet', num_layers=116)
    arg = dict(H.random_params(sym116, seed=1)[0])
    arg['conv4_x__(1)_1x1_bases[dim3]_weight'] = mx.nd.zeros((640, 1024, 1, 1))
    _, aux116 = H.random_params(sym116, seed=1)
    with pytest.raises(ParamMismatchError, match=r'^parameter conv4_x__\(1\)_1x1_bases\[dim3\]_weight: '
                                                 r'expected shape \(704, 1024, 1, 1\), found \(640, 1024, 1, 1\)$'):
        check_params(sym116, arg, aux116)


def test_wrong_class_count_and_extra_parameter():
    prefix = H.released_checkpoint(56)
    _, arg, aux = load_checkpoint(prefix, 0)
    with pytest.raises(ParamMismatchError) as err:
        check_params(get_symbol('crunet', num_layers=56, num_classes=10), arg, aux, (3, 64, 64))
    assert str(err.value) == ('parameter fc6_weight: expected shape (10, 2048), found (1000, 2048) '
                              '(and 1 more mismatched parameter)')
    with pytest.raises(ParamMismatchError, match='^parameter fc6_weight: expected shape'):
        load_checkpoint(prefix, 0, network='crunet', num_layers=56, num_classes=365)
    extra = dict(arg, fc7_weight=mx.nd.zeros((3, 4)))
    with pytest.raises(ParamMismatchError, match=r'^unexpected parameter fc7_weight \(shape \(3, 4\)\)'):
        check_params(get_symbol('crunet', num_layers=56), extra, aux)
    check_params(get_symbol('crunet', num_layers=56), extra, aux, allow_extra=True)
    missing = dict(aux)
    del missing['conv2_x__1_c1x1-a__bn__bn_moving_var']
    with pytest.raises(ParamMismatchError, match=r'^missing auxiliary state conv2_x__1_c1x1-a__bn__bn_moving_var '
                                                 r'\(expected shape \(64,\)\)$'):
        check_params(get_symbol('crunet', num_layers=56), arg, missing)
    assert issubclass(ParamMismatchError, ValueError)


def test_missing_files_and_bad_json(tmp_path):
    with pytest.raises(CheckpointError, match='params file not found: .*nothing-0003.params'):
        load_checkpoint(str(tmp_path / 'nothing'), 3)
    bad = tmp_path / 'bad-symbol.json'
    bad.write_text('{"nodes": [')
    with pytest.raises(CheckpointError, match='not a symbol JSON'):
        load_symbol(str(bad))
    proc = subprocess.run([sys.executable, '-m', 'symbols.export', 'convert', str(bad), str(tmp_path / 'x.json')],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith('error:') and proc.stderr.count('\n') == 1


def test_channelwise_without_num_group_and_fork_attributes(tmp_path):
    """A ChannelwiseConvolution without num_group, with an attribute of the fork only, is
    still the depthwise convolution (the unknown attribute is dropped with a warning)."""
    graph = json.loads(H.released_json(get_symbol('crunet', num_layers=56)))
    for node in graph['nodes']:
        if node['op'] == 'ChannelwiseConvolution':
            del node['attr']['num_group']
            node['attr']['fork_only_option'] = '1'
    path = tmp_path / 'fork-symbol.json'
    path.write_text(json.dumps(graph))
    with pytest.warns(UserWarning, match='fork_only_option'):
        sym = load_symbol(str(path))
    conv = [n for n in json.loads(sym.tojson())['nodes'] if n['name'] == 'conv4_x__3_c3x3-b(1)__conv'][0]
    assert conv['op'] == 'Convolution' and conv['attrs']['num_group'] == conv['attrs']['num_filter'] == '640'
    arg_shapes, _, _ = sym.infer_shape(data=(1, 3, 64, 64))
    assert dict(zip(sym.list_arguments(), arg_shapes))['conv4_x__x_3x3_bases[dim21]_weight'] == (640, 1, 3, 3)
