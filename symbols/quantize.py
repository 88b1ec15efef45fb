"""int8 checkpoints for CPU scoring, made with MXNet 1.9.1's oneDNN quantization flow.

    crunet-export quantize --model PREFIX --epoch N --calib-dataset FILE.rec --out QPREFIX
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
preprocessing is written to ``QPREFIX-args.json``, so ``crunet-score`` needs no extra flags
(the files and the data: :mod:`crunet.quantize`; this module: the int8 graph).

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
import json

import mxnet as mx

__all__ = ['QuantizeError', 'CALIB_MODES', 'broken_layers', 'classifier_layers', 'kept_fp32', 'sums_as_elemwise_add',
           'quantized_layers', 'layer_names', 'quantize_symbol']

#: calibration modes of ``quantize_model`` offered here (``'none'`` leaves the ranges to run time,
#: which MXNet 1.9.1's quantized BatchNorm refuses)
CALIB_MODES = ('naive', 'entropy')
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


def layer_names(sym):
    """Names of the operator nodes of ``sym``, in graph order."""
    return [n['name'] for n in json.loads(sym.tojson())['nodes'] if n['op'] != 'null']


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
