"""``crunet-im2rec PREFIX ROOT --list ...`` then ``crunet-im2rec PREFIX ROOT``: the command line of
MXNet's ``tools/im2rec.py`` (shipped in MXNet 1.9.1's wheel as ``mxnet/tools/im2rec.py``), giving
the same ``.lst`` files byte for byte and the same records, compared here with the real tool on a
small tree (class folders, a nested folder, an image directly in ROOT, grayscale and RGBA PNGs,
an upper-case extension, a file of another type)."""
import os
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

from crunet.data import iterators as cd
from crunet.data import flags as dflags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MXNET_IM2REC = os.path.join(os.path.dirname(mx.__file__), 'tools', 'im2rec.py')


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp('tree') / 'images'
    rng = np.random.RandomState(0)
    for folder, n in (('cat', 4), ('dog', 3), ('dog/puppy', 2), ('emu', 3)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / folder / ('%d.jpg' % i)), rng.randint(0, 255, (20 + i, 27, 3)).astype(np.uint8))
    cv2.imwrite(str(root / 'cat' / 'gray.png'), rng.randint(0, 255, (15, 13)).astype(np.uint8))
    cv2.imwrite(str(root / 'emu' / 'alpha.png'), rng.randint(0, 255, (14, 18, 4)).astype(np.uint8))
    cv2.imwrite(str(root / 'emu' / 'UPPER.JPG'), rng.randint(0, 255, (16, 16, 3)).astype(np.uint8))
    cv2.imwrite(str(root / 'top.jpg'), rng.randint(0, 255, (12, 12, 3)).astype(np.uint8))
    (root / 'emu' / 'notes.txt').write_text('not an image')
    cv2.imwrite(str(root / 'dog' / 'x.bmp'), rng.randint(0, 255, (8, 8, 3)).astype(np.uint8))
    return root


def run(tool, args, cwd):
    cmd = [sys.executable, MXNET_IM2REC] if tool == 'mxnet' else [sys.executable, '-m', 'crunet.data.im2rec']
    r = subprocess.run(cmd + [str(a) for a in args], cwd=str(cwd), capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, (tool, r.stdout, r.stderr)
    return r


def both(tmp_path, tree, args):
    """Run MXNet's tool and ours with ``args`` after PREFIX ROOT, each in its own folder."""
    out = {}
    for tool in ('mxnet', 'ours'):
        d = tmp_path / tool
        d.mkdir(exist_ok=True)
        out[tool] = run(tool, [d / 'data', tree] + list(args), d)
    return out


def files(folder, ext):
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(str(folder))) if n.endswith(ext)}


@pytest.mark.parametrize('flags', [
    ['--recursive'],
    ['--recursive', '--train-ratio', '0.7'],
    ['--recursive', '--train-ratio', '0.5', '--test-ratio', '0.25', '--chunks', '2'],
    ['--recursive', '--no-shuffle', '--exts', '.jpg', '.bmp'],
    [],
], ids=['recursive', 'train-ratio', 'test-ratio-chunks', 'no-shuffle-exts', 'flat'])
def test_lists_are_byte_identical_to_mxnets(tmp_path, tree, flags):
    r = both(tmp_path, tree, ['--list'] + flags)
    mx_lists, our_lists = files(tmp_path / 'mxnet', '.lst'), files(tmp_path / 'ours', '.lst')
    assert sorted(mx_lists) == sorted(our_lists) and mx_lists == our_lists
    assert sum(len(v.splitlines()) for v in our_lists.values()) > 0
    # the folder -> label lines MXNet prints
    assert r['ours'].stdout.split() == r['mxnet'].stdout.split()


def read_records(rec):
    out = []
    reader = mx.recordio.MXIndexedRecordIO(rec[:-4] + '.idx', rec, 'r')
    for key in reader.keys:
        header, img = mx.recordio.unpack_img(reader.read_idx(key))
        out.append((key, float(header.label), header.id, img))
    reader.close()
    return out


@pytest.mark.parametrize('pack_flags', [[], ['--resize', '10', '--encoding', '.png', '--quality', '3']],
                         ids=['defaults', 'resize-png'])
def test_records_are_the_same_as_mxnets(tmp_path, tree, pack_flags):
    """Packing MXNet's lists gives the same .rec and .idx bytes (cv2.imread colour, JPEG 95 or the
    PNG level, MXNet's resize), hence the same decoded images, labels and ids."""
    both(tmp_path, tree, ['--list', '--recursive', '--train-ratio', '0.6'])
    both(tmp_path, tree, pack_flags)
    for split in ('data_train', 'data_val'):
        mine, theirs = str(tmp_path / 'ours' / (split + '.rec')), str(tmp_path / 'mxnet' / (split + '.rec'))
        a, b = read_records(mine), read_records(theirs)
        assert len(a) == len(b) > 0
        for (ka, la, ia, ima), (kb, lb, ib, imb) in zip(a, b):
            assert (ka, la, ia) == (kb, lb, ib) and ima.shape == imb.shape and np.array_equal(ima, imb)
            if pack_flags:
                assert min(ima.shape[:2]) == 10
        assert files(tmp_path / 'ours', '.idx') == files(tmp_path / 'mxnet', '.idx')
        assert open(mine, 'rb').read() == open(theirs, 'rb').read()


def test_mxnet_form_records_feed_the_iterators(tmp_path, tree):
    both(tmp_path, tree, ['--list', '--recursive'])
    run('ours', [tmp_path / 'ours' / 'data', tree, '--quiet'], tmp_path)
    rec = str(tmp_path / 'ours' / 'data.rec')
    val = cd.get_val_iter(dflags.data_args(data_val=rec, image_shape='3,8,8', resize_val=8, batch_size=4,
                                       num_classes=5, data_nthreads=1))
    labels = np.concatenate([b.label[0].asnumpy()[:4 - b.pad] for b in val])
    listed = sorted(float(l.split('\t')[1]) for l in (tmp_path / 'ours' / 'data.lst').read_text().splitlines())
    assert sorted(labels) == listed


def test_subcommand_form_is_unchanged(tmp_path, tree):
    """A first argument that names a subcommand keeps the project's own form."""
    r = run('ours', ['list', tmp_path / 'p', tree], tmp_path)
    assert (tmp_path / 'p.lst').exists() and (tmp_path / 'p_synset.txt').read_text().split() == ['cat', 'dog', 'emu']
    assert r.stdout == ''
