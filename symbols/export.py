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
import contextlib
import json
import os
import sys

import mxnet as mx
import numpy as np

from crunet.cli import ArgParser, add_model_args
from crunet.errors import CLIError, EXIT_INTERNAL, EXIT_USER
from crunet.files import atomic_write_text, output_folder

from . import preprocess as pp
from . import quantize
from .blocks import parse_shape
from .checkpoint import (CheckpointError, convert_symbol_json, deploy_symbol, load_checkpoint, load_synset,
                         num_classes_of, params_path, save_checkpoint, symbol_path, synset_path)

__all__ = ['ExportError', 'MissingPackageError', 'export_inference', 'export_onnx', 'verify_onnx',
           'verify_inference', 'raw_rgb_graph', 'onnx_metadata', 'require_onnx', 'ONNX_OPSET',
           'ORT_INSTALL', 'main']

#: mx2onnx (MXNet 1.9.1) has translations up to opset 13; onnx 1.14 would stamp opset 19 on
#: them, which onnxruntime 1.15 does not run (no Reshape-19 kernel).
ONNX_OPSET = 13


class ExportError(ValueError):
    """An export whose result does not reproduce MXNet's outputs, or cannot be written."""


class MissingPackageError(ExportError):
    """A package the export needs (onnx, onnxruntime) is not installed; the message says how."""


#: onnxruntime for Python 3.11 starts at 1.15.0, whose metadata asks for numpy>=1.24.2, while
#: mxnet 1.9.1 needs numpy<1.24; 1.15.0 runs on numpy 1.23.5, installed without its dependencies
ORT_INSTALL = "pip install --no-deps onnxruntime==1.15.0 coloredlogs humanfriendly flatbuffers sympy 'mpmath<1.4'"


def require_onnx(runtime=True):
    """Raise :class:`MissingPackageError` (one line: how to install it) unless ``onnx`` (and with
    ``runtime`` onnxruntime, to verify the file) can be imported; checked before anything is written."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MissingPackageError("the ONNX export needs the onnx package: pip install 'onnx>=1.10,<1.15' "
                                  "'protobuf>=3.20,<4' (the project's [onnx] extra)")
    if runtime:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise MissingPackageError('verifying the ONNX file needs onnxruntime: %s (or pass --no-verify)'
                                      % ORT_INSTALL)


#: names of the constants of the normalisation built in by :func:`raw_rgb_graph`
RAW_MEAN, RAW_FACTOR = 'preprocess_rgb_mean', 'preprocess_rgb_factor'


def raw_rgb_graph(sym, pre):
    """``sym`` with the normalisation of the :class:`symbols.preprocess.Preprocess` ``pre`` in
    front: its input ``data`` takes RGB pixels as floats 0-255 (NCHW) and becomes
    ``(data - mean) * (scale / std)``. Returns ``(symbol, constants)``: the two (1, 3, 1, 1)
    arrays to add to the arguments."""
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    factor = (np.float32(pre.scale) / np.asarray(pre.std, np.float32)).reshape(1, 3, 1, 1)
    raw = mx.sym.var('data')
    norm = mx.sym.broadcast_mul(mx.sym.broadcast_sub(raw, mx.sym.var(RAW_MEAN, shape=mean.shape)),
                                mx.sym.var(RAW_FACTOR, shape=factor.shape), name='preprocess_normalize')
    return sym(data=norm), {RAW_MEAN: mx.nd.array(mean), RAW_FACTOR: mx.nd.array(factor.astype(np.float32))}


def _preprocess_for(prefix, image_shape):
    """The checkpoint's preprocessing, cropped to the exported input ``image_shape``."""
    pre = pp.of_checkpoint(prefix)
    crop = tuple(parse_shape(image_shape or '3,224,224'))
    return pre._replace(crop=crop, resize=max(int(pre.resize), min(crop[1:])) if pre.resize else 0)


def _class_names(prefix, synset, num_classes):
    """Class names from ``synset`` (a file; must fit ``num_classes``), else from ``synset.txt``
    beside the checkpoint when it has one, else ``None``."""
    if synset is not None:
        return load_synset(synset, num_classes)
    beside = synset_path(prefix)
    if os.path.isfile(beside):
        return load_synset(beside, num_classes)
    return None


def onnx_metadata(pre, raw_rgb=False, class_names=None):
    """The ``metadata_props`` of an exported ONNX file: the preprocessing (see
    :func:`symbols.preprocess.as_metadata`), ``input_format`` (``normalized``: apply it all;
    ``raw_rgb_0_255``: the graph normalises, resize and crop only), and ``class_names`` (a JSON
    list, in class order) when known."""
    meta = pp.as_metadata(pre)
    meta['input_format'] = 'raw_rgb_0_255' if raw_rgb else 'normalized'
    if class_names is not None:
        meta['class_names'] = json.dumps(list(class_names))
        meta['num_classes'] = str(len(class_names))
    return meta


def _remove(*paths):
    for path in paths:
        with contextlib.suppress(OSError):
            os.remove(path)


def _write_synset(out, class_names):
    if class_names is None:
        return None
    return atomic_write_text(synset_path(out), '\n'.join(class_names) + '\n')


def _full_shape(image_shape, batch_size=1):
    return (int(batch_size),) + parse_shape(image_shape or '3,224,224')


def _random_input(shape, seed=0, raw_rgb=False):
    low, high = (0, 255) if raw_rgb else (-2, 2)
    return np.random.RandomState(seed).uniform(low, high, shape).astype(np.float32)


def _mxnet_forward(sym, arg_params, aux_params, data):
    """Outputs of ``sym`` for the NumPy batch ``data`` on the CPU (crunet.evaluate.Predictor)."""
    from crunet.evaluate import Predictor
    return Predictor(sym, arg_params, aux_params, data.shape, check=False).predict(data)


def _tolerance(reference, tolerance):
    return tolerance * max(1.0, float(np.abs(reference).max()))


def verify_inference(out_prefix, epoch, reference_sym, arg_params, aux_params, data, tolerance=1e-4):
    """Load ``out_prefix`` with stock MXNet only and compare with ``reference_sym``: max abs diff."""
    sym = mx.sym.load(symbol_path(out_prefix))
    saved = mx.nd.load(params_path(out_prefix, epoch))
    args = {k[4:]: v for k, v in saved.items() if k.startswith('arg:')}
    auxs = {k[4:]: v for k, v in saved.items() if k.startswith('aux:')}
    if any(n.endswith('_label') for n in sym.list_arguments()):
        raise ExportError('%s: the inference graph still has a label input' % symbol_path(out_prefix))
    got = _mxnet_forward(sym, args, auxs, data)
    want = _mxnet_forward(reference_sym, arg_params, aux_params, data)
    diff = float(np.abs(got - want).max())
    if not diff <= _tolerance(want, tolerance):
        raise ExportError('%s: outputs differ from the checkpoint by %.3g' % (out_prefix, diff))
    return diff


def export_inference(prefix, epoch, out_prefix, out_epoch=0, image_shape=None, output='softmax',
                     mean_max=False, verify=True, tolerance=1e-4, raw_rgb=False, synset=None, **load_kwargs):
    """Write the inference graph of checkpoint ``prefix``/``epoch`` as ``out_prefix``: returns
    ``{'symbol', 'params', 'synset', 'max_abs_diff'}`` (the difference from the checkpoint on a
    random input, ``None`` without ``verify``). ``raw_rgb``: the normalisation of the checkpoint
    (:func:`symbols.preprocess.of_checkpoint`) built in (:func:`raw_rgb_graph`); ``synset``: a
    class-names file. The files appear only once verified."""
    output_folder(out_prefix, '--out')
    sym, arg_params, aux_params = load_checkpoint(prefix, epoch, image_shape=image_shape, **load_kwargs)
    class_names = _class_names(prefix, synset, num_classes_of(arg_params))
    deploy = deploy_symbol(sym, output, 'mean-max' if mean_max else 'avg')
    if raw_rgb:
        deploy, constants = raw_rgb_graph(deploy, _preprocess_for(prefix, image_shape))
        arg_params = dict(arg_params, **constants)
    tmp = out_prefix + '.tmp'
    spath, ppath = symbol_path(out_prefix), params_path(out_prefix, out_epoch)
    try:
        tmp_s, tmp_p = save_checkpoint(tmp, out_epoch, deploy, arg_params, aux_params)
        diff = None
        if verify:
            data = _random_input(_full_shape(image_shape), raw_rgb=raw_rgb)
            try:
                diff = verify_inference(tmp, out_epoch, deploy, arg_params, aux_params, data, tolerance)
            except ExportError as err:                 # name the output, not its temporary files
                raise ExportError(str(err).replace(tmp, out_prefix))
        os.replace(tmp_p, ppath)
        os.replace(tmp_s, spath)
    finally:
        _remove(symbol_path(tmp), params_path(tmp, out_epoch))
    return {'symbol': spath, 'params': ppath, 'synset': _write_synset(out_prefix, class_names),
            'max_abs_diff': diff}


@contextlib.contextmanager
def _raw_onnx_tensors():
    """Make mx2onnx store weights as raw bytes. It passes every weight to
    ``onnx.helper.make_tensor`` as a Python list, which the pure-Python protobuf of this
    environment serialises element by element (minutes for CRU-Net-56; seconds this way)."""
    import onnx
    import onnx.helper as helper
    raw_types = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
                 onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64}
    original = helper.make_tensor

    def make_tensor(name, data_type, dims, vals, raw=False):
        if not raw and data_type in raw_types and hasattr(vals, '__len__') and len(vals) > 16:
            data = np.asarray(vals, dtype=np.dtype(raw_types[data_type]).newbyteorder('<'))
            return original(name, data_type, dims, data.tobytes(), raw=True)
        return original(name, data_type, dims, vals, raw)

    helper.make_tensor = make_tensor
    try:
        yield
    finally:
        helper.make_tensor = original


def _fix_onnx_model(path, opset=ONNX_OPSET, metadata=None):
    """Stamp the opset mx2onnx actually translated for, keep weights out of the graph inputs and
    set ``metadata`` (``{key: str}``) as the model's ``metadata_props``."""
    import onnx
    model = onnx.load(path)
    if metadata:
        onnx.helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
    for imp in model.opset_import:
        if imp.domain in ('', 'ai.onnx'):
            imp.version = min(imp.version, opset)
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return model


def verify_onnx(onnx_path, sym, arg_params, aux_params, data, tolerance=1e-4):
    """Run ``onnx_path`` in onnxruntime on ``data`` and compare with MXNet's ``sym``: max abs diff."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(onnx_path, opts, providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: data})[0]
    want = _mxnet_forward(sym, arg_params, aux_params, data)
    if got.shape != want.shape:
        raise ExportError('%s: onnxruntime output shape %s, MXNet %s' % (onnx_path, got.shape, want.shape))
    diff = float(np.abs(got - want).max())
    if not diff <= _tolerance(want, tolerance):
        raise ExportError('%s: onnxruntime outputs differ from MXNet by %.3g' % (onnx_path, diff))
    return diff


def export_onnx(prefix, epoch, onnx_path, image_shape=None, batch_size=1, output='logits',
                mean_max=False, dynamic_batch=False, verify=True, tolerance=1e-4, raw_rgb=False, synset=None,
                **load_kwargs):
    """ONNX file of checkpoint ``prefix``/``epoch`` (input ``data`` of shape
    (batch_size, C, H, W), or any batch size with ``dynamic_batch``), verified in onnxruntime,
    its preprocessing and class names in ``metadata_props`` (:func:`onnx_metadata`); ``raw_rgb``
    and ``synset`` as for :func:`export_inference`. Returns ``{'onnx', 'synset', 'max_abs_diff',
    'opset', 'metadata'}``. The file appears only once verified."""
    if int(batch_size) < 1:
        raise ValueError('batch size must be at least 1, not %s' % batch_size)
    require_onnx(runtime=verify)
    output_folder(onnx_path, '--out')
    sym, arg_params, aux_params = load_checkpoint(prefix, epoch, image_shape=image_shape, **load_kwargs)
    class_names = _class_names(prefix, synset, num_classes_of(arg_params))
    deploy = deploy_symbol(sym, output, 'mean-max' if mean_max else 'avg')
    pre = _preprocess_for(prefix, image_shape)
    if raw_rgb:
        deploy, constants = raw_rgb_graph(deploy, pre)
        arg_params = dict(arg_params, **constants)
    shape = _full_shape(image_shape, batch_size)
    params = dict(arg_params)
    params.update(aux_params)
    kwargs = {}
    if dynamic_batch:
        kwargs = dict(dynamic=True, dynamic_input_shapes=[(None,) + shape[1:]])
    metadata = onnx_metadata(pre, raw_rgb, class_names)
    tmp = onnx_path + '.tmp'
    try:
        with _raw_onnx_tensors():
            mx.onnx.export_model(deploy, params, in_shapes=[shape], in_types=[np.float32],
                                 onnx_file_path=tmp, **kwargs)
        _fix_onnx_model(tmp, metadata=metadata)
        diff = None
        if verify:
            check_shape = ((2,) + shape[1:]) if dynamic_batch else shape
            try:
                diff = verify_onnx(tmp, deploy, arg_params, aux_params, _random_input(check_shape, raw_rgb=raw_rgb),
                                   tolerance)
            except ExportError as err:                 # name the output, not its temporary file
                raise ExportError(str(err).replace(tmp, onnx_path))
        os.replace(tmp, onnx_path)
    finally:
        _remove(tmp)
    return {'onnx': onnx_path, 'synset': _write_synset(onnx_path, class_names), 'max_abs_diff': diff,
            'opset': ONNX_OPSET, 'metadata': metadata}


# ----------------------------------------------------------------------------- command line
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


def _load_kwargs(args):
    if args.network is None:
        for flag in ('num_layers', 'setting', 'num_classes'):
            if getattr(args, flag) is not None:
                raise ValueError('--%s needs --network' % flag.replace('_', '-'))
        return {}
    kw = dict(network=args.network)
    for flag in ('num_layers', 'setting', 'num_classes'):
        if getattr(args, flag) is not None:
            kw[flag] = getattr(args, flag)
    return kw


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
                      synset=args.synset, **_load_kwargs(args))
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
    except (CheckpointError, CLIError, ValueError) as err:           # a flag or an input file
        return _error(err, EXIT_USER)


def _error(err, code):
    from crunet.errors import error_line
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
