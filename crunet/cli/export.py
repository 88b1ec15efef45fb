"""Export commands: released symbol -> stock symbol, inference graph, ONNX; each verified.

    python -m symbols.export convert SRC-symbol.json DST-symbol.json
        Rewrite a released CRU-Net -symbol.json (MXNet 0.9, ChannelwiseConvolution) as a
        symbol stock MXNet 1.9 loads (depthwise Convolution). The .params file needs no change.

    python -m symbols.export inference --model PREFIX --epoch N --out OUT [--output softmax|logits]
                                       [--image-shape 3,224,224] [--mean-max] [--raw-rgb-input]
        OUT-symbol.json + OUT-0000.params: the graph without label input, ending in a softmax
        named "softmax" (or the fc6 logits); loaded back with plain mx.sym.load / mx.nd.load
        and compared with the checkpoint on a random input.

    python -m symbols.export onnx --model PREFIX --epoch N --out FILE.onnx [--output logits|softmax]
                                  [--image-shape 3,224,224] [--batch-size 1] [--dynamic-batch] [--mean-max]
                                  [--raw-rgb-input]
        ONNX (opset 13) through mx.onnx.export_model, run in onnxruntime on a random input and
        compared with MXNet (--tolerance, default 1e-4 absolute, scaled by the output range when
        that exceeds 1). The file's metadata_props carry the preprocessing the weights expect
        (mean, std, scale, resize, crop, interpolation: PREFIX-args.json of the training run,
        else the released models') and, when known, the class names.

    python -m symbols.export quantize --model PREFIX --epoch N --calib-dataset FILE.rec --out QPREFIX
                                      [--calib-mode naive|entropy] [--num-calib-batches 10] [--batch-size 32]
        int8 QPREFIX-symbol.json + QPREFIX-0000.params (+ QPREFIX-args.json, the preprocessing) for
        CPU scoring with crunet-score, through MXNet's oneDNN quantization calibrated on FILE.rec;
        which layers stay fp32 and why: symbols/quantize.py (the checkpoint's own graph: no --network).

Every command takes --network/--num-layers/--setting/--num-classes to bind the params to the
project's symbol instead of the file's one. --synset FILE names the classes (one per line;
default: synset.txt beside the checkpoint, when there is one); the names are written as
synset.txt beside the exported files. --raw-rgb-input builds the normalisation into the graph:
its input is then RGB pixels as floats 0-255 (resized and centre-cropped, NCHW), and the
metadata says so (input_format=raw_rgb_0_255). The output appears only once verified (nothing
half-written is left behind). Errors are one line: exit status 2 for a bad flag or input file,
1 for a failed verification or a missing package; the verified maximum absolute difference is
printed.

In Python: :func:`export_inference`, :func:`export_onnx`, :func:`verify_onnx`,
:func:`symbols.checkpoint.convert_symbol_json`.
"""

import argparse
import os
import sys

import mxnet as mx

from symbols.blocks import parse_shape
from symbols.checkpoint import CheckpointError, convert_symbol_json
from symbols.export import ExportError, export_inference, export_onnx, require_onnx

from . import quantize
from ..args import ArgParser, add_model_args, network_kwargs
from ..errors import CLIError, EXIT_INTERNAL, EXIT_USER, UserError, error_line
from ..files import output_folder

__all__ = ['main', 'run']


def _add_model_args(p):
    p.add_argument('--model', required=True, help='checkpoint prefix: PREFIX-symbol.json, PREFIX-%%04d.params')
    p.add_argument('--epoch', type=int, default=0, help='checkpoint epoch (released files: 0)')
    p.add_argument('--out', required=True, help='output prefix (inference) or .onnx file (onnx)')
    p.add_argument('--image-shape', default='3,224,224', help='C,H,W of the input')
    p.add_argument('--mean-max', action='store_true', help='mean-max pooling (inputs larger than the training crop)')
    p.add_argument('--tolerance', type=float, default=1e-4, help='largest accepted absolute difference')
    p.add_argument('--no-verify', action='store_true', help='skip the comparison with MXNet')
    add_model_args(p, title='Network (optional: bind the params to symbols.get_symbol(NETWORK, ...) instead of '
                            'the file\'s symbol; classes default to those of the params)')
    p.add_argument('--synset', metavar='FILE', help='class names, one per line in class order (default: '
                                                    'synset.txt beside the checkpoint); written as synset.txt '
                                                    'beside the output')
    p.add_argument('--raw-rgb-input', action='store_true',
                   help="build the checkpoint's normalisation into the graph: the input is RGB pixels 0-255")


def main(argv=None):
    # MXNet logs "Subgraph backend MKLDNN is activated" on stderr at every bind of the checks
    os.environ.setdefault('MXNET_SUBGRAPH_VERBOSE', '0')
    parser = ArgParser(prog='crunet-export', description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('convert', help='released -symbol.json -> stock MXNet -symbol.json')
    p.add_argument('src', help='released PREFIX-symbol.json')
    p.add_argument('dst', help='output -symbol.json')
    p = sub.add_parser('inference', help='inference graph (no label) JSON + params, verified')
    _add_model_args(p)
    p.add_argument('--out-epoch', type=int, default=0)
    p.add_argument('--output', choices=('softmax', 'logits'), default='softmax')
    p = sub.add_parser('onnx', help='ONNX file, verified in onnxruntime')
    _add_model_args(p)
    p.add_argument('--output', choices=('softmax', 'logits'), default='logits')
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--dynamic-batch', action='store_true', help='any batch size (first dimension symbolic)')
    p = sub.add_parser('quantize', help='int8 checkpoint for CPU scoring (oneDNN, calibrated)')
    quantize.add_arguments(p)
    args = parser.parse_args(argv)
    try:
        if args.command == 'convert':
            output_folder(args.dst, 'output')
            converted = convert_symbol_json(args.src, args.dst)
            print('wrote %s (%d ChannelwiseConvolution -> depthwise Convolution)' % (args.dst, len(converted)))
            return 0
        if args.command == 'quantize':
            return quantize.command(args)
        _check_flags(args)
        common = dict(image_shape=args.image_shape, mean_max=args.mean_max, verify=not args.no_verify,
                      tolerance=args.tolerance, output=args.output, raw_rgb=args.raw_rgb_input,
                      synset=args.synset, **network_kwargs(args))
        if args.command == 'onnx':
            require_onnx(runtime=not args.no_verify)      # before anything is written
        output_folder(args.out, '--out')
        if args.command == 'inference':
            res = export_inference(args.model, args.epoch, args.out, out_epoch=args.out_epoch, **common)
            print('wrote %s and %s' % (res['symbol'], res['params']))
        else:
            res = export_onnx(args.model, args.epoch, args.out, batch_size=args.batch_size,
                              dynamic_batch=args.dynamic_batch, **common)
            print('wrote %s (opset %d)' % (res['onnx'], res['opset']))
        if res.get('synset'):
            print('wrote %s' % res['synset'])
        if res['max_abs_diff'] is not None:
            print('verified: max abs difference %.3g' % res['max_abs_diff'])
        return 0
    except (ExportError, OSError, mx.base.MXNetError) as err:      # the export itself, the machine
        return _error(err, EXIT_INTERNAL)
    except (CheckpointError, UserError, ValueError) as err:          # a flag or an input file
        return _error(err, EXIT_USER)


def _error(err, code):
    msg = error_line(err, limit=2000) if type(err).__name__ == 'MXNetError' else ' '.join(str(err).split())
    print('error: %s' % (msg or err.__class__.__name__), file=sys.stderr)
    return code


def _check_flags(args):
    """One-line errors for values argparse lets through."""
    try:
        channels = parse_shape(args.image_shape)[0]
    except ValueError:
        raise CLIError("--image-shape must be C,H,W with positive sizes, e.g. 3,224,224, not %r" % args.image_shape)
    if args.raw_rgb_input and channels != 3:
        raise CLIError('--raw-rgb-input needs 3 (RGB) input channels, --image-shape has %d' % channels)
    if getattr(args, 'batch_size', 1) < 1:
        raise CLIError('--batch-size must be at least 1, not %d' % args.batch_size)
    if getattr(args, 'out_epoch', 0) < 0:
        raise CLIError('--out-epoch must be 0 or more, not %d' % args.out_epoch)
    if args.epoch < 0:
        raise CLIError('--epoch must be 0 or more, not %d' % args.epoch)
    if not args.tolerance > 0:
        raise CLIError('--tolerance must be a positive number, not %r' % args.tolerance)
    if args.synset is not None and not os.path.isfile(args.synset):
        raise CLIError('--synset %s: no such file' % args.synset)


def run(argv=None):
    """The ``crunet-export`` command: :func:`main`'s exit status."""
    return main(argv)


if __name__ == '__main__':
    sys.exit(run())
