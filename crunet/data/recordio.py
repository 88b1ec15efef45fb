"""The RecordIO format of ``mx.io.ImageRecordIter`` (``.rec`` + ``.idx``), read, written and validated
without MXNet.

* :func:`encode_record`, :func:`pack_header`, :class:`RecordWriter`: records byte-identical to
  dmlc-core's writer and ``mx.recordio.pack``;
* :func:`read_index`, :func:`iter_payloads`, :func:`unpack_header`: reading;
* :func:`scan_recordio`: the checks every reader of the project runs before MXNet's C++ reader
  sees a file (it segfaults on a missing ``.idx``, aborts on a truncated ``.rec`` and reads garbage
  through a wrong ``.idx``); :func:`decode_image` decodes one record's image the way the
  iterators do, or raises :class:`RecordError` naming the file and record.

Every problem is a :class:`RecordError` whose one-line message names the file and the record.
"""
# size-exempt: the RecordIO framing and the walk that validates it are one concern (the validation
# reads the framing record by record); its scan is one pass over the file, kept as one function.
import collections
import contextlib
import os
import struct
import sys
import tempfile

import numpy as np

from ..errors import DataError

__all__ = ['RecordError', 'MAGIC', 'DECODABLE', 'encode_record', 'pack_header', 'unpack_header',
           'RecordWriter', 'image_format', 'RecordInfo', 'read_index', 'iter_payloads', 'scan_recordio',
           'index_path', 'opencv_decodes', 'file_identity']

MAGIC = 0xced7230a
_MAGIC_BYTES = struct.pack('<I', MAGIC)
_IR_FORMAT = '<IfQQ'                  # flag, label, id, id2 (mx.recordio.IRHeader)
_IR_SIZE = struct.calcsize(_IR_FORMAT)
_LEN_MASK = (1 << 29) - 1

#: formats the OpenCV inside MXNet 1.9.1's ImageRecordIter decodes (checked: WebP, PPM/PGM fail)
DECODABLE = ('jpeg', 'png', 'bmp', 'tiff')


class RecordError(DataError):
    """A RecordIO file that cannot be read as image records; the message names the file and record."""


def index_path(rec_path):
    """The ``.idx`` that belongs to ``rec_path`` (same path, extension ``.idx``)."""
    return os.path.splitext(rec_path)[0] + '.idx'


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
        raise RecordError('record of %d bytes is too large for RecordIO (limit 2^29)' % n)
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

    Data go to temporary files (``.part``) renamed into place by :meth:`close`, so an
    interrupted or failed pack (a full disk included) never leaves a half-written pair or a
    ``.part`` file behind: :meth:`abort` removes them, whatever state the files are in. Used as a
    context manager it closes on success and aborts on any exception.
    """

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = rec_path
        self.idx_path = idx_path or index_path(rec_path)
        self._rec_tmp = self.rec_path + '.part'
        self._idx_tmp = self.idx_path + '.part'
        self._frec = self._fidx = None
        try:
            self._frec = open(self._rec_tmp, 'wb')
            self._fidx = open(self._idx_tmp, 'w')
        except BaseException:
            self.abort()
            raise
        self.offset = 0
        self.count = 0

    def write(self, key, payload):
        rec = encode_record(payload)
        self._fidx.write('%d\t%d\n' % (key, self.offset))
        self._frec.write(rec)
        self.offset += len(rec)
        self.count += 1

    def close(self):
        """Flush both files to disk and rename them into place (on failure: :meth:`abort`, re-raise)."""
        try:
            for f in (self._frec, self._fidx):
                f.flush()
                os.fsync(f.fileno())
                f.close()
            os.replace(self._rec_tmp, self.rec_path)
            os.replace(self._idx_tmp, self.idx_path)
        except BaseException:
            self.abort()
            raise

    def abort(self):
        """Close and remove the temporary files; never raises (a full disk fails the close)."""
        for f, p in ((self._frec, self._rec_tmp), (self._fidx, self._idx_tmp)):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
            try:
                os.remove(p)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


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
                                                   'checked_images', 'fractional_label'])
RecordInfo.__doc__ = (
    'What :func:`scan_recordio` found: record count, index keys and offsets (index order), label range and '
    'width, how many headers and images it checked, and ``fractional_label``: ``(key, label)`` of the first '
    'checked one-label record whose label is not a whole number (None when all are).')


def read_index(idx_path):
    """``(keys, offsets)`` of a ``.idx`` file, in file order; raises RecordError naming the line."""
    keys, offsets = [], []
    try:
        with open(idx_path, 'rb') as f:
            text = f.read()
    except OSError as e:
        raise RecordError('cannot read index %s: %s' % (idx_path, e.strerror or e))
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
            raise RecordError('%s line %d is not "key<TAB>offset": %r' % (idx_path, lineno, line[:60].decode('latin-1')))
        keys.append(key)
        offsets.append(off)
    return keys, offsets


def file_identity(path):
    """``[size, mtime_ns, ctime_ns, device, inode]`` of ``path``: what changes whenever the file is
    written, replaced or touched (the ctime cannot be set back by a user, unlike the mtime)."""
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_dev), int(st.st_ino)]


def _read_record(f, offset, size, rec_path, key):
    """Payload of the record starting at ``offset`` and the offset just after it (multi-part aware)."""
    parts = []
    pos = offset
    first = True
    while True:
        if pos + 8 > size:
            raise RecordError('%s is truncated: record %s at offset %d runs past the end of the file (%d bytes)'
                            % (rec_path, key, offset, size))
        f.seek(pos)
        magic, lrec = struct.unpack('<II', f.read(8))
        if magic != MAGIC:
            if first:
                raise RecordError('%s does not match %s: no record starts at offset %d (index key %s)'
                                % (index_path(rec_path), rec_path, offset, key))
            raise RecordError('%s: record %s at offset %d is corrupt (continuation without magic at %d)'
                            % (rec_path, key, offset, pos))
        cflag, clen = lrec >> 29, lrec & _LEN_MASK
        if (first and cflag not in (0, 1)) or (not first and cflag not in (2, 3)):
            raise RecordError('%s: record %s at offset %d has a bad part flag %d (is the .idx for this .rec?)'
                            % (rec_path, key, pos, cflag))
        end = pos + 8 + _pad4(clen)
        if end > size:
            raise RecordError('%s is truncated: record %s at offset %d needs %d bytes, the file has %d'
                            % (rec_path, key, offset, end, size))
        parts.append(f.read(clen))
        pos = end
        if cflag in (0, 3):
            break
        first = False
    return _MAGIC_BYTES.join(parts), pos


def iter_payloads(rec_path, idx_path=None, limit=None):
    """Yield ``(key, payload)`` for the records of a pair in index order (at most ``limit``)."""
    idx_path = idx_path or index_path(rec_path)
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


def opencv_decodes(img_bytes):
    """True when OpenCV (the ``cv2`` package) decodes ``img_bytes`` as a colour image."""
    import cv2
    try:
        img = cv2.imdecode(np.frombuffer(img_bytes, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return False
    return img is not None and img.size > 0


def _check_image(img_bytes, rec_path, key, offset, decodes=opencv_decodes):
    """Raise RecordError (naming the file, record and offset) unless ``img_bytes`` is an image
    ImageRecordIter can decode and ``decodes(img_bytes)`` is true.

    Cheap structural checks come first: the container format, and for a JPEG its end-of-image
    marker (a JPEG cut short still decodes, into an image whose lower part is grey)."""
    fmt = image_format(img_bytes)
    where = '%s: record %s (offset %d)' % (rec_path, key, offset)
    if len(img_bytes) == 0:
        raise RecordError('%s holds no image data' % where)
    if fmt not in DECODABLE:
        head = bytes(img_bytes[:8])
        raise RecordError('%s is not an image ImageRecordIter can decode (%s, %d bytes, starts %r); '
                        'repack it with crunet-im2rec pack' % (where, fmt or 'unknown format', len(img_bytes), head))
    if fmt == 'jpeg' and bytes(img_bytes).rfind(b'\xff\xd9') < 0:
        raise RecordError('%s is a truncated JPEG (%d bytes, no end-of-image marker); repack it from the '
                          'original file' % (where, len(img_bytes)))
    if not decodes(img_bytes):
        raise RecordError('%s is a %s image that does not decode (%d bytes)' % (where, fmt, len(img_bytes)))


class _ImageChecker(object):
    """Decode-checks images in batches of 256 (so a full check of a large file holds only one
    batch in memory), on ``num_threads`` threads; the first failure in file order is raised."""

    def __init__(self, rec_path, decodes, num_threads):
        self.rec_path, self.decodes, self.count = rec_path, decodes, 0
        self.pending = []
        self.pool = None
        if num_threads > 1:
            from concurrent.futures import ThreadPoolExecutor
            self.pool = ThreadPoolExecutor(num_threads)

    def _one(self, item):
        _check_image(item[0], self.rec_path, item[1], item[2], self.decodes)

    def add(self, img, key, off):
        self.pending.append((img, key, off))
        if len(self.pending) >= 256:
            self.flush()

    def flush(self):
        batch, self.pending = self.pending, []
        if self.pool is not None:
            list(self.pool.map(self._one, batch))
        else:
            for item in batch:
                self._one(item)
        self.count += len(batch)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.flush()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
        return False


#: first words of the complaints libpng / libjpeg print on stderr while decoding a damaged image
DECODER_NOISE = ('libpng ', 'Corrupt JPEG', 'Premature end of JPEG', 'Invalid SOS', 'Unsupported marker',
                 'Bogus ', 'Not a JPEG', 'JPEG datastream', 'Invalid JPEG', 'Huffman', 'Warning: ')


@contextlib.contextmanager
def captured_stderr():
    """Collect what C libraries write on file descriptor 2 while the block runs: the yielded
    list holds those lines afterwards (it stays empty where descriptor 2 cannot be duplicated)."""
    lines = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode('utf-8', 'replace').splitlines())


@contextlib.contextmanager
def decoder_messages():
    """Capture what C decoders print on file descriptor 2 while the block runs: the complaints of
    libpng / libjpeg (:data:`DECODER_NOISE`) go into the yielded list (for an error message to quote),
    anything else is written back to stderr afterwards."""
    lines = []
    other = []
    try:
        with captured_stderr() as captured:
            yield lines
    finally:
        for line in captured:
            (lines if line.startswith(DECODER_NOISE) else other).append(line)
        if other:
            sys.stderr.write('\n'.join(other) + '\n')
            sys.stderr.flush()


def scan_recordio(rec_path, idx_path=None, mode='sample', max_headers=200000, header_sample=4000,
                  decode_all_below=1000, decode_sample=100, num_threads=2, decodes=opencv_decodes):
    """Validate a ``.rec``/``.idx`` pair and return its :class:`RecordInfo`; raise RecordError if bad.

    Checks: both files exist, every index line parses, offsets are distinct, each listed record
    starts with the RecordIO magic, ends exactly where the next listed one starts (so the index
    lists every record and nothing else) and lies inside the file (truncation), carries an image
    record header, and that images decode (all of them below ``decode_all_below`` records,
    otherwise ``decode_sample`` spread over the file).

    mode: ``'sample'`` (default: every record header up to ``max_headers`` records, else
    ``header_sample`` of them), ``'full'`` (every header and every image) or ``'none'`` (files
    exist and the index parses). ``decodes(image_bytes) -> bool`` is the decoder test (default:
    OpenCV's ``cv2.imdecode``; the iterators pass MXNet's own decoder); it runs on
    ``num_threads`` threads when ``num_threads > 1``.
    """
    try:
        with decoder_messages() as noise:
            return _scan(rec_path, idx_path, mode, max_headers, header_sample, decode_all_below, decode_sample,
                         num_threads, decodes)
    except RecordError as e:
        if noise and 'does not decode' in str(e):
            raise RecordError('%s: %s' % (e, noise[-1].strip())) from None
        raise


def _scan(rec_path, idx_path, mode, max_headers, header_sample, decode_all_below, decode_sample, num_threads,
          decodes):
    if mode not in ('sample', 'full', 'none'):
        raise ValueError('mode must be sample, full or none, not %r' % (mode,))
    idx_path = idx_path or index_path(rec_path)
    if not os.path.exists(rec_path):
        raise RecordError('RecordIO file not found: %s' % rec_path)
    if not os.path.isfile(rec_path):
        raise RecordError('RecordIO path is not a file: %s' % rec_path)
    if not os.path.isfile(idx_path):
        raise RecordError('index file not found: %s (every .rec needs the .idx written with it by '
                        'crunet-im2rec pack)' % idx_path)
    size = os.path.getsize(rec_path)
    if size == 0:
        raise RecordError('RecordIO file is empty: %s' % rec_path)
    keys, offsets = read_index(idx_path)
    n = len(offsets)
    if n == 0:
        raise RecordError('index %s lists no records' % idx_path)
    order = sorted(range(n), key=offsets.__getitem__)       # dmlc reads records in offset order
    offs = [offsets[i] for i in order]
    okeys = [keys[i] for i in order]
    for a, b, k in zip(offs, offs[1:], okeys[1:]):
        if a == b:
            raise RecordError('%s does not match %s: offset %d is listed twice (key %s)' % (idx_path, rec_path, a, k))
    if offs[-1] >= size:
        j = offs.index(offs[-1])
        raise RecordError('%s does not match %s: record %s at offset %d is past the end of the file (%d bytes)'
                        % (idx_path, rec_path, okeys[j], offs[-1], size))
    if mode == 'none':
        return RecordInfo(n, keys, offsets, None, None, None, 0, 0, None)
    header_pos = range(n) if (mode == 'full' or n <= max_headers) else _even_sample(n, header_sample)
    if mode == 'full' or n <= decode_all_below:
        decode_pos = set(range(n))
    else:
        decode_pos = set(_even_sample(n, decode_sample))
    lmin, lmax, width = np.inf, -np.inf, None
    fractional = None
    checker = _ImageChecker(rec_path, decodes, num_threads if len(decode_pos) > 64 else 1)
    with checker, open(rec_path, 'rb') as f:
        for j in header_pos:
            off, key = offs[j], okeys[j]
            if off % 4:
                raise RecordError('%s does not match %s: offset %d of record %s is not 4-byte aligned'
                                % (idx_path, rec_path, off, key))
            payload, end = _read_record(f, off, size, rec_path, key)
            nxt = offs[j + 1] if j + 1 < n else size
            if end != nxt:
                if j + 1 < n:
                    f.seek(nxt)
                    if f.read(4) != _MAGIC_BYTES:
                        raise RecordError('%s does not match %s: no record starts at offset %d (index key %s)'
                                        % (idx_path, rec_path, nxt, okeys[j + 1]))
                    raise RecordError('%s does not match %s: record %s at offset %d ends at %d but the next '
                                    'indexed record starts at %d' % (idx_path, rec_path, key, off, end, nxt))
                raise RecordError('%s does not match %s: %d bytes follow the last indexed record (key %s); the '
                                'index does not list every record' % (idx_path, rec_path, size - end, key))
            try:
                labels, _, img = unpack_header(payload)
            except ValueError as e:
                raise RecordError('%s: record %s (offset %d): %s' % (rec_path, key, off, e))
            if width is None:
                width = labels.size
            elif labels.size != width:
                raise RecordError('%s: record %s has %d labels, earlier records %d' % (rec_path, key, labels.size, width))
            if not np.all(np.isfinite(labels)):
                raise RecordError('%s: record %s has a label that is not a finite number' % (rec_path, key))
            lmin, lmax = min(lmin, float(labels.min())), max(lmax, float(labels.max()))
            if fractional is None and labels.size == 1 and not float(labels[0]).is_integer():
                fractional = (key, float(labels[0]))
            if j in decode_pos:
                checker.add(img, key, off)
                decode_pos.discard(j)
        for j in sorted(decode_pos):     # sampled images whose header was not walked
            payload, _ = _read_record(f, offs[j], size, rec_path, okeys[j])
            try:
                img = unpack_header(payload)[2]
            except ValueError as e:
                raise RecordError('%s: record %s (offset %d): %s' % (rec_path, okeys[j], offs[j], e))
            checker.add(img, okeys[j], offs[j])
    return RecordInfo(n, keys, offsets, lmin, lmax, width, len(header_pos), checker.count, fractional)
