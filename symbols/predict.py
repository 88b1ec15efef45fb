"""A forward of an inference graph on one or more devices, for scoring and for checking exports."""
import mxnet as mx
import numpy as np

from .checkpoint import check_params

__all__ = ['Predictor']


class Predictor(object):
    """``sym`` (an inference graph with input ``data``) bound for ``batch_shape`` on ``contexts``
    (the batch is split over them as Module does); ``predict(array)`` returns NumPy outputs."""

    def __init__(self, sym, arg_params, aux_params, batch_shape, contexts=None, check=True):
        contexts = contexts or [mx.cpu()]
        if check:
            check_params(sym, arg_params, aux_params, batch_shape)
        if batch_shape[0] < len(contexts):
            raise ValueError('batch of %d cannot be split over %d devices' % (batch_shape[0], len(contexts)))
        self.batch_shape = tuple(batch_shape)
        self.mod = mx.mod.Module(sym, data_names=['data'], label_names=None, context=contexts)
        self.mod.bind(data_shapes=[('data', self.batch_shape)], for_training=False)
        self.mod.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)

    def predict(self, data):
        """Outputs for ``data`` (NumPy or NDArray, at most the bound batch; padded inside)."""
        n = data.shape[0]
        if n > self.batch_shape[0]:
            raise ValueError('batch of %d larger than the bound %d' % (n, self.batch_shape[0]))
        if isinstance(data, np.ndarray):
            data = mx.nd.array(data, dtype='float32')
        if n < self.batch_shape[0]:
            pad = mx.nd.zeros((self.batch_shape[0] - n,) + self.batch_shape[1:], dtype=data.dtype)
            data = mx.nd.concat(data, pad, dim=0)
        self.mod.forward(mx.io.DataBatch([data]), is_train=False)
        return self.mod.get_outputs()[0].asnumpy()[:n]
