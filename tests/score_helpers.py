"""Shared fixtures of the checkpoint / score / Gluon / ONNX tests (plain functions, memoised
per test session so that the large random checkpoints are written once).

``released_checkpoint(56)`` writes the project's CRU-Net-56 graph in the released format:
MXNet 0.9.x JSON (node attributes under ``"attr"``, ``mxnet_version`` 903) whose depthwise
convolutions are the authors' ``ChannelwiseConvolution``, with random weights.
"""
import atexit
import functools
import json
import shutil
import tempfile

import mxnet as mx
import numpy as np

from symbols import get_symbol

_ROOT = tempfile.mkdtemp(prefix='crunet-ckpt-tests-')
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def tmp_root():
    return _ROOT


def random_params(sym, data_shape=(1, 3, 224, 224), seed=0):
    """Random ``(arg_params, aux_params)`` of ``sym`` that keep activations in a sane range:
    He-normal convolutions, gamma in [0.5, 1.5], positive BN moving variances."""
    rng = np.random.RandomState(seed)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=data_shape)
    arg, aux = {}, {}
    for name, shape in zip(sym.list_arguments(), arg_shapes):
        if name == 'data' or name.endswith('_label'):
            continue
        if name.endswith('_gamma'):
            v = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(('_beta', '_bias')):
            v = rng.normal(0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            v = rng.normal(0, 1.0 / np.sqrt(fan_in), shape)
        arg[name] = mx.nd.array(v.astype(np.float32))
    for name, shape in zip(sym.list_auxiliary_states(), aux_shapes):
        v = rng.uniform(0.5, 2.0, shape) if name.endswith('_var') else rng.normal(0, 0.1, shape)
        aux[name] = mx.nd.array(v.astype(np.float32))
    return arg, aux


def released_json(sym):
    """``sym`` as the released files store it: MXNet 0.9 JSON with ChannelwiseConvolution."""
    graph = json.loads(sym.tojson())
    for node in graph['nodes']:
        if 'attrs' in node:
            node['attr'] = node.pop('attrs')
        attrs = node.get('attr', {})
        if node['op'] == 'Convolution' and attrs.get('num_group') == attrs.get('num_filter'):
            node['op'] = 'ChannelwiseConvolution'
    graph['attrs'] = {'mxnet_version': ['int', 903]}
    return json.dumps(graph, indent=2)


def save_params(path, arg, aux):
    blob = {'arg:' + k: v for k, v in arg.items()}
    blob.update({'aux:' + k: v for k, v in aux.items()})
    mx.nd.save(path, blob)


@functools.lru_cache(maxsize=None)
def released_checkpoint(num_layers=56, num_classes=1000, seed=0):
    """Prefix of a released-format CRU-Net checkpoint (epoch 0) with random weights."""
    sym = get_symbol('crunet', num_layers=num_layers, num_classes=num_classes)
    prefix = '%s/released-crunet%d-c%d' % (_ROOT, num_layers, num_classes)
    with open(prefix + '-symbol.json', 'w') as f:
        f.write(released_json(sym))
    arg, aux = random_params(sym, seed=seed)
    save_params(prefix + '-0000.params', arg, aux)
    return prefix


@functools.lru_cache(maxsize=None)
def project_checkpoint(network, num_classes=1000, seed=0, **kwargs):
    """Prefix of a checkpoint as the project writes it (``mx.model.save_checkpoint``)."""
    kwargs = dict(kwargs)
    image_shape = kwargs.get('image_shape', '3,224,224')
    sym = get_symbol(network, num_classes=num_classes, **kwargs)
    tag = '-'.join('%s%s' % kv for kv in sorted(kwargs.items())).replace(',', 'x')
    prefix = '%s/%s-c%d-%s' % (_ROOT, network, num_classes, tag)
    shape = (1,) + tuple(int(v) for v in image_shape.split(','))
    arg, aux = random_params(sym, shape, seed=seed)
    mx.model.save_checkpoint(prefix, 0, sym, arg, aux)
    return prefix


def forward(sym, arg, aux, data, outputs=None):
    """Outputs of ``sym`` (inference mode) for the NumPy batch ``data``."""
    ex = sym.simple_bind(mx.cpu(), data=data.shape, grad_req='null')
    for name, arr in ex.arg_dict.items():
        if name == 'data':
            arr[:] = data
        elif name in arg:
            arr[:] = arg[name]
    for name, arr in ex.aux_dict.items():
        arr[:] = aux[name]
    return [o.asnumpy() for o in ex.forward(is_train=False)]


def logits_of(sym):
    """The fc6 output (before SoftmaxOutput) of a project symbol."""
    return sym.get_internals()['fc6_output']


# ----------------------------------------------------------------------------- validation sets
def random_images(num, height, width, seed=0):
    """``num`` random RGB uint8 images ``(height, width, 3)`` with smooth structure (so that
    crops differ and predictions vary)."""
    rng = np.random.RandomState(seed)
    base = rng.randint(0, 256, size=(num, height // 4 + 1, width // 4 + 1, 3)).astype(np.float32)
    up = base.repeat(4, axis=1).repeat(4, axis=2)[:, :height, :width]
    noise = rng.randint(-30, 31, size=up.shape)
    return np.clip(up + noise, 0, 255).astype(np.uint8)


def write_rec(path, images, labels):
    """``path`` (.rec) + ``.idx`` of PNG records (lossless) with the given labels."""
    import io
    import os
    from PIL import Image
    idx = os.path.splitext(path)[0] + '.idx'
    writer = mx.recordio.MXIndexedRecordIO(idx, path, 'w')
    for i, (img, label) in enumerate(zip(images, labels)):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format='PNG')
        writer.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), i, 0), buf.getvalue()))
    writer.close()
    return path


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def normalise(images, mean=(124, 117, 104), scale=0.0167):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, as score.py / ImageRecordIter prepare them."""
    x = (images.astype(np.float32) - np.array(mean, np.float32)) * np.float32(scale)
    return x.transpose(0, 3, 1, 2).copy()


#: the scoring set: 10 images of 40x44 (shorter side 40 = the resize, so no resampling),
#: a CRU-Net-22 (cifar preset, 10 classes) "trained" at 32x32
SCORE_IMAGES, SCORE_H, SCORE_W, SCORE_CROP = 10, 40, 44, 32


@functools.lru_cache(maxsize=None)
def scoring_set():
    """A checkpoint and a validation .rec whose labels are the checkpoint's own centre-crop
    predictions (computed here with NumPy crops), with ``PREFIX-args.json`` as training writes it.

    fc6 is set to the centred, normalised pooled features of the 10 images, so that the
    random network predicts different classes for different images."""
    import os
    base = project_checkpoint('crunet', num_classes=10, num_layers=22, setting='cifar', image_shape='3,32,32')
    sym, arg, aux = mx.model.load_checkpoint(base, 0)
    images = random_images(SCORE_IMAGES, SCORE_H, SCORE_W, seed=3)
    y0, x0 = (SCORE_H - SCORE_CROP) // 2, (SCORE_W - SCORE_CROP) // 2
    centre = normalise(images[:, y0:y0 + SCORE_CROP, x0:x0 + SCORE_CROP])
    feats = forward(sym.get_internals()['flatten_output'], arg, aux, centre)[0]
    mean = feats.mean(axis=0)
    weight = feats - mean
    weight = 4 * weight / np.linalg.norm(weight, axis=1, keepdims=True)
    arg = dict(arg, fc6_weight=mx.nd.array(weight), fc6_bias=mx.nd.array(-weight.dot(mean)))
    prefix = os.path.join(_ROOT, 'scoring', 'crunet22')
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    mx.model.save_checkpoint(prefix, 0, sym, arg, aux)
    with open(prefix + '-args.json', 'w') as f:
        json.dump({'image_shape': '3,32,32', 'resize_val': SCORE_H, 'rgb_mean': '124,117,104',
                   'rgb_std': '1,1,1', 'scale': 0.0167, 'network': 'crunet'}, f)
    logits = forward(logits_of(sym), arg, aux, centre)[0]
    labels = logits.argmax(axis=1)
    rec = write_rec(os.path.join(_ROOT, 'scoring', 'val.rec'), images, labels)
    wrong = write_rec(os.path.join(_ROOT, 'scoring', 'val_wrong.rec'), images, (labels + 1) % 10)
    return dict(prefix=prefix, rec=rec, wrong_rec=wrong, images=images, labels=labels, logits=logits,
                sym=sym, arg=arg, aux=aux)
