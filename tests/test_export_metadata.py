"""Exports that carry their preprocessing: ONNX metadata_props (mean, std, scale, resize, crop,
interpolation, class names), synset.txt beside the exported files, and graphs with the
normalisation built in (--raw-rgb-input) that take RGB pixels 0-255."""
import json
import os
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import score_helpers as H
from symbols import preprocess as pp
from crunet.cli.export import main
from symbols.export import export_inference, export_onnx

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ['n%08d class %d, a name' % (i, i) for i in range(10)]


def _copy_checkpoint(tmp_path, with_synset=False):
    """The scoring checkpoint (CRU-Net-22, 10 classes, PREFIX-args.json) copied into tmp_path."""
    src = H.scoring_set()['prefix']
    dst = str(tmp_path / 'ckpt' / 'crunet22')
    os.makedirs(os.path.dirname(dst))
    for suffix in ('-symbol.json', '-0000.params', '-args.json'):
        shutil.copy(src + suffix, dst + suffix)
    if with_synset:
        (tmp_path / 'ckpt' / 'synset.txt').write_text('\n'.join(NAMES) + '\n')
    return dst


def _run_onnx(path, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
    return sess.run(None, {'data': x})[0]


def _centre_crops():
    s = H.scoring_set()
    y0, x0 = (H.SCORE_H - H.SCORE_CROP) // 2, (H.SCORE_W - H.SCORE_CROP) // 2
    crops = s['images'][:, y0:y0 + H.SCORE_CROP, x0:x0 + H.SCORE_CROP]
    raw = np.ascontiguousarray(crops.astype(np.float32).transpose(0, 3, 1, 2))
    return raw, H.normalise(crops)


def test_onnx_metadata_holds_the_training_preprocessing_and_class_names(tmp_path):
    prefix = _copy_checkpoint(tmp_path)
    synset = tmp_path / 'names.txt'
    synset.write_text('\n'.join(NAMES) + '\n')
    out = str(tmp_path / 'out' / 'model.onnx')
    res = export_onnx(prefix, 0, out, image_shape='3,32,32', synset=str(synset))
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    # PREFIX-args.json of the scoring checkpoint: mean 124,117,104, std 1, x0.0167, resize 40
    assert props['mean'] == '124,117,104' and props['std'] == '1,1,1'
    assert float(props['scale']) == pytest.approx(0.0167)
    assert props['resize'] == '40' and props['crop'] == '3,32,32' and props['interpolation'] == 'bicubic'
    assert props['input_format'] == 'normalized'
    assert json.loads(props['class_names']) == NAMES
    assert res['synset'] == str(tmp_path / 'out' / 'synset.txt')
    assert (tmp_path / 'out' / 'synset.txt').read_text().splitlines() == NAMES
    assert sorted(os.listdir(tmp_path / 'out')) == ['model.onnx', 'synset.txt']


def test_checkpoint_without_training_record_gets_the_released_preprocessing(tmp_path):
    prefix = H.project_checkpoint('crunet', num_classes=10, num_layers=22, setting='cifar', image_shape='3,32,32')
    out = str(tmp_path / 'plain.onnx')
    export_onnx(prefix, 0, out, image_shape='3,32,32')
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert props['mean'] == '124,117,104' and float(props['scale']) == pytest.approx(pp.RELEASED.scale)
    assert props['resize'] == '256' and props['interpolation'] == 'bicubic'
    assert 'class_names' not in props                      # no names known: none invented
    assert os.listdir(str(tmp_path)) == ['plain.onnx']


def test_synset_beside_the_checkpoint_is_used_by_default(tmp_path):
    prefix = _copy_checkpoint(tmp_path, with_synset=True)
    out = str(tmp_path / 'deploy' / 'crunet22')
    res = export_inference(prefix, 0, out, image_shape='3,32,32')
    assert res['synset'] == str(tmp_path / 'deploy' / 'synset.txt')
    assert (tmp_path / 'deploy' / 'synset.txt').read_text().splitlines() == NAMES


def test_raw_rgb_onnx_gives_the_plain_graphs_predictions_on_raw_pixels(tmp_path):
    prefix = _copy_checkpoint(tmp_path)
    plain, raw_path = str(tmp_path / 'plain.onnx'), str(tmp_path / 'raw.onnx')
    export_onnx(prefix, 0, plain, image_shape='3,32,32', batch_size=10)
    res = export_onnx(prefix, 0, raw_path, image_shape='3,32,32', batch_size=10, raw_rgb=True)
    assert res['metadata']['input_format'] == 'raw_rgb_0_255'
    assert {p.key: p.value for p in onnx.load(raw_path).metadata_props}['input_format'] == 'raw_rgb_0_255'
    raw, normalised = _centre_crops()
    want = _run_onnx(plain, normalised)
    got = _run_onnx(raw_path, raw)
    assert len(set(want.argmax(axis=1))) > 1                    # the images are told apart
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1, np.abs(want).max()))
    np.testing.assert_array_equal(want.argmax(axis=1), H.scoring_set()['labels'])


def test_raw_rgb_inference_export_takes_raw_pixels_in_stock_mxnet(tmp_path):
    prefix = _copy_checkpoint(tmp_path)
    out = str(tmp_path / 'raw')
    main(['inference', '--model', prefix, '--out', out, '--image-shape', '3,32,32', '--output', 'logits',
          '--raw-rgb-input'])
    sym = mx.sym.load(out + '-symbol.json')
    saved = mx.nd.load(out + '-0000.params')
    arg = {k[4:]: v for k, v in saved.items() if k.startswith('arg:')}
    aux = {k[4:]: v for k, v in saved.items() if k.startswith('aux:')}
    raw, _ = _centre_crops()
    got = H.forward(sym, arg, aux, raw)[0]
    want = H.scoring_set()['logits']
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1, np.abs(want).max()))


def _cli(*argv):
    return subprocess.run([sys.executable, '-m', 'symbols.export'] + list(argv), capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_synset_with_the_wrong_number_of_names_is_one_line_and_writes_nothing(tmp_path):
    prefix = _copy_checkpoint(tmp_path)
    synset = tmp_path / 'names.txt'
    synset.write_text('\n'.join(NAMES[:7]) + '\n')
    out = tmp_path / 'out'
    res = _cli('onnx', '--model', prefix, '--out', str(out / 'm.onnx'), '--image-shape', '3,32,32',
               '--synset', str(synset))
    assert res.returncode == 2
    assert res.stderr.strip() == 'error: synset file %s lists 7 class names, the model has 10 classes' % synset
    assert not out.exists() or os.listdir(str(out)) == []
