"""Make image lists and pack them into RecordIO (``.rec`` + ``.idx``) for ``mx.io.ImageRecordIter``.

The project's packer (MXNet 1.9.1's wheel ships its own ``mxnet/tools/im2rec.py``; this one is
deterministic, converts every image to 3-channel colour and stops on bad input). It needs no
MXNet (the RecordIO framing is written here, byte-compatible with dmlc-core's writer), only
numpy, OpenCV and Pillow.

Subcommands (``python -m crunet.data.im2rec CMD -h`` for every option)::

    # 1. lists: from a folder-per-class tree (labels = sorted folder names) ...
    python -m crunet.data.im2rec list runs/data/mine /data/mine --train-ratio 0.9 --seed 0
    # ... or from a label list (Places365 / caffe "path label", MXNet .lst, ImageNet LOC_val_solution.csv)
    python -m crunet.data.im2rec list runs/data/places_val /data/places365/val_large \\
        --list-file /data/places365/places365_val.txt
    # 2. pack every list into PREFIX.rec + PREFIX.idx with 8 processes, shorter side <= 480
    python -m crunet.data.im2rec pack runs/data/mine_train.lst --root /data/mine --resize 480 --num-thread 8
    # 1+2 in one go
    python -m crunet.data.im2rec make runs/data/mine /data/mine --train-ratio 0.9 --resize 480
    # validate a .rec/.idx pair (the checks the training iterators run first)
    python -m crunet.data.im2rec check runs/data/mine_train.rec

MXNet's own form is accepted too, with MXNet's list algorithm and record encoding (see
:func:`mxnet_main` and ``data/README.md`` for the few deliberate differences)::

    crunet-im2rec runs/data/mine /data/mine --list --recursive --train-ratio 0.9
    crunet-im2rec runs/data/mine /data/mine          # packs every runs/data/mine*.lst

Every image becomes a 3-channel colour record: grayscale, palette, RGBA / LA (alpha dropped),
16-bit, CMYK JPEGs and formats ImageRecordIter cannot decode (WebP, GIF, ...) are decoded and
re-encoded (``--encoding``, ``--quality``). A colour 8-bit JPEG or PNG that needs no resize keeps
its own bytes (``--pass-through 1``, the default). The output depends only on the inputs and the
options: the same inputs give the same bytes, whatever ``--num-thread``. Outputs appear whole or
not at all: lists and records are written to temporary files renamed into place, removed when
anything fails (a full disk included).

Bad input ends the command with one line on stderr (``error: ...`` naming the file, line or
flag) and exit status 2 (a full disk or another system failure: 1), following
:mod:`crunet.errors` -- or, with ``--skip-bad``, a warning per skipped image.
"""
import argparse
import collections
import io
import multiprocessing
import os
import random
import sys
import time

import numpy as np

from ..cli import ArgParser
from ..errors import cli_main
from ..files import atomic_save
from .recordio import RecordError, RecordWriter, image_format, pack_header, scan_recordio

__all__ = ['PackError', 'IMAGE_EXTS', 'MXNET_EXTS', 'list_from_folders', 'read_list_file', 'load_synset',
           'split_items', 'write_lst', 'read_lst', 'ensure_dir', 'check_class_labels',
           'make_lists', 'pack', 'mxnet_list_images', 'mxnet_make_lists', 'mxnet_main', 'main', 'run']

#: file extensions taken as images when walking a folder tree (compared lower-case)
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.gif', '.ppm', '.pgm')


class PackError(RecordError):
    """Bad input for listing or packing images; the message is one line naming the file."""


#: the largest class label a float32 record header holds exactly (2^24)
MAX_LABEL = 1 << 24


def ensure_dir(path, what):
    """Create folder ``path`` (and its parents) for ``what`` (e.g. ``'output prefix runs/x'``), or
    raise PackError naming the part of the path that is a file, or the permission that is missing."""
    path = os.path.abspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        probe = path
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(probe)
        raise PackError('%s: %s is a file, not a folder' % (what, probe or path)) from None
    except PermissionError as e:
        raise PackError('%s: cannot create folder %s: %s' % (what, path, e.strerror)) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PackError('%s: folder %s is not writable' % (what, path))
    return path


def check_class_labels(labels, where):
    """Labels of one list line: all finite; a single label must be a class number (a whole number
    in 0..2^24, what a float32 header holds exactly) -- ``3.5`` would be packed, checked and
    trained as class 3. ``where`` names the file and line."""
    for x in labels:
        if not np.isfinite(x):
            raise PackError('%s: label %r is not a finite number' % (where, x))
    if len(labels) == 1:
        x = labels[0]
        if not float(x).is_integer() or x < 0:
            raise PackError('%s: label %s is not a class number (0, 1, 2, ...); a one-label list holds class '
                            'labels' % (where, _fmt_label(x)))
        if x > MAX_LABEL:
            raise PackError('%s: label %s is larger than %d, the largest class a RecordIO header holds exactly'
                            % (where, _fmt_label(x), MAX_LABEL))


# ---------------------------------------------------------------------------------------------
# Lists
# ---------------------------------------------------------------------------------------------
def _is_image(name, exts):
    return os.path.splitext(name)[1].lower() in exts


def list_from_folders(root, exts=IMAGE_EXTS):
    """Items ``(relpath, label)`` of a folder-per-class tree and the class names (label order).

    Classes are the sorted names of ``root``'s sub-folders; a class's images are found in its
    folder and below (sorted). Files directly in ``root`` are ignored. An empty class folder is
    an error: it would silently shift every later label.
    """
    if not os.path.isdir(root):
        raise PackError('image folder not found: %s' % root)
    exts = tuple(e.lower() for e in exts)
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise PackError('no class folders in %s (expected ROOT/<class>/<image>)' % root)
    items = []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, cls), followlinks=True):
            dirnames.sort()
            for fn in sorted(filenames):
                if _is_image(fn, exts):
                    found.append(os.path.relpath(os.path.join(dirpath, fn), root))
        if not found:
            raise PackError('empty class folder: %s (no %s files)' % (os.path.join(root, cls), '/'.join(exts)))
        items.extend((p.replace(os.sep, '/'), label) for p in found)
    return items, classes


def load_synset(path):
    """Class name -> label from a synset file or a folder of class folders.

    File: one class per line, the first word is the name (``synset.txt``:
    ``n01440764``; ``LOC_synset_mapping.txt``: ``n01440764 tench, Tinca tinca``; Places365
    ``categories_places365.txt``: ``/a/airfield 0``), label = line number. Folder: its sorted
    sub-folder names (the ImageNet ``train/`` folder gives the usual 0..999 order).
    """
    if os.path.isdir(path):
        names = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    elif os.path.isfile(path):
        with open(path) as f:
            names = [line.split()[0] for line in f if line.strip()]
    else:
        raise PackError('synset file or folder not found: %s' % path)
    if not names:
        raise PackError('no class names in %s' % path)
    return {name: i for i, name in enumerate(names)}


def _parse_label(tok, synset, where):
    try:
        return float(tok)
    except ValueError:
        pass
    if synset is None:
        raise PackError('%s: label %r is not a number; give --synset to map class names to labels' % (where, tok))
    if tok not in synset:
        raise PackError('%s: class %r is not in the synset' % (where, tok))
    return float(synset[tok])


def read_list_file(path, synset=None, ext=''):
    """Items ``(relpath, labels)`` from a label list. Formats, detected per file:

    - MXNet ``.lst``: ``index<TAB>label[<TAB>label...]<TAB>path``;
    - ``path label`` lines (Places365 ``places365_train_standard.txt`` / ``places365_val.txt``,
      caffe ``val.txt``; a leading ``/`` is dropped), the label a number or a synset name;
    - CSV with header ``ImageId,PredictionString`` (ImageNet ``LOC_val_solution.csv``): the
      label is the first synset of PredictionString (needs ``synset``), the path
      ``ImageId + ext`` (give ``ext='.JPEG'``).
    """
    if not os.path.isfile(path):
        raise PackError('list file not found: %s' % path)
    with open(path, 'r', encoding='utf-8', errors='replace') as f:
        lines = f.read().splitlines()
    items = []
    first = next((l for l in lines if l.strip()), '')
    if first.replace(' ', '').lower().startswith('imageid,predictionstring'):
        for lineno, line in enumerate(lines, 1):
            if not line.strip() or lineno == 1:
                continue
            where = '%s line %d' % (path, lineno)
            cells = line.split(',', 1)
            if len(cells) != 2 or not cells[1].split():
                raise PackError('%s: expected "ImageId,PredictionString", got %r' % (where, line[:60]))
            items.append((cells[0].strip() + ext, [_parse_label(cells[1].split()[0], synset, where)]))
    else:
        for lineno, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith('#'):
                continue
            where = '%s line %d' % (path, lineno)
            if '\t' in line and len(line.split('\t')) >= 3:
                cells = line.split('\t')
                labels = [_parse_label(c.strip(), synset, where) for c in cells[1:-1]]
                rel = cells[-1].strip()
            else:
                cells = line.split()
                if len(cells) < 2:
                    raise PackError('%s: expected "path label", got %r' % (where, line[:60]))
                rel = cells[0]
                labels = [_parse_label(c, synset, where) for c in cells[1:]]
            check_class_labels(labels, where)
            items.append((rel.lstrip('/') + (ext if not os.path.splitext(rel)[1] else ''), labels))
    if not items:
        raise PackError('list file %s lists no images' % path)
    return items


def split_items(items, train_ratio, seed=0):
    """Deterministic stratified split: per first label, shuffled by ``seed``, ``round(ratio*n)`` to train."""
    if not 0.0 < train_ratio <= 1.0:
        raise PackError('--train-ratio must be in (0, 1], not %s' % train_ratio)
    if train_ratio >= 1.0:
        return list(items), []
    groups = collections.OrderedDict()
    for it in items:
        groups.setdefault(_labels(it)[0], []).append(it)
    train, val = [], []
    for label in sorted(groups):
        g = list(groups[label])
        random.Random('%s/%s' % (seed, label)).shuffle(g)
        k = int(round(train_ratio * len(g)))
        if len(g) > 1:
            k = min(max(k, 1), len(g) - 1)     # every class in both parts when it can be
        train.extend(g[:k])
        val.extend(g[k:])
    return train, val


def _labels(item):
    lab = item[1]
    return list(lab) if isinstance(lab, (list, tuple, np.ndarray)) else [lab]


def _fmt_label(x):
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def write_lst(path, items):
    """Write MXNet ``.lst`` lines ``index<TAB>label(s)<TAB>relpath`` (index = line number),
    atomically (a failure leaves the previous file, or none)."""
    ensure_dir(os.path.dirname(os.path.abspath(path)), 'list %s' % path)
    atomic_save(path, ''.join('%d\t%s\t%s\n' % (i, '\t'.join(_fmt_label(l) for l in _labels(it)), it[0])
                              for i, it in enumerate(items)))


def read_lst(path):
    """Items ``(index, labels, relpath)`` of an MXNet ``.lst`` (cells stripped, as MXNet's tool
    does). Refused with PackError naming the line: a malformed line, an index that is negative,
    too large or repeated (it is the record's key), a label that is not finite, and in a one-label
    line a label that is not a class number (see :func:`check_class_labels`)."""
    if not os.path.isfile(path):
        raise PackError('list file not found: %s' % path)
    out = []
    seen = {}
    with open(path, 'r', encoding='utf-8', errors='replace') as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip('\r\n')
            if not line.strip():
                continue
            cells = [c.strip() for c in line.strip().split('\t')]
            where = '%s line %d' % (path, lineno)
            try:
                if len(cells) < 3 or not cells[-1]:
                    raise ValueError
                index, labels = int(cells[0]), [float(c) for c in cells[1:-1]]
            except ValueError:
                raise PackError('%s is not "index<TAB>label<TAB>path": %r' % (where, line[:60])) from None
            if not 0 <= index < 1 << 63:
                raise PackError('%s: index %d is not in 0..2^63-1' % (where, index))
            if index in seen:
                raise PackError('%s: index %d is already used on line %d (the index is the record key)'
                                % (where, index, seen[index]))
            seen[index] = lineno
            check_class_labels(labels, where)
            out.append((index, labels, cells[-1]))
    if not out:
        raise PackError('list file %s lists no images' % path)
    return out


def make_lists(prefix, root, list_file=None, synset=None, ext='', train_ratio=1.0, seed=0, shuffle=True,
               exts=IMAGE_EXTS, log=None):
    """Write ``PREFIX.lst`` (or ``PREFIX_train.lst`` + ``PREFIX_val.lst`` when ``train_ratio < 1``).

    Items come from ``list_file`` (see :func:`read_list_file`; paths relative to ``root``) or,
    without one, from the class folders of ``root`` (then ``PREFIX_synset.txt`` lists the class
    names in label order). Lists are shuffled with ``seed`` unless ``shuffle`` is false: a shuffled
    file lets each distributed worker's contiguous part hold every class. Returns the list paths.
    """
    log = log or (lambda msg: None)
    if not 0.0 < train_ratio <= 1.0:
        raise PackError('--train-ratio must be in (0, 1], not %s' % train_ratio)
    if list_file:
        items = read_list_file(list_file, load_synset(synset) if synset else None, ext)
    else:
        items, classes = list_from_folders(root, exts)
    ensure_dir(os.path.dirname(os.path.abspath(prefix)), 'output prefix %s' % prefix)
    if not list_file:
        atomic_save(prefix + '_synset.txt', ''.join(c + '\n' for c in classes))
        log('%d classes in %s (names in %s_synset.txt)' % (len(classes), root, prefix))
    if train_ratio >= 1.0:
        parts = [('', items)]
    else:
        parts = list(zip(('_train', '_val'), split_items(items, train_ratio, seed)))
    paths = []
    for suffix, part in parts:
        part = list(part)
        if shuffle:
            random.Random(seed).shuffle(part)
        path = prefix + suffix + '.lst'
        write_lst(path, part)
        log('wrote %s: %d images' % (path, len(part)))
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------
_OPTS = {}


def _init_worker(opts):
    import cv2
    cv2.setNumThreads(1)
    _OPTS.clear()
    _OPTS.update(opts)


def _decode_color(data, path):
    """BGR uint8 HxWx3 image from file bytes (OpenCV, Pillow for what OpenCV cannot read), or None."""
    import cv2
    img = None
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        img = None
    if img is not None and img.size and img.ndim == 3 and img.shape[2] == 3:
        return img
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            if im.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):       # 16-bit / 32-bit grayscale
                arr = np.asarray(im, np.float64)
                if arr.max() > 255:
                    arr = arr / 257.0
                im = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
            rgb = np.asarray(im.convert('RGB'))
        return np.ascontiguousarray(rgb[:, :, ::-1])
    except Exception:
        return None


def _keeps_own_bytes(data, fmt):
    """True when ImageRecordIter can use the bytes as they are: an 8-bit 3-channel JPEG or PNG."""
    if fmt == 'png':
        # IHDR: bit depth 8, colour type 2 (RGB), and no tRNS chunk (a transparency key)
        idat = data.find(b'IDAT')
        return len(data) > 26 and data[12:16] == b'IHDR' and data[24] == 8 and data[25] == 2 \
            and data.find(b'tRNS', 0, idat if idat > 0 else len(data)) < 0
    if fmt != 'jpeg':
        return False
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as im:
            return im.mode == 'RGB'          # not L (grayscale) or CMYK
    except Exception:
        return False


def _process(item):
    """Worker: ``(i, payload or None, status, message)`` for one list item."""
    import cv2
    i, labels, rel = item
    o = _OPTS
    path = os.path.join(o['root'], rel)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        return i, None, 'error', 'cannot read image %s: %s' % (path, e.strerror or e)
    if not data:
        return i, None, 'error', 'empty image file: %s' % path
    fmt = image_format(data)
    img = None
    if o['mxnet']:
        img = cv2.imread(path, cv2.IMREAD_COLOR)      # what MXNet's tools/im2rec.py decodes with
        if img is not None and not (img.ndim == 3 and img.shape[2] == 3 and img.size):
            img = None
    if img is None:
        img = _decode_color(data, path)
    if img is None:
        return i, None, 'error', 'cannot decode image %s (%s, %d bytes)' % (path, fmt or 'unknown format', len(data))
    h, w = img.shape[:2]
    resize = o['resize']
    if o['mxnet']:     # MXNet's tool: shorter side to exactly --resize (up or down), bilinear, sizes floored
        need_resize = resize > 0
    else:
        need_resize = resize > 0 and min(h, w) > resize
    header = pack_header(labels, i)
    if not need_resize and o['pass_through'] and _keeps_own_bytes(data, fmt):
        return i, header + data, 'kept', None
    if need_resize and o['mxnet']:
        size = (resize, h * resize // w) if h > w else (w * resize // h, resize)
        img = cv2.resize(img, size)
    elif need_resize:
        if h < w:
            nh, nw = resize, max(1, int(round(w * resize / float(h))))
        else:
            nh, nw = max(1, int(round(h * resize / float(w)))), resize
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    enc = o['encoding']
    if enc == '.jpg':
        params = [cv2.IMWRITE_JPEG_QUALITY, o['quality']]
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, o['png_level']]
    ok, buf = cv2.imencode(enc, img, params)
    if not ok:
        return i, None, 'error', 'cannot encode image %s' % path
    return i, header + buf.tobytes(), 'encoded', None


def _process_chunk(items):
    return [_process(it) for it in items]


def _ordered(pool, work, chunk, window, lst_path):
    """Results of ``_process`` over ``work`` in order, at most ``window`` chunks in flight."""
    from concurrent.futures.process import BrokenProcessPool
    chunks = [work[k:k + chunk] for k in range(0, len(work), chunk)]
    pending = collections.deque()
    nxt = 0
    while nxt < len(chunks) or pending:
        while nxt < len(chunks) and len(pending) < window:
            pending.append((chunks[nxt][0][2], pool.submit(_process_chunk, chunks[nxt])))
            nxt += 1
        first_path, fut = pending.popleft()
        try:
            results = fut.result()
        except BrokenProcessPool:
            raise PackError('a packing process died while reading the images from %s on (list %s); '
                            'pack with --num-thread 1 to see which image crashes the decoder' % (first_path, lst_path))
        for r in results:
            yield r


class _Progress(object):
    def __init__(self, name, total, enabled=True, stream=None):
        self.name, self.total, self.enabled = name, total, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.t0 = self.last = time.time()
        self.every = 0.5 if self.tty else 10.0

    def update(self, done, force=False):
        if not self.enabled:
            return
        now = time.time()
        if not force and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0
        msg = '[im2rec] %s: %d/%d (%3.0f%%) %.0f img/s, eta %ds' % (
            self.name, done, self.total, 100.0 * done / max(self.total, 1), rate, eta)
        self.stream.write(('\r' + msg) if self.tty else (msg + '\n'))
        if self.tty and force:
            self.stream.write('\n')
        self.stream.flush()


def pack(lst_path, root, out_prefix=None, resize=0, quality=95, encoding='.jpg', pass_through=True,
         num_thread=1, skip_bad=False, progress=True, png_level=3, log=None, mxnet=False, pack_label=True):
    """Pack the images of ``lst_path`` (paths relative to ``root``) into ``PREFIX.rec`` + ``.idx``.

    ``PREFIX`` is ``out_prefix`` or the list path without ``.lst``. Record ``i`` holds the
    list's labels, id = list index, and the image: its own bytes when it is an 8-bit colour
    JPEG/PNG needing no resize and ``pass_through``; otherwise decoded as 3-channel colour,
    shorter side reduced to ``resize`` when longer (0: never), re-encoded as ``encoding``
    (``.jpg`` at ``quality``, or ``.png``). Records are written in list order whatever
    ``num_thread`` is, so the output is deterministic. ``mxnet=True``: decode and resize as
    MXNet's ``tools/im2rec.py`` does (``cv2.imread``; shorter side to exactly ``resize``,
    bilinear); ``pack_label=False``: only the first label of each line (MXNet's default).
    The pair appears whole or not at all (a failure, a full disk included, leaves no ``.part``
    file and any previous pair untouched). Returns a stats dict.
    """
    log = log or (lambda msg: None)
    if encoding not in ('.jpg', '.png'):
        raise PackError('--encoding must be .jpg or .png, not %r' % encoding)
    if not 1 <= quality <= 100:
        raise PackError('--quality must be in 1..100, not %d' % quality)
    if not os.path.isdir(root):
        raise PackError('image root folder not found: %s' % root)
    if resize is not None and resize < 0:
        raise PackError('--resize must be 0 (keep the size) or a positive size, not %d' % resize)
    items = read_lst(lst_path)
    prefix = out_prefix or (lst_path[:-4] if lst_path.endswith('.lst') else lst_path)
    rec_path, idx_path = prefix + '.rec', prefix + '.idx'
    ensure_dir(os.path.dirname(os.path.abspath(rec_path)), 'output %s' % rec_path)
    opts = dict(root=root, resize=int(resize or 0), quality=int(quality), encoding=encoding,
                pass_through=bool(pass_through), png_level=int(png_level), mxnet=bool(mxnet))
    work = [(i, labels if pack_label else labels[:1], rel) for (i, labels, rel) in items]
    try:
        writer = RecordWriter(rec_path, idx_path)
    except OSError as e:
        raise OSError(e.errno, 'cannot write %s: %s' % (rec_path, e.strerror or e)) from None
    stats = collections.Counter()
    bar = _Progress(os.path.basename(rec_path), len(work), progress)
    t0 = time.time()
    pool = None
    try:
        if num_thread > 1 and len(work) >= 100:     # below that, starting workers costs more than it saves
            # spawn, not fork: the caller may have MXNet/OpenMP threads running, which fork does not survive;
            # a worker that dies (crash in a decoder) breaks the pool: an error, never a hang
            from concurrent.futures import ProcessPoolExecutor
            pool = ProcessPoolExecutor(num_thread, mp_context=multiprocessing.get_context('spawn'),
                                       initializer=_init_worker, initargs=(opts,))
            results = _ordered(pool, work, max(1, min(64, len(work) // (num_thread * 8))), num_thread * 4, lst_path)
        else:
            _init_worker(opts)
            results = map(_process, work)
        for done, (i, payload, status, msg) in enumerate(results, 1):
            if status == 'error':
                if not skip_bad:
                    raise PackError(msg)
                sys.stderr.write('im2rec: warning: skipped: %s\n' % msg)
            else:
                writer.write(i, payload)
            stats[status] += 1
            bar.update(done)
        bar.update(len(work), force=True)
        if writer.count == 0:
            raise PackError('no image of %s could be packed' % lst_path)
        writer.close()
    except OSError as e:            # a full disk, a file size limit: name what was being written
        writer.abort()
        raise OSError(e.errno, 'cannot write %s: %s (nothing was written)' % (rec_path, e.strerror or e)) from None
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    out = dict(rec=rec_path, idx=idx_path, records=writer.count, kept=stats['kept'], encoded=stats['encoded'],
               skipped=stats['error'], bytes=os.path.getsize(rec_path), seconds=time.time() - t0)
    log('wrote %s: %d records (%d original bytes, %d re-encoded, %d skipped), %.1f MB in %.1f s'
        % (rec_path, out['records'], out['kept'], out['encoded'], out['skipped'], out['bytes'] / 1e6, out['seconds']))
    return out


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _add_list_args(p):
    p.add_argument('--list-file', default=None,
                   help='label list to read instead of walking class folders: "path label" lines '
                        '(Places365 places365_train_standard.txt / places365_val.txt, caffe val.txt), '
                        'an MXNet .lst, or ImageNet LOC_val_solution.csv; paths are relative to ROOT')
    p.add_argument('--synset', default=None,
                   help='class names -> labels for lists that name classes: a file, one class per line '
                        '(synset.txt, LOC_synset_mapping.txt), or a folder whose sorted sub-folders are the '
                        'classes (e.g. ImageNet train/)')
    p.add_argument('--ext', default='',
                   help='extension appended to list paths that have none (LOC_val_solution.csv: .JPEG)')
    p.add_argument('--train-ratio', type=float, default=1.0,
                   help='fraction of each class for PREFIX_train.lst, the rest to PREFIX_val.lst; '
                        '1 (default) writes PREFIX.lst only')
    p.add_argument('--seed', type=int, default=0, help='seed of the split and of the list order (default 0)')
    p.add_argument('--no-shuffle', action='store_true',
                   help='keep the lists in folder/list-file order instead of shuffling them')
    p.add_argument('--exts', default=','.join(IMAGE_EXTS),
                   help='comma-separated image extensions for folder walking (case-insensitive)')


def _add_pack_args(p):
    p.add_argument('--resize', type=int, default=0,
                   help='reduce the shorter side to this many pixels when it is longer (e.g. 480 for train, '
                        '256 for val); 0 (default) keeps the size')
    p.add_argument('--quality', type=int, default=95, help='JPEG quality of re-encoded images (default 95)')
    p.add_argument('--encoding', default='.jpg', choices=['.jpg', '.png'],
                   help='format of re-encoded images (default .jpg)')
    p.add_argument('--pass-through', type=int, default=1, choices=[0, 1],
                   help='1 (default): an 8-bit colour JPEG/PNG that needs no resize keeps its own bytes; '
                        '0: re-encode every image')
    p.add_argument('--num-thread', type=int, default=max(1, (os.cpu_count() or 1)),
                   help='worker processes (default: the number of CPUs)')
    p.add_argument('--skip-bad', action='store_true',
                   help='skip unreadable images with a warning instead of stopping with an error')
    p.add_argument('--quiet', action='store_true', help='no progress or summary lines (warnings and errors only)')


def build_parser():
    parser = ArgParser(
        prog='crunet-im2rec',
        description='Make image lists and pack them into RecordIO (.rec + .idx) for mx.io.ImageRecordIter.',
        epilog="MXNet's form is accepted too: crunet-im2rec PREFIX ROOT --list [--recursive] ..., then "
               "crunet-im2rec PREFIX ROOT (crunet-im2rec PREFIX ROOT -h for its options).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest='cmd', metavar='CMD')
    sub.required = True
    p = sub.add_parser('list', help='write .lst files from class folders or a label list')
    p.add_argument('prefix', help='output prefix: PREFIX.lst, or PREFIX_train.lst + PREFIX_val.lst')
    p.add_argument('root', help='image folder (class folders, or the root the list paths are relative to)')
    _add_list_args(p)
    p = sub.add_parser('pack', help='pack .lst files into .rec + .idx')
    p.add_argument('lst', nargs='+', help='.lst files; each gives LST-without-.lst .rec and .idx')
    p.add_argument('--root', required=True, help='folder the list paths are relative to')
    _add_pack_args(p)
    p = sub.add_parser('make', help='list, then pack every list written')
    p.add_argument('prefix', help='output prefix')
    p.add_argument('root', help='image folder')
    _add_list_args(p)
    _add_pack_args(p)
    p = sub.add_parser('check', help='validate .rec/.idx pairs and print their record counts')
    p.add_argument('rec', nargs='+', help='.rec files (the .idx beside each)')
    p.add_argument('--mode', default='sample', choices=['sample', 'full'],
                   help='sample: every header, images sampled above 1000 records; full: decode every image')
    return parser


def _say(msg):
    sys.stderr.write('[im2rec] %s\n' % msg)
    sys.stderr.flush()


def _check_pack_flags(args, png_quality=False):
    if args.num_thread < 1:
        raise PackError('--num-thread must be at least 1, not %d' % args.num_thread)
    if png_quality:
        pass                 # MXNet's form: the PNG compression, clamped to 0..9 by OpenCV as in MXNet's tool
    elif not 1 <= args.quality <= 100:
        raise PackError('--quality must be in 1..100, not %d' % args.quality)
    if args.resize < 0:
        raise PackError('--resize must be 0 (keep the size) or a positive size, not %d' % args.resize)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith('-') and argv[0] not in SUBCOMMANDS:
        return mxnet_main(argv)
    args = build_parser().parse_args(argv)
    say = (lambda msg: None) if getattr(args, 'quiet', False) else _say
    if args.cmd in ('pack', 'make'):
        _check_pack_flags(args)              # before any list is written
    if args.cmd in ('list', 'make'):
        exts = tuple(e if e.startswith('.') else '.' + e for e in args.exts.split(',') if e)
        lists = make_lists(args.prefix, args.root, args.list_file, args.synset, args.ext, args.train_ratio,
                           args.seed, not args.no_shuffle, exts, log=say)
    if args.cmd in ('pack', 'make'):
        for lst in (args.lst if args.cmd == 'pack' else lists):
            pack(lst, args.root, resize=args.resize, quality=args.quality, encoding=args.encoding,
                 pass_through=args.pass_through, num_thread=args.num_thread, skip_bad=args.skip_bad,
                 progress=not args.quiet, log=say)
    if args.cmd == 'check':
        for rec in args.rec:
            info = scan_recordio(rec, mode=args.mode)
            print('%s: %d records, labels %g..%g, %d images decoded' % (
                rec, info.num_records, info.label_min, info.label_max, info.checked_images))
    return 0


# ---------------------------------------------------------------------------------------------
# MXNet's form: tools/im2rec.py PREFIX ROOT --list [--recursive] ... / tools/im2rec.py PREFIX ROOT
# ---------------------------------------------------------------------------------------------
SUBCOMMANDS = ('list', 'pack', 'make', 'check')
#: MXNet's tools/im2rec.py default --exts
MXNET_EXTS = ('.jpeg', '.jpg', '.png')


def mxnet_list_images(root, recursive, exts=MXNET_EXTS):
    """``([(index, relpath, label)], [(folder, label)])`` exactly as MXNet's ``list_image``: walk
    ``root`` (folders and files sorted, links followed); with ``recursive`` every folder holding an
    image is a class, numbered in the order the walk first meets it (``root`` itself included),
    without it only the files directly in ``root``, label 0. ``exts`` are compared with the
    lower-cased extension, as given."""
    items, cat = [], {}
    if recursive:
        for path, dirs, files in os.walk(root, followlinks=True):
            dirs.sort()
            files.sort()
            for fname in files:
                fpath = os.path.join(path, fname)
                if os.path.isfile(fpath) and os.path.splitext(fname)[1].lower() in exts:
                    if path not in cat:
                        cat[path] = len(cat)
                    items.append((len(items), os.path.relpath(fpath, root), cat[path]))
    else:
        for fname in sorted(os.listdir(root)):
            fpath = os.path.join(root, fname)
            if os.path.isfile(fpath) and os.path.splitext(fname)[1].lower() in exts:
                items.append((len(items), os.path.relpath(fpath, root), 0))
    folders = [(os.path.relpath(k, root), v) for k, v in sorted(cat.items(), key=lambda kv: kv[1])]
    return items, folders


def _write_mxnet_lst(path, items):
    atomic_save(path, ''.join('%d\t%s%s\n' % (it[0], ''.join('%f\t' % x for x in it[2:]), it[1]) for it in items))


def mxnet_make_lists(prefix, root, recursive=False, exts=MXNET_EXTS, chunks=1, train_ratio=1.0, test_ratio=0.0,
                     shuffle=True, log=None):
    """MXNet's ``make_list``: the same ``.lst`` files, byte for byte (shuffled by ``random.seed(100)``,
    split by position: ``int(chunk * train_ratio)`` lines to ``_train``, the rest to ``_val``, after
    ``int(chunk * test_ratio)`` to ``_test``; labels written ``%f``). Written atomically; returns
    the paths and prints MXNet's ``folder label`` lines (``recursive``) on stdout."""
    log = log or (lambda msg: None)
    if not 0.0 < train_ratio <= 1.0:
        raise PackError('--train-ratio must be in (0, 1], not %s' % train_ratio)
    if not 0.0 <= test_ratio < 1.0 or train_ratio + test_ratio > 1.0:
        raise PackError('--test-ratio must be in [0, 1) with --train-ratio + --test-ratio <= 1, not %s + %s'
                        % (train_ratio, test_ratio))
    if chunks < 1:
        raise PackError('--chunks must be at least 1, not %d' % chunks)
    if not os.path.isdir(root):
        raise PackError('image folder not found: %s' % root)
    items, folders = mxnet_list_images(root, recursive, exts)
    if not items:
        raise PackError('no %s files %s %s' % ('/'.join(exts), 'under' if recursive else 'directly in (add --recursive '
                                                'for class folders)', root))
    ensure_dir(os.path.dirname(prefix) if not os.path.isdir(prefix) else prefix, 'output prefix %s' % prefix)
    for folder, label in folders:
        print(folder, label)
    if shuffle:
        random.Random(100).shuffle(items)
    n = len(items)
    size = (n + chunks - 1) // chunks
    paths = []

    def out(path, part):
        _write_mxnet_lst(path, part)
        log('wrote %s: %d images' % (path, len(part)))
        paths.append(path)
    for c in range(chunks):
        chunk = items[c * size:(c + 1) * size]
        tag = '_%d' % c if chunks > 1 else ''
        sep, sep_test = int(size * train_ratio), int(size * test_ratio)
        if train_ratio == 1.0:
            out(prefix + tag + '.lst', chunk)
        else:
            if test_ratio:
                out(prefix + tag + '_test.lst', chunk[:sep_test])
            if train_ratio + test_ratio < 1.0:
                out(prefix + tag + '_val.lst', chunk[sep_test + sep:])
            out(prefix + tag + '_train.lst', chunk[sep_test:sep_test + sep])
    return paths


def mxnet_lists_of(prefix):
    """The ``.lst`` files MXNet's tool packs for ``PREFIX``: the files of PREFIX's folder (PREFIX
    itself when it is a folder) whose path starts with PREFIX and ends ``.lst``, sorted."""
    folder = prefix if os.path.isdir(prefix) else os.path.dirname(prefix)
    try:
        names = os.listdir(folder)
    except OSError as e:
        raise PackError('cannot list %s for PREFIX %s: %s' % (folder, prefix, e.strerror or e)) from None
    paths = sorted(os.path.join(folder, n) for n in names)
    return [p for p in paths if os.path.isfile(p) and p.startswith(prefix) and p.endswith('.lst')]


def build_mxnet_parser():
    parser = ArgParser(
        prog='crunet-im2rec PREFIX ROOT',
        description="MXNet's tools/im2rec.py form: with --list, write PREFIX*.lst from the images under ROOT; "
                    "without, pack every PREFIX*.lst into .rec + .idx. Same lists and records as MXNet's tool; "
                    "bad input stops with one error line instead of being skipped (see data/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('prefix', help='prefix of the .lst, .rec and .idx files')
    parser.add_argument('root', help='folder holding the images')
    g = parser.add_argument_group('Options for creating image lists')
    g.add_argument('--list', action='store_true', help='write the lists instead of packing them')
    g.add_argument('--exts', nargs='+', default=list(MXNET_EXTS), help='image extensions (lower case)')
    g.add_argument('--chunks', type=int, default=1, help='number of chunks')
    g.add_argument('--train-ratio', type=float, default=1.0, help='fraction of the images for _train.lst')
    g.add_argument('--test-ratio', type=float, default=0.0, help='fraction of the images for _test.lst')
    g.add_argument('--recursive', action='store_true',
                   help='walk the sub-folders; every folder holding images is one class')
    g.add_argument('--no-shuffle', dest='shuffle', action='store_false', help='keep the walk order')
    g = parser.add_argument_group('Options for creating the database')
    g.add_argument('--pass-through', action='store_true',
                   help='keep the bytes of colour 8-bit JPEG/PNG files (others are still converted)')
    g.add_argument('--resize', type=int, default=0, help='resize the shorter side to this (0: keep)')
    g.add_argument('--center-crop', action='store_true', help='not supported (refused)')
    g.add_argument('--quality', type=int, default=95, help='JPEG quality 1-100, or PNG compression 0-9')
    g.add_argument('--num-thread', type=int, default=max(1, (os.cpu_count() or 1)),
                   help='worker processes (the output is the same for any number)')
    g.add_argument('--color', type=int, default=1, choices=[-1, 0, 1],
                   help='only 1 (colour) is supported: every record is 3-channel colour')
    g.add_argument('--encoding', default='.jpg', choices=['.jpg', '.png'], help='encoding of the records')
    g.add_argument('--pack-label', action='store_true', help='pack every label of a line, not only the first')
    g.add_argument('--skip-bad', action='store_true',
                   help='skip unreadable images with a warning (MXNet skips them in silence)')
    g.add_argument('--quiet', action='store_true', help='no progress or summary lines')
    return parser


def mxnet_main(argv):
    """``crunet-im2rec PREFIX ROOT [--list [--recursive] ...]``: MXNet's ``tools/im2rec.py`` command
    line, with its list algorithm and its record encoding (``cv2.imread`` colour, JPEG quality 95,
    its resize); what differs on purpose is written in ``data/README.md``."""
    args = build_mxnet_parser().parse_args(argv)
    if args.center_crop:
        raise PackError('--center-crop is not supported: the iterators crop (--image-shape)')
    if args.color != 1:
        raise PackError('--color %d is not supported: every record is 3-channel colour (the iterators make '
                        'grayscale with --image-shape 1,H,W)' % args.color)
    prefix, root = os.path.abspath(args.prefix), os.path.abspath(args.root)
    say = (lambda msg: None) if args.quiet else _say
    if args.list:
        mxnet_make_lists(prefix, root, args.recursive, tuple(args.exts), args.chunks, args.train_ratio,
                         args.test_ratio, args.shuffle, log=say)
        return 0
    _check_pack_flags(args, png_quality=args.encoding == '.png')
    lists = mxnet_lists_of(prefix)
    if not lists:
        raise PackError('no list file starts with %s (write them first: crunet-im2rec %s %s --list --recursive)'
                        % (prefix, args.prefix, args.root))
    if not os.path.isdir(root):
        raise PackError('image root folder not found: %s' % root)
    for lst in lists:
        pack(lst, root, resize=args.resize, quality=args.quality if args.encoding == '.jpg' else 95,
             encoding=args.encoding, pass_through=args.pass_through, num_thread=args.num_thread,
             skip_bad=args.skip_bad, progress=not args.quiet, png_level=min(max(args.quality, 0), 9), log=say,
             mxnet=True,
             pack_label=args.pack_label)
    return 0


def run(argv=None):
    """The ``crunet-im2rec`` command: :func:`main` under the exit-code convention of
    :mod:`crunet.errors` (bad input: one ``error:`` line, exit 2)."""
    return cli_main(main, argv)


if __name__ == '__main__':
    sys.exit(run())
