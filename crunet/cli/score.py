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
import os
import sys

from symbols import ChoiceError

from .. import perf
from ..args import ArgParser, add_model_args, network_kwargs
from ..errors import CLIError, cli_main
from ..files import atomic_write_text

# MXNet is imported by the functions below, after run() has applied crunet.perf.configure()


def build_parser():
    from .. import evaluate as ev
    parser = ArgParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group('Model')
    g.add_argument('--model', required=True, help='checkpoint prefix: PREFIX-symbol.json + PREFIX-%%04d.params')
    g.add_argument('--epoch', type=int, default=0, help='checkpoint epoch (the released files: 0)')
    add_model_args(parser, title='Network (optional: bind the params to symbols.get_symbol(NETWORK, ...) '
                                 'instead of the file\'s symbol; classes default to those of the params)')
    g = parser.add_argument_group('Data', 'unset flags: PREFIX-args.json of the training run, else the '
                                          'released models\' preprocessing')
    for dest, action in ev.data_defaults().items():
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
    g.add_argument('--pooling', default='auto', choices=ev.POOLING_FLAG_CHOICES,
                   help='auto: mean-max when --image-shape exceeds the training crop, else avg')
    g.add_argument('--train-shape', default=None,
                   help='training crop C,H,W for --pooling auto (default: PREFIX-args.json, else 3,224,224)')
    g.add_argument('--gpus', default='', help="GPU ids, e.g. '0,1' (empty: CPU)")
    g.add_argument('--json', default=None, help='also write the result as JSON to this file')
    g.add_argument('--disp-batches', type=int, default=20, help='progress every N batches (0: none)')
    return parser


def score(args, log=None):
    """Run the evaluation described by the parsed ``args``; returns the result dict. Progress
    lines go to ``log`` (default: stderr)."""
    from symbols.blocks import parse_shape
    from symbols.checkpoint import check_params, deploy_symbol, load_checkpoint, num_classes_of
    from .. import evaluate as ev
    from ..data.checks import check_labels, inspect_recordio
    from ..data.flags import check_args, triple
    from ..data.iterators import get_val_iter
    from ..devices import get_contexts, parse_gpus
    log = log or ev.stderr_log
    ev.resolve(args)
    parse_gpus(args.gpus)       # CUDA build, libraries, driver, GPU architecture: before any work
    if args.batch_size < 1:
        raise CLIError('--batch-size must be at least 1')
    if args.max_images is not None and args.max_images < 1:
        raise CLIError('--max-images must be at least 1 (leave it out to score every image), not %d' % args.max_images)
    if args.disp_batches < 0:
        raise CLIError('--disp-batches must be 0 (no progress lines) or more, not %d' % args.disp_batches)
    data = ev.data_flags(args)
    check_args(data, training=False)         # flag values and combinations, before any file is read
    kw = network_kwargs(args)
    image_shape = parse_shape(args.image_shape)
    sym, arg_params, aux_params = load_checkpoint(args.model, args.epoch, image_shape=args.train_shape, **kw)
    num_classes = num_classes_of(arg_params)
    pooling = ev.choose_pooling(args.pooling, args.image_shape, args.train_shape)
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


def classify(args):
    """``crunet-score --image FILE ...`` (:mod:`crunet.classify`): ``args`` parsed by :func:`build_parser`."""
    from symbols import preprocess as pp
    from symbols.checkpoint import class_names, deploy_symbol, load_checkpoint, num_classes_of
    from .. import evaluate as ev
    from ..classify import classify_images, format_predictions, load_image, preprocess_image
    from ..devices import get_contexts
    if args.crops != 1:
        raise CLIError('--crops 10 scores a --data-val file; --image classifies the centre crop')
    if args.batch_size < 1:
        raise CLIError('--batch-size must be at least 1')
    if args.synset is not None and not os.path.isfile(args.synset):
        raise CLIError('--synset %s: no such file' % args.synset)
    for path in args.image:
        if not os.path.isfile(path):
            raise CLIError('--image %s: no such file' % path)
    ev.resolve(args)
    pre = pp.from_training_args(vars(args))
    kw = network_kwargs(args)
    images = list(args.image)
    inputs = [preprocess_image(load_image(p), pre) for p in images]     # bad files before the model loads
    sym, arg_params, aux_params = load_checkpoint(args.model, args.epoch, image_shape=args.train_shape, **kw)
    names = class_names(args.model, num_classes_of(arg_params), args.synset)
    deploy = deploy_symbol(sym, pooling=ev.choose_pooling(args.pooling, args.image_shape, args.train_shape))
    results = classify_images(deploy, arg_params, aux_params, images, pre, names, batch_size=args.batch_size,
                              contexts=get_contexts(args.gpus), inputs=inputs)
    print('\n'.join(format_predictions(results)))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1) + '\n')
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.image or not args.data_val:              # image files: crunet.classify
        if not args.image:
            raise CLIError('--data-val FILE.rec is required (or --image FILE ... to classify image files)')
        return classify(args)
    res = score(args)
    print('top-1 error %.2f%%  top-5 error %.2f%%  (%d images, %.1f images/s, %s, %s pooling)'
          % (100 * res['top1_error'], 100 * res['top5_error'], res['images'], res['images_per_sec'],
             'centre crop' if res['crops'] == 1 else '10 crops', res['pooling']))
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=1, sort_keys=True) + '\n')
    return res


def run(argv=None):
    """``main`` under the project's exit-code convention (:mod:`crunet.errors`), with the speed
    settings of :func:`crunet.perf.configure` applied before MXNet is imported."""
    perf.configure()  # OpenMP threads = physical cores, before MXNet reads them (bench/FINDINGS.md)
    from symbols.checkpoint import CheckpointError
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    cli_main(main, argv, user_errors=(CheckpointError, ChoiceError, ValueError))
    return 0


if __name__ == '__main__':
    sys.exit(run())
