"""Make image lists and pack them into RecordIO (``.rec`` + ``.idx``) for ``mx.io.ImageRecordIter``.

MXNet's pip package does not ship ``tools/im2rec``; this is the project's replacement. It needs
no MXNet (the RecordIO framing is written here, byte-compatible with dmlc-core's writer), only
numpy, OpenCV and Pillow.

Subcommands (``python -m data.im2rec CMD -h`` for every option)::

    # 1. lists: from a folder-per-class tree (labels = sorted folder names) ...
    python -m data.im2rec list runs/data/mine /data/mine --train-ratio 0.9 --seed 0
    # ... or from a label list (Places365 / caffe "path label", MXNet .lst, ImageNet LOC_val_solution.csv)
    python -m data.im2rec list runs/data/places_val /data/places365/val_large \\
        --list-file /data/places365/places365_val.txt
    # 2. pack every list into PREFIX.rec + PREFIX.idx with 8 processes, shorter side <= 480
    python -m data.im2rec pack runs/data/mine_train.lst --root /data/mine --resize 480 --num-thread 8
    # 1+2 in one go
    python -m data.im2rec make runs/data/mine /data/mine --train-ratio 0.9 --resize 480
    # validate a .rec/.idx pair (the checks the training iterators run first)
    python -m data.im2rec check runs/data/mine_train.rec

Every image becomes a 3-channel colour record: grayscale, palette, RGBA / LA (alpha dropped),
16-bit, CMYK JPEGs and formats ImageRecordIter cannot decode (WebP, GIF, ...) are decoded and
re-encoded (``--encoding``, ``--quality``). A colour 8-bit JPEG or PNG that needs no resize keeps
its own bytes (``--pass-through 1``, the default). The output depends only on the inputs and the
options: the same inputs give the same bytes, whatever ``--num-thread``.

Bad input ends the command with one line on stderr (``im2rec: error: ...`` naming the file) and
exit status 1 -- or, with ``--skip-bad``, a warning per skipped image.
"""
import argparse
import collections
import io
import multiprocessing
import os
import random
import struct
import sys
import time

import numpy as np

__all__ = ['PackError', 'IMAGE_EXTS', 'RecordWriter', 'encode_record', 'pack_header', 'unpack_header',
           'RecordInfo', 'scan_recordio', 'read_index', 'read_payload', 'iter_payloads', 'image_format',
           'list_from_folders', 'read_list_file', 'load_synset', 'split_items', 'write_lst', 'read_lst',
           'make_lists', 'pack', 'main']

#: file extensions taken as images when walking a folder tree (compared lower-case)
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.gif', '.ppm', '.pgm')

# ---------------------------------------------------------------------------------------------
# RecordIO framing (dmlc-core src/recordio.cc) and the MXNet image record header (mx.recordio)
# ---------------------------------------------------------------------------------------------
MAGIC = 0xced7230a
_MAGIC_BYTES = struct.pack('<I', MAGIC)
_IR_FORMAT = '<IfQQ'                  # flag, label, id, id2 (mx.recordio.IRHeader)
_IR_SIZE = struct.calcsize(_IR_FORMAT)
_LEN_MASK = (1 << 29) - 1

#: formats the OpenCV inside MXNet 1.9.1's ImageRecordIter decodes (checked: WebP, PPM/PGM fail)
DECODABLE = ('jpeg', 'png', 'bmp', 'tiff')


class PackError(Exception):
    """Bad input for listing, packing or reading RecordIO; the message is one line naming the file."""


def _pad4(n):
    return (n + 3) & ~3


def encode_record(payload):
    """One RecordIO record, byte-identical to dmlc's ``RecordIOWriter::WriteRecord``.

    The payload is split wherever the magic number sits at a 4-byte aligned position (so a
    reader can always resynchronise on the magic), and the end is zero-padded to 4 bytes.
    """
    payload = bytes(payload)
    n = len(payload)
    if n >= 1 << 29:
        raise PackError('record of %d bytes is too large for RecordIO (limit 2^29)' % n)
    out = []
    dptr = 0
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1 and pos + 4 <= (n & ~3):
        if pos % 4 == 0:
            out.append(_MAGIC_BYTES + struct.pack('<I', ((1 if dptr == 0 else 2) << 29) | (pos - dptr)))
            out.append(payload[dptr:pos])
            dptr = pos + 4
            pos = payload.find(_MAGIC_BYTES, dptr)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    out.append(_MAGIC_BYTES + struct.pack('<I', ((3 if dptr else 0) << 29) | (n - dptr)))
    out.append(payload[dptr:])
    out.append(b'\0' * (_pad4(n) - n))
    return b''.join(out)


def pack_header(label, rec_id, id2=0):
    """The 24-byte image record header (``mx.recordio.pack``): one label, or a list of labels."""
    labels = np.atleast_1d(np.asarray(label, dtype=np.float32))
    if labels.size == 1:
        return struct.pack(_IR_FORMAT, 0, float(labels[0]), rec_id, id2)
    return struct.pack(_IR_FORMAT, labels.size, 0.0, rec_id, id2) + labels.tobytes()


def unpack_header(payload):
    """``(labels, id, image_bytes)`` of an image record payload; labels is a float32 array."""
    if len(payload) < _IR_SIZE:
        raise ValueError('record of %d bytes is too short for an image record header' % len(payload))
    flag, label, rec_id, _ = struct.unpack_from(_IR_FORMAT, payload)
    if flag == 0:
        return np.array([label], np.float32), rec_id, payload[_IR_SIZE:]
    end = _IR_SIZE + 4 * flag
    if flag > 1 << 20 or end > len(payload):
        raise ValueError('record header claims %d labels, more than the record holds' % flag)
    return np.frombuffer(payload[_IR_SIZE:end], np.float32).copy(), rec_id, payload[end:]


class RecordWriter(object):
    """Writes ``PREFIX.rec`` and ``PREFIX.idx`` (``key<TAB>offset`` lines) like MXIndexedRecordIO.

    Data go to temporary files renamed into place by :meth:`close`, so an interrupted or
    failed pack never leaves a half-written pair behind (:meth:`abort` removes them).
    """

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = rec_path
        self.idx_path = idx_path or os.path.splitext(rec_path)[0] + '.idx'
        self._rec_tmp = self.rec_path + '.part'
        self._idx_tmp = self.idx_path + '.part'
        self._frec = open(self._rec_tmp, 'wb')
        self._fidx = open(self._idx_tmp, 'w')
        self.offset = 0
        self.count = 0

    def write(self, key, payload):
        rec = encode_record(payload)
        self._fidx.write('%d\t%d\n' % (key, self.offset))
        self._frec.write(rec)
        self.offset += len(rec)
        self.count += 1

    def close(self):
        self._frec.close()
        self._fidx.close()
        os.replace(self._rec_tmp, self.rec_path)
        os.replace(self._idx_tmp, self.idx_path)

    def abort(self):
        for f, p in ((self._frec, self._rec_tmp), (self._fidx, self._idx_tmp)):
            f.close()
            if os.path.exists(p):
                os.remove(p)


def image_format(data):
    """Container format from the first bytes: 'jpeg', 'png', 'bmp', 'tiff', 'gif', 'webp', ... or None."""
    head = bytes(data[:16])
    if head[:3] == b'\xff\xd8\xff':
        return 'jpeg'
    if head[:8] == b'\x89PNG\r\n\x1a\n':
        return 'png'
    if head[:2] == b'BM':
        return 'bmp'
    if head[:4] in (b'II*\x00', b'MM\x00*'):
        return 'tiff'
    if head[:6] in (b'GIF87a', b'GIF89a'):
        return 'gif'
    if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
        return 'webp'
    if head[:2] in (b'P1', b'P2', b'P3', b'P4', b'P5', b'P6'):
        return 'pnm'
    return None


# ---------------------------------------------------------------------------------------------
# Reading and validating a .rec/.idx pair without MXNet (its C++ reader aborts or hangs on bad
# files: a missing .idx segfaults, a truncated .rec aborts, a wrong .idx reads garbage)
# ---------------------------------------------------------------------------------------------
RecordInfo = collections.namedtuple('RecordInfo', ['num_records', 'keys', 'offsets', 'label_min',
                                                   'label_max', 'label_width', 'checked_headers',
                                                   'checked_images'])


def read_index(idx_path):
    """``(keys, offsets)`` of a ``.idx`` file, in file order; raises PackError naming the line."""
    keys, offsets = [], []
    try:
        with open(idx_path, 'rb') as f:
            text = f.read()
    except OSError as e:
        raise PackError('cannot read index %s: %s' % (idx_path, e.strerror or e))
    for lineno, line in enumerate(text.split(b'\n'), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            key, off = int(parts[0]), int(parts[1])
            if off < 0:
                raise ValueError
        except ValueError:
            raise PackError('%s line %d is not "key<TAB>offset": %r' % (idx_path, lineno, line[:60].decode('latin-1')))
        keys.append(key)
        offsets.append(off)
    return keys, offsets


def _read_record(f, offset, size, rec_path, key):
    """Payload of the record starting at ``offset`` and the offset just after it (multi-part aware)."""
    parts = []
    pos = offset
    first = True
    while True:
        if pos + 8 > size:
            raise PackError('%s is truncated: record %s at offset %d runs past the end of the file (%d bytes)'
                            % (rec_path, key, offset, size))
        f.seek(pos)
        magic, lrec = struct.unpack('<II', f.read(8))
        if magic != MAGIC:
            if first:
                raise PackError('%s does not match %s: no record starts at offset %d (index key %s)'
                                % (os.path.splitext(rec_path)[0] + '.idx', rec_path, offset, key))
            raise PackError('%s: record %s at offset %d is corrupt (continuation without magic at %d)'
                            % (rec_path, key, offset, pos))
        cflag, clen = lrec >> 29, lrec & _LEN_MASK
        if (first and cflag not in (0, 1)) or (not first and cflag not in (2, 3)):
            raise PackError('%s: record %s at offset %d has a bad part flag %d (is the .idx for this .rec?)'
                            % (rec_path, key, pos, cflag))
        end = pos + 8 + _pad4(clen)
        if end > size:
            raise PackError('%s is truncated: record %s at offset %d needs %d bytes, the file has %d'
                            % (rec_path, key, offset, end, size))
        parts.append(f.read(clen))
        pos = end
        if cflag in (0, 3):
            break
        first = False
    return _MAGIC_BYTES.join(parts), pos


def read_payload(rec_path, offset, key='?'):
    """The payload (image record header + image bytes) of one record."""
    size = os.path.getsize(rec_path)
    with open(rec_path, 'rb') as f:
        return _read_record(f, offset, size, rec_path, key)[0]


def iter_payloads(rec_path, idx_path=None, limit=None):
    """Yield ``(key, payload)`` for the records of a pair in index order (at most ``limit``)."""
    idx_path = idx_path or os.path.splitext(rec_path)[0] + '.idx'
    keys, offsets = read_index(idx_path)
    size = os.path.getsize(rec_path)
    with open(rec_path, 'rb') as f:
        for n, (key, off) in enumerate(zip(keys, offsets)):
            if limit is not None and n >= limit:
                break
            yield key, _read_record(f, off, size, rec_path, key)[0]


def _even_sample(n, k):
    """Up to ``k`` positions spread evenly over ``range(n)``, first and last included."""
    if n <= k:
        return list(range(n))
    return sorted(set(int(round(i * (n - 1) / (k - 1))) for i in range(k)))


def _check_image(img_bytes, rec_path, key, offset):
    fmt = image_format(img_bytes)
    where = '%s: record %s (offset %d)' % (rec_path, key, offset)
    if len(img_bytes) == 0:
        raise PackError('%s holds no image data' % where)
    if fmt not in DECODABLE:
        head = bytes(img_bytes[:8])
        raise PackError('%s is not an image ImageRecordIter can decode (%s, %d bytes, starts %r); '
                        'repack it with python -m data.im2rec' % (where, fmt or 'unknown format', len(img_bytes), head))
    import cv2
    try:
        img = cv2.imdecode(np.frombuffer(img_bytes, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise PackError('%s is a %s image that does not decode (%d bytes)' % (where, fmt, len(img_bytes)))


def scan_recordio(rec_path, idx_path=None, mode='sample', max_headers=200000, header_sample=4000,
                  decode_all_below=1000, decode_sample=100, num_threads=2):
    """Validate a ``.rec``/``.idx`` pair and return its :class:`RecordInfo`; raise PackError if bad.

    Checks: both files exist, every index line parses, offsets are distinct, each listed record
    starts with the RecordIO magic, ends exactly where the next listed one starts (so the index
    lists every record and nothing else) and lies inside the file (truncation), carries an image
    record header, and that images decode (all of them below ``decode_all_below`` records,
    otherwise ``decode_sample`` spread over the file).

    mode: ``'sample'`` (default: every record header up to ``max_headers`` records, else
    ``header_sample`` of them), ``'full'`` (every header and every image) or ``'none'`` (files
    exist and the index parses).
    """
    if mode not in ('sample', 'full', 'none'):
        raise ValueError('mode must be sample, full or none, not %r' % (mode,))
    idx_path = idx_path or os.path.splitext(rec_path)[0] + '.idx'
    if not os.path.exists(rec_path):
        raise PackError('RecordIO file not found: %s' % rec_path)
    if not os.path.isfile(rec_path):
        raise PackError('RecordIO path is not a file: %s' % rec_path)
    if not os.path.isfile(idx_path):
        raise PackError('index file not found: %s (every .rec needs the .idx written with it by '
                        'python -m data.im2rec pack)' % idx_path)
    size = os.path.getsize(rec_path)
    if size == 0:
        raise PackError('RecordIO file is empty: %s' % rec_path)
    keys, offsets = read_index(idx_path)
    n = len(offsets)
    if n == 0:
        raise PackError('index %s lists no records' % idx_path)
    order = sorted(range(n), key=offsets.__getitem__)       # dmlc reads records in offset order
    offs = [offsets[i] for i in order]
    okeys = [keys[i] for i in order]
    for a, b, k in zip(offs, offs[1:], okeys[1:]):
        if a == b:
            raise PackError('%s does not match %s: offset %d is listed twice (key %s)' % (idx_path, rec_path, a, k))
    if offs[-1] >= size:
        j = offs.index(offs[-1])
        raise PackError('%s does not match %s: record %s at offset %d is past the end of the file (%d bytes)'
                        % (idx_path, rec_path, okeys[j], offs[-1], size))
    if mode == 'none':
        return RecordInfo(n, keys, offsets, None, None, None, 0, 0)
    header_pos = range(n) if (mode == 'full' or n <= max_headers) else _even_sample(n, header_sample)
    if mode == 'full' or n <= decode_all_below:
        decode_pos = set(range(n))
    else:
        decode_pos = set(_even_sample(n, decode_sample))
    lmin, lmax, width = np.inf, -np.inf, None
    to_decode = []
    with open(rec_path, 'rb') as f:
        for j in header_pos:
            off, key = offs[j], okeys[j]
            if off % 4:
                raise PackError('%s does not match %s: offset %d of record %s is not 4-byte aligned'
                                % (idx_path, rec_path, off, key))
            payload, end = _read_record(f, off, size, rec_path, key)
            nxt = offs[j + 1] if j + 1 < n else size
            if end != nxt:
                if j + 1 < n:
                    f.seek(nxt)
                    if f.read(4) != _MAGIC_BYTES:
                        raise PackError('%s does not match %s: no record starts at offset %d (index key %s)'
                                        % (idx_path, rec_path, nxt, okeys[j + 1]))
                    raise PackError('%s does not match %s: record %s at offset %d ends at %d but the next '
                                    'indexed record starts at %d' % (idx_path, rec_path, key, off, end, nxt))
                raise PackError('%s does not match %s: %d bytes follow the last indexed record (key %s); the '
                                'index does not list every record' % (idx_path, rec_path, size - end, key))
            try:
                labels, _, img = unpack_header(payload)
            except ValueError as e:
                raise PackError('%s: record %s (offset %d): %s' % (rec_path, key, off, e))
            if width is None:
                width = labels.size
            elif labels.size != width:
                raise PackError('%s: record %s has %d labels, earlier records %d' % (rec_path, key, labels.size, width))
            if not np.all(np.isfinite(labels)):
                raise PackError('%s: record %s has a label that is not a finite number' % (rec_path, key))
            lmin, lmax = min(lmin, float(labels.min())), max(lmax, float(labels.max()))
            if j in decode_pos:
                to_decode.append((img, key, off))
                decode_pos.discard(j)
        for j in sorted(decode_pos):     # sampled images whose header was not walked
            payload, _ = _read_record(f, offs[j], size, rec_path, okeys[j])
            try:
                to_decode.append((unpack_header(payload)[2], okeys[j], offs[j]))
            except ValueError as e:
                raise PackError('%s: record %s (offset %d): %s' % (rec_path, okeys[j], offs[j], e))
    if len(to_decode) > 64 and num_threads > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(num_threads) as ex:
            list(ex.map(lambda t: _check_image(t[0], rec_path, t[1], t[2]), to_decode))
    else:
        for img, key, off in to_decode:
            _check_image(img, rec_path, key, off)
    return RecordInfo(n, keys, offsets, lmin, lmax, width, len(header_pos), len(to_decode))


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
    """Write MXNet ``.lst`` lines ``index<TAB>label(s)<TAB>relpath`` (index = line number)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, 'w') as f:
        for i, it in enumerate(items):
            f.write('%d\t%s\t%s\n' % (i, '\t'.join(_fmt_label(l) for l in _labels(it)), it[0]))


def read_lst(path):
    """Items ``(index, labels, relpath)`` of an MXNet ``.lst``."""
    if not os.path.isfile(path):
        raise PackError('list file not found: %s' % path)
    out = []
    with open(path, 'r', encoding='utf-8', errors='replace') as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip('\n')
            if not line.strip():
                continue
            cells = line.split('\t')
            try:
                if len(cells) < 3:
                    raise ValueError
                out.append((int(cells[0]), [float(c) for c in cells[1:-1]], cells[-1]))
            except ValueError:
                raise PackError('%s line %d is not "index<TAB>label<TAB>path": %r' % (path, lineno, line[:60]))
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
    if list_file:
        items = read_list_file(list_file, load_synset(synset) if synset else None, ext)
    else:
        items, classes = list_from_folders(root, exts)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    if not list_file:
        with open(prefix + '_synset.txt', 'w') as f:
            f.write(''.join(c + '\n' for c in classes))
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
    img = _decode_color(data, path)
    if img is None:
        return i, None, 'error', 'cannot decode image %s (%s, %d bytes)' % (path, fmt or 'unknown format', len(data))
    h, w = img.shape[:2]
    resize = o['resize']
    need_resize = resize > 0 and min(h, w) > resize
    header = pack_header(labels, i)
    if not need_resize and o['pass_through'] and _keeps_own_bytes(data, fmt):
        return i, header + data, 'kept', None
    if need_resize:
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
         num_thread=1, skip_bad=False, progress=True, png_level=3, log=None):
    """Pack the images of ``lst_path`` (paths relative to ``root``) into ``PREFIX.rec`` + ``.idx``.

    ``PREFIX`` is ``out_prefix`` or the list path without ``.lst``. Record ``i`` holds the
    list's labels, id = list index, and the image: its own bytes when it is an 8-bit colour
    JPEG/PNG needing no resize and ``pass_through``; otherwise decoded as 3-channel colour,
    shorter side reduced to ``resize`` when longer (0: never), re-encoded as ``encoding``
    (``.jpg`` at ``quality``, or ``.png``). Records are written in list order whatever
    ``num_thread`` is, so the output is deterministic. Returns a stats dict.
    """
    log = log or (lambda msg: None)
    if encoding not in ('.jpg', '.png'):
        raise PackError('--encoding must be .jpg or .png, not %r' % encoding)
    if not 1 <= quality <= 100:
        raise PackError('--quality must be in 1..100, not %d' % quality)
    if not os.path.isdir(root):
        raise PackError('image root folder not found: %s' % root)
    items = read_lst(lst_path)
    prefix = out_prefix or (lst_path[:-4] if lst_path.endswith('.lst') else lst_path)
    rec_path, idx_path = prefix + '.rec', prefix + '.idx'
    opts = dict(root=root, resize=int(resize or 0), quality=int(quality), encoding=encoding,
                pass_through=bool(pass_through), png_level=int(png_level))
    work = [(i, labels, rel) for (i, labels, rel) in items]
    writer = RecordWriter(rec_path, idx_path)
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
    parser = argparse.ArgumentParser(
        prog='python -m data.im2rec',
        description='Make image lists and pack them into RecordIO (.rec + .idx) for mx.io.ImageRecordIter.',
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


def main(argv=None):
    args = build_parser().parse_args(argv)
    say = (lambda msg: None) if getattr(args, 'quiet', False) else _say
    try:
        if args.cmd in ('list', 'make'):
            exts = tuple(e if e.startswith('.') else '.' + e for e in args.exts.split(',') if e)
            lists = make_lists(args.prefix, args.root, args.list_file, args.synset, args.ext, args.train_ratio,
                               args.seed, not args.no_shuffle, exts, log=say)
        if args.cmd in ('pack', 'make'):
            if args.num_thread < 1:
                raise PackError('--num-thread must be at least 1')
            for lst in (args.lst if args.cmd == 'pack' else lists):
                pack(lst, args.root, resize=args.resize, quality=args.quality, encoding=args.encoding,
                     pass_through=args.pass_through, num_thread=args.num_thread, skip_bad=args.skip_bad,
                     progress=not args.quiet, log=say)
        if args.cmd == 'check':
            for rec in args.rec:
                info = scan_recordio(rec, mode=args.mode)
                print('%s: %d records, labels %g..%g, %d images decoded' % (
                    rec, info.num_records, info.label_min, info.label_max, info.checked_images))
    except PackError as e:
        sys.stderr.write('im2rec: error: %s\n' % e)
        return 1
    except KeyboardInterrupt:
        sys.stderr.write('im2rec: interrupted\n')
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
