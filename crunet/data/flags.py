"""The data and augmentation flags (defaults: the paper's recipe and ``symbols.preprocess``), their
values as a namespace for API users (:func:`data_args`), and :func:`check_args`, which checks
values and combinations and names the flag before any MXNet iterator is built."""
import argparse
import collections
import math

import numpy as np

from symbols.preprocess import INTERPOLATIONS, RELEASED, interpolation_code

from . import recordio
from .checks import DataError

__all__ = ['add_data_args', 'add_data_aug_args', 'RUN_FLAGS', 'data_args', 'check_args', 'triple', 'image_shape_of',
           'batch_size_of', 'index_of']


def _csv(values):
    return ','.join('%g' % v for v in values)


def add_data_args(parser):
    """Add the data flags to ``parser`` (an argparse parser); returns the argument group."""
    data = parser.add_argument_group('Data', 'the input images (RecordIO made by crunet-im2rec)')
    data.add_argument('--data-train', type=str, default=None,
                      help='training RecordIO file (.rec); its index: --data-train-idx, else the same path with .idx')
    data.add_argument('--data-val', type=str, default=None,
                      help='validation RecordIO file (.rec), index beside it (.idx); none: no validation')
    data.add_argument('--data-nthreads', type=int, default=4,
                      help='threads decoding and augmenting images, per iterator')
    data.add_argument('--image-shape', type=str, default=','.join(map(str, RELEASED.crop)),
                      help='channels,height,width of the network input; images are cropped/resized to it')
    data.add_argument('--rgb-mean', type=str, default=_csv(RELEASED.mean),
                      help='R,G,B mean subtracted from every pixel (the released CRU-Nets: 124,117,104)')
    data.add_argument('--rgb-std', type=str, default=_csv(RELEASED.std),
                      help='R,G,B standard deviations the mean-subtracted pixels are divided by')
    data.add_argument('--scale', type=float, default=RELEASED.scale,
                      help='factor applied after mean/std: input = (pixel - mean) / std * scale')
    data.add_argument('--num-examples', type=int, default=None,
                      help='images per epoch (ImageNet-1k: 1281167); default: the records of --data-train '
                           '(counted from its .idx), or 50 batches with --benchmark 1')
    data.add_argument('--data-check', type=str, default='sample', choices=['sample', 'full', 'none'],
                      help='validation of the .rec/.idx files before reading them: sample (every record '
                           'header; a sample of images decoded, or every image, once per file and cached, where '
                           'the pipeline resizes: validation, --aug-off 1, --random-resized-crop 0), full (decode '
                           'every image), none (files exist and the index parses; a resizing pipeline still '
                           'decodes every image once per file, as it could not survive one that does not decode)')
    return data


def add_data_aug_args(parser):
    """Add the augmentation flags (defaults: the CRU-Net paper's recipe); returns the group."""
    aug = parser.add_argument_group(
        'Image augmentations', 'training augmentation (defaults: the paper: random-resized crop 8-100 percent of '
        'the area, aspect 3/4-4/3, mirror, HSL noise 20/40/50); validation always resizes the shorter side to '
        '--resize-val and takes the centre crop')
    aug.add_argument('--random-resized-crop', type=int, default=1, choices=[0, 1],
                     help='1: crop a random area/aspect region and resize it to --image-shape; 0: resize the '
                          'shorter side to --resize-val and take a random --image-shape crop')
    aug.add_argument('--min-random-area', type=float, default=0.08,
                     help='smallest crop area, as a fraction of the image area (random-resized crop)')
    aug.add_argument('--max-random-area', type=float, default=1.0,
                     help='largest crop area, as a fraction of the image area (random-resized crop)')
    aug.add_argument('--min-random-aspect-ratio', type=float, default=0.75,
                     help='smallest crop aspect ratio width/height (random-resized crop)')
    aug.add_argument('--max-random-aspect-ratio', type=float, default=4.0 / 3,
                     help='largest crop aspect ratio width/height (random-resized crop; default 4/3)')
    aug.add_argument('--random-mirror', type=int, default=1, choices=[0, 1],
                     help='1: flip half of the training images left-right')
    aug.add_argument('--random-h', type=int, default=20,
                     help='hue noise: add a random value in [-H, H] to the H channel (HSL, OpenCV scale 0-180)')
    aug.add_argument('--random-s', type=int, default=40,
                     help='saturation noise: add a random value in [-S, S] to the S channel (HSL, 0-255)')
    aug.add_argument('--random-l', type=int, default=50,
                     help='lightness noise: add a random value in [-L, L] to the L channel (HSL, 0-255)')
    aug.add_argument('--resize-val', type=int, default=RELEASED.resize,
                     help='validation (and --aug-off training): resize the shorter side to this, then centre '
                          'crop --image-shape (0: no resize); an image smaller than the crop is upscaled to cover it')
    aug.add_argument('--inter-method', type=int, default=interpolation_code(RELEASED.interpolation),
                     choices=sorted(INTERPOLATIONS.values()),
                     help='interpolation of every resize: 1 bilinear, 2 bicubic (the released models), 3 area, '
                          '4 lanczos, 9 auto')
    aug.add_argument('--aug-off', type=int, default=0, choices=[0, 1],
                     help='1: no training augmentation at all: training images are prepared like validation '
                          'ones (resize, centre crop), still shuffled')
    return aug


# ============================================================================ flag values
#: flags of the training command (crunet.train.fit) the iterators read besides the data flags, with
#: the values :func:`data_args` gives them: the batch of this worker, the shuffle seed (None: a random
#: one), the output dtype, the number of classes the labels must fit (None: not checked) and the
#: logging interval of :func:`test_io`
RUN_FLAGS = collections.OrderedDict([('batch_size', 32), ('seed', None), ('dtype', 'float32'),
                                     ('num_classes', None), ('disp_batches', 20),
                                     ('data_train_idx', None), ('data_val_idx', None)])


def index_of(args, path):
    """The .idx of ``path``: --data-train-idx/--data-val-idx when given for it, else beside the .rec."""
    given = args.data_train_idx if path == args.data_train else args.data_val_idx if path == args.data_val else None
    return given or recordio.index_path(path)


def data_args(**overrides):
    """An ``argparse.Namespace`` holding every flag the iterators read: the defaults of
    :func:`add_data_args` and :func:`add_data_aug_args` (taken from the parser itself) and of
    :data:`RUN_FLAGS`, with ``overrides`` applied. For API users and tests; an override that
    names no flag is a ``TypeError`` (a typo never passes silently)."""
    p = argparse.ArgumentParser(add_help=False)
    add_data_args(p)
    add_data_aug_args(p)
    args = p.parse_args([])
    for k, v in RUN_FLAGS.items():
        setattr(args, k, v)
    for k, v in overrides.items():
        if not hasattr(args, k):
            raise TypeError('data_args() got an unknown flag %r; valid: %s' % (k, ', '.join(sorted(vars(args)))))
        setattr(args, k, v)
    return args


def triple(text, name):
    try:
        vals = [float(v) for v in str(text).split(',') if v.strip()]
    except ValueError:
        raise DataError('%s must be comma-separated numbers, not %r' % (name, text)) from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise DataError('%s needs 3 values (R,G,B), got %r' % (name, text))
    if not all(math.isfinite(v) for v in vals):
        raise DataError('%s must be finite numbers, not %r' % (name, text))
    return vals


def image_shape_of(args):
    shape = args.image_shape
    try:
        shape = tuple(int(v) for v in (shape.split(',') if isinstance(shape, str) else shape))
    except (TypeError, ValueError):
        raise DataError('--image-shape must be channels,height,width, not %r' % (shape,)) from None
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) <= 0:
        raise DataError('--image-shape must be 3,H,W (or 1,H,W) with positive sizes, not %r' % (args.image_shape,))
    return shape


def batch_size_of(args):
    bs = args.batch_size
    if not isinstance(bs, (int, np.integer)) or isinstance(bs, bool) or bs < 1:
        raise DataError('--batch-size must be a positive number of images, not %r' % (bs,))
    return int(bs)


def check_args(args, training=True):
    """Validate the values and combinations of the data and augmentation flags in ``args`` (what
    ImageRecordIter would otherwise fail on with a C++ message blaming the data, or take in
    silence); raises :class:`DataError` naming the flag. ``training=False``: only the flags the
    validation pipeline reads. Returns the image shape ``(C, H, W)``."""
    shape = image_shape_of(args)
    batch_size_of(args)
    mean = triple(args.rgb_mean, '--rgb-mean')
    std = triple(args.rgb_std, '--rgb-std')
    if min(std) <= 0:
        raise DataError('--rgb-std values must be positive, not %r' % (args.rgb_std,))
    if not (isinstance(args.scale, (int, float)) and math.isfinite(args.scale) and args.scale != 0):
        raise DataError('--scale must be a finite non-zero number, not %r' % (args.scale,))
    if args.data_nthreads is None or args.data_nthreads < 1:
        raise DataError('--data-nthreads must be at least 1, not %r' % (args.data_nthreads,))
    if args.resize_val is None or args.resize_val < 0:
        raise DataError('--resize-val must be 0 (no resize) or a positive size, not %r' % (args.resize_val,))
    if args.inter_method not in INTERPOLATIONS.values():
        raise DataError('--inter-method must be one of %s, not %r'
                        % (', '.join(map(str, sorted(INTERPOLATIONS.values()))), args.inter_method))
    if args.data_check not in ('sample', 'full', 'none'):
        raise DataError('--data-check must be sample, full or none, not %r' % (args.data_check,))
    if (args.dtype or 'float32') not in ('float32', 'float16'):
        raise DataError('--dtype must be float32 or float16, not %r' % (args.dtype,))
    if shape[0] == 1:
        # ImageRecordIter decodes grayscale and normalises with the R values only
        if len(set(mean)) > 1 or len(set(std)) > 1:
            raise DataError('--image-shape %s is grayscale: give one value to --rgb-mean and --rgb-std '
                            '(now %s and %s; only the first would be used)'
                            % (args.image_shape, args.rgb_mean, args.rgb_std))
    if not training or args.aug_off:
        return shape
    if args.random_resized_crop:
        amin, amax = args.min_random_area, args.max_random_area
        rmin, rmax = args.min_random_aspect_ratio, args.max_random_aspect_ratio
        if not 0 < amin <= amax <= 1:
            raise DataError('need 0 < --min-random-area <= --max-random-area <= 1, got %g, %g' % (amin, amax))
        if not 0 < rmin <= rmax < math.inf:
            raise DataError('need 0 < --min-random-aspect-ratio <= --max-random-aspect-ratio, got %g, %g'
                            % (rmin, rmax))
    hsl = (args.random_h, args.random_s, args.random_l)
    if min(hsl) < 0:
        raise DataError('--random-h/-s/-l must not be negative, got %s' % (list(hsl),))
    if args.random_h > 180 or max(args.random_s, args.random_l) > 255:
        raise DataError('--random-h must be at most 180 and --random-s/-l at most 255, got %s' % (list(hsl),))
    if shape[0] == 1 and max(hsl) > 0:
        flags = ' '.join('--random-%s %d' % (c, v) for c, v in zip('hsl', hsl) if v)
        raise DataError('--image-shape %s is grayscale and cannot take colour (HSL) noise: %s; set them to 0'
                        % (args.image_shape, flags))
    return shape
