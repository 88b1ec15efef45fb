"""score.py: centre crop on a .rec labelled with the model's own
predictions gives 0% top-1 error; 10-crop and mean-max pooling match a NumPy computation."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import score_helpers as H
from crunet import evaluate as ev
from symbols.checkpoint import deploy_symbol, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCORE = os.path.join(ROOT, 'score.py')


@pytest.fixture(scope='module')
def setup():
    return H.scoring_set()


def run_score(*argv):
    return subprocess.run([sys.executable, SCORE] + [str(a) for a in argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def score_in_process(argv):
    from crunet.cli import score
    return score.main([str(a) for a in argv])


def test_centre_crop_own_predictions_zero_error(setup, tmp_path):
    out = tmp_path / 'result.json'
    # image shape, resize and preprocessing come from PREFIX-args.json
    proc = run_score('--model', setup['prefix'], '--epoch', 0, '--data-val', setup['rec'],
                     '--batch-size', 4, '--json', out, '--disp-batches', 1)
    assert proc.returncode == 0, proc.stderr
    assert 'top-1 error 0.00%' in proc.stdout and 'top-5 error 0.00%' in proc.stdout
    assert '[4/10 images]' in proc.stderr          # progress while it runs
    res = json.loads(out.read_text())
    assert res['images'] == 10 and res['top1_error'] == 0.0 and res['top5_error'] == 0.0
    assert res['pooling'] == 'avg' and res['crops'] == 1 and res['image_shape'] == '3,32,32'
    assert res['images_per_sec'] > 0


def test_wrong_labels_full_error(setup):
    res = score_in_process(['--model', setup['prefix'], '--data-val', setup['wrong_rec'], '--batch-size', 3,
                            '--disp-batches', 0])
    assert res['images'] == 10 and res['top1_error'] == 1.0 and res['top5_error'] < 1.0
    part = score_in_process(['--model', setup['prefix'], '--data-val', setup['rec'], '--max-images', 7,
                             '--batch-size', 4, '--disp-batches', 0])
    assert part['images'] == 7 and part['top1_error'] == 0.0


def ten_crops_numpy(img, size):
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    crops = [img[:size, :size], img[:size, w - size:], img[h - size:, :size], img[h - size:, w - size:],
             img[y:y + size, x:x + size]]
    return np.stack(crops + [c[:, ::-1] for c in crops])


def test_ten_crop_matches_numpy(setup):
    batches = ev.ten_crop_batches(setup['rec'], '3,32,32', batch_size=4, resize=H.SCORE_H)
    data, labels = next(iter(batches))
    assert data.shape == (40, 3, 32, 32)
    np.testing.assert_array_equal(labels, setup['labels'][:4])
    deploy = deploy_symbol(setup['sym'], pooling='avg')
    predictor = ev.Predictor(deploy, setup['arg'], setup['aux'], (40, 3, 32, 32))
    probs = next(ev.iter_predictions(predictor, [(data, labels)], crops=10))[0]
    # NumPy: crops by slicing the original pixels, logits from MXNet, softmax + mean in NumPy
    crops = np.concatenate([ten_crops_numpy(img, 32) for img in setup['images'][:4]])
    np.testing.assert_allclose(data, H.normalise(crops), atol=1e-5)
    logits = H.forward(H.logits_of(setup['sym']), setup['arg'], setup['aux'], H.normalise(crops))[0]
    want = H.softmax(logits).reshape(4, 10, -1).mean(axis=1)
    np.testing.assert_allclose(probs, want, atol=1e-5)
    # the centre crop (5th) equals what the centre-crop pipeline scores
    np.testing.assert_allclose(logits[4::10], setup['logits'][:4], atol=1e-4)
    # and end to end
    res = score_in_process(['--model', setup['prefix'], '--data-val', setup['rec'], '--crops', 10,
                            '--batch-size', 4, '--disp-batches', 0])
    assert res['images'] == 10 and res['crops'] == 10 and 0.0 <= res['top1_error'] <= 1.0


def test_mean_max_matches_numpy(setup):
    from crunet.cli import score
    args = score.build_parser().parse_args(['--model', setup['prefix'], '--data-val', setup['rec'],
                                            '--image-shape', '3,48,48', '--resize-val', '48', '--batch-size', '4'])
    ev.resolve(args)
    assert ev.choose_pooling('auto', args.image_shape, args.train_shape) == 'mean-max'
    assert ev.choose_pooling('auto', '3,32,32', args.train_shape) == 'avg'
    from crunet.data.iterators import get_val_iter
    data, _ = next(ev.centre_crop_batches(get_val_iter(ev.data_flags(args))))
    data = data.asnumpy()
    assert data.shape == (4, 3, 48, 48)
    sym, arg, aux = setup['sym'], setup['arg'], setup['aux']
    deploy = deploy_symbol(sym, pooling='mean-max')
    assert 'softmax_label' not in deploy.list_arguments()
    probs = ev.Predictor(deploy, arg, aux, data.shape).predict(data)
    feature = sym.get_internals()['pool5_output'].get_children()[0]
    fmap = H.forward(feature, arg, aux, data)[0]                       # (4, C, 12, 12)
    assert fmap.shape[2:] == (12, 12)
    pooled = 0.5 * (fmap.mean(axis=(2, 3)) + fmap.max(axis=(2, 3)))
    want = H.softmax(pooled.dot(arg['fc6_weight'].asnumpy().T) + arg['fc6_bias'].asnumpy())
    np.testing.assert_allclose(probs, want, atol=1e-5)
    plain = ev.Predictor(deploy_symbol(sym, pooling='avg'), arg, aux, data.shape).predict(data)
    assert np.abs(plain - probs).max() > 1e-4                           # it is a different pooling
    res = score_in_process(['--model', setup['prefix'], '--data-val', setup['rec'], '--image-shape', '3,48,48',
                            '--resize-val', 48, '--batch-size', 4, '--disp-batches', 0])
    assert res['pooling'] == 'mean-max' and res['images'] == 10


def test_mean_max_on_released_graph():
    """The rewrite finds pool5 in a released-format CRU-Net-56 and keeps fc6's weights."""
    sym, arg, aux = load_checkpoint(H.released_checkpoint(56), 0)
    mm = deploy_symbol(sym, pooling='mean-max')
    assert set(mm.list_arguments()) == set(sym.list_arguments()) - {'softmax_label'}
    assert mm.infer_shape(data=(1, 3, 96, 96))[1][0] == (1, 1000)


def test_score_errors_are_one_line(setup, tmp_path):
    proc = run_score('--model', setup['prefix'], '--data-val', tmp_path / 'missing.rec')
    assert proc.returncode != 0 and proc.stderr.count('\n') == 1 and proc.stderr.startswith('error:')
    proc = run_score('--model', tmp_path / 'nothing', '--data-val', setup['rec'])
    assert proc.returncode != 0 and proc.stderr.startswith('error:') and 'not found' in proc.stderr
    proc = run_score('--model', setup['prefix'], '--data-val', setup['rec'], '--network', 'crunet',
                     '--num-layers', 22, '--setting', 'cifar', '--num-classes', 5)
    assert proc.returncode != 0
    assert proc.stderr.strip() == ('error: parameter fc6_weight: expected shape (5, 256), found (10, 256) '
                                   '(and 1 more mismatched parameter)'), proc.stderr
