"""int8 checkpoints for CPU scoring, made with MXNet 1.9.1's oneDNN quantization flow.

    python -m symbols.export quantize --model PREFIX --epoch N --calib-dataset FILE.rec --out QPREFIX
                                      [--calib-mode naive|entropy] [--num-calib-batches 10]
                                      [--batch-size 32] [--exclude NAME,...]
    crunet-score --model QPREFIX --epoch 0 --data-val val.rec

The flow is the one of MXNet's ``example/quantization/imagenet_gen_qsym_mkldnn.py``: the fp32
graph is fused for oneDNN (``sym.get_backend_symbol('MKLDNN_QUANTIZE')``), quantized with
``mx.contrib.quantization.quantize_model`` (``quantized_dtype='auto'``, ``quantize_mode='smart'``,
tensor-wise scales), calibrated on ``--num-calib-batches`` batches of ``--batch-size`` images of
``--calib-dataset``, and fused again. The result is ``QPREFIX-symbol.json`` +
``QPREFIX-0000.params``, which stock MXNet (the pip build, oneDNN inside) loads with
``mx.sym.load`` / ``mx.nd.load`` and runs on the CPU. The calibration images go through the
project's validation iterator with the checkpoint's own preprocessing (``PREFIX-args.json`` when
there is one, else the released models', resolved as ``crunet-score`` does), and that
preprocessing is written to ``QPREFIX-args.json``, so ``crunet-score`` needs no extra flags.

Which layers stay fp32, and why (:func:`broken_layers`): **grouped convolutions with
1 < num_group < input channels** -- the 3x3 ``c3x3-b`` of every ResNeXt-style unit of CRU-Net
(``conv2_x``, ``conv3_x``, ``conv5_x`` of CRU-Net-56: 32 groups of 4 channels), of ResNeXt and of
the demo's CRU-Net-22. MXNet 1.9.1 gets them wrong in int8: its plain ``quantized_conv``
refuses them (``quantized_conv only supports num_group=1 for now``), and the oneDNN subgraph
operator ``_sg_mkldnn_conv`` takes them but returns wrong numbers. One such convolution,
quantized alone with exact calibration ranges, is off by 10-23% of its output (mean absolute
error over mean absolute output) for every grouping tried (2 to 32 groups of 4 to 32 channels;
input signed or after a ReLU, 1x1 or 3x3, tensor- or channel-wise scales, with or without a fused
BatchNorm), where a dense (num_group = 1) or depthwise (num_group = channels) convolution in the
same test is off by 1-2%, int8 rounding. Each weight element still acts on the right input
channel and tap, and a constant weight comes out right; scaling one group's weights by 0.1
leaves a group 96-176% off: the int8 scales of the groups' weights are inconsistent. In a
network the error compounds: the demo's CRU-Net-22 falls from 96.4% to 31% top-1 (naive
calibration) with everything quantized, and stays within 0.3 points of fp32 with these layers
excluded. They are also slow in int8 (oneDNN has no fast int8 kernel for 4-channel groups):
CRU-Net-56 scores faster with them in fp32 than with everything quantized (37 against 26 img/s,
batch 8, 224x224, 2 cores, before the sum rewrite below).

The classifier (``fc6``, and with it ``pool5``) stays fp32 as well: MXNet's int8 global pooling
fails on inputs other than 224x224, and the int8 checkpoint keeps ``fc6_weight``
(:func:`classifier_layers`).

What does *not* need excluding (measured the same way): the depthwise 3x3 of the collective
units (``c3x3-b(1)``, num_group = channels; its input is a 1x1 convolution's output without
ReLU, so signed int8, and oneDNN fuses it with the BatchNorm-ReLU that follows), the
convolutions with shared weights (the collective bases, the ``c1x1-w`` projection applied at two
strides), the pre-activation BatchNorm-ReLU before each convolution, the stem. (MXNet 1.9.1's
int8 ReLU is wrong on an unsigned tensor -- a ReLU right after a ReLU; the zoo's ReLUs all follow
a BatchNorm, whose int8 output is signed.)

Residual sums (:func:`sums_as_elemwise_add`): the zoo writes them as ``ElementWiseSum``
(``add_n``), which MXNet's quantization leaves in fp32; written as ``elemwise_add`` they are
quantized and fused into the convolution before them. That is what takes CRU-Net-56 from 1.6x
to 2.4x its fp32 speed (bench/int8_speed.py).

Calibration: ``naive`` (the min/max of each layer's output on the calibration images, the
default here) keeps the demo within 0.3 points of fp32; ``entropy`` (KL-divergence thresholds,
the default of MXNet's example) clips more and cost the demo 2.2 points (bench/FINDINGS.md, int8).
"""
import argparse
import json
import os
import warnings

import mxnet as mx
import numpy as np

from crunet.files import atomic_write_text

from .checkpoint import check_params, inference_symbol, load_checkpoint, num_classes_of, \
    save_checkpoint, symbol_path

__all__ = ['QuantizeError', 'CALIB_MODES', 'PREPROCESS_KEYS', 'broken_layers', 'classifier_layers', 'kept_fp32',
           'sums_as_elemwise_add', 'quantized_layers', 'calibration_iter', 'quantize_symbol', 'quantize_checkpoint',
           'compare_checkpoints', 'add_arguments', 'command']

#: calibration modes of ``quantize_model`` offered here (``'none'`` leaves the ranges to run time,
#: which MXNet 1.9.1's quantized BatchNorm refuses)
CALIB_MODES = ('naive', 'entropy')
#: calibration set: 10 batches of 32 images, as in MXNet's example
DEFAULT_CALIB_BATCHES = 10
DEFAULT_BATCH_SIZE = 32
#: the least top-1 agreement with fp32 on the calibration images for the int8 model to be written
DEFAULT_MIN_AGREEMENT = 0.98
#: the preprocessing keys of PREFIX-args.json, copied to QPREFIX-args.json (what crunet-score reads)
PREPROCESS_KEYS = ('image_shape', 'rgb_mean', 'rgb_std', 'scale', 'resize_val', 'inter_method')
#: nodes of the fused graph that carry one layer each, and the op inside them
_FUSED_OPS = {'_sg_mkldnn_conv': 'Convolution', '_sg_mkldnn_fully_connected': 'FullyConnected'}


class QuantizeError(ValueError):
    """Arguments or a checkpoint that cannot be quantized; the message names the flag or file."""


# ----------------------------------------------------------------------------- which layers
def broken_layers(sym, arg_params):
    """Names of the convolutions of ``sym`` that MXNet 1.9.1's oneDNN int8 path computes wrongly:
    ``1 < num_group < input channels`` (see the module docstring), in graph order.

    Input channels per group are read off the weight, ``(num_filter, C / num_group, kh, kw)``
    in ``arg_params``: 1 means depthwise, which int8 gets right."""
    nodes = json.loads(sym.tojson())['nodes']
    names = []
    for node in nodes:
        if node['op'] != 'Convolution' or int(node.get('attrs', {}).get('num_group', 1)) <= 1:
            continue
        weights = [nodes[i[0]]['name'] for i in node['inputs'][1:2] if nodes[i[0]]['op'] == 'null']
        per_group = arg_params[weights[0]].shape[1] if weights and weights[0] in arg_params else None
        if per_group != 1:
            names.append(node['name'])
    return names


def classifier_layers(sym):
    """Names of the FullyConnected layers of ``sym`` (``fc6``), kept in fp32, which also keeps the
    global average pooling ``pool5`` before them in fp32. Two reasons: MXNet 1.9.1's int8 pooling
    (``quantized_pooling``) ignores ``global_pool`` and refuses a final feature map smaller than
    the 7x7 kernel recorded on ``pool5`` (CRU-Net-56 at 64x64: ``kernel size (7) exceeds input``),
    and, quantized offline, ``fc6_weight`` would become ``fc6_weight_quantize`` (int8) plus its
    range, so the class count that ``crunet-score`` reads off ``fc6_weight``
    (:func:`symbols.checkpoint.num_classes_of`) would be gone. It costs nothing measurable: fc6 is
    0.04% of CRU-Net-56's multiply-adds, and the demo's accuracy is the same either way."""
    return [n['name'] for n in json.loads(sym.tojson())['nodes'] if n['op'] == 'FullyConnected']


def kept_fp32(sym, arg_params):
    """The layers :func:`quantize_symbol` always keeps in fp32: :func:`broken_layers`, then
    :func:`classifier_layers`."""
    return broken_layers(sym, arg_params) + classifier_layers(sym)


def sums_as_elemwise_add(sym):
    """``sym`` with every two-input ``ElementWiseSum`` (``add_n``, the residual sums of the zoo)
    written as ``elemwise_add``: the same numbers, but the form oneDNN's quantization knows.
    MXNet 1.9.1 quantizes ``elemwise_add`` and fuses it into the convolution before it (a
    convolution with a sum post-op, ``_sg_mkldnn_conv`` ``with_sum``); ``add_n`` it leaves in fp32,
    so every residual sum costs a dequantize, an fp32 sum, an fp32 BatchNorm-ReLU and a quantize.
    On CRU-Net-56 (batch 8, 224x224, 2 cores) that is 2.4x fp32 instead of 1.6x."""
    graph = json.loads(sym.tojson())
    for node in graph['nodes']:
        if node['op'] == 'add_n' and len(node['inputs']) == 2:
            node['op'] = 'elemwise_add'
            node.pop('attrs', None)                # num_args: elemwise_add has no attributes
    return mx.sym.load_json(json.dumps(graph))


def quantized_layers(qsym):
    """``{layer: True when it runs in int8}`` for every Convolution and FullyConnected of a graph
    made by :func:`quantize_symbol` (oneDNN fuses each into an ``_sg_mkldnn_*`` node, marked
    ``quantized`` when it runs in int8), in graph order."""
    found = {}
    for node in json.loads(qsym.tojson())['nodes']:
        op = node['op']
        if op in _FUSED_OPS:
            inner = [n['name'] for sub in node.get('subgraphs', []) for n in sub['nodes'] if n['op'] == _FUSED_OPS[op]]
            int8 = str(node.get('attrs', {}).get('quantized', 'false')).lower() == 'true'
            for name in inner:
                found[name] = int8
        elif op in _FUSED_OPS.values():
            found[node['name']] = False
    return found


def _layer_names(sym):
    return [n['name'] for n in json.loads(sym.tojson())['nodes'] if n['op'] != 'null']


# ----------------------------------------------------------------------------- calibration data
def calibration_iter(prefix, calib_rec, batch_size, num_classes=None, data_nthreads=None):
    """The validation iterator over ``calib_rec`` with the preprocessing of checkpoint ``prefix``
    (``PREFIX-args.json``, else the released models'), resolved as ``crunet-score`` resolves it.
    Returns ``(iterator, resolved score flags)``."""
    # crunet.cli.score sets OpenMP variables at import; MXNet is loaded already, so it only
    # warns that it is too late for them (the calibration speed is not what matters here)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        from crunet.cli.score import DATA_FLAGS, data_flags, resolve
    from crunet.data.flags import check_args
    from crunet.data.iterators import get_val_iter
    flags = argparse.Namespace(model=prefix, train_shape=None, batch_size=batch_size,
                               **{dest: None for dest in DATA_FLAGS})
    flags.data_val = calib_rec
    flags.data_nthreads = data_nthreads
    resolve(flags)
    data = data_flags(flags)
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


# ----------------------------------------------------------------------------- quantization
def quantize_symbol(sym, arg_params, aux_params, calib_data, calib_mode='naive', exclude=(), logger=None):
    """``(qsym, qarg_params, aux_params)``: MXNet's oneDNN int8 flow on the training symbol
    ``sym`` (its ``SoftmaxOutput`` head and label input kept, as in MXNet's example), calibrated
    on the DataIter ``calib_data`` (read to its end), with the layers named in ``exclude`` and
    those of :func:`kept_fp32` kept in fp32; residual sums go in as ``elemwise_add``
    (:func:`sums_as_elemwise_add`)."""
    if calib_mode not in CALIB_MODES:
        raise QuantizeError('unknown calibration mode %r; valid choices: %s' % (calib_mode, ', '.join(CALIB_MODES)))
    excluded = list(dict.fromkeys(kept_fp32(sym, arg_params) + list(exclude)))
    fused = sums_as_elemwise_add(sym).get_backend_symbol('MKLDNN_QUANTIZE')
    label_names = [n for n in sym.list_arguments() if n.endswith('_label')]
    qsym, qarg_params, qaux_params = mx.contrib.quantization.quantize_model(
        fused, arg_params, aux_params, data_names=('data',), label_names=tuple(label_names), ctx=mx.cpu(),
        excluded_sym_names=excluded, calib_mode=calib_mode, calib_data=calib_data, num_calib_examples=None,
        quantized_dtype='auto', quantize_mode='smart', quantize_granularity='tensor-wise', logger=logger)
    return qsym.get_backend_symbol('MKLDNN_QUANTIZE'), qarg_params, qaux_params


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
    names = set(_layer_names(sym))
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


# ----------------------------------------------------------------------------- command line
def add_arguments(p):
    """The flags of ``python -m symbols.export quantize`` on the (sub)parser ``p``."""
    p.add_argument('--model', required=True, help='checkpoint prefix: PREFIX-symbol.json, PREFIX-%%04d.params')
    p.add_argument('--epoch', type=int, default=0, help='checkpoint epoch (released files: 0)')
    p.add_argument('--calib-dataset', required=True, help='RecordIO file (.rec, .idx beside it) of calibration images')
    p.add_argument('--calib-mode', default='naive', choices=CALIB_MODES,
                   help='naive: min/max of each layer (default); entropy: KL-divergence thresholds')
    p.add_argument('--num-calib-batches', type=int, default=DEFAULT_CALIB_BATCHES,
                   help='calibration batches (default %d)' % DEFAULT_CALIB_BATCHES)
    p.add_argument('--batch-size', type=int, default=DEFAULT_BATCH_SIZE,
                   help='images per calibration batch (default %d)' % DEFAULT_BATCH_SIZE)
    p.add_argument('--exclude', default='', help='more layers to keep in fp32, comma-separated node names (grouped '
                                                 'convolutions with 1 < num_group < channels and the classifier '
                                                 'always are)')
    p.add_argument('--check-dataset', default=None,
                   help='afterwards, score fp32 and int8 on every image of this RecordIO file and print '
                        'both top-1 accuracies and how often their top-1 classes agree')
    p.add_argument('--data-nthreads', type=int, default=None, help='decoding threads (default: as crunet-score)')
    p.add_argument('--min-agreement', type=float, default=DEFAULT_MIN_AGREEMENT,
                   help='refuse to write the int8 model when its top-1 class agrees with fp32 on fewer than '
                        'this fraction of the calibration images (default %g)' % DEFAULT_MIN_AGREEMENT)
    p.add_argument('--force', action='store_true', help='write the int8 model whatever its agreement')
    p.add_argument('--out', required=True, help='output prefix: QPREFIX-symbol.json, QPREFIX-0000.params, '
                                                'QPREFIX-args.json')
    return p


def command(args, out=print):
    """Run the parsed ``quantize`` command; returns 0. Bad input raises ``QuantizeError``,
    ``CheckpointError`` or ``DataError`` (exit 2 in the command line), MXNet failures
    ``MXNetError`` (exit 1)."""
    exclude = [n.strip() for n in args.exclude.split(',') if n.strip()]
    if args.check_dataset and not os.path.isfile(args.check_dataset):
        raise QuantizeError('--check-dataset: file not found: %s' % args.check_dataset)
    res = quantize_checkpoint(args.model, args.epoch, args.calib_dataset, args.out, calib_mode=args.calib_mode,
                              num_calib_batches=args.num_calib_batches, batch_size=args.batch_size,
                              exclude=exclude, data_nthreads=args.data_nthreads, min_agreement=args.min_agreement,
                              force=args.force, log=out)
    out('wrote %s, %s and %s' % (res['symbol'], res['params'], res['args']))
    out('int8 layers %d, fp32 layers %d (%s); calibrated on %d images (%s); top-1 agreement with fp32 on '
        'them %.2f%%' % (res['int8_layers'], res['fp32_layers'], ', '.join(res['excluded']) or 'none excluded',
                         res['calib_images'], res['calib_mode'], 100 * res['calib_agreement']))
    if args.check_dataset:
        c = compare_checkpoints(args.model, args.epoch, args.out, args.check_dataset, args.batch_size,
                                args.data_nthreads)
        out('%s: %d images, top-1 fp32 %.2f%%, int8 %.2f%%, top-1 agreement %.2f%%'
            % (args.check_dataset, c['images'], 100 * c['fp32_top1'], 100 * c['int8_top1'], 100 * c['agreement']))
    return 0
