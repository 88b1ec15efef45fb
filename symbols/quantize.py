"""int8 checkpoints for CPU scoring, made with MXNet 1.9.1's oneDNN quantization flow.

    python -m symbols.export quantize --model PREFIX --epoch N --calib-dataset FILE.rec --out QPREFIX
                                      [--calib-mode naive|entropy] [--num-calib-batches 10]
                                      [--batch-size 32] [--exclude NAME,...]
    crunet-score --model QPREFIX --epoch 0 --data-val val.rec

The flow is the one of MXNet's ``example/quantization/imagenet_gen_qsym_mkldnn.py``: the fp32
graph is fused for oneDNN (``sym.get_backend_symbol('MKLDNN_QUANTIZE')``), quantized with
``mx.contrib.quantization.quantize_model`` (``quantized_dtype='auto'``, ``quantize_mode='smart'``,
tensor-wise scales) calibrated on ``--num-calib-batches`` batches of ``--calib-dataset``, and
fused again; the result is saved as ``QPREFIX-symbol.json`` + ``QPREFIX-0000.params``, which
stock MXNet (the pip build, oneDNN inside) loads with ``mx.sym.load`` / ``mx.nd.load``. The
calibration images are read by the project's validation iterator with the checkpoint's own
preprocessing (``PREFIX-args.json`` when there is one, else the released models'), and that
preprocessing is written to ``QPREFIX-args.json``, so ``crunet-score`` needs no extra flags.

Which layers stay fp32, and why (:func:`broken_layers`): **grouped convolutions with
1 < num_group < input channels** -- the 3x3 ``c3x3-b`` of every ResNeXt-style unit of CRU-Net
(``conv2_x``, ``conv3_x``, ``conv5_x`` of CRU-Net-56; 32 groups of 4 channels), ResNeXt and the
demo's CRU-Net-22. MXNet 1.9.1 computes them wrongly in int8: its plain ``quantized_conv``
refuses them (``quantized_conv only supports num_group=1 for now``), and the oneDNN subgraph
operator ``_sg_mkldnn_conv`` accepts them but returns wrong numbers. A single such convolution,
quantized alone with exact calibration ranges, is off by 12-23% of its output magnitude (mean
absolute error over mean absolute output) with 2 or 4 groups, whether its input is signed or
follows a ReLU, 1x1 or 3x3, with tensor- or channel-wise scales, with or without a fused
BatchNorm, where the dense (num_group = 1) and depthwise (num_group = channels) convolutions of
the same test are off by 1.6-2% (int8 rounding). Constant weights come out right and each
weight element lands on the right input channel and tap, so the group layout is not permuted:
the int8 weights are rescaled wrongly per group. Chained through a network this is what took
the demo model from 96.6% to 26-29% top-1 with everything quantized.

What does *not* need excluding (measured the same way): the depthwise 3x3 of the collective
units (``c3x3-b(1)``, num_group = channels, fed by a 1x1 convolution without ReLU, so a signed
int8 input, and fused with the BatchNorm-ReLU that follows it), the convolutions whose weights
are shared (the collective bases and the ``c1x1-w`` projection used at two strides), the
pre-activation BatchNorm-ReLU before each convolution, the stem and the classifier.
"""
import argparse
import json
import logging
import os
import warnings

import mxnet as mx
import numpy as np

from .checkpoint import CheckpointError, check_params, load_checkpoint, num_classes_of, params_path, save_checkpoint, \
    symbol_path

__all__ = ['QuantizeError', 'CALIB_MODES', 'broken_layers', 'quantized_layers', 'quantize_checkpoint',
           'calibration_iter', 'build_parser', 'main', 'run']

#: calibration modes of mx.contrib.quantization.quantize_model offered here ('none' gives no ranges,
#: so every layer would requantize at run time: slower and not what the example ships)
CALIB_MODES = ('naive', 'entropy')
#: MXNet's example defaults: 10 batches of 32 images
DEFAULT_CALIB_BATCHES = 10
DEFAULT_BATCH_SIZE = 32
#: the keys of QPREFIX-args.json that crunet-score reads (the preprocessing of the checkpoint)
PREPROCESS_KEYS = ('image_shape', 'rgb_mean', 'rgb_std', 'scale', 'resize_val', 'inter_method')


class QuantizeError(ValueError):
    """Arguments or a checkpoint that cannot be quantized; the message names the flag or file."""


def _graph(sym):
    return json.loads(sym.tojson())


def broken_layers(sym, arg_params):
    """Names of the convolutions of ``sym`` that MXNet 1.9.1's oneDNN int8 path computes wrongly
    (1 < num_group < input channels; see the module docstring), in graph order.

    The input channels per group come from the weight's shape ``(num_filter, C / num_group, kh,
    kw)`` in ``arg_params``: 1 means depthwise, which int8 gets right."""
    names = []
    for node in _graph(sym)['nodes']:
        if node['op'] != 'Convolution':
            continue
        attrs = node.get('attrs', {})
        if int(attrs.get('num_group', 1)) <= 1:
            continue
        weight = [n for n in _graph_inputs(sym, node) if n.endswith('weight')]
        per_group = arg_params[weight[0]].shape[1] if weight and weight[0] in arg_params else None
        if per_group != 1:
            names.append(node['name'])
    return names


def _graph_inputs(sym, node, _cache={}):
    key = id(sym)
    if _cache.get('key') != key:
        _cache.clear()
        _cache.update(key=key, nodes=_graph(sym)['nodes'])
    nodes = _cache['nodes']
    return [nodes[i[0]]['name'] for i in node['inputs'] if nodes[i[0]]['op'] == 'null']
