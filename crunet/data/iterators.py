"""The RecordIO iterators of training and scoring, built only after their flags
(``crunet.data.flags.check_args``) and files (``crunet.data.checks``) passed their checks.

* :func:`get_rec_iter` builds the training iterator (the paper's augmentation by default) and
  the validation one (shorter side 256, centre 224 crop, bicubic), sharded over the workers of a
  kvstore; :func:`get_val_iter` builds the validation one alone;
* :class:`TrainIter` serves epoch E's permutation (seed ``--seed + E``), :class:`ExactEpochIter`
  each validation record exactly once, :class:`GuardedIter` turns a failure inside MXNet into
  one line naming the file and record;
* :class:`SyntheticDataIter` (random batches for ``--benchmark 1``) and :func:`test_io`
  (``--test-io 1``: read the training iterator and report its speed).

Packing images into RecordIO: ``crunet-im2rec`` (see ``data/README.md``).
"""
import logging
import random
import time

import mxnet as mx
import numpy as np

from ..errors import error_line
from . import recordio
from .checks import (LOCATE_SECONDS, WARNED_THREADS, DataError, check_labels, effective_threads, inspect_recordio,
                     mxnet_decodes, part_sizes)
from .flags import batch_size_of, check_args, image_shape_of, index_of, triple

__all__ = ['get_rec_iter', 'get_val_iter', 'GuardedIter', 'TrainIter', 'ExactEpochIter', 'SyntheticDataIter', 'test_io']


# ============================================================================ iterators
def _workers(kv):
    if kv is None:
        return 1, 0
    return int(kv.num_workers), int(kv.rank)


def _common(args, path, shape):
    mean = triple(args.rgb_mean, '--rgb-mean')
    std = triple(args.rgb_std, '--rgb-std')
    nthreads = int(args.data_nthreads)
    if effective_threads(nthreads) < nthreads and nthreads not in WARNED_THREADS:
        WARNED_THREADS.add(nthreads)
        logging.info('--data-nthreads %d: ImageRecordIter decodes with %d thread(s) on this machine (MXNet caps '
                     'them at max(CPUs/2 - 1, 1))', nthreads, effective_threads(nthreads))
    kw = dict(path_imgrec=path, path_imgidx=index_of(args, path), data_shape=shape,
              label_width=1, data_name='data', label_name='softmax_label', preprocess_threads=nthreads,
              mean_r=mean[0], mean_g=mean[1], mean_b=mean[2], std_r=std[0], std_g=std[1], std_b=std[2],
              scale=float(args.scale), inter_method=int(args.inter_method), verbose=False)
    # always float32, whatever --dtype: the float16 graph casts its input itself
    # (symbols.blocks.data_input); a Python-side astype cost 12-16 ms per 32x3x224x224 batch
    return kw, None


def _resizes(args, training):
    """True when the pipeline resizes every image (validation, --aug-off 1, --random-resized-crop 0
    with --resize-val > 0): those need every image to decode."""
    if training and not args.aug_off and args.random_resized_crop:
        return False
    return args.resize_val > 0


def _checked(args, path, what, shape, num_parts, part_index, batch_size, need_full_batch, decode_all):
    """Validate ``path`` for ``what`` (train/val) and this worker's part; returns records in the part."""
    info = inspect_recordio(path, args.data_check, decode_all, idx=index_of(args, path))
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
    bs = batch_size_of(args)
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
        raise DataError(_failure(kw['path_imgrec'], e, kw.get('path_imgidx'))) from None


class _OutOfTime(Exception):
    pass


def _failure(path, exc, idx=None, budget=LOCATE_SECONDS):
    """The one-line message for an MXNet failure reading ``path``: the record at fault, found by
    decoding the records of the file in order (only ever run once reading has failed; for at most
    ``budget`` seconds, after which the message says how to find it), and MXNet's line."""
    logging.info('%s: MXNet failed reading it; decoding its records to find the one at fault ...', path)
    deadline = time.time() + budget
    seen = [0]

    def decodes(img):
        if time.time() > deadline:
            raise _OutOfTime()
        seen[0] += 1
        return mxnet_decodes(img)
    try:
        recordio.scan_recordio(path, idx, mode='full', decodes=decodes, num_threads=1)
    except (recordio.RecordError, OSError) as e:
        return '%s (ImageRecordIter: %s)' % (e, error_line(exc))
    except _OutOfTime:
        return ('%s: ImageRecordIter failed (%s); the first %d records decode, `crunet-im2rec check --mode full %s` '
                'decodes them all and names the one at fault' % (path, error_line(exc), seen[0], path))
    return '%s: ImageRecordIter failed (%s); every record decodes on its own' % (path, error_line(exc))


class GuardedIter(mx.io.DataIter):
    """Wraps an MXNet iterator reading ``path``.

    A failure inside MXNet (e.g. a record that does not decode, in a file too large to
    decode-check every record up front) becomes a one-line :class:`DataError` naming the file
    and the record at fault (found by decoding every record once the failure happened) instead
    of a C++ traceback; with ``cast='float16'`` the data are cast (ImageRecordIter in MXNet 1.9.1
    refuses ``dtype='float16'``: "unknown dtype for ImageRecordIter2").
    """

    def __init__(self, it, path, cast=None, idx=None):
        super(GuardedIter, self).__init__(it.batch_size)
        self._it = it
        self.path = path
        self.idx = idx
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
        raise DataError(_failure(self.path, e, self.idx)) from None

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
        super(TrainIter, self).__init__(_create(self._kw), kw['path_imgrec'], cast, kw.get('path_imgidx'))

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

    def __init__(self, it, path, num_records, cast=None, idx=None):
        super(ExactEpochIter, self).__init__(it, path, cast, idx)
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
    bs = batch_size_of(args)
    nparts, rank = _workers(kv)
    mine = _checked(args, path, 'val', shape, nparts, rank, bs, False, _resizes(args, False))
    kw, cast = _common(args, path, shape)
    kw.update(_val_params(args))
    kw.update(batch_size=bs, shuffle=False, round_batch=False, num_parts=nparts, part_index=rank,
              mirror=bool(mirror))
    return ExactEpochIter(_create(kw), path, mine, cast, kw['path_imgidx'])


def get_rec_iter(args, kv=None):
    """``(train_iter, val_iter or None)`` for ``args`` (see :func:`add_data_args` /
    :func:`add_data_aug_args` / :func:`data_args`); ``args.batch_size`` is this worker's batch.

    Train: shuffled (seed ``args.seed`` when set: same order and augmentations on every run),
    the paper's augmentation unless switched off, ``round_batch`` (the last batch of an epoch is
    completed with records from the start); a :class:`TrainIter`, whose ``reset``/``set_epoch``
    give each epoch its own permutation. Sharded as ``num_parts=kv.num_workers,
    part_index=kv.rank`` when ``kv`` is given. Data ``'data'`` (float32, also under ``--dtype float16``),
    label ``'softmax_label'`` (width 1). Raises :class:`DataError` before creating any MXNet
    iterator when a flag, a file or a record is bad.
    """
    check_args(args, training=True)
    if args.data_val:
        # validate both before starting any C++ reader threads
        _checked(args, args.data_val, 'val', image_shape_of(args), *(_workers(kv)), batch_size_of(args), False,
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
    bs = batch_size_of(args)
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
