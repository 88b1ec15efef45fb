#!/usr/bin/env python
"""Score a checkpoint (the project's or a released CRU-Net file) on a validation RecordIO file.

    python score.py --model CRU-Net-56-ATx14-32x4d --epoch 0 --data-val val.rec
    python score.py --model runs/crunet56/crunet56 --epoch 90 --data-val val.rec --gpus 0,1 --batch-size 64
    python score.py --model CRU-Net-116-places365 --epoch 0 --data-val places_val.rec --crops 10
    python score.py --model CRU-Net-56-ATx14-32x4d --epoch 0 --data-val val.rec \\
        --image-shape 3,320,320 --resize-val 352            # mean-max pooling (larger than 224)
    python score.py --model PREFIX --epoch 0 --network crunet --num-layers 56 ...
                                                           # params bound to the project's symbol

Prints top-1 and top-5 error and images/s; ``--json FILE`` also writes them as JSON.
Preprocessing: shorter side to ``--resize-val`` (bicubic), centre crop ``--image-shape``,
``(pixel - rgb_mean) / rgb_std * scale``. ``--crops 10`` scores the 4 corners + centre of the
resized image and their mirrors, softmax averaged. ``--pooling auto`` (the default) uses
mean-max pooling -- 0.5 x (global average + global max) before the classifier -- when
``--image-shape`` is larger than the training crop (``--train-shape``).

Flags not given default to the values the training run recorded in ``PREFIX-args.json``
(image shape, RGB mean/std, scale, resize) when there is one, else to the released models'
preprocessing (3,224,224; 124,117,104; 0.0167; 256). Errors are one line, exit status 2.
"""
import argparse
import json
import logging
import sys

from .. import perf
perf.configure()  # OpenMP threads = physical cores, before MXNet reads them (bench/FINDINGS.md)

import mxnet as mx  # noqa: E402

from . import ArgParser, add_model_args  # noqa: E402
from .. import evaluate as ev  # noqa: E402
from ..data.checks import check_labels, inspect_recordio  # noqa: E402
from ..data.flags import add_data_args, add_data_aug_args, check_args, data_args, triple  # noqa: E402
from ..data.iterators import get_val_iter  # noqa: E402
from ..devices import get_contexts, parse_gpus  # noqa: E402
from ..errors import CLIError, cli_main  # noqa: E402
from ..files import atomic_write_text  # noqa: E402
from symbols import ChoiceError  # noqa: E402
from symbols.blocks import parse_shape  # noqa: E402
from symbols.checkpoint import CheckpointError, check_params, deploy_symbol, load_checkpoint, num_classes_of  # noqa: E402
from symbols.preprocess import training_args  # noqa: E402

#: data flags of common.data that score.py takes (defaults: those of common.data)
DATA_FLAGS = ('data_val', 'data_nthreads', 'image_shape', 'rgb_mean', 'rgb_std', 'scale', 'data_check',
              'resize_val', 'inter_method')
#: flags whose default comes from PREFIX-args.json when the checkpoint has one
FROM_TRAINING = ('image_shape', 'rgb_mean', 'rgb_std', 'scale', 'resize_val', 'inter_method')


def _data_defaults():
    p = argparse.ArgumentParser(add_help=False)
    add_data_args(p)
    add_data_aug_args(p)
    return {a.dest: a for a in p._actions if a.dest in DATA_FLAGS}


def build_parser():
    parser = ArgParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group('Model')
    g.add_argument('--model', required=True, help='checkpoint prefix: PREFIX-symbol.json + PREFIX-%%04d.params')
    g.add_argument('--epoch', type=int, default=0, help='checkpoint epoch (the released files: 0)')
    add_model_args(parser, title='Network (optional: bind the params to symbols.get_symbol(NETWORK, ...) '
                                 'instead of the file\'s symbol; classes default to those of the params)')
    g = parser.add_argument_group('Data', 'unset flags: PREFIX-args.json of the training run, else the '
                                          'released models\' preprocessing')
    for dest, action in _data_defaults().items():
        if dest == 'data_val':
            g.add_argument(*action.option_strings, default=None,
                           help='validation RecordIO file (.rec) to score, its index (.idx) beside it '
                                '(required unless --image)')
            g.add_argument('--image', nargs='+', metavar='FILE', default=None,
                           help='classify these image files instead: top-5 classes with their names '
                                '(crunet/classify.py)')
            g.add_argument('--synset', metavar='FILE', default=None,
                           help='with --image: class names, one per line (default: synset.txt beside the model)')
            continue
        g.add_argument(*action.option_strings, type=action.type, choices=action.choices, default=None,
                       help='%s (default %s)' % (action.help.replace('%', '%%'), action.default))
    g.add_argument('--batch-size', type=int, default=32, help='images per batch (10 crops each with --crops 10)')
    # --crops 10 decodes in this process (one thread): --data-nthreads only serves the centre crop
    g.add_argument('--max-images', type=int, default=None, help='score only the first N images')
    g = parser.add_argument_group('Evaluation')
    g.add_argument('--crops', type=int, default=1, choices=(1, 10),
                   help='1: centre crop; 10: 4 corners + centre, mirrored, softmax averaged')
    g.add_argument('--pooling', default='auto', choices=ev.POOLINGS,
                   help='auto: mean-max when --image-shape exceeds the training crop, else avg')
    g.add_argument('--train-shape', default=None,
                   help='training crop C,H,W for --pooling auto (default: PREFIX-args.json, else 3,224,224)')
    g.add_argument('--gpus', default='', help="GPU ids, e.g. '0,1' (empty: CPU)")
    g.add_argument('--json', default=None, help='also write the result as JSON to this file')
    g.add_argument('--disp-batches', type=int, default=20, help='progress every N batches (0: none)')
    return parser


def resolve(args):
    """Fill unset data flags from PREFIX-args.json (symbols.preprocess.training_args), then the
    data flags' defaults."""
    trained = training_args(args.model)
    defaults = _data_defaults()
    for dest in DATA_FLAGS:
        if getattr(args, dest) is None:
            value = trained.get(dest) if dest in FROM_TRAINING else None
            setattr(args, dest, value if value is not None else defaults[dest].default)
    if args.train_shape is None:
        args.train_shape = trained.get('image_shape') or '3,224,224'
    return args


def data_flags(args):
    """The namespace the data iterators read (:func:`crunet.data.flags.data_args`), from the
    resolved score flags."""
    return data_args(batch_size=args.batch_size, **{dest: getattr(args, dest) for dest in DATA_FLAGS})


def choose_pooling(pooling, image_shape, train_shape):
    """``'avg'`` or ``'mean-max'`` (``auto``: mean-max when the input exceeds the training crop)."""
    if pooling != 'auto':
        return pooling
    _, h, w = parse_shape(image_shape)
    _, th, tw = parse_shape(train_shape)
    return 'mean-max' if (h > th or w > tw) else 'avg'


def score(args, log=ev.stderr_log):
    """Run the evaluation described by the parsed ``args``; returns the result dict."""
    resolve(args)
    parse_gpus(args.gpus)       # CUDA build, libraries, driver, GPU architecture: before any work
    if args.batch_size < 1:
        raise CLIError('--batch-size must be at least 1')
    if args.max_images is not None and args.max_images < 1:
        raise CLIError('--max-images must be at least 1 (leave it out to score every image), not %d' % args.max_images)
    if args.disp_batches < 0:
        raise CLIError('--disp-batches must be 0 (no progress lines) or more, not %d' % args.disp_batches)
    data = data_flags(args)
    check_args(data, training=False)         # flag values and combinations, before any file is read
    if args.network is None and any(getattr(args, f) is not None for f in ('num_layers', 'setting', 'num_classes')):
        raise CLIError('--num-layers/--setting/--num-classes need --network')
    image_shape = parse_shape(args.image_shape)
    kw = {}
    if args.network is not None:
        kw = {k: getattr(args, k) for k in ('num_layers', 'setting', 'num_classes') if getattr(args, k) is not None}
        kw['network'] = args.network
    sym, arg_params, aux_params = load_checkpoint(args.model, args.epoch, image_shape=args.train_shape, **kw)
    num_classes = num_classes_of(arg_params)
    pooling = choose_pooling(args.pooling, args.image_shape, args.train_shape)
    deploy = deploy_symbol(sym, pooling=pooling)
    contexts = get_contexts(args.gpus)
    batch_shape = (args.batch_size * args.crops,) + image_shape
    check_params(deploy, arg_params, aux_params, batch_shape)

    # both paths resize every image: every one must decode (checked once per file, cached), and
    # every label must be a class of the model
    info = inspect_recordio(args.data_val, data.data_check, decode_all=True)
    check_labels(info, args.data_val, num_classes, "the model's %d classes" % num_classes)
    num_records = info.num_records
    total = num_records if args.max_images is None else min(num_records, args.max_images)
    if args.crops == 1:
        data.num_classes = num_classes
        batches = ev.centre_crop_batches(get_val_iter(data), args.max_images)
    else:
        batches = ev.ten_crop_batches(args.data_val, args.image_shape, args.batch_size, resize=args.resize_val,
                                      mean=triple(args.rgb_mean, '--rgb-mean'),
                                      std=triple(args.rgb_std, '--rgb-std'), scale=args.scale,
                                      inter_method=args.inter_method, max_images=args.max_images)
    predictor = ev.Predictor(deploy, arg_params, aux_params, batch_shape, contexts, check=False)
    log('scoring %s epoch %d on %s: %d images, %s, %s pooling, %s, batch %d, %s'
        % (args.model, args.epoch, args.data_val, total, 'centre crop' if args.crops == 1 else '10 crops',
           pooling, 'x'.join(map(str, image_shape)), args.batch_size, ','.join(map(str, contexts))))
    res = ev.evaluate(predictor, batches, crops=args.crops, total=total, disp_batches=args.disp_batches, log=log)
    res.update(model=args.model, epoch=args.epoch, network=args.network, data_val=args.data_val,
               crops=args.crops, pooling=pooling, image_shape=args.image_shape, resize_val=args.resize_val,
               rgb_mean=args.rgb_mean, rgb_std=args.rgb_std, scale=args.scale, batch_size=args.batch_size,
               num_classes=num_classes, devices=[str(c) for c in contexts])
    return res


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.image or not args.data_val:              # image files: crunet.classify
        from .. import classify
        if not args.image:
            raise CLIError('--data-val FILE.rec is required (or --image FILE ... to classify image files)')
        return classify.main(args)
    res = score(args)
    print('top-1 error %.2f%%  top-5 error %.2f%%  (%d images, %.1f images/s, %s, %s pooling)'
          % (100 * res['top1_error'], 100 * res['top5_error'], res['images'], res['images_per_sec'],
             'centre crop' if res['crops'] == 1 else '10 crops', res['pooling']))
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=1, sort_keys=True) + '\n')
    return res


def run(argv=None):
    """``main`` under the project's exit-code convention (:mod:`crunet.errors`)."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    cli_main(main, argv, user_errors=(CheckpointError, ChoiceError, ValueError))
    return 0


if __name__ == '__main__':
    sys.exit(run())
