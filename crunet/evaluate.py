"""Evaluation of a checkpoint on a validation RecordIO file (the logic behind ``score.py``).

* the scoring graph is ``symbols.checkpoint.deploy_symbol``: softmax without label, optionally mean-max pooling
  (``0.5 * (global average + global max)`` before the classifier, for inputs larger than the
  training crop);
* :class:`Predictor` -- a Module bound for inference on one or more devices;
* :func:`centre_crop_batches` (``common.data.get_val_iter``: shorter side to ``resize``, centre
  crop, bicubic) and :func:`ten_crop_batches` (4 corners + centre of the resized image, each
  also mirrored: 10 inputs per image, softmax averaged);
* :func:`resolve` fills the scoring flags not given from the training run's ``PREFIX-args.json``,
  :func:`data_flags` turns them into the data iterators' flags, :func:`choose_pooling` resolves
  ``--pooling auto``;
* :func:`iter_predictions` yields ``(probabilities, labels)`` per batch; :class:`TopK` counts
  top-1 / top-5 errors; :func:`evaluate` runs the whole evaluation and returns a result dict.
"""
import argparse
import logging
import sys
import time

import mxnet as mx
import numpy as np

from symbols.blocks import parse_shape
from symbols.predict import Predictor
from symbols.preprocess import training_args

from .data import recordio
from .data.flags import add_data_args, add_data_aug_args, data_args
from .errors import DataError, error_line

__all__ = ['Predictor', 'ten_crops', 'ten_crop_batches', 'centre_crop_batches', 'iter_predictions', 'TopK',
           'evaluate', 'normalise', 'stderr_log', 'POOLING_FLAG_CHOICES', 'DATA_FLAGS', 'FROM_TRAINING',
           'data_defaults', 'resolve', 'data_flags', 'choose_pooling']

#: ``--pooling``: ``auto`` (:func:`choose_pooling`) or one of the graph's (``symbols.blocks.POOLINGS``)
POOLING_FLAG_CHOICES = ('auto', 'avg', 'mean-max')
#: data flags of crunet.data.flags that scoring takes (defaults: those of crunet.data.flags)
DATA_FLAGS = ('data_val', 'data_nthreads', 'image_shape', 'rgb_mean', 'rgb_std', 'scale', 'data_check',
              'resize_val', 'inter_method')
#: flags whose default comes from PREFIX-args.json when the checkpoint has one
FROM_TRAINING = ('image_shape', 'rgb_mean', 'rgb_std', 'scale', 'resize_val', 'inter_method')


def data_defaults():
    """``{dest: argparse action}`` of the :data:`DATA_FLAGS` as crunet.data.flags declares them."""
    p = argparse.ArgumentParser(add_help=False)
    add_data_args(p)
    add_data_aug_args(p)
    return {a.dest: a for a in p._actions if a.dest in DATA_FLAGS}


def resolve(args):
    """Fill unset data flags of the scoring flags ``args`` (``model``, ``train_shape`` and the
    :data:`DATA_FLAGS`) from PREFIX-args.json (symbols.preprocess.training_args), then the data
    flags' defaults."""
    trained = training_args(args.model)
    defaults = data_defaults()
    for dest in DATA_FLAGS:
        if getattr(args, dest) is None:
            value = trained.get(dest) if dest in FROM_TRAINING else None
            setattr(args, dest, value if value is not None else defaults[dest].default)
    if args.train_shape is None:
        args.train_shape = trained.get('image_shape') or '3,224,224'
    return args


def data_flags(args):
    """The namespace the data iterators read (:func:`crunet.data.flags.data_args`), from the
    resolved scoring flags."""
    return data_args(batch_size=args.batch_size, **{dest: getattr(args, dest) for dest in DATA_FLAGS})


def choose_pooling(pooling, image_shape, train_shape):
    """``'avg'`` or ``'mean-max'`` (``auto``: mean-max when the input exceeds the training crop)."""
    if pooling != 'auto':
        return pooling
    _, h, w = parse_shape(image_shape)
    _, th, tw = parse_shape(train_shape)
    return 'mean-max' if (h > th or w > tw) else 'avg'



# ----------------------------------------------------------------------------- inputs
def normalise(images, mean, std, scale):
    """``(N, H, W, C)`` uint8 RGB (or grayscale, C 1) -> ``(N, C, H, W)`` float32
    ``(x - mean) / std * scale``, the normalisation ImageRecordIter applies."""
    x = (np.asarray(images, np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray((x * np.float32(scale)).transpose(0, 3, 1, 2))


def ten_crops(img, crop_h, crop_w):
    """The 10 crops of an ``(H, W, C)`` array: top-left, top-right, bottom-left, bottom-right,
    centre, then the same five mirrored left-right; ``(10, crop_h, crop_w, C)``."""
    h, w = img.shape[:2]
    if h < crop_h or w < crop_w:
        raise ValueError('image %dx%d smaller than the crop %dx%d' % (h, w, crop_h, crop_w))
    y0, x0 = (h - crop_h) // 2, (w - crop_w) // 2
    corners = [(0, 0), (0, w - crop_w), (h - crop_h, 0), (h - crop_h, w - crop_w), (y0, x0)]
    crops = [img[y:y + crop_h, x:x + crop_w] for y, x in corners]
    crops += [c[:, ::-1] for c in crops]
    return np.stack(crops)


def _decode(payload, resize, inter_method, channels=3, where='record'):
    """``(image (H, W, C) uint8 RGB, label)`` of one record, decoded and resized by MXNet's own
    decoder; a record that does not decode raises :class:`crunet.errors.DataError` naming ``where``
    (the resize never sees an empty image: MXNet's would divide by its size)."""
    header, img_bytes = mx.recordio.unpack(payload)
    try:
        img = mx.image.imdecode(img_bytes, flag=1 if channels == 3 else 0, to_rgb=1)
        img.wait_to_read()
    except mx.base.MXNetError as exc:
        raise DataError('%s: the image (%d bytes) does not decode (%s)'
                       % (where, len(img_bytes), error_line(exc))) from None
    if resize:
        img = mx.image.resize_short(img, resize, interp=inter_method)
    label = header.label if np.isscalar(header.label) else header.label[0]
    return img.asnumpy(), float(label)


def ten_crop_batches(rec_path, image_shape, batch_size, resize=256, mean=(124, 117, 104), std=(1, 1, 1),
                     scale=0.0167, inter_method=2, max_images=None):
    """Yield ``(data, labels)``: ``data`` ``(10 n, C, H, W)`` (the 10 crops of image i are rows
    ``10 i .. 10 i + 9``), ``labels`` ``(n,)``, ``n <= batch_size`` images per batch, read in
    index order from ``rec_path`` and its ``.idx`` (the order of the centre-crop path), decoded
    and resized like ImageRecordIter (shorter side to ``resize`` with ``inter_method``; ``C`` 1:
    grayscale, normalised with the first mean/std). A record that does not decode raises
    :class:`crunet.errors.DataError` naming the file and record."""
    c, h, w = parse_shape(image_shape)
    if resize and resize < max(h, w):
        raise ValueError('--resize-val %d is smaller than the crop %dx%d' % (resize, h, w))
    if c == 1:
        mean, std = tuple(mean)[:1], tuple(std)[:1]
    images, labels, count = [], [], 0
    for key, payload in recordio.iter_payloads(rec_path, limit=max_images):
        img, label = _decode(payload, resize, inter_method, c, '%s: record %s' % (rec_path, key))
        if img.ndim == 2:
            img = img[:, :, None]
        images.append(ten_crops(img, h, w))
        labels.append(label)
        count += 1
        if len(labels) == batch_size:
            yield normalise(np.concatenate(images), mean, std, scale), np.array(labels)
            images, labels = [], []
    if labels:
        yield normalise(np.concatenate(images), mean, std, scale), np.array(labels)


def centre_crop_batches(val_iter, max_images=None):
    """Yield ``(data, labels)`` of the padded batches of ``val_iter`` (``common.data.get_val_iter``),
    padding dropped."""
    count = 0
    val_iter.reset()
    for batch in val_iter:
        n = batch.data[0].shape[0] - (batch.pad or 0)
        if max_images is not None:
            n = min(n, max_images - count)
        if n <= 0:
            break
        yield batch.data[0][:n], batch.label[0][:n].asnumpy()
        count += n
        if max_images is not None and count >= max_images:
            break


def iter_predictions(predictor, batches, crops=1):
    """Yield ``(probabilities (n, K), labels (n,))`` per batch; with ``crops > 1`` the softmax of
    the ``crops`` consecutive rows of each image is averaged."""
    for data, labels in batches:
        probs = predictor.predict(data)
        if crops > 1:
            probs = probs.reshape((-1, crops, probs.shape[-1])).mean(axis=1)
        yield probs, labels


class TopK(object):
    """Top-1 and top-k error counts."""

    def __init__(self, k=5):
        self.k, self.num, self.wrong1, self.wrongk = k, 0, 0, 0

    def update(self, probs, labels):
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        k = min(self.k, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind='stable')[:, :k]
        self.wrong1 += int((top[:, 0] != labels).sum())
        self.wrongk += int((top != labels[:, None]).all(axis=1).sum())
        self.num += len(labels)

    @property
    def top1_error(self):
        return self.wrong1 / float(self.num) if self.num else float('nan')

    @property
    def topk_error(self):
        return self.wrongk / float(self.num) if self.num else float('nan')


def evaluate(predictor, batches, crops=1, total=None, disp_batches=20, log=None, top_k=5):
    """Score ``batches`` with ``predictor``; returns ``{'images', 'top1_error', 'top5_error',
    'seconds', 'images_per_sec'}``. Progress (images, running errors, speed) goes to ``log``
    (a callable taking a line; default: logging.info) every ``disp_batches`` batches."""
    log = log or logging.info
    meter = TopK(top_k)
    tic = time.time()
    for i, (probs, labels) in enumerate(iter_predictions(predictor, batches, crops)):
        meter.update(probs, labels)
        if disp_batches and (i + 1) % disp_batches == 0:
            elapsed = time.time() - tic
            log('[%s/%s images] top-1 error %.2f%%  top-%d error %.2f%%  %.1f images/s'
                % (meter.num, total if total is not None else '?', 100 * meter.top1_error, top_k,
                   100 * meter.topk_error, meter.num / max(elapsed, 1e-9)))
    seconds = time.time() - tic
    return {'images': meter.num, 'top1_error': meter.top1_error, 'top5_error': meter.topk_error,
            'seconds': seconds, 'images_per_sec': meter.num / max(seconds, 1e-9)}


def stderr_log(line):
    sys.stderr.write(line + '\n')
    sys.stderr.flush()
