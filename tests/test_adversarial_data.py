"""Bad input and faults against the data commands and APIs: ``crunet-im2rec`` (both forms), the demo
packer, the RecordIO checks and the iterators. Every case ends in the exit code of
``crunet.errors`` with one ``error:`` line naming the file, line, record or flag at fault, no
traceback, no crash -- and no file lost or left half-written (no ``.part`` / ``.tmp`` left
behind, earlier outputs intact).

Runs that could die of a signal if a check were missing run in a subprocess, so that a crash is
a failed assertion (exit status 136 = SIGFPE) and not a dead test session.
"""
import os
import resource
import signal
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from crunet.data import iterators as cd, lists, recordio
from crunet.data import checks as dchecks, flags as dflags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Decode checks are cached under $XDG_CACHE_HOME: a fresh one per test."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    dchecks._CHECKED.clear()


def run(args, env_cache, preexec_fn=None, timeout=120):
    env = dict(os.environ, XDG_CACHE_HOME=str(env_cache))
    return subprocess.run([sys.executable] + [str(a) for a in args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env, preexec_fn=preexec_fn)


def one_error(r, code, *needles):
    """Exit status ``code``, exactly one line starting ``error:`` (the last one), no traceback, and
    every needle in that line."""
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith('error:')]
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr[-2000:]
    assert 'Traceback' not in r.stderr, r.stderr[-2000:]
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def leftovers(folder):
    """Temporary files (``.part``, ``.tmp``, build folders) anywhere under ``folder``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(str(folder)):
        found += [os.path.join(dirpath, n) for n in filenames + dirnames
                  if n.endswith(('.part', '.tmp')) or n.startswith('.digits-build-')]
    return found


def png(i, size=8):
    img = np.random.RandomState(i).randint(0, 255, (size, size, 3)).astype(np.uint8)
    return cv2.imencode('.png', img)[1].tobytes()


def damaged_png(i, fix_crc=True):
    """An 8x8 PNG whose compressed pixel data are overwritten; with ``fix_crc`` the chunk CRC is
    recomputed, so only decoding the image finds the damage."""
    b = bytearray(png(i))
    p = b.find(b'IDAT')
    n = struct.unpack('>I', b[p - 4:p])[0]
    for k in range(2, min(n, 12)):
        b[p + 4 + k] ^= 0xff
    if fix_crc:
        b[p + 4 + n:p + 8 + n] = struct.pack('>I', zlib.crc32(bytes(b[p:p + 4 + n])) & 0xffffffff)
    return bytes(b)


def jpeg(i, size=16):
    img = cv2.resize(np.random.RandomState(i).randint(0, 255, (4, 4, 3)).astype(np.uint8), (size, size))
    return cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def write_rec(prefix, images, labels=None):
    with recordio.RecordWriter(str(prefix) + '.rec') as w:
        for i, img in enumerate(images):
            w.write(i, recordio.pack_header(i % 10 if labels is None else labels[i], i) + img)
    return str(prefix) + '.rec'


#: records in the "large" file: more than the sampled check decodes (all below 1000, else 100)
N_LARGE = 1100
BAD = 700


@pytest.fixture(scope='module')
def large_damaged(tmp_path_factory):
    d = tmp_path_factory.mktemp('large')
    return write_rec(d / 'large', [damaged_png(i) if i == BAD else png(i) for i in range(N_LARGE)])


ITER_SCRIPT = '''
import sys
from crunet.data import checks as dchecks, flags as dflags, iterators as cd
from crunet.errors import cli_main
def main(argv):
    rec, kind, over = argv[0], argv[1], {k: int(v) for k, v in (kv.split('=') for kv in argv[2:])}
    common = dict(image_shape='3,8,8', resize_val=8, batch_size=16, data_nthreads=1)
    if kind == 'val':
        it = cd.get_val_iter(dflags.data_args(data_val=rec, **common))
    else:
        it = cd.get_rec_iter(dflags.data_args(data_train=rec, seed=0, **dict(common, **over)))[0]
    print('read', sum(1 for _ in it), 'batches')
    return 0
sys.exit(cli_main(main, sys.argv[1:]))
'''


# ------------------------------------------------------------ images that do not decode
@pytest.mark.parametrize('pipeline', [['val'], ['train', 'aug_off=1'], ['train', 'random_resized_crop=0'],
                                      ['train']],
                         ids=['validation', 'aug-off', 'random-crop-after-resize', 'random-resized-crop'])
def test_damaged_png_past_the_sample_is_named_by_every_pipeline(large_damaged, tmp_path, pipeline):
    """A PNG that does not decode (its CRC intact) among 1100 records, where the sampled check
    decodes only 100: the resizing pipelines decode every image first (once per file), the
    random-resized crop finds it while reading; all name the file and the record, exit 2."""
    r = run(['-c', ITER_SCRIPT, large_damaged] + pipeline, tmp_path / 'cache')
    one_error(r, 2, 'large.rec', 'record %d' % BAD, 'does not decode')


def test_full_decode_check_is_cached_per_file_identity(tmp_path, monkeypatch):
    """The full decode check of a resizing pipeline runs once per file: a second process (here: a
    cleared in-process cache) reuses its result; rewriting the file (same size, damaged) is seen."""
    rec = write_rec(tmp_path / 'big', [png(i) for i in range(N_LARGE)])
    a = dflags.data_args(data_val=rec, image_shape='3,8,8', resize_val=8, batch_size=16, data_nthreads=1)
    calls = []
    real = dchecks.mxnet_decodes

    def counting(img):
        calls.append(1)
        return real(img)
    monkeypatch.setattr(dchecks, 'mxnet_decodes', counting)
    assert dchecks.check_recordio(rec, decode_all=True) == N_LARGE
    assert len(calls) == N_LARGE
    cached = os.listdir(dchecks.cache_dir())
    assert len(cached) == 1 and cached[0].endswith('.json')
    dchecks._CHECKED.clear()
    del calls[:]
    assert sum(b.data[0].shape[0] - b.pad for b in cd.get_val_iter(a)) == N_LARGE
    assert calls == []                               # structure re-checked, no image decoded again
    # damage record BAD in place (same size), as a careless copy could
    offsets = recordio.read_index(recordio.index_path(rec))[1]
    good, bad = png(BAD), damaged_png(BAD)
    assert len(good) == len(bad)
    with open(rec, 'r+b') as f:
        f.seek(offsets[BAD] + 8 + 24)
        assert f.read(len(good)) == good
        f.seek(offsets[BAD] + 8 + 24)
        f.write(bad)
    dchecks._CHECKED.clear()
    with pytest.raises(dchecks.DataError, match=r'big.rec: record %d \(offset \d+\) is a png image that does not '
                                           r'decode' % BAD):
        cd.get_val_iter(a)


def test_im2rec_check_full_names_the_damaged_record(large_damaged, tmp_path):
    r = run(['-m', 'crunet.data.im2rec', 'check', large_damaged, '--mode', 'full'], tmp_path / 'cache')
    one_error(r, 2, 'large.rec', 'record %d' % BAD, 'libpng')


def test_damaged_png_with_broken_crc_is_named(tmp_path):
    rec = write_rec(tmp_path / 'crc', [damaged_png(i, fix_crc=False) if i == 3 else png(i) for i in range(8)])
    with pytest.raises(dchecks.DataError, match=r'crc.rec: record 3 .* does not decode'):
        dchecks.check_recordio(rec)


def test_truncated_jpeg_is_refused(tmp_path):
    """A JPEG cut short decodes without error (grey lower part); its missing end marker gives it away."""
    whole = jpeg(2, size=64)
    cut = whole[:len(whole) * 4 // 5]
    assert cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)
    rec = write_rec(tmp_path / 'cut', [cut if i == 2 else jpeg(i, size=64) for i in range(6)])
    with pytest.raises(dchecks.DataError, match=r'cut.rec: record 2 \(offset \d+\) is a truncated JPEG'):
        dchecks.check_recordio(rec)


def test_jpeg_with_flipped_scan_bytes_decodes_to_a_wrong_image_unnoticed(tmp_path):
    """What no check can see: JPEG has no checksum, and bytes flipped inside its entropy-coded data
    decode (libjpeg at most warns) into a different image. The check passes such a file."""
    good = jpeg(5, size=64)
    sos = good.find(b'\xff\xda')
    bad = bytearray(good)
    for k in range(sos + 40, sos + 48):
        bad[k] ^= 0x55
    bad = bytes(bad)
    rec = write_rec(tmp_path / 'flip', [bad])
    assert dchecks.check_recordio(rec, mode='full') == 1
    a = cv2.imdecode(np.frombuffer(good, np.uint8), cv2.IMREAD_COLOR)
    b = cv2.imdecode(np.frombuffer(bad, np.uint8), cv2.IMREAD_COLOR)
    assert a.shape == b.shape and np.abs(a.astype(int) - b).max() > 32


# ------------------------------------------------------------------------------ labels
@pytest.mark.parametrize('label, why', [('3.5', 'label 3.5 is not a class number'),
                                        ('-1', 'label -1 is not a class number'),
                                        ('nan', 'not a finite number'),
                                        ('1e30', 'larger than 16777216')])
def test_lst_with_a_label_that_is_no_class_is_refused(tmp_path, label, why):
    """A one-label .lst holds class labels: 3.5 would be packed, checked and trained as class 3."""
    (tmp_path / 'img').mkdir()
    for i in range(3):
        (tmp_path / 'img' / ('%d.png' % i)).write_bytes(png(i))
    (tmp_path / 'x.lst').write_text('0\t1\t0.png\n1\t%s\t1.png\n2\t2\t2.png\n' % label)
    r = run(['-m', 'crunet.data.im2rec', 'pack', tmp_path / 'x.lst', '--root', tmp_path / 'img', '--quiet'],
            tmp_path / 'cache')
    one_error(r, 2, 'x.lst line 2', why)
    assert not (tmp_path / 'x.rec').exists() and not leftovers(tmp_path)


def test_path_label_list_with_a_fractional_label_is_refused(tmp_path):
    (tmp_path / 'img').mkdir()
    (tmp_path / 'labels.txt').write_text('a.jpg 2\nb.jpg 3.5\n')
    r = run(['-m', 'crunet.data.im2rec', 'list', tmp_path / 'out', tmp_path / 'img', '--list-file',
             tmp_path / 'labels.txt'], tmp_path / 'cache')
    one_error(r, 2, 'labels.txt line 2', '3.5')
    assert not (tmp_path / 'out.lst').exists()


@pytest.mark.parametrize('lines, why', [('0\t1\t0.png\n0\t2\t1.png\n',
                                         'x.lst line 2: index 0 is already used on line 1'),
                                        ('-4\t1\t0.png\n', 'x.lst line 1: index -4 is not in'),
                                        ('0\t1\n', 'x.lst line 1 is not "index<TAB>label<TAB>path"'),
                                        ('x\t1\t0.png\n', 'x.lst line 1 is not "index<TAB>label<TAB>path"')],
                         ids=['duplicate-index', 'negative-index', 'no-path', 'no-index'])
def test_lst_with_a_bad_index_or_line_is_refused(tmp_path, lines, why):
    (tmp_path / 'img').mkdir()
    for i in range(2):
        (tmp_path / 'img' / ('%d.png' % i)).write_bytes(png(i))
    (tmp_path / 'x.lst').write_text(lines)
    r = run(['-m', 'crunet.data.im2rec', 'pack', tmp_path / 'x.lst', '--root', tmp_path / 'img'], tmp_path / 'cache')
    one_error(r, 2, why)
    assert not (tmp_path / 'x.rec').exists() and not leftovers(tmp_path)


def test_records_with_fractional_labels_are_refused_by_the_iterators(tmp_path):
    rec = write_rec(tmp_path / 'frac', [png(i) for i in range(6)], labels=[0, 3.5, 1, 2, 0, 1])
    for call in (lambda: cd.get_rec_iter(dflags.data_args(data_train=rec, image_shape='3,8,8', batch_size=2)),
                 lambda: cd.get_val_iter(dflags.data_args(data_val=rec, image_shape='3,8,8', resize_val=8,
                                                      batch_size=2))):
        with pytest.raises(dchecks.DataError, match=r'frac.rec: record 1 has label 3.5, not a class number'):
            call()


# ------------------------------------------------------------------- outputs under a file
@pytest.mark.parametrize('cmd', [
    ['-m', 'crunet.data.im2rec', 'make', '{f}/sub/p', '{tree}'],
    ['-m', 'crunet.data.im2rec', 'list', '{f}/p', '{tree}'],
    ['-m', 'crunet.data.im2rec', '{f}/sub/p', '{tree}', '--list', '--recursive'],
    ['-m', 'crunet.data.demo', '--out', '{f}/demo'],
], ids=['make', 'list', 'mxnet-form-list', 'demo'])
def test_output_below_a_regular_file_is_named(tmp_path, cmd):
    (tmp_path / 'tree' / 'a').mkdir(parents=True)
    (tmp_path / 'tree' / 'a' / '0.png').write_bytes(png(0))
    f = tmp_path / 'file'
    f.write_text('not a folder')
    r = run([c.format(f=f, tree=tmp_path / 'tree') for c in cmd], tmp_path / 'cache')
    one_error(r, 2, '%s is a file, not a folder' % f)
    assert f.read_text() == 'not a folder' and not leftovers(tmp_path)


def test_pack_onto_a_folder_is_named(tmp_path):
    """pack writes LST-without-.lst .rec; where that is a folder the error names it and nothing changes."""
    (tmp_path / 'img').mkdir()
    (tmp_path / 'img' / '0.png').write_bytes(png(0))
    (tmp_path / 'x.lst').write_text('0\t1\t0.png\n')
    (tmp_path / 'x.rec').mkdir()
    r = run(['-m', 'crunet.data.im2rec', 'pack', tmp_path / 'x.lst', '--root', tmp_path / 'img', '--quiet'],
            tmp_path / 'cache')
    one_error(r, 2, '%s is a folder' % (tmp_path / 'x.rec'))
    assert (tmp_path / 'x.rec').is_dir() and not (tmp_path / 'x.idx').exists() and not leftovers(tmp_path)


# ------------------------------------------------------------------------------ the demo
@pytest.mark.parametrize('flags, needle', [(['--train-ratio', '1'], '--train-ratio'),
                                           (['--train-ratio', '0'], '--train-ratio'),
                                           (['--train-ratio', 'nan'], '--train-ratio'),
                                           (['--image-size', '4'], '--image-size'),
                                           (['--image-size', '100000'], '--image-size'),
                                           (['--image-size', 'x'], '--image-size')])
def test_demo_bad_options_write_nothing(tmp_path, flags, needle):
    r = run(['-m', 'crunet.data.demo', '--out', tmp_path / 'demo'] + flags, tmp_path / 'cache')
    one_error(r, 2, needle)
    assert not (tmp_path / 'demo').exists()


def _file_limit(nbytes):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


def test_demo_on_a_full_disk_keeps_the_previous_set(tmp_path):
    out = tmp_path / 'demo'
    r = run(['-m', 'crunet.data.demo', '--out', out, '--image-size', '8'], tmp_path / 'cache')
    assert r.returncode == 0, r.stderr
    before = {n: (out / n).read_bytes() for n in sorted(os.listdir(str(out))) if n.startswith('digits_')}
    assert 'digits_train.rec' in before and 'digits_meta.json' in before
    r = run(['-m', 'crunet.data.demo', '--out', out, '--image-size', '16', '--force'], tmp_path / 'cache',
            preexec_fn=_file_limit(64 * 1024))
    one_error(r, 1, 'File too large')
    after = {n: (out / n).read_bytes() for n in sorted(os.listdir(str(out))) if n.startswith('digits_')}
    assert after == before and not leftovers(tmp_path)
    assert cv2.imread(str(out / 'images' / '0' / '0000.png')).shape == (8, 8, 3)


# ------------------------------------------------------------------------- full disks
@pytest.fixture
def tree(tmp_path):
    root = tmp_path / 'tree'
    rng = np.random.RandomState(0)
    for c in ('a', 'b'):
        (root / c).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(root / c / ('%d.png' % i)), rng.randint(0, 255, (64, 64, 3)).astype(np.uint8))
    return root


def test_pack_past_the_file_size_limit_leaves_the_previous_pair(tmp_path, tree):
    """A write that fails half-way (RLIMIT_FSIZE: EFBIG, as ENOSPC on a full disk) removes the
    .part files and leaves the previous .rec/.idx untouched; exit 1 naming the file."""
    lst = tmp_path / 'p.lst'
    lists.write_lst(str(lst), [('a/%d.png' % i, [0]) for i in range(4)] + [('b/%d.png' % i, [1]) for i in range(4)])
    r = run(['-m', 'crunet.data.im2rec', 'pack', lst, '--root', tree, '--resize', '8', '--quiet'], tmp_path / 'c')
    assert r.returncode == 0, r.stderr
    old = (tmp_path / 'p.rec').read_bytes(), (tmp_path / 'p.idx').read_bytes()
    r = run(['-m', 'crunet.data.im2rec', 'pack', lst, '--root', tree, '--quiet'], tmp_path / 'c',
            preexec_fn=_file_limit(8 * 1024))
    one_error(r, 1, 'cannot write %s' % (tmp_path / 'p.rec'), 'File too large')
    assert ((tmp_path / 'p.rec').read_bytes(), (tmp_path / 'p.idx').read_bytes()) == old
    assert not leftovers(tmp_path)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (needs root; skipped where mounting is not allowed)."""
    mnt = tmp_path / 'full'
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip('cannot mount a tmpfs here')
    yield mnt
    subprocess.run(['umount', str(mnt)], capture_output=True)


def test_make_on_a_full_disk_leaves_no_partial_file(tmp_path, tree, small_tmpfs):
    r = run(['-m', 'crunet.data.im2rec', 'make', small_tmpfs / 'p', tree, '--quiet', '--pass-through', '0',
             '--encoding', '.png'], tmp_path / 'c')
    one_error(r, 1, 'cannot write %s' % (small_tmpfs / 'p.rec'), 'No space left on device')
    assert sorted(os.listdir(str(small_tmpfs))) == ['p.lst', 'p_synset.txt']      # whole lists, no .rec
    assert len((small_tmpfs / 'p.lst').read_text().splitlines()) == 8


def test_pack_flags_are_checked_before_lists_are_written(tmp_path, tree):
    for flags, needle in ((['--num-thread', '0'], '--num-thread'), (['--quality', '101'], '--quality'),
                          (['--resize', '-1'], '--resize')):
        r = run(['-m', 'crunet.data.im2rec', 'make', tmp_path / 'out' / 'p', tree] + flags, tmp_path / 'c')
        one_error(r, 2, needle)
        assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------------- flag combinations
@pytest.fixture(scope='module')
def small_rec(tmp_path_factory):
    return write_rec(tmp_path_factory.mktemp('small') / 'small', [png(i, 16) for i in range(8)])


def test_grayscale_shape_with_colour_noise_names_the_flags(small_rec):
    """--image-shape 1,H,W with HSL noise fails inside OpenCV's colour conversion; refused up front
    naming the flags, not the .rec."""
    a = dflags.data_args(data_train=small_rec, image_shape='1,16,16', rgb_mean='117', batch_size=4)
    with pytest.raises(dchecks.DataError) as e:
        cd.get_rec_iter(a)
    msg = str(e.value)
    assert '--image-shape 1,16,16' in msg and '--random-h 20' in msg and '--random-l 50' in msg
    assert 'small.rec' not in msg and 'im2rec' not in msg
    ok = dflags.data_args(data_train=small_rec, image_shape='1,16,16', rgb_mean='117', batch_size=4, random_h=0,
                      random_s=0, random_l=0)
    batch = cd.get_rec_iter(ok)[0].next()
    assert batch.data[0].shape == (4, 1, 16, 16)


@pytest.mark.parametrize('over, needle', [
    (dict(image_shape='1,16,16', random_h=0, random_s=0, random_l=0), '--rgb-mean'),
    (dict(scale=float('nan')), '--scale'),
    (dict(scale=0.0), '--scale'),
    (dict(rgb_mean='nan,1,2'), '--rgb-mean'),
    (dict(rgb_std='1,inf,1'), '--rgb-std'),
    (dict(data_nthreads=0), '--data-nthreads'),
    (dict(resize_val=-3), '--resize-val'),
    (dict(random_h=200), '--random-h'),
    (dict(random_s=-1), '--random-h/-s/-l'),
    (dict(min_random_area=float('nan')), '--min-random-area'),
    (dict(max_random_aspect_ratio=float('inf')), '--max-random-aspect-ratio'),
    (dict(inter_method=7), '--inter-method'),
    (dict(batch_size=0), '--batch-size'),
    (dict(dtype='int8'), '--dtype'),
], ids=lambda v: v if isinstance(v, str) else ','.join(v))
def test_bad_flag_values_are_named_before_any_iterator(small_rec, over, needle):
    a = dflags.data_args(**dict(dict(data_train=small_rec, image_shape='3,16,16', batch_size=4), **over))
    with pytest.raises(dchecks.DataError) as e:
        cd.get_rec_iter(a)
    assert needle in str(e.value) and 'small.rec' not in str(e.value)


def test_data_args_refuses_an_unknown_flag():
    assert dflags.data_args().resize_val == 256 and dflags.data_args(resize_val=32).resize_val == 32
    with pytest.raises(TypeError, match="unknown flag 'resize'"):
        dflags.data_args(resize=32)


# ---------------------------------------------------------------------- MXNet's form
@pytest.mark.parametrize('flags, needle', [(['--center-crop'], '--center-crop'), (['--color', '0'], '--color 0'),
                                           (['--list', '--train-ratio', '0'], '--train-ratio'),
                                           (['--list', '--train-ratio', '0.5', '--test-ratio', '0.7'], '--test-ratio'),
                                           (['--list', '--chunks', '0'], '--chunks'),
                                           (['--list'], 'add --recursive'),
                                           ([], 'no list file starts with')])
def test_mxnet_form_bad_input_is_one_line(tmp_path, tree, flags, needle):
    r = run(['-m', 'crunet.data.im2rec', tmp_path / 'out' / 'p', tree] + flags, tmp_path / 'c')
    one_error(r, 2, needle)
    assert not (tmp_path / 'out').exists() or not os.listdir(str(tmp_path / 'out'))


def test_mxnet_form_undecodable_image_is_named_not_skipped(tmp_path, tree):
    """MXNet's tool skips (or crashes on) an image it cannot read; this one names it."""
    (tree / 'a' / '9.jpg').write_bytes(b'not an image, whatever its name says' * 10)
    r = run(['-m', 'crunet.data.im2rec', tmp_path / 'p', tree, '--list', '--recursive'], tmp_path / 'c')
    assert r.returncode == 0, r.stderr
    r = run(['-m', 'crunet.data.im2rec', tmp_path / 'p', tree, '--quiet'], tmp_path / 'c')
    one_error(r, 2, 'cannot decode image', '9.jpg')
    assert not (tmp_path / 'p.rec').exists() and not leftovers(tmp_path)


def test_sigterm_during_pack_leaves_no_partial_file(tmp_path):
    """SIGTERM half-way through a pack: one error line, exit 143, no .part file, no .rec."""
    import time
    root = tmp_path / 'many'
    (root / 'a').mkdir(parents=True)
    rng = np.random.RandomState(0)
    for i in range(1500):
        cv2.imwrite(str(root / 'a' / ('%04d.png' % i)), rng.randint(0, 255, (48, 48, 3)).astype(np.uint8))
    lists.write_lst(str(tmp_path / 'm.lst'), [('a/%04d.png' % i, [0]) for i in range(1500)])
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / 'c'))
    proc = subprocess.Popen([sys.executable, '-m', 'crunet.data.im2rec', 'pack', str(tmp_path / 'm.lst'), '--root',
                             str(root), '--num-thread', '1', '--pass-through', '0', '--encoding', '.png', '--quiet'],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = tmp_path / 'm.rec.part'
    deadline = time.time() + 60
    while not (part.exists() and part.stat().st_size > 0) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, 'the pack ended before it could be interrupted'
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    one_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 143, 'terminated')
    assert not (tmp_path / 'm.rec').exists() and not leftovers(tmp_path)


def test_locating_a_bad_record_after_a_failure_is_bounded_in_time(large_damaged):
    """After MXNet failed reading a file, its records are decoded to name the one at fault -- for a
    bounded time; out of time, the message says which command names it."""
    import mxnet as mx
    exc = mx.base.MXNetError('Check failed: !ssize.empty()')
    assert 'record %d' % BAD in cd._failure(large_damaged, exc)
    msg = cd._failure(large_damaged, exc, budget=0)
    assert 'large.rec' in msg and 'crunet-im2rec check --mode full' in msg and 'record %d' % BAD not in msg


def test_aug_off_training_on_a_damaged_file_exits_2_naming_the_record(large_damaged, tmp_path):
    """crunet-train --aug-off 1 resizes every image: the damaged one is named before training starts."""
    r = run([os.path.join(REPO, 'train_imagenet.py'), '--network', 'crunet', '--num-layers', 22, '--setting', 'cifar',
             '--num-classes', 10, '--image-shape', '3,8,8', '--resize-val', 8, '--aug-off', 1, '--data-train',
             large_damaged, '--batch-size', 8, '--num-epochs', 1, '--model-prefix', tmp_path / 'run' / 'm'],
            tmp_path / 'cache')
    one_error(r, 2, 'large.rec', 'record %d' % BAD, 'does not decode')
    assert not (tmp_path / 'run').exists() or not [n for n in os.listdir(str(tmp_path / 'run')) if 'params' in n]


@pytest.mark.parametrize('form', ['subcommand', 'mxnet'])
def test_truncated_jpeg_file_is_not_packed(tmp_path, tree, form):
    """A JPEG file cut short decodes (grey lower part) and would be packed in silence; it is named."""
    whole = jpeg(1, size=64)
    (tree / 'a' / 'cut.jpg').write_bytes(whole[:len(whole) * 4 // 5])
    if form == 'subcommand':
        r = run(['-m', 'crunet.data.im2rec', 'make', tmp_path / 'p', tree, '--quiet'], tmp_path / 'c')
    else:
        assert run(['-m', 'crunet.data.im2rec', tmp_path / 'p', tree, '--list', '--recursive'],
                   tmp_path / 'c').returncode == 0
        r = run(['-m', 'crunet.data.im2rec', tmp_path / 'p', tree, '--quiet'], tmp_path / 'c')
    one_error(r, 2, 'truncated JPEG file', 'cut.jpg')
    assert not (tmp_path / 'p.rec').exists() and not leftovers(tmp_path)


@pytest.mark.parametrize('cmd', [['list', '{out}', '{tree}'], ['{out}', '{tree}', '--list', '--recursive']],
                         ids=['subcommand', 'mxnet'])
def test_symlink_loop_in_the_image_tree_is_refused(tmp_path, tree, cmd):
    """A link back to a parent folder would list the same images ~40 times over, in silence."""
    os.symlink(str(tree / 'a'), str(tree / 'a' / 'again'))
    r = run(['-m', 'crunet.data.im2rec'] + [c.format(out=tmp_path / 'out' / 'p', tree=tree) for c in cmd],
            tmp_path / 'c')
    one_error(r, 2, str(tree / 'a' / 'again'), 'loops')
    assert not (tmp_path / 'out').exists() or not [n for n in os.listdir(str(tmp_path / 'out')) if n.endswith('.lst')]
