"""Sharing is real: a shared Variable receives the sum of its users' gradients and is
updated once per step."""
import mxnet as mx
import numpy as np

from symbols.blocks import collective_unit, residual_unit, shared_variable

SHAPE = (2, 8, 8, 8)


def cru_stage(groups):
    """Three collective units (a down unit, two normal ones); unit i uses share group groups[i]."""
    x, caches = mx.sym.Variable('data'), {}
    for i, group in enumerate(groups):
        x = collective_unit(x, 'u%d' % (i + 1), width=6, out=12, stride=2 if i == 0 else 1,
                            proj=i == 0, group=group, cache=caches)
    return x


def bind(sym, values):
    ex = sym.simple_bind(mx.cpu(), data=SHAPE, grad_req='write')
    for name, arr in ex.arg_dict.items():
        arr[:] = values[name]
    return ex


def random_values(sym, seed):
    rng = np.random.RandomState(seed)
    arg_shapes, _, _ = sym.infer_shape(data=SHAPE)
    return {n: rng.uniform(0.5, 1.5, s) if n.endswith('gamma') else rng.normal(0, 0.3, s)
            for n, s in zip(sym.list_arguments(), arg_shapes)}


def test_shared_gradient_is_sum_of_untied_gradients():
    tied, untied = cru_stage(['g', 'g', 'g']), cru_stage(['g1', 'g2', 'g3'])
    assert tied.list_arguments().count('g_3x3_bases[dim21]_weight') == 1
    assert len(untied.list_arguments()) == len(tied.list_arguments()) + 4
    values = random_values(tied, 0)
    for k in (1, 2, 3):  # the untied copies start from the shared values
        for base in ('1x1_bases[dim3]', '3x3_bases[dim21]'):
            values['g%d_%s_weight' % (k, base)] = values['g_%s_weight' % base]
    ex_t, ex_u = bind(tied, values), bind(untied, values)
    head = np.random.RandomState(1).normal(size=ex_t.forward(is_train=True)[0].shape)
    ex_u.forward(is_train=True)
    np.testing.assert_allclose(ex_t.outputs[0].asnumpy(), ex_u.outputs[0].asnumpy(), rtol=1e-5, atol=1e-5)
    ex_t.backward(mx.nd.array(head))
    ex_u.backward(mx.nd.array(head))
    for base in ('1x1_bases[dim3]', '3x3_bases[dim21]'):
        shared = ex_t.grad_dict['g_%s_weight' % base].asnumpy()
        copies = [ex_u.grad_dict['g%d_%s_weight' % (k, base)].asnumpy() for k in (1, 2, 3)]
        assert all(np.abs(c).sum() > 0 for c in copies)  # every unit contributes
        np.testing.assert_allclose(shared, sum(copies), rtol=1e-4, atol=1e-5)
    # parameters that are not shared get identical gradients in both graphs
    np.testing.assert_allclose(ex_t.grad_dict['u2_c1x1-c__conv_weight'].asnumpy(),
                               ex_u.grad_dict['u2_c1x1-c__conv_weight'].asnumpy(), rtol=1e-4, atol=1e-6)


def test_training_step_moves_shared_variable_once():
    net = mx.sym.MakeLoss(mx.sym.sum(mx.sym.square(cru_stage(['g', 'g', 'g']))) / 100.0)
    values = random_values(net, 3)
    data = values.pop('data')
    # the gradient of one step, computed on its own
    ex = bind(net, dict(values, data=data))
    ex.forward(is_train=True)
    ex.backward()
    grad = ex.grad_dict['g_3x3_bases[dim21]_weight'].asnumpy().copy()
    assert np.abs(grad).max() > 0

    mod = mx.mod.Module(net, data_names=['data'], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[('data', SHAPE)])
    mod.init_params(arg_params={k: mx.nd.array(v) for k, v in values.items()}, aux_params=None,
                    allow_missing=False)
    lr = 0.5
    mod.init_optimizer(optimizer='sgd', optimizer_params=dict(learning_rate=lr, momentum=0.0, wd=0.0,
                                                              rescale_grad=1.0))
    before = values['g_3x3_bases[dim21]_weight']
    mod.forward_backward(mx.io.DataBatch([mx.nd.array(data)]))
    mod.update()
    after = mod.get_params()[0]['g_3x3_bases[dim21]_weight'].asnumpy()
    np.testing.assert_allclose(after, before - lr * grad, rtol=1e-4, atol=1e-6)
    assert not np.allclose(after, before - 3 * lr * grad, atol=1e-6)


def test_sharesnet_shared_3x3_gradient_sums():
    """ShaResNet's tied 3x3 (residual_unit with weight3) gets the sum of its users' gradients."""
    def stage(tie):
        x, cache = mx.sym.Variable('data'), {}
        for i in range(3):
            w3 = shared_variable(cache, 's_weight' if tie else 's%d_weight' % i) if i else None
            x = residual_unit(x, 'u%d' % i, 4, 8, 1, 1, proj=i == 0, preact=False, weight3=w3)
        return x
    tied, untied = stage(True), stage(False)
    values = random_values(untied, 5)
    values['s_weight'] = values['s2_weight'] = values['s1_weight']
    ex_t, ex_u = bind(tied, values), bind(untied, values)
    out = ex_t.forward(is_train=True)[0]
    ex_u.forward(is_train=True)
    head = mx.nd.array(np.random.RandomState(2).normal(size=out.shape))
    ex_t.backward(head)
    ex_u.backward(head)
    np.testing.assert_allclose(ex_t.grad_dict['s_weight'].asnumpy(),
                               ex_u.grad_dict['s1_weight'].asnumpy() + ex_u.grad_dict['s2_weight'].asnumpy(),
                               rtol=1e-4, atol=1e-5)
