"""Bad input and faults against ``crunet-score`` (``score.py``): each case exits 2 with one
``error:`` line naming the flag, the file or the record, no traceback, no crash (a missing check
would show as exit status 136, SIGFPE), and leaves an earlier ``--json`` result untouched.
"""
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

import score_helpers as H
from crunet import evaluate as ev
from crunet.data import recordio
from crunet.errors import CLIError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCORE = os.path.join(ROOT, 'score.py')
BAD, N_LARGE = 700, 1100


@pytest.fixture(scope='module')
def model():
    return H.scoring_set()['prefix']          # CRU-Net-22, 10 classes, PREFIX-args.json: 3x32x32, resize 40


def score(tmp_path, *argv):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / 'cache'))
    return subprocess.run([sys.executable, SCORE] + [str(a) for a in argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env=env)


def one_error(r, *needles):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith('error:')]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(errors) == 1 and lines[-1] == errors[0] and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert 'top-1 error' not in r.stdout
    for n in needles:
        assert n in errors[0], (n, errors[0])


def png(i, h=8, w=8):
    return cv2.imencode('.png', np.random.RandomState(i).randint(0, 255, (h, w, 3)).astype(np.uint8))[1].tobytes()


def damaged_png(i):
    """PNG whose compressed data are overwritten and whose chunk CRC is recomputed to match."""
    b = bytearray(png(i))
    p = b.find(b'IDAT')
    n = struct.unpack('>I', b[p - 4:p])[0]
    for k in range(2, min(n, 12)):
        b[p + 4 + k] ^= 0xff
    b[p + 4 + n:p + 8 + n] = struct.pack('>I', zlib.crc32(bytes(b[p:p + 4 + n])) & 0xffffffff)
    return bytes(b)


def write_rec(path, images, labels):
    with recordio.RecordWriter(str(path)) as w:
        for i, (img, label) in enumerate(zip(images, labels)):
            w.write(i, recordio.pack_header(label, i) + img)
    return str(path)


@pytest.fixture(scope='module')
def large_damaged(tmp_path_factory):
    """1100 8x8 PNG records, record 700 damaged: past the 100 images the sampled check decodes."""
    d = tmp_path_factory.mktemp('large')
    return write_rec(d / 'large.rec', [damaged_png(i) if i == BAD else png(i) for i in range(N_LARGE)],
                     [i % 10 for i in range(N_LARGE)])


@pytest.fixture
def previous_json(tmp_path):
    out = tmp_path / 'result.json'
    out.write_text('{"top1_error": 0.25}\n')
    return out


@pytest.mark.parametrize('n', [0, -3])
def test_max_images_below_one_is_refused(model, tmp_path, previous_json, n):
    """--max-images 0 used to print 'top-1 error nan%' and exit 0."""
    rec = write_rec(tmp_path / 'v.rec', [png(i, 40, 44) for i in range(4)], [0, 1, 2, 3])
    r = score(tmp_path, '--model', model, '--data-val', rec, '--max-images', n, '--json', previous_json)
    one_error(r, '--max-images must be at least 1', str(n))
    assert previous_json.read_text() == '{"top1_error": 0.25}\n'


def test_negative_disp_batches_is_refused(model, tmp_path):
    rec = write_rec(tmp_path / 'v.rec', [png(i, 40, 44) for i in range(4)], [0, 1, 2, 3])
    one_error(score(tmp_path, '--model', model, '--data-val', rec, '--disp-batches', -1), '--disp-batches')


@pytest.mark.parametrize('crops', [1, 10])
def test_labels_beyond_the_models_classes_are_refused_for_every_crop_mode(model, tmp_path, previous_json, crops):
    """The 10-crop path checks the labels against the model exactly as the centre crop does."""
    rec = write_rec(tmp_path / 'v.rec', [png(i, 40, 44) for i in range(4)], [0, 1, 12, 3])
    r = score(tmp_path, '--model', model, '--data-val', rec, '--crops', crops, '--batch-size', 2,
              '--json', previous_json)
    one_error(r, 'v.rec', "labels run 0..12, outside 0..9 for the model's 10 classes")
    assert previous_json.read_text() == '{"top1_error": 0.25}\n'


@pytest.mark.parametrize('crops', [1, 10])
def test_fractional_labels_are_refused(model, tmp_path, crops):
    rec = write_rec(tmp_path / 'v.rec', [png(i, 40, 44) for i in range(4)], [0, 2.5, 1, 1])
    one_error(score(tmp_path, '--model', model, '--data-val', rec, '--crops', crops, '--batch-size', 2),
              'v.rec', 'record 1 has label 2.5, not a class number')


@pytest.mark.parametrize('crops', [1, 10])
def test_damaged_image_past_the_sample_is_named(model, tmp_path, large_damaged, previous_json, crops):
    """Both scoring paths resize every image: every image is decoded first (once per file), and a
    damaged one is named with its record instead of killing the process (SIGFPE)."""
    r = score(tmp_path, '--model', model, '--data-val', large_damaged, '--crops', crops, '--image-shape', '3,8,8',
              '--resize-val', '8', '--batch-size', 4, '--json', previous_json)
    one_error(r, 'large.rec', 'record %d' % BAD, 'does not decode')
    assert previous_json.read_text() == '{"top1_error": 0.25}\n'


@pytest.mark.parametrize('crops', [1, 10])
def test_damaged_image_is_named_even_with_data_check_none(model, tmp_path, large_damaged, crops):
    r = score(tmp_path, '--model', model, '--data-val', large_damaged, '--crops', crops, '--image-shape', '3,8,8',
              '--resize-val', '8', '--batch-size', 4, '--data-check', 'none')
    one_error(r, 'large.rec', 'record %d' % BAD)


def test_ten_crop_reader_names_the_record_that_does_not_decode(large_damaged):
    """The 10-crop reader decodes with MXNet and names a failing record itself (file and record),
    whatever was checked before it."""
    batches = ev.ten_crop_batches(large_damaged, '3,8,8', 64, resize=8)
    with pytest.raises(CLIError, match=r'large.rec: record %d: the image \(\d+ bytes\) does not decode' % BAD):
        for _ in batches:
            pass


def test_grayscale_model_input_ten_crops(tmp_path):
    """--image-shape 1,H,W: the 10 crops are grayscale, normalised with the one mean."""
    rec = write_rec(tmp_path / 'g.rec', [png(i, 12, 12) for i in range(3)], [0, 1, 2])
    data, labels = next(ev.ten_crop_batches(rec, '1,8,8', 3, resize=12, mean=(100,), std=(2,), scale=1.0))
    assert data.shape == (30, 1, 8, 8) and list(labels) == [0, 1, 2]
    gray = cv2.cvtColor(cv2.imdecode(np.frombuffer(png(0, 12, 12), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY)
    np.testing.assert_allclose(data[0, 0], (gray[:8, :8] - 100.0) / 2, atol=1.0)
