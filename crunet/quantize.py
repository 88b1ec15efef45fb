"""int8 checkpoints written from fp32 ones: the calibration images read with the project's
validation iterator and the checkpoint's own preprocessing (resolved as ``crunet-score`` does),
the int8 graph of :func:`symbols.quantize.quantize_symbol` checked against fp32 on them, and
``QPREFIX-symbol.json`` + ``QPREFIX-0000.params`` + ``QPREFIX-args.json`` written. Which layers
stay fp32, and why: :mod:`symbols.quantize`. The command: ``crunet-export quantize``
(:mod:`crunet.cli.quantize`).
"""
import argparse
import json
import os

import mxnet as mx
import numpy as np

from symbols.checkpoint import check_params, inference_symbol, load_checkpoint, num_classes_of, save_checkpoint, \
    symbol_path
from symbols.quantize import CALIB_MODES, QuantizeError, kept_fp32, layer_names, quantize_symbol, quantized_layers

from . import evaluate as ev
from .data.flags import check_args
from .data.iterators import get_val_iter
from .files import atomic_write_text

__all__ = ['DEFAULT_CALIB_BATCHES', 'DEFAULT_BATCH_SIZE', 'DEFAULT_MIN_AGREEMENT', 'PREPROCESS_KEYS', 'calibration_iter', 'quantize_checkpoint',
           'compare_checkpoints']

#: calibration set: 10 batches of 32 images, as in MXNet's example
DEFAULT_CALIB_BATCHES = 10
DEFAULT_BATCH_SIZE = 32
#: the least top-1 agreement with fp32 on the calibration images for the int8 model to be written
DEFAULT_MIN_AGREEMENT = 0.98
#: the preprocessing keys of PREFIX-args.json, copied to QPREFIX-args.json (what crunet-score reads)
PREPROCESS_KEYS = ('image_shape', 'rgb_mean', 'rgb_std', 'scale', 'resize_val', 'inter_method')


def calibration_iter(prefix, calib_rec, batch_size, num_classes=None, data_nthreads=None):
    """The validation iterator over ``calib_rec`` with the preprocessing of checkpoint ``prefix``
    (``PREFIX-args.json``, else the released models'), resolved as ``crunet-score`` resolves it.
    Returns ``(iterator, resolved score flags)``."""
    flags = argparse.Namespace(model=prefix, train_shape=None, batch_size=batch_size,
                               **{dest: None for dest in ev.DATA_FLAGS})
    flags.data_val = calib_rec
    flags.data_nthreads = data_nthreads
    ev.resolve(flags)
    data = ev.data_flags(flags)
    check_args(data, training=False)
    data.num_classes = num_classes
    return get_val_iter(data), flags


class _Counted(mx.io.DataIter):
    """``it`` from its first batch on, stopping after ``num_batches``; counts the images seen
    (``quantize_model`` reads its calibration iterator from wherever it stands)."""

    def __init__(self, it, num_batches, batch_size):
        super().__init__(batch_size)
        self.it, self.num_batches, self.batches, self.images = it, num_batches, 0, 0
        self.it.reset()

    @property
    def provide_data(self):
        return self.it.provide_data

    @property
    def provide_label(self):
        return self.it.provide_label

    def reset(self):
        self.it.reset()
        self.batches = self.images = 0

    def next(self):
        if self.batches >= self.num_batches:
            raise StopIteration
        batch = self.it.next()
        self.batches += 1
        self.images += batch.data[0].shape[0] - (batch.pad or 0)
        return batch


def _agreement(sym, arg_params, aux_params, qsym, qarg_params, qaux_params, batches, shape):
    """``{'images', 'agree', 'fp32_correct', 'int8_correct'}``: top-1 classes of the fp32 and
    int8 graphs over the DataIter ``batches`` (labelled), compared with each other and the labels."""
    mods = []
    for s, args, auxs in ((sym, arg_params, aux_params), (qsym, qarg_params, qaux_params)):
        mod = mx.mod.Module(inference_symbol(s), data_names=['data'], label_names=None, context=mx.cpu())
        mod.bind(data_shapes=[('data', shape)], for_training=False)
        mod.set_params(args, auxs, allow_missing=False, allow_extra=True)
        mods.append(mod)
    counts = dict(images=0, agree=0, fp32_correct=0, int8_correct=0)
    batches.reset()
    for batch in batches:
        n = batch.data[0].shape[0] - (batch.pad or 0)
        labels = batch.label[0].asnumpy()[:n].astype(np.int64)
        top = []
        for mod in mods:
            mod.forward(mx.io.DataBatch([batch.data[0]]), is_train=False)
            top.append(mod.get_outputs()[0].asnumpy()[:n].argmax(axis=1))
        counts['images'] += n
        counts['agree'] += int((top[0] == top[1]).sum())
        counts['fp32_correct'] += int((top[0] == labels).sum())
        counts['int8_correct'] += int((top[1] == labels).sum())
    return counts


def compare_checkpoints(prefix, epoch, qprefix, rec, batch_size=DEFAULT_BATCH_SIZE, data_nthreads=None):
    """fp32 checkpoint ``prefix``/``epoch`` against its int8 version ``qprefix`` (epoch 0) on every
    image of the RecordIO file ``rec`` (the checkpoint's preprocessing): ``{'images', 'fp32_top1',
    'int8_top1', 'agreement'}`` (agreement: the fraction of images whose top-1 class is the same)."""
    if not os.path.isfile(rec):
        raise QuantizeError('--check-dataset: file not found: %s' % rec)
    sym, arg_params, aux_params = load_checkpoint(prefix, epoch)
    qsym, qargs, qaux = load_checkpoint(qprefix, 0)
    it, _ = calibration_iter(prefix, rec, batch_size, num_classes_of(arg_params), data_nthreads)
    shape = (batch_size,) + tuple(it.provide_data[0].shape[1:])
    c = _agreement(sym, arg_params, aux_params, qsym, qargs, qaux, it, shape)
    n = float(max(c['images'], 1))
    return dict(images=c['images'], fp32_top1=c['fp32_correct'] / n, int8_top1=c['int8_correct'] / n,
                agreement=c['agree'] / n)


def quantize_checkpoint(prefix, epoch, calib_rec, out_prefix, calib_mode='naive',
                        num_calib_batches=DEFAULT_CALIB_BATCHES, batch_size=DEFAULT_BATCH_SIZE, exclude=(),
                        data_nthreads=None, min_agreement=DEFAULT_MIN_AGREEMENT, force=False, log=None):
    """Write the int8 version of checkpoint ``prefix``/``epoch`` as ``out_prefix``
    (``-symbol.json``, ``-0000.params``, ``-args.json``), calibrated with ``calib_mode`` on the
    first ``num_calib_batches`` batches of ``batch_size`` images of the RecordIO file
    ``calib_rec``. ``exclude``: more layer names to keep in fp32 (those of :func:`kept_fp32`
    always are).

    Checks before writing: the parameters fit the int8 graph, and it runs on the calibration
    images, where its top-1 class is compared with the fp32 model's: below ``min_agreement`` (a
    fraction of the images) nothing is written and :class:`QuantizeError` gives the figure,
    unless ``force``. Returns
    ``{'symbol', 'params', 'args', 'excluded', 'int8_layers', 'fp32_layers', 'calib_images',
    'calib_agreement', ...}``. Raises :class:`QuantizeError` / ``CheckpointError`` /
    ``crunet.data.checks.DataError`` on bad input (``ValueError`` or ``CLIError``)."""
    log = log or (lambda msg: None)
    if calib_mode not in CALIB_MODES:
        raise QuantizeError('--calib-mode: unknown calibration mode %r; valid choices: %s'
                            % (calib_mode, ', '.join(CALIB_MODES)))
    for flag, value in (('--num-calib-batches', num_calib_batches), ('--batch-size', batch_size)):
        if not isinstance(value, int) or value < 1:
            raise QuantizeError('%s must be at least 1, not %r' % (flag, value))
    if not 0.0 <= min_agreement <= 1.0:      # NaN fails too
        raise QuantizeError('--min-agreement must be a fraction in [0, 1], not %r' % (min_agreement,))
    if os.path.abspath(symbol_path(out_prefix)) == os.path.abspath(symbol_path(prefix)):
        raise QuantizeError('--out %s is the checkpoint itself; give another prefix' % out_prefix)
    sym, arg_params, aux_params = load_checkpoint(prefix, epoch)
    if not os.path.isfile(calib_rec):
        raise QuantizeError('--calib-dataset: file not found: %s' % calib_rec)
    names = set(layer_names(sym))
    unknown = [n for n in exclude if n not in names]
    if unknown:
        raise QuantizeError('--exclude: no layer %r in %s' % (unknown[0], symbol_path(prefix)))
    num_classes = num_classes_of(arg_params)
    it, flags = calibration_iter(prefix, calib_rec, batch_size, num_classes, data_nthreads)
    shape = (batch_size,) + tuple(it.provide_data[0].shape[1:])
    check_params(sym, arg_params, aux_params, shape)

    calib = _Counted(it, num_calib_batches, batch_size)
    log('calibrating %s epoch %d (%s) on %d batch(es) of %d from %s'
        % (prefix, epoch, calib_mode, num_calib_batches, batch_size, calib_rec))
    qsym, qargs, qaux = quantize_symbol(sym, arg_params, aux_params, calib, calib_mode, exclude)
    calib_images, calib_batches = calib.images, calib.batches
    if calib_images == 0:
        raise QuantizeError('--calib-dataset %s: no calibration images were read' % calib_rec)
    # the same calibration batches through both graphs: int8 must run, and agree with fp32
    checked = _agreement(sym, arg_params, aux_params, qsym, qargs, qaux, calib, shape)
    check_params(qsym, qargs, qaux, shape)
    agreement = checked['agree'] / float(checked['images'])
    if agreement < min_agreement and not force:
        raise QuantizeError('int8 top-1 agrees with fp32 on %.2f%% of the %d calibration images, below '
                            '--min-agreement %g: %s not written (--exclude more layers to keep them in fp32, '
                            'or --force to write it anyway)' % (100 * agreement, checked['images'], min_agreement,
                                                                 out_prefix))
    layers = quantized_layers(qsym)

    spath, ppath = save_checkpoint(out_prefix, 0, qsym, qargs, qaux)
    recorded = {k: getattr(flags, k) for k in PREPROCESS_KEYS}
    recorded.update(num_classes=num_classes, quantized_from='%s epoch %d' % (prefix, epoch), calib_mode=calib_mode,
                    calib_dataset=calib_rec, calib_images=calib_images,
                    excluded=[n for n, q in layers.items() if not q])
    apath = out_prefix + '-args.json'
    atomic_write_text(apath, json.dumps(recorded, indent=1, sort_keys=True) + '\n')
    res = dict(symbol=spath, params=ppath, args=apath, calib_mode=calib_mode, calib_images=calib_images,
               calib_batches=calib_batches, excluded=list(dict.fromkeys(kept_fp32(sym, arg_params) + list(exclude))),
               int8_layers=sum(layers.values()), fp32_layers=sum(not q for q in layers.values()),
               calib_agreement=agreement)
    return res
