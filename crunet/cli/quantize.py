"""``crunet-export quantize`` (also ``python -m symbols.export quantize``): an int8 checkpoint for
CPU scoring (:mod:`crunet.quantize`, :mod:`symbols.quantize`)."""
import os

from symbols.quantize import CALIB_MODES, QuantizeError

from ..quantize import (DEFAULT_BATCH_SIZE, DEFAULT_CALIB_BATCHES, DEFAULT_MIN_AGREEMENT, compare_checkpoints,
                        quantize_checkpoint)

__all__ = ['add_arguments', 'command']


def add_arguments(p):
    """The flags of ``crunet-export quantize`` on the (sub)parser ``p``."""
    p.add_argument('--model', required=True, help='checkpoint prefix: PREFIX-symbol.json, PREFIX-%%04d.params')
    p.add_argument('--epoch', type=int, default=0, help='checkpoint epoch (released files: 0)')
    p.add_argument('--calib-dataset', required=True, help='RecordIO file (.rec, .idx beside it) of calibration images')
    p.add_argument('--calib-mode', default='naive', choices=CALIB_MODES,
                   help='naive: min/max of each layer (default); entropy: KL-divergence thresholds')
    p.add_argument('--num-calib-batches', type=int, default=DEFAULT_CALIB_BATCHES,
                   help='calibration batches (default %d)' % DEFAULT_CALIB_BATCHES)
    p.add_argument('--batch-size', type=int, default=DEFAULT_BATCH_SIZE,
                   help='images per calibration batch (default %d)' % DEFAULT_BATCH_SIZE)
    p.add_argument('--exclude', default='', help='more layers to keep in fp32, comma-separated node names (grouped '
                                                 'convolutions with 1 < num_group < channels and the classifier '
                                                 'always are)')
    p.add_argument('--check-dataset', default=None,
                   help='afterwards, score fp32 and int8 on every image of this RecordIO file and print '
                        'both top-1 accuracies and how often their top-1 classes agree')
    p.add_argument('--data-nthreads', type=int, default=None, help='decoding threads (default: as crunet-score)')
    p.add_argument('--min-agreement', type=float, default=DEFAULT_MIN_AGREEMENT,
                   help='refuse to write the int8 model when its top-1 class agrees with fp32 on fewer than '
                        'this fraction of the calibration images (default %g)' % DEFAULT_MIN_AGREEMENT)
    p.add_argument('--force', action='store_true', help='write the int8 model whatever its agreement')
    p.add_argument('--out', required=True, help='output prefix: QPREFIX-symbol.json, QPREFIX-0000.params, '
                                                'QPREFIX-args.json')
    return p


def command(args, out=print):
    """Run the parsed ``quantize`` command; returns 0. Bad input raises ``QuantizeError``,
    ``CheckpointError`` or ``DataError`` (exit 2 in the command line), MXNet failures
    ``MXNetError`` (exit 1)."""
    exclude = [n.strip() for n in args.exclude.split(',') if n.strip()]
    if args.check_dataset and not os.path.isfile(args.check_dataset):
        raise QuantizeError('--check-dataset: file not found: %s' % args.check_dataset)
    res = quantize_checkpoint(args.model, args.epoch, args.calib_dataset, args.out, calib_mode=args.calib_mode,
                              num_calib_batches=args.num_calib_batches, batch_size=args.batch_size,
                              exclude=exclude, data_nthreads=args.data_nthreads, min_agreement=args.min_agreement,
                              force=args.force, log=out)
    out('wrote %s, %s and %s' % (res['symbol'], res['params'], res['args']))
    out('int8 layers %d, fp32 layers %d (%s); calibrated on %d images (%s); top-1 agreement with fp32 on '
        'them %.2f%%' % (res['int8_layers'], res['fp32_layers'], ', '.join(res['excluded']) or 'none excluded',
                         res['calib_images'], res['calib_mode'], 100 * res['calib_agreement']))
    if args.check_dataset:
        c = compare_checkpoints(args.model, args.epoch, args.out, args.check_dataset, args.batch_size,
                                args.data_nthreads)
        out('%s: %d images, top-1 fp32 %.2f%%, int8 %.2f%%, top-1 agreement %.2f%%'
            % (args.check_dataset, c['images'], 100 * c['fp32_top1'], 100 * c['int8_top1'], 100 * c['agreement']))
    return 0
