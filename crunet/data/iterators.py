"""RecordIO input pipeline shared by ``train_imagenet.py`` and ``score.py``.

* :func:`add_data_args` / :func:`add_data_aug_args` add the data and augmentation flags;
* :func:`get_rec_iter` builds the training iterator (the paper's augmentation by default) and
  the validation one (shorter side 256, centre 224 crop, bicubic), sharded over the workers of a
  kvstore; :func:`get_val_iter` builds the validation one alone;
* :func:`check_args` validates the flags (values and combinations) and :func:`check_recordio` a
  ``.rec``/``.idx`` pair. MXNet's C++ reader segfaults on a missing ``.idx``, aborts on a
  truncated ``.rec``, silently reads garbage through a wrong ``.idx``, and its resize dies of
  SIGFPE on an image that does not decode, so every iterator here is built only after its flags
  and files pass these checks (a resizing pipeline: every image decoded by MXNet's own decoder,
  once per file identity, remembered in :func:`cache_dir`); problems raise :class:`DataError`
  with a one-line message naming the flag, or the file and record;
* :func:`data_args` gives the parser's defaults as a namespace (for API users and tests);
* :class:`SyntheticDataIter` (random batches for ``--benchmark 1``) and :func:`test_io`
  (``--test-io 1``: read the training iterator and report its speed).

Packing images into RecordIO: ``crunet-im2rec`` (see ``data/README.md``).
"""
import argparse
import collections
import hashlib
import json
import logging
import math
import os
import random
import time

import mxnet as mx
import numpy as np

from symbols.preprocess import INTERPOLATIONS, RELEASED, interpolation_code

from ..errors import error_line
from ..files import atomic_save
from . import recordio

__all__ = ['DataError', 'add_data_args', 'add_data_aug_args', 'data_args', 'RUN_FLAGS', 'check_args',
           'get_rec_iter', 'get_val_iter', 'check_recordio', 'inspect_recordio', 'check_labels', 'mxnet_decodes', 'cache_dir',
           'SyntheticDataIter', 'test_io', 'part_sizes', 'effective_threads', 'GuardedIter', 'TrainIter',
           'ExactEpochIter']


class DataError(recordio.RecordError):
    """Unusable input data; the message is one line naming the file (and record)."""


# ============================================================================ flags
def _csv(values):
    return ','.join('%g' % v for v in values)


def add_data_args(parser):
    """Add the data flags to ``parser`` (an argparse parser); returns the argument group."""
    data = parser.add_argument_group('Data', 'the input images (RecordIO made by crunet-im2rec)')
    data.add_argument('--data-train', type=str, default=None,
                      help='training RecordIO file (.rec); its index must be the same path with .idx')
    data.add_argument('--data-val', type=str, default=None,
                      help='validation RecordIO file (.rec), index beside it (.idx); none: no validation')
    data.add_argument('--data-nthreads', type=int, default=4,
                      help='threads decoding and augmenting images, per iterator')
    data.add_argument('--image-shape', type=str, default=','.join(map(str, RELEASED.crop)),
                      help='channels,height,width of the network input; images are cropped/resized to it')
    data.add_argument('--rgb-mean', type=str, default=_csv(RELEASED.mean),
                      help='R,G,B mean subtracted from every pixel (the released CRU-Nets: 124,117,104)')
    data.add_argument('--rgb-std', type=str, default=_csv(RELEASED.std),
                      help='R,G,B standard deviations the mean-subtracted pixels are divided by')
    data.add_argument('--scale', type=float, default=RELEASED.scale,
                      help='factor applied after mean/std: input = (pixel - mean) / std * scale')
    data.add_argument('--num-examples', type=int, default=None,
                      help='images per epoch (ImageNet-1k: 1281167); default: the records of --data-train '
                           '(counted from its .idx), or 50 batches with --benchmark 1')
    data.add_argument('--data-check', type=str, default='sample', choices=['sample', 'full', 'none'],
                      help='validation of the .rec/.idx files before reading them: sample (every record '
                           'header; a sample of images decoded, or every image, once per file and cached, where '
                           'the pipeline resizes: validation, --aug-off 1, --random-resized-crop 0), full (decode '
                           'every image), none (files exist; an image that does not decode can then kill a '
                           'resizing pipeline with SIGFPE)')
    return data


def add_data_aug_args(parser):
    """Add the augmentation flags (defaults: the CRU-Net paper's recipe); returns the group."""
    aug = parser.add_argument_group(
        'Image augmentations', 'training augmentation (defaults: the paper: random-resized crop 8-100 percent of '
        'the area, aspect 3/4-4/3, mirror, HSL noise 20/40/50); validation always resizes the shorter side to '
        '--resize-val and takes the centre crop')
    aug.add_argument('--random-resized-crop', type=int, default=1, choices=[0, 1],
                     help='1: crop a random area/aspect region and resize it to --image-shape; 0: resize the '
                          'shorter side to --resize-val and take a random --image-shape crop')
    aug.add_argument('--min-random-area', type=float, default=0.08,
                     help='smallest crop area, as a fraction of the image area (random-resized crop)')
    aug.add_argument('--max-random-area', type=float, default=1.0,
                     help='largest crop area, as a fraction of the image area (random-resized crop)')
    aug.add_argument('--min-random-aspect-ratio', type=float, default=0.75,
                     help='smallest crop aspect ratio width/height (random-resized crop)')
    aug.add_argument('--max-random-aspect-ratio', type=float, default=4.0 / 3,
                     help='largest crop aspect ratio width/height (random-resized crop; default 4/3)')
    aug.add_argument('--random-mirror', type=int, default=1, choices=[0, 1],
                     help='1: flip half of the training images left-right')
    aug.add_argument('--random-h', type=int, default=20,
                     help='hue noise: add a random value in [-H, H] to the H channel (HSL, OpenCV scale 0-180)')
    aug.add_argument('--random-s', type=int, default=40,
                     help='saturation noise: add a random value in [-S, S] to the S channel (HSL, 0-255)')
    aug.add_argument('--random-l', type=int, default=50,
                     help='lightness noise: add a random value in [-L, L] to the L channel (HSL, 0-255)')
    aug.add_argument('--resize-val', type=int, default=RELEASED.resize,
                     help='validation (and --aug-off training): resize the shorter side to this, then centre '
                          'crop --image-shape (0: no resize); an image smaller than the crop is upscaled to cover it')
    aug.add_argument('--inter-method', type=int, default=interpolation_code(RELEASED.interpolation),
                     choices=sorted(INTERPOLATIONS.values()),
                     help='interpolation of every resize: 1 bilinear, 2 bicubic (the released models), 3 area, '
                          '4 lanczos, 9 auto')
    aug.add_argument('--aug-off', type=int, default=0, choices=[0, 1],
                     help='1: no training augmentation at all: training images are prepared like validation '
                          'ones (resize, centre crop), still shuffled')
    return aug


# ============================================================================ flag values
#: flags of the training command (crunet.train.fit) the iterators read besides the data flags, with
#: the values :func:`data_args` gives them: the batch of this worker, the shuffle seed (None: a random
#: one), the output dtype, the number of classes the labels must fit (None: not checked) and the
#: logging interval of :func:`test_io`
RUN_FLAGS = collections.OrderedDict([('batch_size', 32), ('seed', None), ('dtype', 'float32'),
                                     ('num_classes', None), ('disp_batches', 20)])


def data_args(**overrides):
    """An ``argparse.Namespace`` holding every flag the iterators read: the defaults of
    :func:`add_data_args` and :func:`add_data_aug_args` (taken from the parser itself) and of
    :data:`RUN_FLAGS`, with ``overrides`` applied. For API users and tests; an override that
    names no flag is a ``TypeError`` (a typo never passes silently)."""
    p = argparse.ArgumentParser(add_help=False)
    add_data_args(p)
    add_data_aug_args(p)
    args = p.parse_args([])
    for k, v in RUN_FLAGS.items():
        setattr(args, k, v)
    for k, v in overrides.items():
        if not hasattr(args, k):
            raise TypeError('data_args() got an unknown flag %r; valid: %s' % (k, ', '.join(sorted(vars(args)))))
        setattr(args, k, v)
    return args


def _triple(text, name):
    try:
        vals = [float(v) for v in str(text).split(',') if v.strip()]
    except ValueError:
        raise DataError('%s must be comma-separated numbers, not %r' % (name, text)) from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise DataError('%s needs 3 values (R,G,B), got %r' % (name, text))
    if not all(math.isfinite(v) for v in vals):
        raise DataError('%s must be finite numbers, not %r' % (name, text))
    return vals


def _image_shape(args):
    shape = args.image_shape
    try:
        shape = tuple(int(v) for v in (shape.split(',') if isinstance(shape, str) else shape))
    except (TypeError, ValueError):
        raise DataError('--image-shape must be channels,height,width, not %r' % (shape,)) from None
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) <= 0:
        raise DataError('--image-shape must be 3,H,W (or 1,H,W) with positive sizes, not %r' % (args.image_shape,))
    return shape


def _batch_size(args):
    bs = args.batch_size
    if not isinstance(bs, (int, np.integer)) or isinstance(bs, bool) or bs < 1:
        raise DataError('--batch-size must be a positive number of images, not %r' % (bs,))
    return int(bs)


def check_args(args, training=True):
    """Validate the values and combinations of the data and augmentation flags in ``args`` (what
    ImageRecordIter would otherwise fail on with a C++ message blaming the data, or take in
    silence); raises :class:`DataError` naming the flag. ``training=False``: only the flags the
    validation pipeline reads. Returns the image shape ``(C, H, W)``."""
    shape = _image_shape(args)
    _batch_size(args)
    mean = _triple(args.rgb_mean, '--rgb-mean')
    std = _triple(args.rgb_std, '--rgb-std')
    if min(std) <= 0:
        raise DataError('--rgb-std values must be positive, not %r' % (args.rgb_std,))
    if not (isinstance(args.scale, (int, float)) and math.isfinite(args.scale) and args.scale != 0):
        raise DataError('--scale must be a finite non-zero number, not %r' % (args.scale,))
    if args.data_nthreads is None or args.data_nthreads < 1:
        raise DataError('--data-nthreads must be at least 1, not %r' % (args.data_nthreads,))
    if args.resize_val is None or args.resize_val < 0:
        raise DataError('--resize-val must be 0 (no resize) or a positive size, not %r' % (args.resize_val,))
    if args.inter_method not in INTERPOLATIONS.values():
        raise DataError('--inter-method must be one of %s, not %r'
                        % (', '.join(map(str, sorted(INTERPOLATIONS.values()))), args.inter_method))
    if args.data_check not in ('sample', 'full', 'none'):
        raise DataError('--data-check must be sample, full or none, not %r' % (args.data_check,))
    if (args.dtype or 'float32') not in ('float32', 'float16'):
        raise DataError('--dtype must be float32 or float16, not %r' % (args.dtype,))
    if shape[0] == 1:
        # ImageRecordIter decodes grayscale and normalises with the R values only
        if len(set(mean)) > 1 or len(set(std)) > 1:
            raise DataError('--image-shape %s is grayscale: give one value to --rgb-mean and --rgb-std '
                            '(now %s and %s; only the first would be used)' % (args.image_shape, args.rgb_mean, args.rgb_std))
    if not training or args.aug_off:
        return shape
    if args.random_resized_crop:
        amin, amax = args.min_random_area, args.max_random_area
        rmin, rmax = args.min_random_aspect_ratio, args.max_random_aspect_ratio
        if not 0 < amin <= amax <= 1:
            raise DataError('need 0 < --min-random-area <= --max-random-area <= 1, got %g, %g' % (amin, amax))
        if not 0 < rmin <= rmax < math.inf:
            raise DataError('need 0 < --min-random-aspect-ratio <= --max-random-aspect-ratio, got %g, %g'
                            % (rmin, rmax))
    hsl = (args.random_h, args.random_s, args.random_l)
    if min(hsl) < 0:
        raise DataError('--random-h/-s/-l must not be negative, got %s' % (list(hsl),))
    if args.random_h > 180 or max(args.random_s, args.random_l) > 255:
        raise DataError('--random-h must be at most 180 and --random-s/-l at most 255, got %s' % (list(hsl),))
    if shape[0] == 1 and max(hsl) > 0:
        flags = ' '.join('--random-%s %d' % (c, v) for c, v in zip('hsl', hsl) if v)
        raise DataError('--image-shape %s is grayscale and cannot take colour (HSL) noise: %s; set them to 0'
                        % (args.image_shape, flags))
    return shape


# ============================================================================ file checks
_CHECKED = {}
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


def inspect_recordio(path, mode='sample', decode_all=False):
    """RecordInfo of a validated pair; raises DataError.

    ``decode_all``: every image must decode (the resizing pipelines: ImageRecordIter's resize
    divides by the size of an image that failed to decode and the process dies of SIGFPE). A full
    check that passed is remembered per file identity (in this process, and in :func:`cache_dir`
    across runs), so it runs once per file. ``mode='none'`` checks nothing beyond the files'
    existence and the index.
    """
    if not path:
        raise DataError('no RecordIO file given')
    rec = os.path.abspath(path)
    idx = recordio.index_path(rec)
    full = mode == 'full' or (decode_all and mode != 'none')
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


def check_labels(info, path, num_classes):
    """Refuse records whose labels ImageRecordIter would read as something else: several labels
    per record, a label that is not a whole number (3.5 trains as class 3), or one outside
    ``0..num_classes-1`` (``num_classes`` None: range not checked)."""
    if info.label_width not in (None, 1):
        raise DataError('%s: records carry %d labels each; the iterators read one class label'
                        % (path, info.label_width))
    if info.fractional_label is not None:
        raise DataError('%s: record %s has label %g, not a class number (0, 1, 2, ...)'
                        % ((path,) + tuple(info.fractional_label)))
    if num_classes and info.label_max is not None and (info.label_min < 0 or info.label_max > num_classes - 1):
        raise DataError('%s: labels run %g..%g, outside 0..%d for %d classes'
                        % (path, info.label_min, info.label_max, num_classes - 1, num_classes))


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


_WARNED = set()


def part_sizes(num_records, num_parts):
    """Records in each part when dmlc's indexed RecordIO reader splits ``num_records`` in ``num_parts``.

    Part k holds records ``[k*s, min((k+1)*s, n))`` with ``s = ceil(n / num_parts)`` (so the last
    parts may be short, or empty -- which the C++ reader does not survive).
    """
    step = -(-num_records // num_parts)
    return [max(0, min(num_records, (k + 1) * step) - k * step) for k in range(num_parts)]


# ============================================================================ iterators
def _workers(kv):
    if kv is None:
        return 1, 0
    return int(kv.num_workers), int(kv.rank)


def _common(args, path, shape):
    mean = _triple(args.rgb_mean, '--rgb-mean')
    std = _triple(args.rgb_std, '--rgb-std')
    nthreads = int(args.data_nthreads)
    if effective_threads(nthreads) < nthreads and nthreads not in _WARNED:
        _WARNED.add(nthreads)
        logging.info('--data-nthreads %d: ImageRecordIter decodes with %d thread(s) on this machine (MXNet caps '
                     'them at max(CPUs/2 - 1, 1))', nthreads, effective_threads(nthreads))
    kw = dict(path_imgrec=path, path_imgidx=recordio.index_path(path), data_shape=shape,
              label_width=1, data_name='data', label_name='softmax_label', preprocess_threads=nthreads,
              mean_r=mean[0], mean_g=mean[1], mean_b=mean[2], std_r=std[0], std_g=std[1], std_b=std[2],
              scale=float(args.scale), inter_method=int(args.inter_method), verbose=False)
    dtype = args.dtype or 'float32'
    return kw, (dtype if dtype != 'float32' else None)


def _resizes(args, training):
    """True when the pipeline resizes every image (validation, --aug-off 1, --random-resized-crop 0
    with --resize-val > 0): those need every image to decode."""
    if training and not args.aug_off and args.random_resized_crop:
        return False
    return args.resize_val > 0


def _checked(args, path, what, shape, num_parts, part_index, batch_size, need_full_batch, decode_all):
    """Validate ``path`` for ``what`` (train/val) and this worker's part; returns records in the part."""
    info = inspect_recordio(path, args.data_check, decode_all)
    check_labels(info, path, args.num_classes)
    sizes = part_sizes(info.num_records, num_parts)
    mine = sizes[part_index]
    if mine == 0:
        raise DataError('%s: %d records cannot be split into %d parts (part %d would be empty)'
                        % (path, info.num_records, num_parts, part_index))
    if need_full_batch and mine < batch_size:
        raise DataError('%s: %s part %d/%d holds %d records, fewer than the batch size %d; lower --batch-size'
                        % (path, what, part_index, num_parts, mine, batch_size))
    return mine


def _val_params(args):
    # resize <= 0: no resize; MXNet 1.9.1 upscales an image smaller than the crop to cover it
    resize = int(args.resize_val)
    return dict(resize=resize if resize > 0 else -1, rand_crop=False, rand_mirror=False)


def _train_iter(args, kv=None):
    path = args.data_train
    if not path:
        raise DataError('no training data: --data-train is not set (make a .rec with crunet-im2rec, '
                        'or python -m crunet.data.demo for the bundled digits)')
    shape = check_args(args, training=True)
    bs = _batch_size(args)
    nparts, rank = _workers(kv)
    _checked(args, path, 'train', shape, nparts, rank, bs, True, _resizes(args, True))
    kw, cast = _common(args, path, shape)
    seed = args.seed
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 30)
    kw.update(batch_size=bs, shuffle=True, seed=int(seed), round_batch=True,
              num_parts=nparts, part_index=rank)
    if args.aug_off:
        kw.update(_val_params(args))
    else:
        if args.random_resized_crop:
            kw.update(random_resized_crop=True, min_random_area=float(args.min_random_area),
                      max_random_area=float(args.max_random_area),
                      min_aspect_ratio=float(args.min_random_aspect_ratio),
                      max_aspect_ratio=float(args.max_random_aspect_ratio))
        else:
            kw.update(_val_params(args))
            kw.update(rand_crop=True)
        kw.update(rand_mirror=bool(args.random_mirror), random_h=int(args.random_h), random_s=int(args.random_s),
                  random_l=int(args.random_l))
    return TrainIter(kw, cast)


def _create(kw):
    try:
        return mx.io.ImageRecordIter(**kw)
    except mx.base.MXNetError as e:
        raise DataError(_failure(kw['path_imgrec'], e)) from None


def _failure(path, exc):
    """The one-line message for an MXNet failure reading ``path``: the record at fault, found by
    decoding every record of the file (only ever run once reading has failed), and MXNet's line."""
    logging.info('%s: MXNet failed reading it; decoding every record to find the one at fault ...', path)
    try:
        recordio.scan_recordio(path, mode='full', decodes=mxnet_decodes, num_threads=1)
    except (recordio.RecordError, OSError) as e:
        return '%s (ImageRecordIter: %s)' % (e, error_line(exc))
    return '%s: ImageRecordIter failed (%s); every record decodes on its own' % (path, error_line(exc))


class GuardedIter(mx.io.DataIter):
    """Wraps an MXNet iterator reading ``path``.

    A failure inside MXNet (e.g. a record that does not decode, in a file too large to
    decode-check every record up front) becomes a one-line :class:`DataError` naming the file
    and the record at fault (found by decoding every record once the failure happened) instead
    of a C++ traceback; with ``cast='float16'`` the data are cast (ImageRecordIter in MXNet 1.9.1
    refuses ``dtype='float16'``: "unknown dtype for ImageRecordIter2").
    """

    def __init__(self, it, path, cast=None):
        super(GuardedIter, self).__init__(it.batch_size)
        self._it = it
        self.path = path
        self.cast = cast

    @property
    def provide_data(self):
        if not self.cast:
            return self._it.provide_data
        return [mx.io.DataDesc(d.name, d.shape, self.cast, d.layout) for d in self._it.provide_data]

    @property
    def provide_label(self):
        return self._it.provide_label

    def _fail(self, e):
        raise DataError(_failure(self.path, e)) from None

    def reset(self):
        try:
            self._it.reset()
        except mx.base.MXNetError as e:
            self._fail(e)

    def _next(self):
        try:
            batch = self._it.next()
            for d in batch.data:
                d.wait_to_read()
        except mx.base.MXNetError as e:
            self._fail(e)
        if self.cast:
            batch.data = [d.astype(self.cast) for d in batch.data]
            batch.provide_data = self.provide_data
        return batch

    def next(self):
        return self._next()


class TrainIter(GuardedIter):
    """The training iterator: a fresh ``ImageRecordIter`` per epoch, seeded ``seed + epoch``.

    In MXNet 1.9.1, ``reset()`` of a shuffled ``ImageRecordIter`` over an indexed file loses
    and repeats records (its round-batch overflow and the shuffled split disagree), and
    resetting a new one before reading spoils its first epoch. This class is the one place that
    works around it: :meth:`reset` builds a new iterator for the next epoch and
    :meth:`set_epoch` for any epoch (exact resume: epoch ``e`` is always the permutation of seed
    ``seed + e``, ``seed`` being the one the iterator was built with for epoch 0). Every epoch is
    a fresh permutation of this worker's part, each record once (the last batch is completed
    with records from the start of the same permutation and ``pad`` says how many). ``seed_aug``
    is not used: in 1.9.1 it re-seeds per batch position, so every batch repeated the same crops.
    """

    def __init__(self, kw, cast=None):
        self._kw = dict(kw)
        self._epoch = 0
        self._fresh = True
        super(TrainIter, self).__init__(_create(self._kw), kw['path_imgrec'], cast)

    @property
    def epoch(self):
        """The epoch whose permutation the iterator serves."""
        return self._epoch

    def set_epoch(self, epoch):
        """Serve epoch ``epoch`` next (seed ``seed + epoch``), from its first batch."""
        epoch = int(epoch)
        if epoch == self._epoch and self._fresh:
            return
        self._epoch = epoch
        self._it = None                          # join the old reader threads first
        self._it = _create(dict(self._kw, seed=self._kw['seed'] + epoch))
        self._fresh = True

    def reset(self):
        if self._fresh:
            return
        self.set_epoch(self._epoch + 1)

    def next(self):
        self._fresh = False
        return self._next()


class ExactEpochIter(GuardedIter):
    """A validation iterator whose epochs hold each record of its part exactly once.

    ``ImageRecordIter(round_batch=True)`` fills the last batch from the next epoch (which then
    starts late) and with ``round_batch=False`` it reports ``pad=0`` and leaves the tail of the
    last batch uninitialised. This wrapper stops after ``num_records``, sets ``batch.pad`` and
    fills the padded slots with copies of the batch's first image and label. Note that
    ``Module.score`` ignores ``pad``; ``Module.predict``/``iter_predict`` drop the padded rows.
    """

    def __init__(self, it, path, num_records, cast=None):
        super(ExactEpochIter, self).__init__(it, path, cast)
        self.num_records = int(num_records)
        self._seen = 0

    def reset(self):
        super(ExactEpochIter, self).reset()
        self._seen = 0

    def next(self):
        if self._seen >= self.num_records:
            raise StopIteration
        batch = self._next()
        valid = min(self.batch_size, self.num_records - self._seen)
        self._seen += valid
        pad = self.batch_size - valid
        if pad == 0:
            batch.pad = 0
            return batch

        def fill(arr):
            rep = arr[0:1].broadcast_to((pad,) + arr.shape[1:])
            return mx.nd.concat(arr[:valid], rep, dim=0)
        return mx.io.DataBatch(data=[fill(d) for d in batch.data], label=[fill(l) for l in batch.label],
                               pad=pad, index=batch.index, provide_data=self.provide_data,
                               provide_label=self.provide_label)


def get_val_iter(args, kv=None, mirror=False):
    """The validation iterator: shorter side to ``args.resize_val`` (default 256), centre crop of
    ``args.image_shape``, ``args.inter_method`` (default bicubic), normalised by ``args.rgb_mean``,
    ``args.rgb_std`` and ``args.scale``; ``mirror=True`` flips every image (for 10-crop testing).
    Each epoch holds every record of this worker's part exactly once (see :class:`ExactEpochIter`).
    Sharded over ``kv.num_workers`` when ``kv`` is given. ``args``: the parsed flags (see
    :func:`data_args`). Raises :class:`DataError` on bad input, before any MXNet iterator exists.
    """
    path = args.data_val
    if not path:
        raise DataError('no validation data: --data-val is not set')
    shape = check_args(args, training=False)
    bs = _batch_size(args)
    nparts, rank = _workers(kv)
    mine = _checked(args, path, 'val', shape, nparts, rank, bs, False, _resizes(args, False))
    kw, cast = _common(args, path, shape)
    kw.update(_val_params(args))
    kw.update(batch_size=bs, shuffle=False, round_batch=False, num_parts=nparts, part_index=rank,
              mirror=bool(mirror))
    return ExactEpochIter(_create(kw), path, mine, cast)


def get_rec_iter(args, kv=None):
    """``(train_iter, val_iter or None)`` for ``args`` (see :func:`add_data_args` /
    :func:`add_data_aug_args` / :func:`data_args`); ``args.batch_size`` is this worker's batch.

    Train: shuffled (seed ``args.seed`` when set: same order and augmentations on every run),
    the paper's augmentation unless switched off, ``round_batch`` (the last batch of an epoch is
    completed with records from the start); a :class:`TrainIter`, whose ``reset``/``set_epoch``
    give each epoch its own permutation. Sharded as ``num_parts=kv.num_workers,
    part_index=kv.rank`` when ``kv`` is given. Data ``'data'`` (float32, or ``args.dtype``),
    label ``'softmax_label'`` (width 1). Raises :class:`DataError` before creating any MXNet
    iterator when a flag, a file or a record is bad.
    """
    check_args(args, training=True)
    if args.data_val:
        # validate both before starting any C++ reader threads
        _checked(args, args.data_val, 'val', _image_shape(args), *(_workers(kv)), _batch_size(args), False,
                 _resizes(args, False))
    train = _train_iter(args, kv)
    val = get_val_iter(args, kv) if args.data_val else None
    return train, val


# ============================================================================ benchmark helpers
class SyntheticDataIter(mx.io.DataIter):
    """``max_iter`` batches per epoch of one random batch, on the CPU: data uniform in [-1, 1] of
    ``data_shape`` = ``(batch, channels, height, width)``, labels in ``[0, num_classes)``."""

    def __init__(self, num_classes, data_shape, max_iter, dtype='float32'):
        super(SyntheticDataIter, self).__init__(int(data_shape[0]))
        self.batch_size = int(data_shape[0])
        self.cur_iter = 0
        self.max_iter = int(max_iter)
        self.dtype = np.dtype(dtype).name
        rng = np.random.RandomState(0)
        label = rng.randint(0, num_classes, [self.batch_size])
        data = rng.uniform(-1, 1, data_shape)
        self.data = mx.nd.array(data, dtype=self.dtype, ctx=mx.cpu(0))
        self.label = mx.nd.array(label, dtype=self.dtype, ctx=mx.cpu(0))

    def __iter__(self):
        return self

    @property
    def provide_data(self):
        return [mx.io.DataDesc('data', self.data.shape, self.dtype)]

    @property
    def provide_label(self):
        return [mx.io.DataDesc('softmax_label', (self.batch_size,), self.dtype)]

    def next(self):
        self.cur_iter += 1
        if self.cur_iter <= self.max_iter:
            return mx.io.DataBatch(data=(self.data,), label=(self.label,), pad=0, index=None,
                                   provide_data=self.provide_data, provide_label=self.provide_label)
        raise StopIteration

    def __next__(self):
        return self.next()

    def reset(self):
        self.cur_iter = 0


def test_io(args, kv=None, num_batches=None):
    """Read the training iterator (``num_batches`` batches, default one epoch), logging
    ``Batch [N] Speed: X samples/sec`` every ``args.disp_batches`` (default 20) batches;
    returns the images per second over the whole run."""
    train = _train_iter(args, kv)
    bs = _batch_size(args)
    disp = int(args.disp_batches or 20)
    count = 0
    tic = interval = time.time()
    while True:
        got = False
        for batch in train:
            got = True
            for d in batch.data:
                d.wait_to_read()
            count += 1
            if count % disp == 0:
                now = time.time()
                logging.info('Batch [%d] Speed: %.2f samples/sec', count, disp * bs / max(now - interval, 1e-9))
                interval = now
            if num_batches and count >= num_batches:
                break
        if not num_batches or count >= num_batches or not got:
            break
        train.reset()
    total = time.time() - tic
    speed = count * bs / max(total, 1e-9)
    logging.info('Read %d batches (%d images) in %.2f s: %.2f samples/sec', count, count * bs, total, speed)
    return speed


test_io.__test__ = False      # not a pytest test, whatever module imports it
