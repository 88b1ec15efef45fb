"""crunet-score --image: image files classified with the scoring preprocessing (shorter side
resize with the checkpoint's interpolation, centre crop, normalisation), the top-5 printed with
class names; files that are not images are one error line naming them."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import score_helpers as H
from crunet import classify
from crunet.cli import score
from symbols import preprocess as pp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ['digit %d (n%08d)' % (i, i) for i in range(10)]


def _images(tmp_path, ext='.png'):
    """The scoring images as files (lossless PNG by default)."""
    paths = []
    for i, img in enumerate(H.scoring_set()['images']):
        path = str(tmp_path / ('img%d%s' % (i, ext)))
        assert cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def _copy_checkpoint(tmp_path):
    src = H.scoring_set()['prefix']
    dst = str(tmp_path / 'ckpt' / 'crunet22')
    os.makedirs(os.path.dirname(dst))
    for suffix in ('-symbol.json', '-0000.params', '-args.json'):
        shutil.copy(src + suffix, dst + suffix)
    return dst


def _parse(out):
    """{image: [(class, percent, name)]} of the printed predictions."""
    found, current = {}, None
    for line in out.splitlines():
        if not line.startswith('  '):
            current = found.setdefault(line, [])
            continue
        rank, prob, _, cls, *name = line.split(None, 4)
        current.append((int(cls), float(prob.rstrip('%')), name[0] if name else None))
    return found


def test_top5_with_class_names_matches_the_checkpoint(tmp_path, capsys):
    s = H.scoring_set()
    paths = _images(tmp_path)
    synset = tmp_path / 'names.txt'
    synset.write_text('\n'.join(NAMES) + '\n')
    results = score.main(['--model', s['prefix'], '--epoch', '0', '--image'] + paths + ['--synset', str(synset),
                                                                                       '--batch-size', '4'])
    printed = _parse(capsys.readouterr().out)
    assert list(printed) == paths
    probs = H.softmax(s['logits'])
    for i, path in enumerate(paths):
        top = printed[path]
        assert len(top) == 5
        assert top[0][0] == s['labels'][i]                          # the checkpoint's own prediction
        want = np.argsort(-probs[i], kind='stable')[:5]
        assert [c for c, _, _ in top] == list(want)
        assert [name for _, _, name in top] == [NAMES[c] for c in want]
        np.testing.assert_allclose([p for _, p, _ in top], 100 * probs[i][want], atol=0.006)
        np.testing.assert_allclose([p for _, p, _ in results[i]['top']], probs[i][want], rtol=1e-4, atol=1e-6)
    assert len(set(s['labels'])) > 1


def test_synset_beside_the_checkpoint_names_the_classes(tmp_path, capsys):
    prefix = _copy_checkpoint(tmp_path)
    (tmp_path / 'ckpt' / 'synset.txt').write_text('\n'.join(NAMES) + '\n')
    path = _images(tmp_path)[:1]
    score.main(['--model', prefix, '--image'] + path)
    top = _parse(capsys.readouterr().out)[path[0]]
    assert top[0] == (H.scoring_set()['labels'][0], pytest.approx(top[0][1]), NAMES[H.scoring_set()['labels'][0]])


def test_without_names_classes_are_numbered(tmp_path, capsys):
    path = _images(tmp_path)[:1]
    score.main(['--model', H.scoring_set()['prefix'], '--image'] + path)
    out = capsys.readouterr().out
    assert _parse(out)[path[0]][0][2] is None and 'class %d' % H.scoring_set()['labels'][0] in out


def test_resize_is_the_scoring_resize():
    """Shorter side to the resize with the checkpoint's interpolation, as MXNet resizes for scoring
    (mx.image.resize_short, both OpenCV), then the centre crop and the normalisation."""
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (90, 70, 3)).astype(np.uint8)
    for interpolation, code in (('bicubic', 2), ('bilinear', 1), ('area', 3)):
        pre = pp.Preprocess(mean=(124, 117, 104), std=(58, 57, 57), scale=1.0, resize=40, crop=(3, 32, 32),
                            interpolation=interpolation)
        got = classify.preprocess_image(img, pre)
        ref = mx.image.resize_short(mx.nd.array(img, dtype='uint8'), 40, interp=code).asnumpy()
        assert ref.shape == (51, 40, 3)
        y0, x0 = (51 - 32) // 2, (40 - 32) // 2
        want = H.normalise(ref[None, y0:y0 + 32, x0:x0 + 32], mean=(124, 117, 104), scale=1.0)[0] \
            / np.array([58, 57, 57], np.float32)[:, None, None]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_jpeg_files_are_decoded_as_rgb(tmp_path):
    img = np.zeros((40, 44, 3), np.uint8)
    img[..., 0] = 250                                               # pure red
    path = str(tmp_path / 'red.jpg')
    cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    got = classify.load_image(path)
    assert got.shape == (40, 44, 3) and got[..., 0].min() > 230 and got[..., 1:].max() < 20


def _cli(*argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'score.py')] + list(argv), capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def _one_error(res, *names):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in res.stderr, res.stderr
    for name in names:
        assert name in lines[0], lines[0]
    assert res.stdout == ''


def _truncated_png(tmp_path):
    good = _images(tmp_path)[0]
    data = open(good, 'rb').read()
    path = tmp_path / 'cut.png'
    path.write_bytes(data[:len(data) // 2])
    return str(path)


def _truncated_jpeg(tmp_path):
    """A JPEG cut short: libjpeg decodes what it has, grey below, and warns."""
    img = H.scoring_set()['images'][0]
    ok, data = cv2.imencode('.jpg', cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    path = tmp_path / 'cut.jpg'
    path.write_bytes(data.tobytes()[:len(data) * 2 // 3])
    return str(path)


@pytest.mark.parametrize('make,message', [
    (lambda d: (d / 'notes.jpg').write_text('not an image\n') and str(d / 'notes.jpg'),
     'not an image file OpenCV can decode'),
    (lambda d: (d / 'empty.png').write_bytes(b'') or str(d / 'empty.png'), 'the file is empty'),
    (lambda d: str(d / 'missing.jpg'), 'no such file'),
    (lambda d: str(d), 'no such file'),                                  # a folder
    (_truncated_png, 'PNG input buffer is incomplete'),
    (lambda d: _truncated_jpeg(d), 'the image is damaged (Premature end of JPEG file'),
])
def test_bad_image_file_is_one_line_naming_it(tmp_path, make, message):
    bad = make(tmp_path)
    good = _images(tmp_path)[1]
    res = _cli('--model', H.scoring_set()['prefix'], '--image', good, bad)
    _one_error(res, '--image %s' % bad, message)


def test_neither_image_nor_data_val_is_one_line():
    res = _cli('--model', H.scoring_set()['prefix'])
    _one_error(res, '--data-val', '--image')


def test_synset_with_the_wrong_count_is_one_line(tmp_path):
    synset = tmp_path / 'names.txt'
    synset.write_text('\n'.join(NAMES[:3]) + '\n')
    res = _cli('--model', H.scoring_set()['prefix'], '--image', _images(tmp_path)[0], '--synset', str(synset))
    _one_error(res, str(synset), 'lists 3 class names, the model has 10 classes')


def test_json_output_holds_the_predictions(tmp_path, capsys):
    out = tmp_path / 'preds.json'
    paths = _images(tmp_path)[:2]
    score.main(['--model', H.scoring_set()['prefix'], '--image'] + paths + ['--json', str(out)])
    saved = json.loads(out.read_text())
    assert [r['image'] for r in saved] == paths
    assert [r['top'][0][0] for r in saved] == list(H.scoring_set()['labels'][:2])
