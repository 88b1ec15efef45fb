"""Export: the inference graph (no label input) and ONNX files of
CRU-Net-56 (released format) and ShaResNet-50 reproduce MXNet's outputs in onnxruntime."""
import os

import mxnet as mx
import numpy as np
import pytest

import score_helpers as H
from symbols.checkpoint import load_checkpoint
from crunet.cli.export import main
from symbols.export import export_inference, export_onnx

ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')


def run_onnx(path, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
    assert [i.name for i in sess.get_inputs()] == ['data']
    return sess.run(None, {'data': x})[0]


@pytest.mark.parametrize('model', ['crunet56', 'sharesnet50'])
def test_onnx_matches_mxnet(model, tmp_path):
    if model == 'crunet56':
        prefix = H.released_checkpoint(56)
    else:
        prefix = H.project_checkpoint('sharesnet', num_layers=50)
    path = str(tmp_path / (model + '.onnx'))
    res = export_onnx(prefix, 0, path, image_shape='3,224,224')
    assert res['max_abs_diff'] < 1e-4
    model_proto = onnx.load(path)
    assert model_proto.opset_import[0].version == 13
    assert [i.name for i in model_proto.graph.input] == ['data']           # weights are initializers
    names = [t.name for t in model_proto.graph.initializer]
    assert len(names) == len(set(names))
    if model == 'crunet56':  # one initializer per shared variable, used by all six units
        w = 'conv4_x__x_3x3_bases[dim21]_weight'
        assert names.count(w) == 1
        assert sum(w in n.input for n in model_proto.graph.node) == 6
    # independent check: onnxruntime vs the MXNet logits of the checkpoint
    sym, arg, aux = load_checkpoint(prefix, 0)
    x = np.random.RandomState(5).uniform(-2, 2, (1, 3, 224, 224)).astype(np.float32)
    want = H.forward(H.logits_of(sym), arg, aux, x)[0]
    got = run_onnx(path, x)
    assert got.shape == (1, 1000) and np.abs(want).max() > 0.1
    assert np.abs(got - want).max() < 1e-4


def test_onnx_cli_softmax_dynamic_batch(tmp_path, capsys):
    prefix = H.scoring_set()['prefix']
    out = str(tmp_path / 'small.onnx')
    assert main(['onnx', '--model', prefix, '--out', out, '--image-shape', '3,32,32', '--output', 'softmax',
                 '--dynamic-batch']) == 0
    assert 'verified: max abs difference' in capsys.readouterr().out
    probs = run_onnx(out, np.random.RandomState(0).uniform(-2, 2, (3, 3, 32, 32)).astype(np.float32))
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert main(['onnx', '--model', str(tmp_path / 'none'), '--out', out]) == 2       # a bad input file
    assert capsys.readouterr().err.startswith('error: params file not found')


def test_inference_export_stock_mxnet(tmp_path):
    prefix = H.released_checkpoint(56)
    out = str(tmp_path / 'deploy')
    res = export_inference(prefix, 0, out, image_shape='3,64,64')
    assert res['max_abs_diff'] < 1e-4
    sym = mx.sym.load(out + '-symbol.json')                                  # stock MXNet only
    assert sym.list_outputs() == ['softmax_output']
    assert not any(a.endswith('_label') for a in sym.list_arguments())
    saved = mx.nd.load(out + '-0000.params')
    mod = mx.mod.Module(sym, label_names=None, context=mx.cpu())
    x = np.random.RandomState(3).uniform(-2, 2, (2, 3, 64, 64)).astype(np.float32)
    mod.bind(data_shapes=[('data', x.shape)], for_training=False)
    mod.set_params({k[4:]: v for k, v in saved.items() if k.startswith('arg:')},
                   {k[4:]: v for k, v in saved.items() if k.startswith('aux:')})
    mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
    got = mod.get_outputs()[0].asnumpy()
    src, arg, aux = load_checkpoint(prefix, 0)
    want = H.softmax(H.forward(H.logits_of(src), arg, aux, x)[0])
    assert np.abs(got - want).max() < 1e-6
    assert os.path.exists(out + '-0000.params')
