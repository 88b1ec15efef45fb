"""Every model of the zoo builds, infers shapes at its native size and trains on a small input."""
import mxnet as mx
import numpy as np
import pytest

from symbols import get_symbol, zoo

MODELS = list(zoo())


@pytest.mark.parametrize('label,network,kwargs', MODELS, ids=[m[0] for m in MODELS])
def test_builds_and_runs_forward_backward(label, network, kwargs):
    sym = get_symbol(network, **kwargs)
    classes = kwargs.get('num_classes', 1000)
    c, h, w = (int(v) for v in kwargs['image_shape'].split(','))
    _, out, _ = sym.infer_shape(data=(1, c, h, w))
    assert out == [(1, classes)]

    ex = sym.simple_bind(mx.cpu(), data=(2, 3, 32, 32), softmax_label=(2,))
    rng = np.random.RandomState(0)
    for name, arr in ex.arg_dict.items():
        if name == 'softmax_label':
            arr[:] = [1, classes - 1]
        elif name.endswith('gamma'):
            arr[:] = 1
        elif name.endswith('beta') or name.endswith('bias'):
            arr[:] = 0
        else:
            fan_in = np.prod(arr.shape[1:]) if arr.ndim > 1 else 1
            arr[:] = rng.normal(0, np.sqrt(2.0 / fan_in), arr.shape)
    prob = ex.forward(is_train=True)[0].asnumpy()
    assert prob.shape == (2, classes)
    np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-4)
    ex.backward()
    grads = {n: g.asnumpy() for n, g in ex.grad_dict.items() if g is not None}
    assert all(np.isfinite(g).all() for g in grads.values())
    assert np.abs(grads['data']).sum() > 0 and np.abs(grads['fc6_weight']).sum() > 0
    first_conv = [n for n in sym.list_arguments() if n.endswith('_weight')][0]
    assert np.abs(grads[first_conv]).sum() > 0
