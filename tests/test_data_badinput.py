"""Bad input: every case gives correct handling or a one-line error naming the file/record and
a non-zero exit -- never a segfault, an abort or a hang (subprocesses run under a timeout).

Checked at the API (``crunet.data.checks.DataError`` / ``crunet.data.lists.PackError``) and at the
command line (``python -m crunet.data.im2rec``, ``python -m bench.io_speed``).
"""
import os
import shutil
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest

from crunet.data import iterators as cd, lists, packing
from crunet.data import checks as dchecks, flags as dflags
from crunet.data import recordio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args, timeout=60):
    return subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def one_line_error(r, *needles):
    """The command failed (a normal non-zero exit: no abort, no segfault) with one error line, the
    last on stderr (progress lines may precede it), no traceback, naming every needle."""
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode > 0 and r.returncode not in (134, 139), (r.returncode, r.stderr)
    errors = [l for l in lines if 'error: ' in l]
    assert len(errors) == 1 and lines[-1] == errors[0] and 'Traceback' not in r.stderr, r.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def make_args(**over):
    return dflags.data_args(**dict(dict(image_shape='3,16,16', resize_val=16, data_nthreads=1, batch_size=2, seed=0),
                               **over))


def write_rec(prefix, payloads):
    w = recordio.RecordWriter(prefix + '.rec')
    for i, p in enumerate(payloads):
        w.write(i, p)
    w.close()
    return prefix + '.rec'


def jpeg(seed, size=16):
    rng = np.random.RandomState(seed)
    return cv2.imencode('.jpg', rng.randint(0, 255, (size, size, 3)).astype(np.uint8))[1].tobytes()


@pytest.fixture(scope='module')
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp('good')
    rec = write_rec(str(d / 'good'), [recordio.pack_header(i % 3, i) + jpeg(i) for i in range(6)])
    return types.SimpleNamespace(dir=d, rec=rec, idx=rec[:-4] + '.idx')


def variant(good, tmp_path, name, rec_bytes=None, idx_text=None, drop=None):
    """A copy of the good pair under a new name, with the .rec / .idx replaced or dropped."""
    rec, idx = str(tmp_path / (name + '.rec')), str(tmp_path / (name + '.idx'))
    shutil.copy(good.rec, rec)
    shutil.copy(good.idx, idx)
    if rec_bytes is not None:
        open(rec, 'wb').write(rec_bytes)
    if idx_text is not None:
        open(idx, 'w').write(idx_text)
    if drop:
        os.remove(rec if drop == 'rec' else idx)
    return rec


def idx_lines(good):
    return open(good.idx).read().splitlines()


# name -> (how to damage the pair, text the error must contain)
def _cases(good, tmp_path):
    lines = idx_lines(good)
    data = open(good.rec, 'rb').read()
    shifted = list(lines)
    k, off = shifted[2].split('\t')
    shifted[2] = '%s\t%d' % (k, int(off) + 8)
    other = write_rec(str(tmp_path / 'other'), [recordio.pack_header(0, i) + jpeg(i, 40) for i in range(6)])
    not_image = write_rec(str(tmp_path / 'notimage_src'), [recordio.pack_header(0, 0) + jpeg(0),
                                                           recordio.pack_header(1, 1) + b'this is not an image',
                                                           recordio.pack_header(2, 2) + jpeg(2)])
    return {
        'missing_rec': (dict(drop='rec'), ['RecordIO file not found', 'missing_rec.rec']),
        'missing_idx': (dict(drop='idx'), ['index file not found', 'missing_idx.idx']),
        'shifted_idx': (dict(idx_text='\n'.join(shifted) + '\n'), ['does not match', 'offset %d' % (int(off) + 8)]),
        'foreign_idx': (dict(idx_text=open(other[:-4] + '.idx').read()), ['foreign_idx.idx does not match']),
        'short_idx': (dict(idx_text='\n'.join(lines[:-1]) + '\n'), ['short_idx.idx does not match']),
        'idx_past_end': (dict(idx_text='\n'.join(lines) + '\n6\t999999\n'), ['past the end', 'record 6']),
        'garbled_idx': (dict(idx_text=lines[0] + '\nhello world\n'), ['garbled_idx.idx line 2']),
        'truncated_rec': (dict(rec_bytes=data[:len(data) - 100]), ['truncated_rec.rec is truncated', 'record 5']),
        'empty_rec': (dict(rec_bytes=b''), ['empty', 'empty_rec.rec']),
        'not_image': (dict(rec_bytes=open(not_image, 'rb').read(), idx_text=open(not_image[:-4] + '.idx').read()),
                      ['not_image.rec: record 1', 'not an image']),
    }


CASES = ['missing_rec', 'missing_idx', 'shifted_idx', 'foreign_idx', 'short_idx', 'idx_past_end', 'garbled_idx',
         'truncated_rec', 'empty_rec', 'not_image']


@pytest.mark.parametrize('case', CASES)
def test_bad_recordio_api(good, tmp_path, case):
    how, needles = _cases(good, tmp_path)[case]
    rec = variant(good, tmp_path, case, **how)
    for call in (lambda: dchecks.check_recordio(rec),
                 lambda: cd.get_rec_iter(make_args(data_train=rec)),
                 lambda: cd.get_rec_iter(make_args(data_train=good.rec, data_val=rec)),
                 lambda: cd.get_val_iter(make_args(data_val=rec))):
        with pytest.raises(dchecks.DataError) as e:
            call()
        msg = str(e.value)
        assert '\n' not in msg
        for n in needles:
            assert n in msg, (n, msg)


@pytest.mark.parametrize('case', CASES)
def test_bad_recordio_cli(good, tmp_path, case):
    how, needles = _cases(good, tmp_path)[case]
    rec = variant(good, tmp_path, case, **how)
    line = one_line_error(run_cli(['-m', 'crunet.data.im2rec', 'check', rec]), *needles)
    assert line.startswith('error: ')


def test_bad_recordio_cli_iterator_side(good, tmp_path):
    """The iterator path from the command line: bench.io_speed refuses a truncated file cleanly."""
    rec = variant(good, tmp_path, 'trunc', rec_bytes=open(good.rec, 'rb').read()[:-50])
    one_line_error(run_cli(['-m', 'bench.io_speed', '--data-train', rec, '--repeat', '1', '--num-images', '4']),
                   'io_speed: error:', 'trunc.rec is truncated')


def test_undecodable_record_past_the_checks_is_a_clean_error(good, tmp_path):
    """With the up-front check off, a non-image record reaches MXNet: still one DataError line, no abort."""
    rec = write_rec(str(tmp_path / 'late'), [recordio.pack_header(0, i) + (jpeg(i) if i != 3 else b'garbage' * 9)
                                             for i in range(4)])
    code = ('import sys\nfrom crunet.data import checks as dchecks, flags as dflags, iterators as cd\n'
            'a = dflags.data_args(data_train=%r, data_check="none", image_shape="3,16,16", data_nthreads=1, '
            'batch_size=4, seed=0)\n'
            'try:\n    it, _ = cd.get_rec_iter(a); [b for b in it]\nexcept dchecks.DataError as e:\n'
            '    sys.stderr.write("error: %%s\\n" %% e); sys.exit(3)\n' % rec)
    r = run_cli(['-c', code])
    assert r.returncode == 3, r.stderr
    errs = [l for l in r.stderr.splitlines() if l.startswith('error: ')]
    assert len(errs) == 1 and 'late.rec' in errs[0] and 'Traceback' not in r.stderr


def test_labels_outside_num_classes(good):
    with pytest.raises(dchecks.DataError, match=r'good.rec: labels run 0..2, outside 0..1 for --num-classes 2'):
        cd.get_rec_iter(make_args(data_train=good.rec, num_classes=2))
    cd.get_rec_iter(make_args(data_train=good.rec, num_classes=3))


def test_too_many_workers_or_too_large_batch(good):
    class KV(object):
        num_workers, rank, type = 4, 3, 'dist_sync'
    with pytest.raises(dchecks.DataError, match='6 records cannot be split into 4 parts'):   # part 3 would be empty
        cd.get_rec_iter(make_args(data_train=good.rec), KV())
    with pytest.raises(dchecks.DataError, match='fewer than the batch size 8'):
        cd.get_rec_iter(make_args(data_train=good.rec, batch_size=8))
    with pytest.raises(dchecks.DataError, match='--data-train is not set'):
        cd.get_rec_iter(make_args())
    with pytest.raises(dchecks.DataError, match='--image-shape'):
        cd.get_rec_iter(make_args(data_train=good.rec, image_shape='3,16'))
    with pytest.raises(dchecks.DataError, match='--rgb-mean'):
        cd.get_rec_iter(make_args(data_train=good.rec, rgb_mean='1,2'))


# ---------------------------------------------------------------------------------------------- packing
def tree(root, classes, n=2):
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(n):
            cv2.imwrite(os.path.join(root, c, '%d.jpg' % i), np.full((12, 12, 3), 40 * i, np.uint8))


def test_empty_class_folder(tmp_path):
    root = str(tmp_path / 'imgs')
    tree(root, ['a', 'c'])
    os.makedirs(os.path.join(root, 'b'))
    open(os.path.join(root, 'b', 'readme.txt'), 'w').write('no images here')
    with pytest.raises(lists.PackError, match='empty class folder: .*b'):
        lists.make_lists(str(tmp_path / 'x'), root)
    one_line_error(run_cli(['-m', 'crunet.data.im2rec', 'make', str(tmp_path / 'x'), root]),
                   'error: empty class folder:', os.path.join(root, 'b'))
    assert not os.path.exists(str(tmp_path / 'x.lst'))


def test_unreadable_image_named_by_path_and_skip_bad(tmp_path):
    root = str(tmp_path / 'imgs')
    tree(root, ['a', 'b'], n=3)
    bad = os.path.join(root, 'b', 'broken.jpg')
    open(bad, 'wb').write(b'\xff\xd8\xff' + b'\x00' * 10)               # a JPEG signature and nothing else
    empty = os.path.join(root, 'a', 'empty.png')
    open(empty, 'wb').write(b'')
    with pytest.raises(lists.PackError) as e:
        lst, = lists.make_lists(str(tmp_path / 'api'), root, shuffle=False)
        packing.pack(lst, root, progress=False)
    assert 'empty.png' in str(e.value)
    r = run_cli(['-m', 'crunet.data.im2rec', 'make', str(tmp_path / 'cli'), root, '--num-thread', '1', '--quiet'])
    line = one_line_error(r, 'error:')
    assert len(r.stderr.splitlines()) == 1                                      # --quiet: the error alone
    assert 'broken.jpg' in line or 'empty.png' in line
    assert not os.path.exists(str(tmp_path / 'cli.rec'))
    r = run_cli(['-m', 'crunet.data.im2rec', 'make', str(tmp_path / 'skip'), root, '--skip-bad', '--quiet'])
    assert r.returncode == 0, r.stderr
    warnings = [l for l in r.stderr.splitlines() if 'warning' in l]
    assert len(warnings) == 2 and any(bad in l for l in warnings) and any(empty in l for l in warnings)
    assert recordio.scan_recordio(str(tmp_path / 'skip.rec')).num_records == 6


def test_bad_paths_and_lists(tmp_path):
    one_line_error(run_cli(['-m', 'crunet.data.im2rec', 'make', str(tmp_path / 'x'), str(tmp_path / 'nowhere')]),
                   'image folder not found', 'nowhere')
    one_line_error(run_cli(['-m', 'crunet.data.im2rec', 'pack', str(tmp_path / 'none.lst'), '--root', str(tmp_path)]),
                   'list file not found', 'none.lst')
    bad = tmp_path / 'bad.txt'
    bad.write_text('a.jpg 1\nonly_a_path\n')
    one_line_error(run_cli(['-m', 'crunet.data.im2rec', 'list', str(tmp_path / 'y'), str(tmp_path), '--list-file', str(bad)]),
                   'bad.txt line 2')
    missing = tmp_path / 'missing.txt'
    missing.write_text('gone.jpg 0\n')
    os.makedirs(str(tmp_path / 'root'))
    assert run_cli(['-m', 'crunet.data.im2rec', 'list', str(tmp_path / 'z'), str(tmp_path / 'root'), '--list-file',
                    str(missing)]).returncode == 0
    one_line_error(run_cli(['-m', 'crunet.data.im2rec', 'pack', str(tmp_path / 'z.lst'), '--root', str(tmp_path / 'root')]),
                   'cannot read image', 'gone.jpg')
    r = run_cli(['-m', 'crunet.data.im2rec', 'pack', str(tmp_path / 'z.lst'), '--root', str(tmp_path / 'root'),
                 '--quality', '0'])
    one_line_error(r, '--quality')


def test_odd_images_end_to_end(tmp_path):
    """Grayscale, PNG with alpha, CMYK, tiny images: packed by the CLI as colour, read by both iterators."""
    from PIL import Image
    root = tmp_path / 'odd'
    for c in ('gray', 'alpha', 'cmyk', 'tiny'):
        os.makedirs(str(root / c))
    color = np.zeros((40, 40, 3), np.uint8)
    color[:] = (40, 120, 200)                                                   # BGR
    cv2.imwrite(str(root / 'gray' / 'g.jpg'), np.full((40, 40), 90, np.uint8))
    cv2.imwrite(str(root / 'alpha' / 'a.png'), np.dstack([color, np.full((40, 40), 30, np.uint8)]))
    Image.fromarray(color[:, :, ::-1]).convert('CMYK').save(str(root / 'cmyk' / 'c.jpg'), quality=98)
    cv2.imwrite(str(root / 'tiny' / 't.png'), color[:5, :7])
    r = run_cli(['-m', 'crunet.data.im2rec', 'make', str(tmp_path / 'odd'), str(root), '--no-shuffle', '--quiet'])
    assert r.returncode == 0, r.stderr
    a = make_args(data_train=str(tmp_path / 'odd.rec'), data_val=str(tmp_path / 'odd.rec'), batch_size=4,
                  rgb_mean='0,0,0', scale=1.0, random_h=0, random_s=0, random_l=0, num_classes=4)
    train, val = cd.get_rec_iter(a)
    tb, vb = train.next(), val.next()
    assert tb.data[0].shape == vb.data[0].shape == (4, 3, 16, 16)
    means = vb.data[0].asnumpy().mean(axis=(2, 3))                              # RGB per image, folder order
    labels = vb.label[0].asnumpy().astype(int).tolist()
    assert labels == [0, 1, 2, 3]                                               # alpha, cmyk, gray, tiny
    np.testing.assert_allclose(means[0], [200, 120, 40], atol=3)
    np.testing.assert_allclose(means[1], [200, 120, 40], atol=6)
    np.testing.assert_allclose(means[2], [90, 90, 90], atol=3)
    np.testing.assert_allclose(means[3], [200, 120, 40], atol=3)
    assert np.isfinite(tb.data[0].asnumpy()).all()
