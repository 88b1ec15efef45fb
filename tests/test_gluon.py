"""Gluon face of a checkpoint: same outputs as the Module; fine-tuning
with a new class count keeps one Parameter per shared variable, and every unit sees its update."""
import mxnet as mx
import numpy as np
import pytest

import score_helpers as H
from symbols import gluon_model as zoo_gluon_model
from symbols.checkpoint import ParamMismatchError, load_checkpoint
from symbols.gluon import gluon_model, save_gluon_checkpoint

SHARED = ('conv4_x__x_1x1_bases[dim3]_weight', 'conv4_x__x_3x3_bases[dim21]_weight')


@pytest.fixture(scope='module')
def released():
    return H.released_checkpoint(56)


def data(seed, n=2, size=64):
    return np.random.RandomState(seed).uniform(-2, 2, (n, 3, size, size)).astype(np.float32)


def test_gluon_equals_module(released):
    sym, arg, aux = load_checkpoint(released, 0)
    x = data(0)
    want = H.forward(H.logits_of(sym), arg, aux, x)[0]
    net = zoo_gluon_model(released, 0)
    names = list(net.collect_params().keys())
    assert len(names) == len(set(names)) == 161 + 110
    assert all(names.count(s) == 1 for s in SHARED)
    got_imperative = net(mx.nd.array(x)).asnumpy()
    net.hybridize(static_alloc=True)
    got = net(mx.nd.array(x)).asnumpy()
    assert np.abs(got - want).max() < 1e-4 and np.abs(got_imperative - want).max() < 1e-4


def test_finetune_step_new_classes_shared_parameter(released, tmp_path):
    net = gluon_model(released, 0, num_classes=10)
    net.hybridize()
    params = net.collect_params()
    assert params['fc6_weight'].shape == (10, 2048) and params['fc6_bias'].shape == (10,)
    shared = [params[s] for s in SHARED]
    before = [p.data().asnumpy().copy() for p in shared]
    head_before = params['conv2_x__1_c1x1-a__conv_weight'].data().asnumpy().copy()
    trainer = mx.gluon.Trainer(params, 'sgd', {'learning_rate': 0.01, 'momentum': 0.0})
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    x, y = mx.nd.array(data(1)), mx.nd.array([3, 7])
    with mx.autograd.record():
        loss = loss_fn(net(x), y)
    loss.backward()
    grads = [p.grad().asnumpy().copy() for p in shared]
    trainer.step(2)
    # still one Parameter each, moved once by lr * its (summed over the 6 units) gradient
    names = list(net.collect_params().keys())
    assert all(names.count(s) == 1 for s in SHARED)
    for p, b, g in zip(shared, before, grads):
        assert np.abs(g).max() > 0
        np.testing.assert_allclose(p.data().asnumpy(), b - 0.01 / 2 * g, rtol=1e-5, atol=1e-7)
    assert np.abs(params['conv2_x__1_c1x1-a__conv_weight'].data().asnumpy() - head_before).max() > 0
    # written back as a checkpoint: the symbol reads the updated shared arrays in every unit
    prefix = str(tmp_path / 'finetuned')
    save_gluon_checkpoint(net, prefix, 1)
    sym, arg, aux = load_checkpoint(prefix, 1)
    assert sym.list_arguments().count(SHARED[1]) == 1 and arg['fc6_weight'].shape == (10, 2048)
    x2 = data(2)
    module_out = H.forward(H.logits_of(sym), arg, aux, x2)[0]
    gluon_out = net(mx.nd.array(x2)).asnumpy()
    assert np.abs(gluon_out).max() < 1e3
    assert np.abs(module_out - gluon_out).max() < 1e-4
    again = gluon_model(prefix, 1)
    assert np.abs(again(mx.nd.array(x2)).asnumpy() - gluon_out).max() < 1e-4


def test_gluon_model_rejects_mismatched_params(released):
    with pytest.raises(ParamMismatchError, match='^missing parameter'):
        gluon_model(released, 0, network='crunet', num_layers=116)
