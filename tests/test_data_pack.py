"""Packing: crunet.data.im2rec (lists, RecordIO framing, colour forcing, resize, pass-through,
determinism, CLI) and the bundled digits demo set (crunet.data.demo)."""
import io
import os
import struct
import subprocess
import sys
import time

import cv2
import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from crunet.data import lists, packing, recordio
from crunet.data import flags as dflags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args, timeout=120, **kw):
    return subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw)


def smooth(rng, h, w):
    img = cv2.resize(rng.uniform(0, 255, (4, 4, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_tree(root, counts, size=(24, 32), seed=0):
    rng = np.random.RandomState(seed)
    for cls, n in counts.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n):
            assert cv2.imwrite(os.path.join(root, cls, '%03d.jpg' % i), smooth(rng, *size))


def records(rec):
    """[(labels, id, image bytes)] of a packed file, read back by MXNet's own reader."""
    idx = os.path.splitext(rec)[0] + '.idx'
    r = mx.recordio.MXIndexedRecordIO(idx, rec, 'r')
    out = []
    for k in r.keys:
        h, img = mx.recordio.unpack(r.read_idx(k))
        out.append((h.label, h.id, img))
    r.close()
    return out


# ---------------------------------------------------------------------------------------------- RecordIO
def test_framing_is_byte_identical_to_mxnet(tmp_path):
    magic = struct.pack('<I', recordio.MAGIC)
    rng = np.random.RandomState(0)
    payloads = [b'', b'a', b'abcd', magic, b'xy' + magic + b'z', b'abcd' + magic + magic + b'12345',
                bytes(bytearray(rng.randint(0, 256, 999).astype(np.uint8))) + magic + b'q' * 3 + magic]
    mine = recordio.RecordWriter(str(tmp_path / 'mine.rec'))
    ref = mx.recordio.MXIndexedRecordIO(str(tmp_path / 'ref.idx'), str(tmp_path / 'ref.rec'), 'w')
    for i, p in enumerate(payloads):
        mine.write(i, p)
        ref.write_idx(i, p)
    mine.close()
    ref.close()
    for ext in ('.rec', '.idx'):
        assert (tmp_path / ('mine' + ext)).read_bytes() == (tmp_path / ('ref' + ext)).read_bytes()
    assert [p for _, p in recordio.iter_payloads(str(tmp_path / 'ref.rec'))] == payloads
    # image record header, as mx.recordio.pack writes it
    assert recordio.pack_header(3, 7) == mx.recordio.pack(mx.recordio.IRHeader(0, 3.0, 7, 0), b'')
    assert recordio.pack_header([1, 2], 5) == mx.recordio.pack(mx.recordio.IRHeader(0, [1.0, 2.0], 5, 0), b'')


def test_writer_leaves_nothing_behind_on_failure(tmp_path):
    root = tmp_path / 'img'
    write_tree(str(root), {'a': 2, 'b': 1})
    (root / 'b' / 'bad.jpg').write_bytes(b'not a jpeg at all')
    lst, = lists.make_lists(str(tmp_path / 'x'), str(root))
    with pytest.raises(lists.PackError, match='bad.jpg'):
        packing.pack(lst, str(root), progress=False)
    assert not [f for f in os.listdir(str(tmp_path)) if f.endswith(('.rec', '.idx', '.part'))]


# ---------------------------------------------------------------------------------------------- lists
def test_folder_lists_labels_and_deterministic_split(tmp_path):
    root = str(tmp_path / 'tree')
    write_tree(root, {'zebra': 10, 'ant': 6, 'moth': 5})
    os.makedirs(os.path.join(root, 'moth', 'nested'))
    cv2.imwrite(os.path.join(root, 'moth', 'nested', 'deep.png'), np.zeros((8, 8, 3), np.uint8))
    open(os.path.join(root, 'moth', 'notes.txt'), 'w').write('not an image')
    open(os.path.join(root, 'stray.jpg'), 'wb').write(b'ignored: not in a class folder')

    a = lists.make_lists(str(tmp_path / 's1'), root, train_ratio=0.5, seed=3)
    b = lists.make_lists(str(tmp_path / 's2'), root, train_ratio=0.5, seed=3)
    c = lists.make_lists(str(tmp_path / 's3'), root, train_ratio=0.5, seed=4)
    assert [os.path.basename(p) for p in a] == ['s1_train.lst', 's1_val.lst']
    assert open(str(tmp_path / 's1_synset.txt')).read().split() == ['ant', 'moth', 'zebra']
    train, val = [lists.read_lst(p) for p in a]
    assert [open(p).read() for p in a] == [open(p).read() for p in b]            # same seed, same lists
    assert [open(p).read() for p in a] != [open(p).read() for p in c]
    for items in (train, val):
        assert [i for i, _, _ in items] == list(range(len(items)))
        for _, lab, rel in items:                                              # label = sorted class index
            assert ['ant', 'moth', 'zebra'][int(lab[0])] == rel.split('/')[0]
    paths = [rel for _, _, rel in train + val]
    assert len(paths) == len(set(paths)) == 22 and 'moth/nested/deep.png' in paths
    per_class = lambda items, k: sum(1 for _, lab, _ in items if lab[0] == k)
    assert [per_class(train, k) for k in range(3)] == [3, 3, 5]                   # round(0.5 n), stratified
    assert [per_class(val, k) for k in range(3)] == [3, 3, 5]
    # whole set, no split
    whole, = lists.make_lists(str(tmp_path / 'all'), root)
    assert len(lists.read_lst(whole)) == 22


def test_list_file_formats(tmp_path):
    places = tmp_path / 'places365_train_standard.txt'
    places.write_text('/a/airfield/00000001.jpg 0\n/a/airfield/00000002.jpg 0\n/z/zen_garden/00000001.jpg 364\n')
    assert lists.read_list_file(str(places)) == [('a/airfield/00000001.jpg', [0.0]),
                                                   ('a/airfield/00000002.jpg', [0.0]),
                                                   ('z/zen_garden/00000001.jpg', [364.0])]
    pval = tmp_path / 'places365_val.txt'
    pval.write_text('Places365_val_00000001.jpg 165\nPlaces365_val_00000002.jpg 358\n')
    assert lists.read_list_file(str(pval))[1] == ('Places365_val_00000002.jpg', [358.0])
    synset = tmp_path / 'LOC_synset_mapping.txt'
    synset.write_text('n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n')
    loc = tmp_path / 'LOC_val_solution.csv'
    loc.write_text('ImageId,PredictionString\nILSVRC2012_val_00008726,n01443537 255 142 454 329 '
                   'n01443537 44 21 322 295\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n')
    assert lists.read_list_file(str(loc), lists.load_synset(str(synset)), ext='.JPEG') == [
        ('ILSVRC2012_val_00008726.JPEG', [1.0]), ('ILSVRC2012_val_00000001.JPEG', [0.0])]
    caffe = tmp_path / 'val.txt'
    caffe.write_text('ILSVRC2012_val_00000001.JPEG 65\n')
    assert lists.read_list_file(str(caffe)) == [('ILSVRC2012_val_00000001.JPEG', [65.0])]
    named = tmp_path / 'named.txt'
    named.write_text('x/1.jpg n01443537\n')
    assert lists.read_list_file(str(named), lists.load_synset(str(synset))) == [('x/1.jpg', [1.0])]
    with pytest.raises(lists.PackError, match='named.txt line 1'):
        lists.read_list_file(str(named))                                      # names need --synset
    lists.write_lst(str(tmp_path / 'm.lst'), [('p/q.jpg', [2.0]), ('r.png', [0.5, 1.5])])
    assert lists.read_list_file(str(tmp_path / 'm.lst')) == [('p/q.jpg', [2.0]), ('r.png', [0.5, 1.5])]
    # a synset folder: sorted sub-folders (ImageNet train/)
    for d in ('n2', 'n1'):
        os.makedirs(str(tmp_path / 'train' / d))
    assert lists.load_synset(str(tmp_path / 'train')) == {'n1': 0, 'n2': 1}


# ---------------------------------------------------------------------------------------------- packing
def test_pass_through_keeps_bytes_and_reencode_and_resize(tmp_path):
    root = tmp_path / 'img'
    os.makedirs(str(root / 'c'))
    rng = np.random.RandomState(1)
    big = smooth(rng, 60, 80)
    cv2.imwrite(str(root / 'c' / 'big.jpg'), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(root / 'c' / 'small.jpg'), big[:20, :30], [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(root / 'c' / 'tall.png'), smooth(rng, 80, 40))
    lst = str(tmp_path / 'p.lst')
    lists.write_lst(lst, [('c/big.jpg', [0]), ('c/small.jpg', [1]), ('c/tall.png', [2])])
    own = lambda name: (root / 'c' / name).read_bytes()

    st = packing.pack(lst, str(root), progress=False)
    assert (st['records'], st['kept'], st['encoded']) == (3, 3, 0)
    recs = records(st['rec'])
    assert [r[2] for r in recs] == [own('big.jpg'), own('small.jpg'), own('tall.png')]
    assert [float(r[0]) for r in recs] == [0.0, 1.0, 2.0] and [r[1] for r in recs] == [0, 1, 2]

    st = packing.pack(lst, str(root), out_prefix=str(tmp_path / 'r'), resize=30, quality=80, progress=False)
    assert (st['kept'], st['encoded']) == (1, 2)                # small.jpg is not larger than 30: kept
    shapes = [cv2.imdecode(np.frombuffer(r[2], np.uint8), cv2.IMREAD_UNCHANGED).shape for r in records(st['rec'])]
    assert shapes == [(30, 40, 3), (20, 30, 3), (60, 30, 3)]     # shorter side 30, aspect kept, tall.png -> .jpg
    assert recordio.image_format(records(st['rec'])[2][2]) == 'jpeg'

    st = packing.pack(lst, str(root), out_prefix=str(tmp_path / 'e'), pass_through=0, encoding='.png', progress=False)
    recs = records(st['rec'])
    assert st['encoded'] == 3 and all(recordio.image_format(r[2]) == 'png' for r in recs)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(recs[2][2], np.uint8), 1),
                                  cv2.imread(str(root / 'c' / 'tall.png')))


def _odd_images(rng):
    """name -> (file bytes, expected BGR pixels or None) for images that are not 8-bit colour JPEG/PNG."""
    col = smooth(rng, 20, 24)
    gray = cv2.cvtColor(col, cv2.COLOR_BGR2GRAY)
    out = {}

    def pil_bytes(im, fmt, **kw):
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        return b.getvalue()
    rgb = Image.fromarray(col[:, :, ::-1])
    out['gray.jpg'] = (cv2.imencode('.jpg', gray, [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes(), cv2.merge([gray] * 3))
    out['gray.png'] = (cv2.imencode('.png', gray)[1].tobytes(), cv2.merge([gray] * 3))
    rgba = np.dstack([col, np.full(col.shape[:2], 90, np.uint8)])
    out['rgba.png'] = (cv2.imencode('.png', rgba)[1].tobytes(), col)
    out['deep.png'] = (cv2.imencode('.png', col.astype(np.uint16) * 257)[1].tobytes(), col)
    out['cmyk.jpg'] = (pil_bytes(rgb.convert('CMYK'), 'JPEG', quality=98), col)
    out['palette.gif'] = (pil_bytes(rgb.convert('P'), 'GIF'), None)
    out['photo.webp'] = (pil_bytes(rgb, 'WEBP', lossless=True), col)
    out['plain.bmp'] = (cv2.imencode('.bmp', col)[1].tobytes(), col)
    out['tiny.png'] = (cv2.imencode('.png', col[:3, :2])[1].tobytes(), col[:3, :2])
    return out


def test_every_record_is_three_channel_colour(tmp_path):
    root = tmp_path / 'odd'
    os.makedirs(str(root / 'k'))
    imgs = _odd_images(np.random.RandomState(2))
    for name, (data, _) in imgs.items():
        (root / 'k' / name).write_bytes(data)
    lst, = lists.make_lists(str(tmp_path / 'odd'), str(root), shuffle=False)
    st = packing.pack(lst, str(root), quality=98, progress=False)
    assert st['records'] == len(imgs) and st['skipped'] == 0
    names = [rel.split('/')[1] for _, _, rel in lists.read_lst(lst)]
    for name, (_, _, data) in zip(names, records(st['rec'])):
        assert recordio.image_format(data) in ('jpeg', 'png'), name
        dec = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert dec.dtype == np.uint8 and dec.ndim == 3 and dec.shape[2] == 3, name
        want = imgs[name][1]
        if want is not None:
            assert dec.shape == want.shape and np.abs(dec.astype(int) - want.astype(int)).mean() < 4, name
    assert recordio.scan_recordio(st['rec']).checked_images == len(imgs)
    # and MXNet's iterator reads them all as colour images of the requested shape
    it = mx.io.ImageRecordIter(path_imgrec=st['rec'], path_imgidx=st['rec'][:-4] + '.idx', data_shape=(3, 16, 16),
                               batch_size=len(imgs), resize=16, preprocess_threads=1, verbose=False)
    assert np.isfinite(it.next().data[0].asnumpy()).all()


def test_packing_is_deterministic_across_processes_and_runs(tmp_path):
    root = str(tmp_path / 'many')
    write_tree(root, {'a': 60, 'b': 60}, size=(16, 16))
    cv2.imwrite(os.path.join(root, 'a', 'gray.png'), np.full((16, 16), 77, np.uint8))
    lst, = lists.make_lists(str(tmp_path / 'm'), root, seed=5)
    outs = []
    for k, nthreads in enumerate((1, 2, 2)):
        st = packing.pack(lst, root, out_prefix=str(tmp_path / ('o%d' % k)), resize=12, num_thread=nthreads,
                         progress=False)
        assert st['records'] == 121
        outs.append((open(st['rec'], 'rb').read(), open(st['idx']).read()))
    assert outs[0] == outs[1] == outs[2]


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_make_check_and_console_command(tmp_path):
    root = str(tmp_path / 'tree')
    write_tree(root, {'x': 4, 'y': 4})
    r = run_cli(['-m', 'crunet.data.im2rec', 'make', str(tmp_path / 'cli'), root, '--train-ratio', '0.5',
                 '--resize', '20', '--num-thread', '2'])
    assert r.returncode == 0, r.stderr
    assert 'cli_train.rec: 4/4 (100%)' in r.stderr and 'wrote %s' % (tmp_path / 'cli_val.rec') in r.stderr
    r = run_cli(['-m', 'crunet.data.im2rec', 'check', str(tmp_path / 'cli_train.rec'), str(tmp_path / 'cli_val.rec')])
    assert r.returncode == 0 and r.stdout.count(': 4 records, labels 0..1') == 2, r.stdout + r.stderr
    console = [os.path.join(os.path.dirname(sys.executable), 'crunet-im2rec')]     # the console command
    r = subprocess.run(console + ['list', str(tmp_path / 'script'), root], capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0 and len(open(str(tmp_path / 'script.lst')).read().splitlines()) == 8
    r = subprocess.run(console + ['pack', str(tmp_path / 'script.lst'), '--root', root, '--quiet'],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0 and r.stderr == '' and os.path.exists(str(tmp_path / 'script.idx'))
    assert run_cli(['-m', 'crunet.data.im2rec', '--help']).returncode == 0


# ---------------------------------------------------------------------------------------------- demo
def test_demo_set_is_real_deterministic_and_fast(tmp_path):
    from crunet.data.demo import prepare_demo
    t0 = time.time()
    r = run_cli(['-m', 'crunet.data.demo', '--out', str(tmp_path / 'd1')])
    elapsed = time.time() - t0
    assert r.returncode == 0, r.stderr
    assert elapsed < 60
    t0 = time.time()
    info = prepare_demo(str(tmp_path / 'd2'))
    assert time.time() - t0 < 60
    assert (info['num_train'], info['num_val'], info['num_classes']) == (1438, 359, 10)
    for name in ('digits_train.rec', 'digits_train.idx', 'digits_val.rec', 'digits_val.idx', 'digits_train.lst'):
        assert (tmp_path / 'd1' / name).read_bytes() == (tmp_path / 'd2' / name).read_bytes(), name
    # already there and valid: nothing rewritten
    mtime = os.path.getmtime(info['train'])
    assert prepare_demo(str(tmp_path / 'd2'))['num_val'] == 359 and os.path.getmtime(info['train']) == mtime
    # the real digits: every class in both splits, images 32x32 colour
    from sklearn.datasets import load_digits
    target = load_digits().target
    for rec, n in ((info['train'], 1438), (info['val'], 359)):
        recs = records(rec)
        labels = np.array([float(lab) for lab, _, _ in recs])
        assert len(recs) == n and sorted(set(labels.astype(int))) == list(range(10))
        img = cv2.imdecode(np.frombuffer(recs[0][2], np.uint8), cv2.IMREAD_UNCHANGED)
        assert img.shape == (32, 32, 3)
    for _, lab, rel in lists.read_lst(os.path.join(str(tmp_path / 'd2'), 'digits_val.lst')):
        assert int(lab[0]) == int(rel.split('/')[0]) == target[int(rel.split('/')[1][:4])]
    # and the validation iterator reads every record once
    from crunet.data import iterators as cd
    a = dflags.data_args(data_val=info['val'], image_shape='3,32,32', resize_val=32, batch_size=64, num_classes=10)
    val = cd.get_val_iter(a)
    got = sum(b.data[0].shape[0] - b.pad for b in val)
    assert got == 359


# ---------------------------------------------------------------------------------------------- recipes
def _jpeg(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, smooth(np.random.RandomState(seed), 20, 28))


def test_imagenet_recipe_on_kaggle_style_layout(tmp_path):
    root = tmp_path / 'ILSVRC2012'
    for c, syn in enumerate(('n01440764', 'n01443537')):
        for i in range(3):
            _jpeg(str(root / 'train' / syn / ('%s_%d.JPEG' % (syn, i))), 10 * c + i)
    _jpeg(str(root / 'val' / 'ILSVRC2012_val_00000001.JPEG'), 100)
    _jpeg(str(root / 'val' / 'ILSVRC2012_val_00000002.JPEG'), 101)
    (root / 'LOC_val_solution.csv').write_text('ImageId,PredictionString\n'
                                               'ILSVRC2012_val_00000001,n01443537 1 2 3 4\n'
                                               'ILSVRC2012_val_00000002,n01440764 1 2 3 4 n01440764 5 6 7 8\n')
    out = tmp_path / 'out'
    r = subprocess.run(['bash', 'data/imagenet.sh', str(root), str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, NUM_THREAD='1', PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr
    assert 'pass --num-examples 6 --num-classes 2' in r.stderr
    train = records(str(out / 'imagenet1k_train.rec'))
    assert sorted(float(lab) for lab, _, _ in train) == [0, 0, 0, 1, 1, 1]
    val = {rel: lab[0] for _, lab, rel in lists.read_lst(str(out / 'imagenet1k_val.lst'))}
    assert val == {'ILSVRC2012_val_00000001.JPEG': 1.0, 'ILSVRC2012_val_00000002.JPEG': 0.0}
    assert open(str(out / 'imagenet1k_train_synset.txt')).read().split() == ['n01440764', 'n01443537']
    assert recordio.scan_recordio(str(out / 'imagenet1k_val.rec')).num_records == 2


def test_places365_recipe(tmp_path):
    root = tmp_path / 'places'
    train_lines, val_lines = [], []
    for c, cls in enumerate(('/a/airfield', '/z/zen_garden', '/a/apartment_building/outdoor')):
        for i in range(2):
            rel = '%s/%08d.jpg' % (cls, i + 1)
            _jpeg(str(root / 'data_256') + rel, 10 * c + i)
            train_lines.append('%s %d' % (rel, c))
        name = 'Places365_val_%08d.jpg' % (c + 1)
        _jpeg(str(root / 'val_256' / name), 50 + c)
        val_lines.append('%s %d' % (name, c))
    (root / 'places365_train_standard.txt').write_text('\n'.join(train_lines) + '\n')
    (root / 'places365_val.txt').write_text('\n'.join(val_lines) + '\n')
    (root / 'categories_places365.txt').write_text('/a/airfield 0\n/z/zen_garden 1\n/a/apartment_building/outdoor 2\n')
    out = tmp_path / 'out'
    r = subprocess.run(['bash', 'data/places365.sh', str(root), str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, NUM_THREAD='1', PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr
    st = records(str(out / 'places365_train.rec'))
    assert sorted(float(lab) for lab, _, _ in st) == [0, 0, 1, 1, 2, 2]
    for _, _, img in st:                                           # no resize needed: the files' own bytes
        assert recordio.image_format(img) == 'jpeg'
    assert [float(lab) for lab, _, _ in records(str(out / 'places365_val.rec'))] != []
    assert (out / 'places365_synset.txt').exists()
    r = subprocess.run(['bash', 'data/places365.sh', str(tmp_path / 'nothing')], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.strip().startswith('places365.sh: error: list file not found')
