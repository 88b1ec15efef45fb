"""Preprocessing that belongs to a model's weights, as data (the way a model config travels with its
weights): what the pixels must look like before ``data``.

``(pixel_rgb - mean) / std * scale``, the image's shorter side resized to ``resize`` with
``interpolation``, then the centre ``crop`` (C, H, W). :data:`RELEASED` is the preprocessing of the
released CRU-Net checkpoints; every default of the iterators, of ``crunet-score`` and of the
exports comes from here.
"""
import json
import os
from collections import namedtuple

__all__ = ['Preprocess', 'RELEASED', 'DEMO', 'INTERPOLATIONS', 'interpolation_code', 'from_training_args',
           'training_args', 'of_checkpoint', 'as_metadata']

#: OpenCV / MXNet ``inter_method`` codes by name
INTERPOLATIONS = {'bilinear': 1, 'bicubic': 2, 'area': 3, 'lanczos': 4, 'auto': 9}

Preprocess = namedtuple('Preprocess', 'mean std scale resize crop interpolation')


def interpolation_code(name):
    """MXNet's ``inter_method`` for an interpolation name (``'bicubic'`` -> 2)."""
    if name not in INTERPOLATIONS:
        raise ValueError('unknown interpolation %r; valid choices: %s' % (name, ', '.join(INTERPOLATIONS)))
    return INTERPOLATIONS[name]


#: the released CRU-Net models: RGB mean 124,117,104, x0.0167, bicubic, shorter side 256, centre 224
RELEASED = Preprocess(mean=(124.0, 117.0, 104.0), std=(1.0, 1.0, 1.0), scale=0.0167, resize=256,
                      crop=(3, 224, 224), interpolation='bicubic')

#: the embedded demo (CIFAR-size CRU-Net-22 on the 32x32 digits)
DEMO = Preprocess(mean=(128.0, 128.0, 128.0), std=(1.0, 1.0, 1.0), scale=1.0 / 64, resize=32,
                  crop=(3, 32, 32), interpolation='bicubic')


def _triple(text):
    vals = [float(v) for v in str(text).split(',') if v.strip()]
    return tuple(vals * 3 if len(vals) == 1 else vals)


def from_training_args(args, default=RELEASED):
    """The :class:`Preprocess` a training run recorded (its ``PREFIX-args.json`` as a dict: keys
    ``rgb_mean``, ``rgb_std``, ``scale``, ``resize_val``, ``image_shape``, ``inter_method``); keys
    that are missing keep ``default``'s values."""
    codes = {v: k for k, v in INTERPOLATIONS.items()}
    fields = default._asdict()
    if args.get('rgb_mean') is not None:
        fields['mean'] = _triple(args['rgb_mean'])
    if args.get('rgb_std') is not None:
        fields['std'] = _triple(args['rgb_std'])
    if args.get('scale') is not None:
        fields['scale'] = float(args['scale'])
    if args.get('resize_val') is not None:
        fields['resize'] = int(args['resize_val'])
    if args.get('image_shape') is not None:
        fields['crop'] = tuple(int(v) for v in str(args['image_shape']).split(','))
    if args.get('inter_method') is not None:
        fields['interpolation'] = codes.get(int(args['inter_method']), fields['interpolation'])
    return Preprocess(**fields)


def training_args(prefix):
    """The flags a training run recorded in ``PREFIX-args.json`` (empty when there is none); a file
    that is there but is not a JSON object is a ``ValueError`` naming it (never guessed around)."""
    path = prefix + '-args.json'
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding='utf-8') as f:
            found = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError('%s: not the JSON file of a training run (%s); move it away to use the '
                         'released models\' preprocessing' % (path, type(exc).__name__))
    if not isinstance(found, dict):
        raise ValueError('%s: expected a JSON object of flags, found %s' % (path, type(found).__name__))
    return found


def of_checkpoint(prefix, default=RELEASED):
    """The :class:`Preprocess` of checkpoint ``prefix``: what its training run recorded in
    ``PREFIX-args.json``, ``default`` (the released models') for what it did not."""
    return from_training_args(training_args(prefix), default)


def as_metadata(pre):
    """``{key: str}`` of a :class:`Preprocess` for a model file's metadata (ONNX
    ``metadata_props``): ``mean``/``std`` as ``R,G,B``, ``scale``, ``resize`` (shorter side),
    ``crop`` as ``C,H,W``, ``interpolation`` (a name), ``normalization`` (the formula)."""
    def csv(values):
        return ','.join('%g' % v for v in values)
    return {'mean': csv(pre.mean), 'std': csv(pre.std), 'scale': '%g' % pre.scale, 'resize': str(int(pre.resize)),
            'crop': ','.join(str(int(v)) for v in pre.crop), 'interpolation': str(pre.interpolation),
            'normalization': '(pixel_rgb - mean) / std * scale', 'channel_order': 'RGB', 'layout': 'NCHW'}
