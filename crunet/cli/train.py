#!/usr/bin/env python
"""Train a model of the zoo (CRU-Net, ResNeXt, ResNet, ShaResNet) on RecordIO image files.

    python train_imagenet.py                       # the embedded demo: a CIFAR-size CRU-Net on
                                                   # the bundled handwritten digits, CPU, ~2 min
    python train_imagenet.py --network crunet --num-layers 56 --gpus 0,1,2,3 \\
        --data-train train.rec --data-val val.rec --model-prefix runs/crunet56/crunet56
    python train_imagenet.py ... --resume          # continue from the latest complete checkpoint
    python tools/launch.py -n 4 -s 4 --launcher ssh -H hosts \\
        python train_imagenet.py ... --kv-store dist_sync

Without ``--data-train`` (and without ``--benchmark 1``) the bundled demo set is packed under
``--data-dir`` if needed and a CRU-Net-22 (``--setting cifar``) is trained on it at 32x32; every
flag still overrides the demo's defaults. ``python train_imagenet.py --help`` lists the flags.
"""
import argparse
import logging
import os
import sys

import symbols

from .. import perf
from ..args import ArgParser
from ..errors import CLIError, cli_main
from ..isa import GROUPED_CONV_FLAG_CHOICES, grouped_conv_for
from ..log import setup_logging

# MXNet is imported by run(), after crunet.perf.configure(); the data and training modules,
# which import MXNet, by the functions that use them

#: the embedded demo: a CIFAR-size CRU-Net on the digits; any flag given overrides these
DEMO_DEFAULTS = dict(
    network='crunet', num_layers=22, setting='cifar', num_classes=10, image_shape='3,32,32',
    batch_size=32, num_epochs=4, lr=0.1, wd=5e-4, lr_policy='cosine', warmup_epochs=0.25,
    model_prefix=os.path.join('runs', 'demo', 'crunet'), data_nthreads=2, disp_batches=10,
    rgb_mean='128,128,128', rgb_std='1,1,1', scale=1.0 / 64,
    # digits must not be mirrored; mild crops, no colour noise on grey images
    random_resized_crop=1, min_random_area=0.7, max_random_area=1.0,
    min_random_aspect_ratio=0.85, max_random_aspect_ratio=1.0 / 0.85,
    random_mirror=0, random_h=0, random_s=0, random_l=0, resize_val=32,
)
DEMO_IMAGE_SIZE = 32


def build_parser():
    from ..data import flags as dflags
    from ..train import flags
    parser = ArgParser(description='Train a CRU-Net / ResNeXt / ResNet / ShaResNet on RecordIO images; '
                                   'without --data-train: the embedded digits demo.',
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = dflags.add_data_args(parser)
    g.add_argument('--data-train-idx', type=str, default=None,
                   help='index (.idx) of --data-train; default: beside the .rec (same path, .idx)')
    g.add_argument('--data-val-idx', type=str, default=None,
                   help='index (.idx) of --data-val; default: beside the .rec (same path, .idx)')
    dflags.add_data_aug_args(parser)
    flags.add_fit_args(parser)
    parser.add_argument('--data-dir', type=str, default=os.path.join('runs', 'demo', 'data'),
                        help='demo only: where the bundled digits set is packed (once)')
    parser.add_argument('--grouped-conv', choices=GROUPED_CONV_FLAG_CHOICES, default='auto',
                        help='how grouped 3x3 convolutions are computed in training: auto (this machine\'s '
                             'choice: blockdiag16 on AVX-512 CPUs, blockdiag8 on other CPUs, plain on GPUs), '
                             'autotune (the fastest of the three measured once on this machine), '
                             'plain, or blockdiag8/blockdiag16 (neighbouring groups merged to a multiple of 8/16 '
                             'channels with a block-diagonal weight: oneDNN\'s blocked kernels; same parameters, '
                             'outputs and gradients); the checkpoint always stores the plain graph')
    return parser


def parse_args(argv=None):
    """Parse ``argv``; returns ``(args, demo)``. With no --data-train (and no --benchmark) the
    demo's defaults apply to every flag not given."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    demo = not pre.data_train and not pre.benchmark
    if demo:
        if pre.data_val:
            raise CLIError('--data-val %s given without --data-train' % pre.data_val)
        parser.set_defaults(**DEMO_DEFAULTS)
    args = parser.parse_args(argv)
    if args.num_layers is None:
        args.num_layers = _default_depth(args.network)
    if not demo and args.model_prefix is None:
        tag = '%s-%s' % (args.network, args.num_layers)
        args.model_prefix = os.path.join('runs', tag, tag)
    return args, demo


def _default_depth(network):
    return symbols.default_num_layers(network) if network in symbols.NETWORKS else None


def build_symbol(args, grouped_conv='plain', dtype='float32'):
    """The network of ``--network/--num-layers/--setting/--num-classes/--image-shape``, in ``dtype``,
    grouped convolutions computed as ``grouped_conv`` says (``symbols.blocks.GROUPED_CONV_CHOICES``).
    The defaults give the graph every checkpoint stores (plain, float32)."""
    given = {'setting': args.setting} if args.setting is not None else {}
    try:
        return symbols.get_symbol(args.network, num_classes=args.num_classes, num_layers=args.num_layers,
                                  image_shape=args.image_shape, dtype=dtype, grouped_conv=grouped_conv,
                                  **given)
    except symbols.ChoiceError as exc:
        raise CLIError('--network/--num-layers/--setting: %s' % exc)
    except ValueError as exc:
        raise CLIError('--image-shape %s: %s' % (args.image_shape, exc))


def check_index_flags(args):
    """--data-train-idx/--data-val-idx need the .rec they index."""
    for idx_flag, rec_flag in (('data_train_idx', 'data_train'), ('data_val_idx', 'data_val')):
        if getattr(args, idx_flag) and not getattr(args, rec_flag):
            raise CLIError('--%s %s given without --%s' % (idx_flag.replace('_', '-'), getattr(args, idx_flag),
                                                           rec_flag.replace('_', '-')))


def prepare_demo_data(args):
    from ..data.demo import prepare_demo
    info = prepare_demo(args.data_dir, image_size=DEMO_IMAGE_SIZE,
                        log=lambda msg: logging.info('demo: %s', msg))
    args.data_train, args.data_val = info['train'], info['val']
    args.num_examples = info['num_train']
    logging.info('Demo: %d training and %d validation digits (%s, %s)', info['num_train'], info['num_val'],
                 info['train'], info['val'])
    return info


def main(argv=None):
    from ..data import iterators
    from ..train import fit, flags, recipe
    args, demo = parse_args(argv)
    flags.check_args(args)
    check_index_flags(args)
    sym = build_symbol(args)            # unknown network/depth/setting: fail before any data work
    setup_logging()
    if demo:
        logging.info('No --data-train: the embedded demo (CRU-Net-22 cifar preset on the bundled digits; '
                     'python train_imagenet.py --help for real data)')
        prepare_demo_data(args)
    if not args.benchmark:
        for flag in ('data_train', 'data_val', 'data_train_idx', 'data_val_idx'):
            path = getattr(args, flag)
            if path and not os.path.isfile(path):
                raise CLIError('--%s %s: no such file' % (flag.replace('_', '-'), path))
    if args.grouped_conv.startswith('blockdiag') and (args.gpus or os.environ.get('MXNET_MKLDNN_ENABLED') == '0'):
        raise CLIError('--grouped-conv %s is a oneDNN (CPU) training graph; %s use --grouped-conv auto or plain'
                       % (args.grouped_conv, 'on GPUs' if args.gpus else 'with MXNET_MKLDNN_ENABLED=0'))
    grouped_conv = grouped_conv_for(args.grouped_conv, gpus=bool(args.gpus))
    logging.info('grouped convolutions in training: %s (--grouped-conv %s)', grouped_conv, args.grouped_conv)
    train_sym = build_symbol(args, grouped_conv, args.dtype)
    if args.no_wd:                      # the training graph only: PREFIX-symbol.json stays plain
        train_sym = recipe.without_weight_decay(train_sym)
        logging.info('--no-wd: no weight decay on %d BatchNorm gamma/beta and bias parameters',
                     len(recipe.no_wd_names(train_sym)))
    result = fit.fit(args, train_sym, iterators.get_rec_iter, save_network=sym)
    return result


def run(argv=None):
    """``main`` under the project's exit-code convention (:mod:`crunet.errors`), with the speed
    settings of :func:`crunet.perf.configure` applied before MXNet is imported;
    ``crunet-train convert-states ...`` runs :mod:`crunet.train.convert`."""
    perf.configure()  # OpenMP threads = physical cores, before MXNet reads them (bench/FINDINGS.md)
    import mxnet  # noqa: F401  (ps-lite servers and schedulers stop inside this import)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['convert-states']:
        from ..train import convert
        return convert.run(argv[1:])
    from symbols.checkpoint import CheckpointError
    cli_main(main, argv, user_errors=(symbols.ChoiceError, CheckpointError))
    return 0


if __name__ == '__main__':
    sys.exit(run())
