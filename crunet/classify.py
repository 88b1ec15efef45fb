"""Classify image files with a checkpoint: the top-5 classes of each, with their names.

    crunet-score --model PREFIX --epoch N --image photo.jpg [more.jpg ...] [--synset synset.txt]
                                          (the command: crunet.cli.score)

Each image gets the preprocessing of scoring: decoded with OpenCV (RGB), its shorter side
resized to ``--resize-val`` with the checkpoint's interpolation (``--inter-method``), the centre
``--image-shape`` crop, ``(pixel - rgb_mean) / rgb_std * scale``; unset flags come from
``PREFIX-args.json`` of the training run, else the released models' preprocessing
(:mod:`symbols.preprocess`). Class names: ``--synset FILE`` (one per line, in class order), else
``synset.txt`` beside the checkpoint, else ``class N``. A file that cannot be read or decoded is
one line ``error: --image FILE: ...`` (exit status 2), before any model work.

In Python: :func:`load_image`, :func:`preprocess_image`, :func:`classify_images`.
"""
import cv2
import numpy as np

from symbols import preprocess as pp
from symbols.checkpoint import class_names

from . import evaluate as ev
from .data.recordio import captured_stderr
from .errors import DataError

__all__ = ['load_image', 'preprocess_image', 'classify_images', 'class_names', 'format_predictions']

def load_image(path):
    """``(H, W, 3)`` uint8 RGB array of an image file; :class:`crunet.errors.DataError` naming ``path`` when it
    cannot be read or is not an image OpenCV decodes (a damaged one included)."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as err:
        raise DataError('--image %s: cannot read it (%s)' % (path, err.strerror or err))
    if not data:
        raise DataError('--image %s: the file is empty' % path)
    with captured_stderr() as lines:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    messages = [ln.strip() for ln in lines if ln.strip()]
    damaged = [m for m in messages if 'warning' not in m.lower() or 'corrupt' in m.lower()
               or 'premature' in m.lower()]
    if img is None or img.ndim != 3 or min(img.shape[:2]) < 1:
        why = ': %s' % messages[0] if messages else ''
        raise DataError('--image %s: not an image file OpenCV can decode%s' % (path, why))
    if not damaged and data[:2] == b'\xff\xd8' and data.rfind(b'\xff\xd9') < data.rfind(b'\xff\xda'):
        damaged = ['Premature end of JPEG file: no end-of-image marker after the last scan']
    if damaged:
        raise DataError('--image %s: the image is damaged (%s)' % (path, damaged[0]))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _resize(img, h, w, interpolation):
    """MXNet's own resize (its OpenCV build, the one ImageRecordIter scores with: pip's OpenCV
    rounds some bicubic pixels differently)."""
    if (h, w) == img.shape[:2]:
        return img
    import mxnet as mx
    out = mx.image.imresize(mx.nd.array(img, dtype='uint8'), w, h, interp=pp.interpolation_code(interpolation))
    return out.asnumpy()


def preprocess_image(img, pre):
    """The network input ``(C, H, W)`` float32 of an ``(H, W, 3)`` uint8 RGB image under the
    :class:`symbols.preprocess.Preprocess` ``pre``, as ImageRecordIter prepares validation
    images: shorter side to ``pre.resize`` (0: kept), an image still smaller than the crop
    scaled up to cover it, centre crop, normalisation."""
    _, ch, cw = pre.crop
    h, w = img.shape[:2]
    if pre.resize:                                   # MXNet's integer arithmetic (image_aug_default.cc)
        h, w = (pre.resize * h // w, pre.resize) if h > w else (pre.resize, pre.resize * w // h)
        img = _resize(img, h, w, pre.interpolation)
    if h < ch or w < cw:
        f = max(ch / float(h), cw / float(w))
        h, w = max(ch, int(round(h * f))), max(cw, int(round(w * f)))
        img = _resize(img, h, w, pre.interpolation)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = img[y0:y0 + ch, x0:x0 + cw]
    return ev.normalise(crop[None], pre.mean, pre.std, pre.scale)[0]


def classify_images(sym, arg_params, aux_params, paths, pre, names=None, top_k=5, batch_size=32, contexts=None,
                    inputs=None):
    """``[{'image', 'top': [(class, probability, name)]}]`` for the image files ``paths``
    (``sym`` a scoring graph with a softmax output, see :func:`symbols.checkpoint.deploy_symbol`);
    ``inputs``: their :func:`preprocess_image` arrays when already computed."""
    if inputs is None:
        inputs = [preprocess_image(load_image(p), pre) for p in paths]      # every file checked first
    batch = max(1, min(int(batch_size), len(inputs)))
    predictor = ev.Predictor(sym, arg_params, aux_params, (batch,) + tuple(pre.crop), contexts)
    results = []
    for start in range(0, len(inputs), batch):
        probs = predictor.predict(np.stack(inputs[start:start + batch]))
        for path, p in zip(paths[start:start + batch], probs):
            order = np.argsort(-p, kind='stable')[:top_k]
            results.append({'image': path, 'top': [(int(c), float(p[c]), names[c] if names else None)
                                                    for c in order]})
    return results


def format_predictions(results):
    """Lines to print: the file, then one line per class ``rank  probability  class N  name``."""
    lines = []
    for res in results:
        lines.append(res['image'])
        for rank, (cls, prob, name) in enumerate(res['top'], 1):
            lines.append('  %d  %6.2f%%  class %-5d %s' % (rank, 100 * prob, cls, name or ''))
    return [ln.rstrip() for ln in lines]
