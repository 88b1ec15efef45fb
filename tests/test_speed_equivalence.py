"""The fast grouped-convolution formulation (``symbols.blocks`` 'blockdiag') computes exactly what
the plain ``Convolution(num_group=G)`` does: same parameters, same outputs, same gradients."""
import json

import mxnet as mx
import numpy as np
import pytest

from symbols import blocks, count_macs, count_params, get_symbol

TOL = 1e-5


def _close(a, b, tol=TOL):
    """max |a - b| <= tol * max(1, max |a|): 1e-5 absolute for unit-scale values, relative above."""
    scale = max(1.0, float(np.abs(a).max()))
    err = float(np.abs(a - b).max())
    assert err <= tol * scale, 'max abs difference %.3g (scale %.3g)' % (err, scale)


def _run(sym, shapes, values, head=None):
    ex = sym.simple_bind(mx.cpu(), grad_req='write', **shapes)
    for name, arr in ex.arg_dict.items():
        arr[:] = values[name]
    for name, arr in ex.aux_dict.items():
        arr[:] = values[name]
    outs = [o.asnumpy() for o in ex.forward(is_train=True)]
    ex.backward(None if head is None else [mx.nd.array(head)])
    grads = {n: g.asnumpy() for n, g in ex.grad_dict.items() if g is not None}
    return outs, grads


@pytest.mark.parametrize('channels,groups,stride,kernel', [
    (16, 4, 1, 3),     # 4 ch/group -> 2 groups merged
    (128, 32, 1, 3),   # ResNeXt/CRU-Net conv2 (32x4d)
    (32, 8, 2, 3),     # strided
    (24, 8, 1, 3),     # 3 ch/group -> 8 merged
    (16, 8, 1, 1),     # 2 ch/group, 1x1 -> 4 merged
])
def test_grouped_conv_blockdiag_equals_plain(channels, groups, stride, kernel):
    rng = np.random.RandomState(0)
    shape = (2, channels, 32, 32)
    values = {'data': rng.normal(size=shape).astype('f4'),
              'x__conv_weight': rng.normal(size=(channels, channels // groups, kernel, kernel)).astype('f4')}
    data = mx.sym.var('data')
    syms = {impl: blocks.conv(data, 'x', channels, kernel, stride, num_group=groups, impl=impl)
            for impl in blocks.GROUPED_CONV_IMPLS}
    assert syms['plain'].list_arguments() == syms['blockdiag'].list_arguments() == ['data', 'x__conv_weight']
    assert 'Convolution' in syms['blockdiag'].tojson() and '_bd_' in syms['blockdiag'].tojson()
    out_shape = syms['plain'].infer_shape(data=shape)[1][0]
    head = rng.normal(size=out_shape).astype('f4')
    ref, fast = (_run(syms[i], {'data': shape}, values, head) for i in ('plain', 'blockdiag'))
    _close(ref[0][0], fast[0][0])
    for name in ref[1]:
        _close(ref[1][name], fast[1][name])


def test_merge_factor():
    assert blocks.merge_factor(32, 128, 128) == 2      # 4 ch/group -> 8
    assert blocks.merge_factor(32, 256, 256) == 1      # 8 ch/group: already fine
    assert blocks.merge_factor(640, 640, 640) == 1     # depthwise stays depthwise
    assert blocks.merge_factor(1, 64, 64) == 1         # dense
    assert blocks.merge_factor(8, 24, 24) == 8         # 3 ch/group
    assert blocks.merge_factor(64, 256, 256) == 2      # 64x4d
    assert blocks.merge_factor(32, 128, 128, multiple=16) == 4


def test_impl_switch_is_scoped_and_checked():
    assert blocks.GROUPED_CONV == 'plain'
    with blocks.grouped_conv_impl('blockdiag'):
        assert blocks.GROUPED_CONV == 'blockdiag'
    assert blocks.GROUPED_CONV == 'plain'
    with pytest.raises(ValueError):
        with blocks.grouped_conv_impl('winograd'):
            pass


NETS = [('crunet', dict(num_layers=56)), ('resnext', dict(num_layers=50)),
        ('crunet', dict(num_layers=22, setting='cifar', num_classes=10))]
IDS = ['crunet56', 'resnext50', 'crunet22-cifar']


def _both(network, kwargs):
    plain = get_symbol(network, **kwargs)
    with blocks.grouped_conv_impl('blockdiag'):
        fast = get_symbol(network, **kwargs)
    return plain, fast


def _values(sym, shapes, classes, seed=1):
    rng = np.random.RandomState(seed)
    arg_shapes, _, aux_shapes = sym.infer_shape(**shapes)
    values = {}
    for name, shape in zip(sym.list_arguments(), arg_shapes):
        if name == 'softmax_label':
            values[name] = rng.randint(0, classes, shape)
        elif name.endswith('gamma'):
            values[name] = rng.uniform(0.5, 1.5, shape)
        elif name.endswith('beta') or name.endswith('bias'):
            values[name] = rng.uniform(-0.1, 0.1, shape)
        else:
            fan_in = np.prod(shape[1:]) if len(shape) > 1 else 1
            values[name] = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
    for name, shape in zip(sym.list_auxiliary_states(), aux_shapes):
        values[name] = rng.uniform(0.5, 1.5, shape) if name.endswith('var') else rng.uniform(-0.1, 0.1, shape)
    return values


NETS_ALL = NETS + [('sharesnet', dict(num_layers=50)), ('resnet', dict(num_layers=50))]
IDS_ALL = IDS + ['sharesnet50', 'resnet50']


@pytest.mark.parametrize('network,kwargs', NETS_ALL, ids=IDS_ALL)
def test_network_same_parameters(network, kwargs):
    plain, fast = _both(network, kwargs)
    # same parameters: names, order, shapes (the released checkpoints bind either graph)
    assert fast.list_arguments() == plain.list_arguments()
    assert fast.list_auxiliary_states() == plain.list_auxiliary_states()
    assert fast.list_outputs() == plain.list_outputs()
    shapes = dict(data=(2, 3, 32, 32), softmax_label=(2,))
    assert fast.infer_shape(**shapes) == plain.infer_shape(**shapes)
    assert count_params(plain) == count_params(fast)
    assert count_macs(plain) > 0
    ops = [n['op'] for n in json.loads(fast.tojson())['nodes']]
    assert ('zeros_like' in ops) == (network in ('crunet', 'resnext'))  # 4 ch/group in conv2
    # float16 graphs type-check too (the zero blocks take the weight's dtype)
    with blocks.grouped_conv_impl('blockdiag'):
        half = get_symbol(network, dtype='float16', **kwargs)
    assert half.infer_type(data='float32')[1] == [np.float32]


@pytest.mark.parametrize('network,kwargs', NETS, ids=IDS)
def test_network_training_step_equal_float64(network, kwargs):
    """Whole network, training mode (batch statistics), outputs and every gradient: batch 2 at
    32x32 is so ill-conditioned in float32 (BatchNorm over 2 values per channel in the last
    stage: a 1e-7 relative change of the input moves the softmax by ~1e-2) that the identity is
    checked in float64, where it holds to rounding."""
    plain, fast = _both(network, kwargs)
    shapes = dict(data=(2, 3, 32, 32), softmax_label=(2,))
    values = _values(plain, shapes, kwargs.get('num_classes', 1000))
    results = []
    for sym in (plain, fast):
        ex = sym.simple_bind(mx.cpu(), grad_req='write', type_dict={'data': 'float64'}, **shapes)
        assert ex.arg_dict['data'].dtype == np.float64
        for name, arr in list(ex.arg_dict.items()) + list(ex.aux_dict.items()):
            arr[:] = values[name]
        out = ex.forward(is_train=True)[0].asnumpy()
        ex.backward()
        results.append((out, {n: g.asnumpy() for n, g in ex.grad_dict.items() if n != 'softmax_label'}))
    (ref, ref_g), (got, got_g) = results
    _close(ref, got)
    assert set(ref_g) == set(got_g)
    for name in ref_g:
        _close(ref_g[name], got_g[name])


@pytest.mark.parametrize('network,kwargs', NETS_ALL, ids=IDS_ALL)
def test_network_scoring_equal_float32(network, kwargs):
    """Whole network in float32 (the oneDNN kernels), scoring mode (moving statistics)."""
    plain, fast = _both(network, kwargs)
    shapes = dict(data=(2, 3, 32, 32), softmax_label=(2,))
    values = _values(plain, shapes, kwargs.get('num_classes', 1000))
    outs = []
    for sym in (plain, fast):
        ex = sym.simple_bind(mx.cpu(), grad_req='null', **shapes)
        for name, arr in list(ex.arg_dict.items()) + list(ex.aux_dict.items()):
            arr[:] = values[name]
        outs.append(ex.forward(is_train=False)[0].asnumpy())
    _close(outs[0], outs[1])


def test_perf_build_symbol_and_configure():
    from crunet import perf
    plain = perf.build_symbol('crunet', fast=False, num_layers=56)
    fast = perf.build_symbol('crunet', num_layers=56)
    assert plain.list_arguments() == fast.list_arguments()
    assert 'zeros_like' in fast.tojson() and 'zeros_like' not in plain.tojson()
    assert count_macs(plain) == count_macs(get_symbol('crunet', num_layers=56))
    env = {'OMP_NUM_THREADS': '7'}
    applied = perf.configure(env)
    assert env['OMP_NUM_THREADS'] == '7' and 'OMP_NUM_THREADS' not in applied  # never overrides
    assert env['MXNET_CPU_WORKER_NTHREADS'] == '1'
    assert perf.configure({'CRUNET_PERF_DEFAULTS': '0'}) == {}
    assert int(perf.defaults()['OMP_NUM_THREADS']) == perf.physical_cores() >= 1


def test_bench_speed_summary_without_peers_installed():
    """bench.speed imports without gluoncv; ratios are taken within a round, busy rounds dropped."""
    from bench import speed
    args = speed.parse_args([])
    assert args.models == speed.DEFAULT_MODELS and args.repeat == 3 and args.stat == 'best'
    assert speed.parse_args(['--models', 'crunet56', 'gluoncv2:crunet56@stock']).models[-1].endswith('@stock')
    with pytest.raises(SystemExit):
        speed.parse_args(['--models', 'nonet'])
    peer = 'gluoncv2:crunet56'

    def res(key, train, score, others=0.0):
        return {'model': key, 'macs': 5.63e9, 'train_ips': train, 'score_ips': score,
                'train_others_cpu': others, 'score_others_cpu': others, 'train_peak_mb': 1000.0}
    rounds = [{'crunet56': res('crunet56', 3.0, 12.0), peer: res(peer, 2.0, 10.0)},
              {'crunet56': res('crunet56', 1.0, 6.0, others=0.5), peer: res(peer, 3.0, 10.0)},
              {'crunet56': res('crunet56', 3.3, 12.0), peer: res(peer, 3.0, 12.0)}]
    rows = speed.summarize(rounds, ['crunet56', peer], [peer], max_others=0.15)
    row = rows['crunet56']
    assert row['train_x_%s' % peer] == pytest.approx((1.5 + 1.1) / 2)  # the busy round left out
    assert row['train_gmacs'] == pytest.approx(3 * 5.63 * 3.15)
    table = speed.format_table(rows, [peer])
    assert table.splitlines()[0].startswith('| model |') and '1.30x' in table
