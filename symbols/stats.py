"""Parameter counts, multiply-adds and model sizes read off a Symbol by shape inference."""
import json

import numpy as np

from .blocks import parse_shape

_LABELS = ('softmax_label',)


def _arg_shapes(sym, image_shape):
    shape = (1,) + parse_shape(image_shape)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=shape)
    args = dict(zip(sym.list_arguments(), arg_shapes))
    aux = dict(zip(sym.list_auxiliary_states(), aux_shapes))
    return args, aux


def count_params(sym, image_shape='3,224,224'):
    """Trainable parameters of ``sym`` (a shared Variable counted once)."""
    args, _ = _arg_shapes(sym, image_shape)
    return int(sum(np.prod(s) for n, s in args.items() if n != 'data' and n not in _LABELS))


def count_aux(sym, image_shape='3,224,224'):
    """Auxiliary states (BatchNorm moving mean and variance)."""
    _, aux = _arg_shapes(sym, image_shape)
    return int(sum(np.prod(s) for s in aux.values()))


def model_size_mb(sym, image_shape='3,224,224', bytes_per_value=4):
    """Size of the float32 ``.params`` payload (parameters + auxiliary states) in MB (2**20 bytes)."""
    return (count_params(sym, image_shape) + count_aux(sym, image_shape)) * bytes_per_value / 2.0 ** 20


def count_macs(sym, image_shape='3,224,224'):
    """Multiply-adds of the Convolution and FullyConnected layers for one image."""
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(data=(1,) + parse_shape(image_shape))
    out_shape = dict(zip(internals.list_outputs(), out_shapes))
    args, _ = _arg_shapes(sym, image_shape)
    nodes = json.loads(sym.tojson())['nodes']
    total = 0
    for node in nodes:
        if node['op'] not in ('Convolution', 'FullyConnected'):
            continue
        weight = nodes[node['inputs'][1][0]]['name']
        w = args[weight]
        out = out_shape[node['name'] + '_output']
        total += int(np.prod(w)) * int(np.prod(out[2:]))  # (out, in/g, kh, kw) x output pixels
    return total
