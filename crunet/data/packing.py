"""Packing ``.lst`` files into RecordIO (``.rec`` + ``.idx``) with a pool of processes.

Every image becomes a 3-channel colour record: grayscale, palette, RGBA / LA (alpha dropped),
16-bit, CMYK JPEGs and formats ImageRecordIter cannot decode (WebP, GIF, ...) are decoded and
re-encoded. A colour 8-bit JPEG or PNG that needs no resize keeps its own bytes. The output
depends only on the inputs and the options, whatever the number of processes, and appears whole
or not at all (temporary files renamed into place, removed when anything fails).
"""
import collections
import io
import multiprocessing
import os
import sys
import time

import numpy as np

from .lists import PackError, ensure_dir, read_lst
from .recordio import RecordWriter, image_format, pack_header

__all__ = ['pack']

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
    if fmt == 'jpeg' and data.rfind(b'\xff\xd9') < 0:      # decodes, with a grey lower part: refused
        return i, None, 'error', 'truncated JPEG file (no end-of-image marker): %s' % path
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
    for out in (rec_path, idx_path):
        if os.path.isdir(out):
            raise PackError('output %s is a folder' % out)
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
