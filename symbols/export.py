"""Export commands: released symbol -> stock symbol, inference graph, ONNX; each verified.

    python -m symbols.export convert SRC-symbol.json DST-symbol.json
        Rewrite a released CRU-Net -symbol.json (MXNet 0.9, ChannelwiseConvolution) as a
        symbol stock MXNet 1.9 loads (depthwise Convolution). The .params file needs no change.

    python -m symbols.export inference --model PREFIX --epoch N --out OUT [--output softmax|logits]
                                       [--image-shape 3,224,224] [--mean-max]
        OUT-symbol.json + OUT-0000.params: the graph without label input, ending in a softmax
        named "softmax" (or the fc6 logits); loaded back with plain mx.sym.load / mx.nd.load
        and compared with the checkpoint on a random input.

    python -m symbols.export onnx --model PREFIX --epoch N --out FILE.onnx [--output logits|softmax]
                                  [--image-shape 3,224,224] [--batch-size 1] [--dynamic-batch] [--mean-max]
        ONNX (opset 13) through mx.onnx.export_model, run in onnxruntime on a random input and
        compared with MXNet (--tolerance, default 1e-4 absolute, scaled by the output range when
        that exceeds 1).

Every command takes --network/--num-layers/--setting/--num-classes to bind the params to the
project's symbol instead of the file's one. Errors are one line, exit status 1; the verified
maximum absolute difference is printed.

In Python: :func:`export_inference`, :func:`export_onnx`, :func:`verify_onnx`,
:func:`symbols.checkpoint.convert_symbol_json`.
"""
import argparse
import contextlib
import os
import sys

import mxnet as mx
import numpy as np

from .blocks import parse_shape
from .checkpoint import (CheckpointError, convert_symbol_json, inference_symbol, load_checkpoint,
                         mean_max_symbol, params_path, save_checkpoint, symbol_path)

__all__ = ['ExportError', 'export_inference', 'export_onnx', 'verify_onnx', 'verify_inference',
           'deploy_graph', 'ONNX_OPSET', 'main']

#: mx2onnx (MXNet 1.9.1) has translations up to opset 13; onnx 1.14 would stamp opset 19 on
#: them, which onnxruntime 1.15 does not run (no Reshape-19 kernel).
ONNX_OPSET = 13


class ExportError(ValueError):
    """An export whose result does not reproduce MXNet's outputs, or cannot be written."""


def deploy_graph(sym, output='softmax', mean_max=False):
    """The inference graph of a training symbol: no label input, output ``softmax`` (a softmax
    named ``softmax``) or ``logits`` (fc6); ``mean_max`` for inputs larger than the training crop."""
    if output not in ('softmax', 'logits'):
        raise ValueError("output must be 'softmax' or 'logits', got %r" % output)
    if mean_max:
        sym = mean_max_symbol(sym)
    return inference_symbol(sym, softmax=output == 'softmax')


def _full_shape(image_shape, batch_size=1):
    return (int(batch_size),) + parse_shape(image_shape or '3,224,224')


def _random_input(shape, seed=0):
    return np.random.RandomState(seed).uniform(-2, 2, shape).astype(np.float32)


def _mxnet_forward(sym, arg_params, aux_params, data):
    mod = mx.mod.Module(sym, data_names=['data'], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[('data', data.shape)], for_training=False)
    mod.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)
    mod.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=False)
    return mod.get_outputs()[0].asnumpy()


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
                     mean_max=False, verify=True, tolerance=1e-4, **load_kwargs):
    """Write the inference graph of checkpoint ``prefix``/``epoch`` as ``out_prefix``: returns
    ``{'symbol', 'params', 'max_abs_diff'}`` (the difference from the checkpoint on a random
    input, ``None`` without ``verify``)."""
    sym, arg_params, aux_params = load_checkpoint(prefix, epoch, image_shape=image_shape, **load_kwargs)
    deploy = deploy_graph(sym, output, mean_max)
    spath, ppath = save_checkpoint(out_prefix, out_epoch, deploy, arg_params, aux_params)
    diff = None
    if verify:
        data = _random_input(_full_shape(image_shape))
        diff = verify_inference(out_prefix, out_epoch, deploy, arg_params, aux_params, data, tolerance)
    return {'symbol': spath, 'params': ppath, 'max_abs_diff': diff}


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


def _fix_onnx_model(path, opset=ONNX_OPSET):
    """Stamp the opset mx2onnx actually translated for and keep weights out of the graph inputs."""
    import onnx
    model = onnx.load(path)
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
                mean_max=False, dynamic_batch=False, verify=True, tolerance=1e-4, **load_kwargs):
    """ONNX file of checkpoint ``prefix``/``epoch`` (input ``data`` of shape
    (batch_size, C, H, W), or any batch size with ``dynamic_batch``), verified in onnxruntime.
    Returns ``{'onnx', 'max_abs_diff', 'opset'}``."""
    sym, arg_params, aux_params = load_checkpoint(prefix, epoch, image_shape=image_shape, **load_kwargs)
    deploy = deploy_graph(sym, output, mean_max)
    shape = _full_shape(image_shape, batch_size)
    params = dict(arg_params)
    params.update(aux_params)
    folder = os.path.dirname(os.path.abspath(onnx_path))
    os.makedirs(folder, exist_ok=True)
    kwargs = {}
    if dynamic_batch:
        kwargs = dict(dynamic=True, dynamic_input_shapes=[(None,) + shape[1:]])
    with _raw_onnx_tensors():
        mx.onnx.export_model(deploy, params, in_shapes=[shape], in_types=[np.float32],
                             onnx_file_path=onnx_path, **kwargs)
    _fix_onnx_model(onnx_path)
    diff = None
    if verify:
        check_shape = ((2,) + shape[1:]) if dynamic_batch else shape
        diff = verify_onnx(onnx_path, deploy, arg_params, aux_params, _random_input(check_shape), tolerance)
    return {'onnx': onnx_path, 'max_abs_diff': diff, 'opset': ONNX_OPSET}


# ----------------------------------------------------------------------------- command line
def _add_model_args(p):
    p.add_argument('--model', required=True, help='checkpoint prefix: PREFIX-symbol.json, PREFIX-%%04d.params')
    p.add_argument('--epoch', type=int, default=0, help='checkpoint epoch (released files: 0)')
    p.add_argument('--out', required=True, help='output prefix (inference) or .onnx file (onnx)')
    p.add_argument('--image-shape', default='3,224,224', help='C,H,W of the input')
    p.add_argument('--mean-max', action='store_true', help='mean-max pooling (inputs larger than the training crop)')
    p.add_argument('--tolerance', type=float, default=1e-4, help='largest accepted absolute difference')
    p.add_argument('--no-verify', action='store_true', help='skip the comparison with MXNet')
    p.add_argument('--network', help="bind the params to symbols.get_symbol(NETWORK, ...) instead of the file's symbol")
    p.add_argument('--num-layers', type=int, help='with --network')
    p.add_argument('--setting', help='with --network')
    p.add_argument('--num-classes', type=int, help='with --network (default: from the params)')


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
    parser = argparse.ArgumentParser(prog='python -m symbols.export', description=__doc__,
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
    args = parser.parse_args(argv)
    try:
        if args.command == 'convert':
            converted = convert_symbol_json(args.src, args.dst)
            print('wrote %s (%d ChannelwiseConvolution -> depthwise Convolution)' % (args.dst, len(converted)))
            return 0
        common = dict(image_shape=args.image_shape, mean_max=args.mean_max, verify=not args.no_verify,
                      tolerance=args.tolerance, output=args.output, **_load_kwargs(args))
        if args.command == 'inference':
            res = export_inference(args.model, args.epoch, args.out, out_epoch=args.out_epoch, **common)
            print('wrote %s and %s' % (res['symbol'], res['params']))
        else:
            res = export_onnx(args.model, args.epoch, args.out, batch_size=args.batch_size,
                              dynamic_batch=args.dynamic_batch, **common)
            print('wrote %s (opset %d)' % (res['onnx'], res['opset']))
        if res['max_abs_diff'] is not None:
            print('verified: max abs difference %.3g' % res['max_abs_diff'])
        return 0
    except (CheckpointError, ExportError, ValueError, OSError, mx.base.MXNetError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        print('error: %s' % msg, file=sys.stderr)
        return 1


def run(argv=None):
    """The ``crunet-export`` command: :func:`main`'s exit status."""
    return main(argv)


if __name__ == '__main__':
    sys.exit(run())
