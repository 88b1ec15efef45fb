"""The checks a RecordIO file passes before MXNet's reader sees it (``crunet.data.recordio`` does
the framing): labels against the classes, a full decode by MXNet's own decoder for the resizing
pipelines (whose resize dies of SIGFPE on an image that does not decode), remembered per file
identity in :func:`cache_dir`; the decode threads ImageRecordIter really uses; how dmlc splits a
file over workers. Problems raise :class:`DataError`, one line naming the file and record."""
import hashlib
import json
import logging
import os
import time

import mxnet as mx

from ..errors import DataError
from ..files import atomic_save
from . import recordio

__all__ = ['DataError', 'mxnet_decodes', 'cache_dir', 'inspect_recordio', 'check_recordio', 'check_labels',
           'effective_threads', 'part_sizes', 'SMALL_FILE', 'LOCATE_SECONDS', 'WARNED_THREADS']


_CHECKED = {}
#: files of at most this many records are decoded in full by every check anyway: not cached
SMALL_FILE = 1000
#: seconds spent decoding records to name the one at fault after MXNet failed reading a file
LOCATE_SECONDS = 120
#: the decoder certified by a cached full check (ImageRecordIter's own: MXNet's OpenCV)
DECODER = 'mxnet %s imdecode' % mx.__version__


def mxnet_decodes(img_bytes):
    """True when MXNet's own decoder (the OpenCV inside libmxnet that ImageRecordIter uses)
    decodes ``img_bytes``; failures are caught, never reach a resize."""
    try:
        mx.image.imdecode(img_bytes, flag=1, to_rgb=False).wait_to_read()
    except mx.base.MXNetError:
        return False
    return True


def cache_dir():
    """Where full decode checks are remembered: ``$XDG_CACHE_HOME/crunet/recordio`` (default
    ``~/.cache/crunet/recordio``), one small JSON per ``.rec``."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'crunet', 'recordio')


def _cache_file(rec):
    return os.path.join(cache_dir(), hashlib.sha1(rec.encode('utf-8', 'surrogateescape')).hexdigest() + '.json')


def _identity(rec, idx):
    return dict(format=1, rec=rec, idx=idx, rec_id=recordio.file_identity(rec), idx_id=recordio.file_identity(idx),
                decoder=DECODER)


def _cached_full_check(ident):
    """True when a full decode check of exactly these files (size, mtime, inode) passed before."""
    try:
        with open(_cache_file(ident['rec'])) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(old, dict) and all(old.get(k) == v for k, v in ident.items())


def _remember_full_check(ident, num_records):
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        atomic_save(_cache_file(ident['rec']), json.dumps(dict(ident, records=num_records), sort_keys=True) + '\n')
    except OSError as e:       # a read-only home: the check is simply repeated next time
        logging.debug('cannot cache the decode check of %s: %s', ident['rec'], e)


def inspect_recordio(path, mode='sample', decode_all=False, idx=None):
    """RecordInfo of a validated pair; raises DataError.

    ``decode_all``: every image must decode (the resizing pipelines: ImageRecordIter's resize
    divides by the size of an image that failed to decode and the process dies of SIGFPE). A full
    check that passed is remembered per file identity (in this process, and in :func:`cache_dir`
    across runs), so it runs once per file. ``mode='none'`` checks nothing beyond the files'
    existence and the index -- except with ``decode_all``: a process that would die of a damaged
    image is never started.
    """
    if not path:
        raise DataError('no RecordIO file given')
    rec = os.path.abspath(path)
    idx = os.path.abspath(idx) if idx else recordio.index_path(rec)
    full = mode == 'full' or decode_all
    ident = None
    try:
        ident = _identity(rec, idx)
    except OSError:
        pass                        # missing files: scan_recordio names them
    key = (rec, mode, full, json.dumps(ident, sort_keys=True))
    if ident is not None and key in _CHECKED:
        return _CHECKED[key]
    try:
        if full and ident is not None and _cached_full_check(ident):
            # decoded in full before: headers and structure only
            info = recordio.scan_recordio(path, idx, mode='sample', decode_all_below=0, decode_sample=0,
                                          decodes=mxnet_decodes, num_threads=1)
        elif full:
            tic = time.time()
            info = recordio.scan_recordio(path, idx, mode='none')
            if info.num_records > 1000:
                logging.info('%s: decoding all %d images once before reading it (a resizing pipeline cannot '
                             'survive one that does not decode); the result is cached in %s',
                             path, info.num_records, cache_dir())
            info = recordio.scan_recordio(path, idx, mode='full', decodes=mxnet_decodes, num_threads=1)
            if info.num_records > 1000:
                logging.info('%s: all %d images decode (%.0f s)', path, info.num_records, time.time() - tic)
            if ident is not None:
                if info.num_records > SMALL_FILE:          # below: decoded in full on every start anyway
                    _remember_full_check(ident, info.num_records)
        else:
            info = recordio.scan_recordio(path, idx, mode=mode, decodes=mxnet_decodes, num_threads=1)
    except recordio.RecordError as e:
        raise DataError(str(e)) from None
    if ident is not None:
        _CHECKED[key] = info
    return info


def check_recordio(path, mode='sample', decode_all=False):
    """Validate ``path`` (.rec) and the ``.idx`` beside it; return the number of records.

    Checks that both exist, that the index parses and each offset it lists starts a record
    (RecordIO magic) ending where the next listed one starts and inside the file (truncation),
    that records carry an image header, and that images decode with MXNet's decoder (every one
    when there are at most 1000 records, ``mode='full'`` or ``decode_all``, else a sample).
    Raises :class:`DataError`.
    """
    return inspect_recordio(path, mode, decode_all).num_records


def check_labels(info, path, num_classes, source=None):
    """Refuse records whose labels ImageRecordIter would read as something else: several labels
    per record, a label that is not a whole number (3.5 trains as class 3), or one outside
    ``0..num_classes-1`` (``num_classes`` None: range not checked); ``source`` says where
    ``num_classes`` comes from (default ``'--num-classes N'``)."""
    if info.label_width not in (None, 1):
        raise DataError('%s: records carry %d labels each; the iterators read one class label'
                        % (path, info.label_width))
    if info.fractional_label is not None:
        raise DataError('%s: record %s has label %g, not a class number (0, 1, 2, ...)'
                        % ((path,) + tuple(info.fractional_label)))
    if num_classes and info.label_max is not None and (info.label_min < 0 or info.label_max > num_classes - 1):
        raise DataError('%s: labels run %g..%g, outside 0..%d for %s'
                        % (path, info.label_min, info.label_max, num_classes - 1,
                           source or '--num-classes %d' % num_classes))


def effective_threads(requested):
    """Decode threads ImageRecordIter really uses for ``preprocess_threads=requested``.

    MXNet 1.9.1 caps them at ``max(omp_get_num_procs() / 2 - 1, 1)`` ("be conservative, set
    number of real cores"): 1 on a 2- or 4-CPU machine, 3 on 8 CPUs, 7 on 16.
    """
    try:
        procs = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        procs = os.cpu_count() or 1
    return max(1, min(int(requested), max(procs // 2 - 1, 1)))


WARNED_THREADS = set()


def part_sizes(num_records, num_parts):
    """Records in each part when dmlc's indexed RecordIO reader splits ``num_records`` in ``num_parts``.

    Part k holds records ``[k*s, min((k+1)*s, n))`` with ``s = ceil(n / num_parts)`` (so the last
    parts may be short, or empty -- which the C++ reader does not survive).
    """
    step = -(-num_records // num_parts)
    return [max(0, min(num_records, (k + 1) * step) - k * step) for k in range(num_parts)]
