"""Bad graphs, bad flags and unwritable outputs given to the model-zoo and export command lines
(``python -m symbols``, ``python -m symbols.export``) and to every reader of a -symbol.json: each
is one ``error:`` line naming the culprit, with exit status 2 (bad input) or 1 (a tool or
package of the machine), no traceback, no crash and no half-written file."""
import json
import os
import subprocess
import sys

import mxnet as mx
import pytest

import score_helpers as H
from symbols.checkpoint import CheckpointError, load_checkpoint, load_symbol, upgrade_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--network', 'crunet', '--num-layers', '22', '--setting', 'cifar', '--num-classes', '10',
        '--image-shape', '3,32,32']

#: a head naming output 5 of a variable (which has one): MXNet reads out of bounds on it
MISSING_OUTPUT = {"nodes": [{"op": "null", "name": "data", "inputs": []}], "arg_nodes": [0], "heads": [[0, 5, 0]]}


def _run(args, env=None, timeout=300):
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=env)


def _one_error(res, code, *names):
    """``res`` failed with ``code`` and printed exactly one line, ``error: ...``, naming ``names``."""
    assert res.returncode == code, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), res.stderr[-2000:]
    assert 'Traceback' not in res.stderr
    for name in names:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def _write_json(path, graph):
    path.write_text(json.dumps(graph))
    return str(path)


# ----------------------------------------------------------------------------- graph JSON
def test_convert_rejects_a_head_naming_an_output_the_node_lacks(tmp_path):
    src = _write_json(tmp_path / 'bad-symbol.json', MISSING_OUTPUT)
    res = _run(['-m', 'symbols.export', 'convert', src, str(tmp_path / 'out-symbol.json')])
    line = _one_error(res, 2, src, 'output 5 of node 0 (data')
    assert 'has 1 output' in line
    assert not (tmp_path / 'out-symbol.json').exists()


def test_convert_rejects_nodes_that_are_not_objects(tmp_path):
    src = _write_json(tmp_path / 'ints-symbol.json', {"nodes": [1, 2]})
    res = _run(['-m', 'symbols.export', 'convert', src, str(tmp_path / 'out.json')])
    _one_error(res, 2, src, 'node 0 is 1')
    assert os.listdir(str(tmp_path)) == ['ints-symbol.json']


def test_scoring_a_checkpoint_whose_head_names_a_missing_output_is_an_error_not_a_crash(tmp_path):
    prefix = str(tmp_path / 'bad')
    _write_json(tmp_path / 'bad-symbol.json', MISSING_OUTPUT)
    mx.nd.save(prefix + '-0000.params', {'arg:w': mx.nd.zeros((1,))})
    for _ in range(3):                                    # the out-of-bounds read crashed about half the time
        res = _run([os.path.join(ROOT, 'score.py'), '--model', prefix, '--epoch', '0',
                    '--data-val', str(tmp_path / 'none.rec')])
        _one_error(res, 2, 'bad-symbol.json', 'output 5 of node 0')


@pytest.mark.parametrize('graph,message', [
    ({"nodes": [{"op": "null", "name": "data", "inputs": []}], "arg_nodes": [0], "heads": [[3, 0, 0]]},
     'head [3, 0, 0]: refers to node 3, not one of the 1 nodes'),
    ({"nodes": [{"op": "null", "name": "data", "inputs": []},
                {"op": "relu", "name": "r", "inputs": [[1, 0, 0]]}], "arg_nodes": [0], "heads": [[1, 0, 0]]},
     'node 1 (r) input: refers to node 1, not an earlier node (0..0)'),
    ({"nodes": [{"op": "null", "name": "data", "inputs": []},
                {"op": "relu", "name": "r", "inputs": [[0, 1, 0]]}], "arg_nodes": [0], "heads": [[1, 0, 0]]},
     'output 1 of node 0 (data, op null) is used, but the node has 1 output'),
    ({"nodes": [{"op": "null", "name": "data", "inputs": []},
                {"op": "relu", "name": "r", "inputs": [[0, 0, 0]]}], "arg_nodes": [0], "heads": [[1, 1, 0]]},
     'output 1 of node 1 (r, op relu) is used, but the node has 1 output'),
    ({"nodes": [{"op": "null", "name": "data", "inputs": []}], "arg_nodes": [0], "heads": [[-1, 0, 0]]},
     'is not an entry [node_id, output_index, version]'),
    ({"nodes": [{"op": "null", "name": "data", "inputs": []}], "arg_nodes": [7], "heads": [[0, 0, 0]]},
     '"arg_nodes" must list node ids 0..0'),
    ({"nodes": [{"op": "null", "name": 3, "inputs": []}], "arg_nodes": [0], "heads": [[0, 0, 0]]},
     'node 0: "name" must be a string'),
    ({"nodes": [{"op": "null", "name": "data", "inputs": []}], "arg_nodes": [0]},
     'no "heads"'),
    ([], 'no "nodes" list'),
])
def test_malformed_graphs_name_what_is_wrong(tmp_path, graph, message):
    path = _write_json(tmp_path / 'g-symbol.json', graph)
    with pytest.raises(CheckpointError) as err:
        load_symbol(path)
    assert message in str(err.value) and path in str(err.value)


def test_operator_outputs_are_counted_as_mxnet_counts_them():
    """BatchNorm has three outputs (output, mean, var) and SliceChannel num_outputs: a head on
    the last one is a valid graph, one past it is not."""
    data = mx.sym.var('data')
    graph = json.loads(mx.sym.Group([mx.sym.BatchNorm(data, name='bn'),
                                     mx.sym.SliceChannel(data, num_outputs=3, name='sl')[2]]).tojson())
    bn = [n['name'] for n in graph['nodes']].index('bn')
    fixed, _ = upgrade_json(dict(graph, heads=[[bn, 2, 0]]))
    assert mx.sym.load_json(fixed).list_outputs() == ['bn_var']
    with pytest.raises(CheckpointError, match='output 3 of node %d \\(bn, op BatchNorm\\) is used, but the node '
                                              'has 3 outputs' % bn):
        upgrade_json(dict(graph, heads=[[bn, 3, 0]]))
    sl = bn + 1
    with pytest.raises(CheckpointError, match='output 3 of node %d \\(sl, op SliceChannel\\)' % sl):
        upgrade_json(dict(graph, heads=[[sl, 3, 0]]))


def test_released_graphs_still_load_and_match_the_stock_symbol():
    prefix = H.released_checkpoint(56)
    sym, arg, aux = load_checkpoint(prefix, 0)
    assert sym.list_outputs() == ['softmax_output'] and len(arg) > 100


# ----------------------------------------------------------------------------- python -m symbols
def test_symbols_export_to_a_prefix_under_a_regular_file(tmp_path):
    (tmp_path / 'afile').write_text('x')
    prefix = str(tmp_path / 'afile' / 'net')
    res = _run(['-m', 'symbols', 'export'] + TINY + ['--prefix', prefix])
    _one_error(res, 2, '--prefix ' + prefix, 'is a file, not a folder')


def test_symbols_summary_json_under_a_regular_file(tmp_path):
    (tmp_path / 'afile').write_text('x')
    res = _run(['-m', 'symbols', 'summary', '--json', str(tmp_path / 'afile' / 'rows.json')])
    _one_error(res, 2, '--json', 'is a file, not a folder')
    assert res.stdout == ''                                # checked before the (slow) table


def test_symbols_export_bad_image_shape_names_the_flag(tmp_path):
    res = _run(['-m', 'symbols', 'export', '--network', 'crunet', '--num-layers', '22', '--image-shape', '3,x',
                '--prefix', str(tmp_path / 'n')])
    _one_error(res, 2, '--image-shape', "'3,x'")
    assert os.listdir(str(tmp_path)) == []


def test_draw_with_a_failing_graphviz_is_one_line_and_leaves_no_drawing(tmp_path):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    dot = bin_dir / 'dot'                          # a graphviz that fails the way a broken install does
    dot.write_text('#!/bin/sh\necho "Error: could not load the png plugin" >&2\nexit 3\n')
    dot.chmod(0o755)
    env = dict(os.environ, PATH='%s:%s' % (bin_dir, os.environ['PATH']))
    out = tmp_path / 'out'
    res = _run(['-m', 'symbols', 'export'] + TINY + ['--prefix', str(out / 'net'), '--draw', 'png'], env=env)
    _one_error(res, 1, '--draw png', 'could not load the png plugin')
    assert sorted(os.listdir(str(out))) == ['net-symbol.json']
    mx.sym.load(str(out / 'net-symbol.json'))             # the symbol itself was written whole


def test_draw_without_graphviz_writes_nothing(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path / 'empty'))
    out = tmp_path / 'out'
    res = _run(['-m', 'symbols', 'export'] + TINY + ['--prefix', str(out / 'net'), '--draw', 'svg'], env=env)
    _one_error(res, 2, "graphviz's 'dot'", 'net.svg')
    assert not out.exists()


# ----------------------------------------------------------------------------- python -m symbols.export
@pytest.mark.parametrize('value', ['0', '-2'])
def test_onnx_batch_size_below_one(tmp_path, value):
    prefix = H.scoring_set()['prefix']
    res = _run(['-m', 'symbols.export', 'onnx', '--model', prefix, '--out', str(tmp_path / 'm.onnx'),
                '--image-shape', '3,32,32', '--batch-size', value])
    _one_error(res, 2, '--batch-size must be at least 1, not %s' % value)
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize('flags,message', [
    (['--tolerance', '0'], '--tolerance must be a positive number'),
    (['--tolerance', 'nan'], '--tolerance must be a positive number'),
    (['--image-shape', '3,32'], '--image-shape must be C,H,W'),
    (['--raw-rgb-input', '--image-shape', '1,32,32'], '--raw-rgb-input needs 3 (RGB) input channels'),
    (['--epoch', '-1'], '--epoch must be 0 or more'),
    (['--synset', '/nonexistent/synset.txt'], '--synset /nonexistent/synset.txt: no such file'),
    (['--num-layers', '22'], '--num-layers needs --network'),
    (['--frobnicate'], 'unrecognized arguments: --frobnicate'),
])
def test_inference_export_bad_flags(tmp_path, capsys, flags, message):
    from crunet.cli.export import main
    argv = ['inference', '--model', H.scoring_set()['prefix'], '--out', str(tmp_path / 'o' / 'net')]
    if '--image-shape' not in flags:
        argv += ['--image-shape', '3,32,32']
    try:
        code = main(argv + flags)
    except SystemExit as exc:                              # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and err.startswith('error: ') and message in err, err
    assert not (tmp_path / 'o').exists() or os.listdir(str(tmp_path / 'o')) == []


def test_inference_export_under_a_regular_file(tmp_path):
    (tmp_path / 'afile').write_text('x')
    res = _run(['-m', 'symbols.export', 'inference', '--model', H.scoring_set()['prefix'], '--image-shape',
                '3,32,32', '--out', str(tmp_path / 'afile' / 'net')])
    _one_error(res, 2, '--out', 'is a file, not a folder')


def test_synset_with_a_blank_line_names_the_line(tmp_path, capsys):
    from crunet.cli.export import main
    synset = tmp_path / 'names.txt'
    synset.write_text('a\nb\n\nc\n')
    code = main(['inference', '--model', H.scoring_set()['prefix'], '--image-shape', '3,32,32',
                 '--out', str(tmp_path / 'o' / 'net'), '--synset', str(synset)])
    err = capsys.readouterr().err
    assert code == 2 and err == 'error: synset file %s: line 3 is blank (one class name per line)\n' % synset
    assert not (tmp_path / 'o' / 'net-symbol.json').exists()


_WITHOUT = "import sys; sys.modules[%r] = None; from crunet.cli.export import run; sys.argv[0] = 'x'; sys.exit(run())"


@pytest.mark.parametrize('package,message', [
    ('onnxruntime', 'verifying the ONNX file needs onnxruntime: pip install --no-deps onnxruntime==1.15.0'),
    ('onnx', 'the ONNX export needs the onnx package'),
])
def test_onnx_export_without_the_package_says_how_to_install_it(tmp_path, package, message):
    """A package that cannot be imported (as when it is not installed): one line, and no file."""
    out = tmp_path / 'm.onnx'
    res = _run(['-c', _WITHOUT % package, 'onnx', '--model', H.scoring_set()['prefix'], '--image-shape', '3,32,32',
                '--out', str(out)])
    _one_error(res, 1, message)
    assert os.listdir(str(tmp_path)) == []


def test_onnx_export_without_onnxruntime_and_no_verify_writes_the_file(tmp_path):
    pytest.importorskip('onnx')
    out = tmp_path / 'm.onnx'
    res = _run(['-c', _WITHOUT % 'onnxruntime', 'onnx', '--model', H.scoring_set()['prefix'], '--image-shape',
                '3,32,32', '--out', str(out), '--no-verify'])
    assert res.returncode == 0, res.stderr[-2000:]
    assert os.listdir(str(tmp_path)) == ['m.onnx']


def test_onnx_export_that_fails_verification_leaves_no_file(tmp_path):
    """onnxruntime and MXNet differ by about 1e-6: a tolerance of 1e-30 fails the check."""
    pytest.importorskip('onnxruntime')
    out = tmp_path / 'm.onnx'
    res = _run(['-m', 'symbols.export', 'onnx', '--model', H.scoring_set()['prefix'], '--image-shape', '3,32,32',
                '--out', str(out), '--tolerance', '1e-30'])
    _one_error(res, 1, '%s: onnxruntime outputs differ from MXNet by' % out)
    assert os.listdir(str(tmp_path)) == []


def test_finetune_from_a_checkpoint_whose_head_names_a_missing_output_is_an_error(tmp_path):
    from train_helpers import TRAIN, make_rec
    rec = make_rec(str(tmp_path), 'train', 8, num_classes=4)
    _write_json(tmp_path / 'bad-symbol.json', MISSING_OUTPUT)
    mx.nd.save(str(tmp_path / 'bad-0000.params'), {'arg:w': mx.nd.zeros((1,))})
    res = _run([TRAIN, '--network', 'crunet', '--num-layers', '22', '--setting', 'cifar', '--num-classes', '4',
                '--image-shape', '3,32,32', '--data-train', rec, '--finetune-from', str(tmp_path / 'bad'),
                '--batch-size', '4', '--num-epochs', '1', '--model-prefix', str(tmp_path / 'out'), '--plot', '0'])
    assert res.returncode == 2 and 'Traceback' not in res.stderr, res.stderr[-2000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith('error:')]
    assert len(errors) == 1 and 'bad-symbol.json: output 5 of node 0 (data, op null)' in errors[0], res.stderr
    assert not [f for f in os.listdir(str(tmp_path)) if f.startswith('out') and f.endswith(('.params', '.json'))
                and f != 'out-args.json']                  # no checkpoint (the run's record and log are kept)
