"""RecordIO input pipeline shared by ``train_imagenet.py`` and ``score.py``.

* :func:`add_data_args` / :func:`add_data_aug_args` add the data and augmentation flags;
* :func:`get_rec_iter` builds the training iterator (the paper's augmentation by default) and
  the validation one (shorter side 256, centre 224 crop, bicubic), sharded over the workers of a
  kvstore; :func:`get_val_iter` builds the validation one alone;
* :func:`check_recordio` validates a ``.rec``/``.idx`` pair. MXNet's C++ reader segfaults on a
  missing ``.idx``, aborts on a truncated ``.rec`` and silently reads garbage through a wrong
  ``.idx``, so every iterator here is built only after its files pass this check; problems raise
  :class:`DataError` with a one-line message naming the file and record;
* :class:`SyntheticDataIter` (random batches for ``--benchmark 1``) and :func:`test_io`
  (``--test-io 1``: read the training iterator and report its speed).

Packing images into RecordIO: ``crunet-im2rec`` (see ``data/README.md``).
"""
import logging
import os
import random
import time

import mxnet as mx
import numpy as np

from symbols.preprocess import INTERPOLATIONS, RELEASED, interpolation_code

from . import recordio

__all__ = ['DataError', 'add_data_args', 'add_data_aug_args', 'get_rec_iter', 'get_val_iter', 'check_recordio',
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
                           'header, a sample of images decoded), full (decode every image), none (files exist)')
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


# ============================================================================ file checks
_CHECKED = {}


def _file_key(path):
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _inspect(path, mode='sample', nthreads=2):
    """RecordInfo of a validated pair (cached per file identity); raises DataError."""
    if not path:
        raise DataError('no RecordIO file given')
    idx = os.path.splitext(path)[0] + '.idx'
    try:
        key = (os.path.abspath(path), mode, _file_key(path), _file_key(idx))
    except OSError:
        key = None
    if key is not None and key in _CHECKED:
        return _CHECKED[key]
    try:
        info = recordio.scan_recordio(path, idx, mode=mode, num_threads=max(1, nthreads))
    except recordio.RecordError as e:
        raise DataError(str(e)) from None
    if key is not None:
        _CHECKED[key] = info
    return info


def check_recordio(path, mode='sample'):
    """Validate ``path`` (.rec) and the ``.idx`` beside it; return the number of records.

    Checks that both exist, that the index parses and each offset it lists starts a record
    (RecordIO magic) ending where the next listed one starts and inside the file (truncation),
    that records carry an image header, and that images decode (every one when there are at
    most 1000 records or ``mode='full'``, else a sample). Raises :class:`DataError`.
    """
    return _inspect(path, mode).num_records


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
def _triple(text, name):
    try:
        vals = [float(v) for v in str(text).split(',') if v.strip()]
    except ValueError:
        raise DataError('%s must be comma-separated numbers, not %r' % (name, text))
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise DataError('%s needs 3 values (R,G,B), got %r' % (name, text))
    return vals


def _image_shape(args):
    shape = getattr(args, 'image_shape', '3,224,224')
    try:
        shape = tuple(int(v) for v in (shape.split(',') if isinstance(shape, str) else shape))
    except (TypeError, ValueError):
        raise DataError('--image-shape must be channels,height,width, not %r' % (shape,))
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) <= 0:
        raise DataError('--image-shape must be 3,H,W (or 1,H,W) with positive sizes, not %r' % (shape,))
    return shape


def _workers(kv):
    if kv is None:
        return 1, 0
    return int(kv.num_workers), int(kv.rank)


def _common(args, path, shape):
    mean = _triple(getattr(args, 'rgb_mean', '124,117,104'), '--rgb-mean')
    std = _triple(getattr(args, 'rgb_std', '1,1,1'), '--rgb-std')
    if min(std) <= 0:
        raise DataError('--rgb-std values must be positive, not %r' % (getattr(args, 'rgb_std'),))
    nthreads = int(getattr(args, 'data_nthreads', 4) or 1)
    if nthreads < 1:
        raise DataError('--data-nthreads must be at least 1')
    if effective_threads(nthreads) < nthreads and nthreads not in _WARNED:
        _WARNED.add(nthreads)
        logging.info('--data-nthreads %d: ImageRecordIter decodes with %d thread(s) on this machine (MXNet caps '
                     'them at max(CPUs/2 - 1, 1))', nthreads, effective_threads(nthreads))
    kw = dict(path_imgrec=path, path_imgidx=os.path.splitext(path)[0] + '.idx', data_shape=shape,
              label_width=1, data_name='data', label_name='softmax_label', preprocess_threads=nthreads,
              mean_r=mean[0], mean_g=mean[1], mean_b=mean[2], std_r=std[0], std_g=std[1], std_b=std[2],
              scale=float(getattr(args, 'scale', 0.0167)), inter_method=int(getattr(args, 'inter_method', 2)),
              verbose=False)
    dtype = getattr(args, 'dtype', None) or 'float32'
    if dtype not in ('float32', 'float16'):
        raise DataError('--dtype must be float32 or float16, not %r' % (dtype,))
    return kw, (dtype if dtype != 'float32' else None)


def _checked(args, path, what, shape, num_parts, part_index, batch_size, need_full_batch):
    """Validate ``path`` for ``what`` (train/val) and this worker's part; returns records in the part."""
    mode = getattr(args, 'data_check', 'sample') or 'sample'
    info = _inspect(path, mode, int(getattr(args, 'data_nthreads', 4) or 1))
    if info.label_width not in (None, 1):
        raise DataError('%s: records carry %d labels each; the iterators read one class label'
                        % (path, info.label_width))
    ncls = getattr(args, 'num_classes', None)
    if ncls and info.label_max is not None and (info.label_min < 0 or info.label_max > ncls - 1):
        raise DataError('%s: labels run %g..%g, outside 0..%d for --num-classes %d'
                        % (path, info.label_min, info.label_max, ncls - 1, ncls))
    sizes = part_sizes(info.num_records, num_parts)
    mine = sizes[part_index]
    if mine == 0:
        raise DataError('%s: %d records cannot be split into %d parts (part %d would be empty)'
                        % (path, info.num_records, num_parts, part_index))
    if need_full_batch and mine < batch_size:
        raise DataError('%s: %s part %d/%d holds %d records, fewer than the batch size %d; lower --batch-size'
                        % (path, what, part_index, num_parts, mine, batch_size))
    return mine


def _batch_size(args):
    bs = getattr(args, 'batch_size', None)
    if not bs or int(bs) < 1:
        raise DataError('batch size must be a positive number of images, not %r' % (bs,))
    return int(bs)


def _val_params(args, shape):
    # resize <= 0: no resize; MXNet 1.9.1 upscales an image smaller than the crop to cover it
    resize = int(getattr(args, 'resize_val', 256) or 0)
    return dict(resize=resize if resize > 0 else -1, rand_crop=False, rand_mirror=False)


def _train_iter(args, kv=None):
    path = getattr(args, 'data_train', None)
    if not path:
        raise DataError('no training data: --data-train is not set (make a .rec with crunet-im2rec, '
                        'or python -m crunet.data.demo for the bundled digits)')
    shape = _image_shape(args)
    bs = _batch_size(args)
    nparts, rank = _workers(kv)
    _checked(args, path, 'train', shape, nparts, rank, bs, need_full_batch=True)
    kw, cast = _common(args, path, shape)
    seed = getattr(args, 'seed', None)
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 30)
    kw.update(batch_size=bs, shuffle=True, seed=int(seed), round_batch=True,
              num_parts=nparts, part_index=rank)
    if getattr(args, 'aug_off', 0):
        kw.update(_val_params(args, shape))
    else:
        if getattr(args, 'random_resized_crop', 1):
            amin, amax = float(getattr(args, 'min_random_area', 0.08)), float(getattr(args, 'max_random_area', 1.0))
            rmin = float(getattr(args, 'min_random_aspect_ratio', 0.75))
            rmax = float(getattr(args, 'max_random_aspect_ratio', 4.0 / 3))
            if not 0 < amin <= amax <= 1:
                raise DataError('need 0 < --min-random-area <= --max-random-area <= 1, got %g, %g' % (amin, amax))
            if not 0 < rmin <= rmax:
                raise DataError('need 0 < --min-random-aspect-ratio <= --max-random-aspect-ratio, got %g, %g'
                                % (rmin, rmax))
            kw.update(random_resized_crop=True, min_random_area=amin, max_random_area=amax,
                      min_aspect_ratio=rmin, max_aspect_ratio=rmax)
        else:
            kw.update(_val_params(args, shape))
            kw.update(rand_crop=True)
        hsl = [int(getattr(args, 'random_' + c, d)) for c, d in (('h', 20), ('s', 40), ('l', 50))]
        if min(hsl) < 0:
            raise DataError('--random-h/-s/-l must not be negative, got %s' % (hsl,))
        kw.update(rand_mirror=bool(getattr(args, 'random_mirror', 1)), random_h=hsl[0], random_s=hsl[1],
                  random_l=hsl[2])
    return TrainIter(kw, cast)


def _create(kw):
    try:
        return mx.io.ImageRecordIter(**kw)
    except mx.base.MXNetError as e:
        raise DataError('%s: ImageRecordIter failed (%s); crunet-im2rec check --mode full %s names the bad '
                        'record' % (kw['path_imgrec'], _mx_error_line(e), kw['path_imgrec'])) from None


def _mx_error_line(e):
    lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
    return lines[-1] if lines else type(e).__name__


class GuardedIter(mx.io.DataIter):
    """Wraps an MXNet iterator reading ``path``.

    A failure inside MXNet (e.g. a record that does not decode, in a file too large to
    decode-check every record up front) becomes a one-line :class:`DataError` naming the file
    instead of a C++ traceback; with ``cast='float16'`` the data are cast (ImageRecordIter in
    MXNet 1.9.1 refuses ``dtype='float16'``: "unknown dtype for ImageRecordIter2").
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
        raise DataError('%s: reading failed (%s); crunet-im2rec check --mode full %s names the bad record'
                        % (self.path, _mx_error_line(e), self.path)) from None

    def reset(self):
        try:
            self._it.reset()
        except mx.base.MXNetError as e:
            self._fail(e)

    def _next(self):
        try:
            batch = self._it.next()
        except mx.base.MXNetError as e:
            self._fail(e)
        if self.cast:
            batch.data = [d.astype(self.cast) for d in batch.data]
            batch.provide_data = self.provide_data
        return batch

    def next(self):
        return self._next()


class TrainIter(GuardedIter):
    """The training iterator: a fresh ``ImageRecordIter`` per epoch.

    In MXNet 1.9.1, ``reset()`` of a shuffled ``ImageRecordIter`` over an indexed file loses
    and repeats records (its round-batch overflow and the shuffled split disagree), and
    resetting a new one before reading spoils its first epoch. So :meth:`reset` builds a new
    iterator with seed ``seed + epoch`` instead: every epoch is a fresh permutation of this
    worker's part, each record once (the last batch is completed with records from the start
    of the same permutation and ``pad`` says how many). ``seed_aug`` is not used: in 1.9.1 it
    re-seeds per batch position, so every batch repeated the same crops.
    """

    def __init__(self, kw, cast=None):
        self._kw = dict(kw)
        self._epoch = 0
        self._fresh = True
        super(TrainIter, self).__init__(_create(self._kw), kw['path_imgrec'], cast)

    @property
    def epoch(self):
        return self._epoch

    def reset(self):
        if self._fresh:
            return
        self._epoch += 1
        self._it = None                          # join the old reader threads first
        self._it = _create(dict(self._kw, seed=self._kw['seed'] + self._epoch))
        self._fresh = True

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
    Sharded over ``kv.num_workers`` when ``kv`` is given. Raises :class:`DataError` on bad input.
    """
    path = getattr(args, 'data_val', None)
    if not path:
        raise DataError('no validation data: --data-val is not set')
    shape = _image_shape(args)
    bs = _batch_size(args)
    nparts, rank = _workers(kv)
    mine = _checked(args, path, 'val', shape, nparts, rank, bs, need_full_batch=False)
    kw, cast = _common(args, path, shape)
    kw.update(_val_params(args, shape))
    kw.update(batch_size=bs, shuffle=False, round_batch=False, num_parts=nparts, part_index=rank,
              mirror=bool(mirror))
    return ExactEpochIter(_create(kw), path, mine, cast)


def get_rec_iter(args, kv=None):
    """``(train_iter, val_iter or None)`` for ``args`` (see :func:`add_data_args` /
    :func:`add_data_aug_args`); ``args.batch_size`` is this worker's batch.

    Train: shuffled (seed ``args.seed`` when set: same order and augmentations on every run),
    the paper's augmentation unless switched off, ``round_batch`` (the last batch of an epoch is
    completed with records from the start). Sharded as ``num_parts=kv.num_workers,
    part_index=kv.rank`` when ``kv`` is given. Data ``'data'`` (float32, or ``args.dtype``),
    label ``'softmax_label'`` (width 1). Raises :class:`DataError` before creating any MXNet
    iterator when a file is missing or damaged.
    """
    if getattr(args, 'data_val', None):
        # validate both before starting any C++ reader threads
        _checked(args, args.data_val, 'val', _image_shape(args), *(_workers(kv)), _batch_size(args), False)
    train = _train_iter(args, kv)
    val = get_val_iter(args, kv) if getattr(args, 'data_val', None) else None
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
    disp = int(getattr(args, 'disp_batches', 20) or 20)
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
