"""Exports of a checkpoint: the inference graph (stock MXNet JSON + params) and ONNX, each
verified against MXNet before the file appears; ``crunet-export`` (:mod:`crunet.cli.export`) is
their command line, also run as ``python -m symbols.export``.

In Python: :func:`export_inference`, :func:`export_onnx`, :func:`verify_onnx`,
:func:`symbols.checkpoint.convert_symbol_json`.
"""
import contextlib
import json
import os
import sys

import mxnet as mx
import numpy as np

from . import preprocess as pp
from .blocks import parse_shape
from .checkpoint import (class_names as find_class_names, deploy_symbol, load_checkpoint, num_classes_of,
                         params_path, save_checkpoint, symbol_path, synset_path)
from .files import atomic_write_text
from .predict import Predictor

__all__ = ['ExportError', 'MissingPackageError', 'export_inference', 'export_onnx', 'verify_onnx',
           'verify_inference', 'raw_rgb_graph', 'onnx_metadata', 'require_onnx', 'ONNX_OPSET',
           'ORT_INSTALL']

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


def _batch_shape(image_shape, batch_size=1):
    return (int(batch_size),) + parse_shape(image_shape or '3,224,224')


def _random_input(shape, seed=0, raw_rgb=False):
    low, high = (0, 255) if raw_rgb else (-2, 2)
    return np.random.RandomState(seed).uniform(low, high, shape).astype(np.float32)


def _mxnet_forward(sym, arg_params, aux_params, data):
    """Outputs of ``sym`` for the NumPy batch ``data`` on the CPU (:class:`symbols.predict.Predictor`)."""
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
    sym, arg_params, aux_params = load_checkpoint(prefix, epoch, image_shape=image_shape, **load_kwargs)
    class_names = find_class_names(prefix, num_classes_of(arg_params), synset)
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
            data = _random_input(_batch_shape(image_shape), raw_rgb=raw_rgb)
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
    os.makedirs(os.path.dirname(os.path.abspath(onnx_path)), exist_ok=True)
    sym, arg_params, aux_params = load_checkpoint(prefix, epoch, image_shape=image_shape, **load_kwargs)
    class_names = find_class_names(prefix, num_classes_of(arg_params), synset)
    deploy = deploy_symbol(sym, output, 'mean-max' if mean_max else 'avg')
    pre = _preprocess_for(prefix, image_shape)
    if raw_rgb:
        deploy, constants = raw_rgb_graph(deploy, pre)
        arg_params = dict(arg_params, **constants)
    shape = _batch_shape(image_shape, batch_size)
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


if __name__ == '__main__':              # ``python -m symbols.export``: an entry point like the root scripts
    from crunet.cli.export import run
    sys.exit(run())
