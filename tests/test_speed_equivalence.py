"""Every grouped-convolution formulation of ``symbols.blocks`` ('plain', 'blockdiag8',
'blockdiag16') computes exactly what the plain ``Convolution(num_group=G)`` does: same
parameters, same outputs, same gradients; and the formulation chosen for the other CPU class is
correct when oneDNN really runs that class's kernels."""
import inspect
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import symbols
from symbols import blocks, count_macs, count_params, get_symbol, sharesnet
from symbols.blocks import GROUPED_CONV_CHOICES, Stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
FAST = [g for g in GROUPED_CONV_CHOICES if g != 'plain']


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


def test_the_formulations_are_plain_blockdiag8_blockdiag16():
    assert GROUPED_CONV_CHOICES == ('plain', 'blockdiag8', 'blockdiag16')


@pytest.mark.parametrize('grouped_conv', FAST)
@pytest.mark.parametrize('channels,groups,stride,kernel', [
    (16, 4, 1, 3),     # 4 ch/group
    (128, 32, 1, 3),   # ResNeXt/CRU-Net conv2 (32x4d)
    (256, 32, 2, 3),   # conv3 of 32x4d, strided: 8 ch/group (merged only to 16)
    (32, 8, 2, 3),     # strided, 4 ch/group
    (24, 8, 1, 3),     # 3 ch/group -> 8 merged
    (16, 8, 1, 1),     # 2 ch/group, 1x1
])
def test_grouped_conv_layer_equals_plain(channels, groups, stride, kernel, grouped_conv):
    """One grouped layer in float32 on oneDNN: outputs and the gradients of the input and of the
    (unchanged) weight equal the plain layer's."""
    rng = np.random.RandomState(0)
    shape = (2, channels, 16, 16)
    values = {'data': rng.normal(size=shape).astype('f4'),
              'x__conv_weight': rng.normal(size=(channels, channels // groups, kernel, kernel)).astype('f4')}
    data = mx.sym.var('data')
    plain = blocks.conv(data, 'x', channels, kernel, stride, num_group=groups)
    fast = blocks.conv(data, 'x', channels, kernel, stride, num_group=groups, grouped_conv=grouped_conv)
    assert plain.list_arguments() == fast.list_arguments() == ['data', 'x__conv_weight']
    k = blocks.merge_factor(groups, channels, channels, int(grouped_conv[len('blockdiag'):]))
    assert ('_bd_' in fast.tojson()) == (k > 1)
    if k > 1:
        conv_node = [n for n in json.loads(fast.tojson())['nodes'] if n['op'] == 'Convolution'][0]
        assert int(conv_node['attrs']['num_group']) == groups // k
    out_shape = plain.infer_shape(data=shape)[1][0]
    head = rng.normal(size=out_shape).astype('f4')
    ref, got = (_run(s, {'data': shape}, values, head) for s in (plain, fast))
    _close(ref[0][0], got[0][0])
    assert set(ref[1]) == set(got[1]) == {'data', 'x__conv_weight'}
    for name in ref[1]:
        _close(ref[1][name], got[1][name])


def test_merge_factor_per_vector_width():
    assert blocks.merge_factor(32, 128, 128, 8) == 2       # 4 ch/group -> 8
    assert blocks.merge_factor(32, 128, 128, 16) == 4      # 4 ch/group -> 16
    assert blocks.merge_factor(32, 256, 256, 8) == 1       # 8 ch/group: fine on AVX2
    assert blocks.merge_factor(32, 256, 256, 16) == 2      # ... but merged on AVX-512
    assert blocks.merge_factor(32, 512, 512, 16) == 1      # 16 ch/group
    assert blocks.merge_factor(640, 640, 640, 16) == 1     # depthwise stays depthwise
    assert blocks.merge_factor(1, 64, 64, 16) == 1         # dense
    assert blocks.merge_factor(8, 24, 24, 8) == 8          # 3 ch/group
    assert blocks.merge_factor(64, 256, 256, 8) == 2       # 64x4d


def test_unknown_formulation_is_refused_with_the_choices():
    data = mx.sym.var('data')
    for bad in ('blockdiag', 'winograd', None):
        with pytest.raises(ValueError, match='plain, blockdiag8, blockdiag16'):
            blocks.conv(data, 'x', 16, 3, num_group=4, grouped_conv=bad)
    with pytest.raises(ValueError, match='blockdiag16'):
        get_symbol('resnext', num_layers=50, grouped_conv='blockdiag')


NETS = [('crunet', dict(num_layers=56)), ('resnext', dict(num_layers=50)),
        ('crunet', dict(num_layers=22, setting='cifar', num_classes=10))]
IDS = ['crunet56', 'resnext50', 'crunet22-cifar']
NETS_ALL = NETS + [('sharesnet', dict(num_layers=50)), ('resnet', dict(num_layers=50))]
IDS_ALL = IDS + ['sharesnet50', 'resnet50']
SHAPES = dict(data=(2, 3, 32, 32), softmax_label=(2,))


def _values(sym, shapes, classes, seed=1, fast=False):
    """Random values of every argument and auxiliary state of ``sym`` (He-scaled weights); with
    ``fast``, float32 from numpy's Generator (the largest networks fill in a fraction of a second;
    other values, so tests with a tolerance keep the default)."""
    rng = np.random.default_rng(seed) if fast else np.random.RandomState(seed)

    def normal(scale, shape):
        if fast:
            return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
        return rng.normal(0, scale, shape)
    arg_shapes, _, aux_shapes = sym.infer_shape(**shapes)
    values = {}
    for name, shape in zip(sym.list_arguments(), arg_shapes):
        if name == 'softmax_label':
            values[name] = rng.integers(0, classes, shape) if fast else rng.randint(0, classes, shape)
        elif name.endswith('gamma'):
            values[name] = rng.uniform(0.5, 1.5, shape)
        elif name.endswith('beta') or name.endswith('bias'):
            values[name] = rng.uniform(-0.1, 0.1, shape)
        else:
            fan_in = np.prod(shape[1:]) if len(shape) > 1 else 1
            values[name] = normal(np.sqrt(2.0 / fan_in), shape)
    for name, shape in zip(sym.list_auxiliary_states(), aux_shapes):
        values[name] = rng.uniform(0.5, 1.5, shape) if name.endswith('var') else rng.uniform(-0.1, 0.1, shape)
    return values


@pytest.mark.parametrize('grouped_conv', FAST)
@pytest.mark.parametrize('network,kwargs', NETS_ALL, ids=IDS_ALL)
def test_network_same_parameters(network, kwargs, grouped_conv):
    plain = get_symbol(network, **kwargs)
    fast = get_symbol(network, grouped_conv=grouped_conv, **kwargs)
    # same parameters: names, order, shapes (the released checkpoints bind either graph)
    assert fast.list_arguments() == plain.list_arguments()
    assert fast.list_auxiliary_states() == plain.list_auxiliary_states()
    assert fast.list_outputs() == plain.list_outputs()
    assert fast.infer_shape(**SHAPES) == plain.infer_shape(**SHAPES)
    assert count_params(plain) == count_params(fast)
    ops = [n['op'] for n in json.loads(fast.tojson())['nodes']]
    assert ('zeros_like' in ops) == (network in ('crunet', 'resnext'))  # 4 ch/group in conv2
    assert 'zeros_like' not in plain.tojson()
    # float16 graphs type-check too (the zero blocks take the weight's dtype)
    half = get_symbol(network, dtype='float16', grouped_conv=grouped_conv, **kwargs)
    arg_types, out_types, _ = half.infer_type(data='float32')
    assert out_types == [np.float32]
    types = dict(zip(half.list_arguments(), arg_types))
    grouped = [n for n in half.list_arguments() if n.endswith('c3x3-b__conv_weight')]
    assert all(types[n] == np.float16 for n in grouped)


def test_multiply_adds_are_counted_on_the_plain_graph():
    plain = get_symbol('crunet', num_layers=56)
    assert count_macs(plain) == pytest.approx(5.63e9, rel=0.005)


_PLAIN_CACHE = {}


def _train_step_float64(sym, values):
    ex = sym.simple_bind(mx.cpu(), grad_req='write', type_dict={'data': 'float64'}, **SHAPES)
    assert ex.arg_dict['data'].dtype == np.float64
    for name, arr in list(ex.arg_dict.items()) + list(ex.aux_dict.items()):
        arr[:] = values[name]
    out = ex.forward(is_train=True)[0].asnumpy()
    ex.backward()
    return out, {n: g.asnumpy() for n, g in ex.grad_dict.items() if n != 'softmax_label'}


@pytest.mark.parametrize('grouped_conv', FAST)
@pytest.mark.parametrize('network,kwargs', NETS, ids=IDS)
def test_network_training_step_equal_float64(network, kwargs, grouped_conv):
    """Whole network, training mode (batch statistics), outputs and every gradient: batch 2 at
    32x32 is so ill-conditioned in float32 (BatchNorm over 2 values per channel in the last
    stage of an ImageNet network: a 1e-7 relative change of the input moves the softmax by
    ~1e-2) that the identity is checked in float64, where it holds to rounding."""
    key = (network, tuple(sorted(kwargs.items())))
    plain = get_symbol(network, **kwargs)
    values = _values(plain, SHAPES, kwargs.get('num_classes', 1000))
    if key not in _PLAIN_CACHE:
        _PLAIN_CACHE[key] = _train_step_float64(plain, values)
    ref, ref_g = _PLAIN_CACHE[key]
    # float64: the BatchNorm -> ReLU pairs stay apart (the fused operator is float32 only)
    got, got_g = _train_step_float64(get_symbol(network, grouped_conv=grouped_conv, dtype='float64', **kwargs),
                                     values)
    _close(ref, got)
    assert set(ref_g) == set(got_g)
    for name in ref_g:
        _close(ref_g[name], got_g[name])


def _bn_relu_conv_input_gradient(fused):
    x = mx.sym.var('data')
    y = mx.sym.contrib.BatchNormWithReLU(x, fix_gamma=False, name='bn') if fused else \
        mx.sym.Activation(mx.sym.BatchNorm(x, fix_gamma=False, name='bn'), act_type='relu')
    z = mx.sym.Convolution(y, num_filter=64, kernel=(3, 3), pad=(1, 1), no_bias=True, name='c')
    ex = z.simple_bind(mx.cpu(), data=(2, 64, 16, 16), grad_req='write')
    rng = np.random.RandomState(0)
    for _, arr in sorted(ex.arg_dict.items()):
        arr[:] = rng.normal(size=arr.shape)
    for _, arr in sorted(ex.aux_dict.items()):
        arr[:] = rng.uniform(0.5, 1.5, arr.shape)
    ex.forward(is_train=True)
    ex.backward(mx.nd.array(np.random.RandomState(1).normal(size=(2, 64, 16, 16))))
    return ex.grad_dict['data'].asnumpy()


def test_fused_batchnorm_relu_alone_is_wrong_so_only_whole_networks_fuse():
    """MXNet 1.9.1's fused BatchNormWithReLU, fed an outside gradient in the plain layout (a lone
    BN -> ReLU -> Conv graph), computes a wrong input gradient; inside the zoo's networks, where
    every gradient comes from oneDNN's own layouts, it is exact (the tests below). The checkpoint
    graph (plain) never fuses."""
    apart, fused = _bn_relu_conv_input_gradient(False), _bn_relu_conv_input_gradient(True)
    assert np.abs(apart - fused).max() > 0.1 * np.abs(apart).max()
    assert 'BatchNormWithReLU' not in get_symbol('crunet', num_layers=56).tojson()
    ops = [n['op'] for n in json.loads(get_symbol('crunet', num_layers=56, grouped_conv='blockdiag16').tojson())['nodes']]
    assert ops.count('_contrib_BatchNormWithReLU') == 55 and 'Activation' not in ops
    # where layouts would mix, nothing fuses: 8-channel blocks, a width of 136, another dtype
    for g, kw in (('blockdiag8', dict(num_layers=56)), ('blockdiag16', dict(num_layers=56, setting='136x1d')),
                  ('blockdiag16', dict(num_layers=56, dtype='float16'))):
        assert 'BatchNormWithReLU' not in get_symbol('crunet', grouped_conv=g, **kw).tojson(), (g, kw)


def _apart(network, kwargs, grouped_conv):
    """``get_symbol(network, grouped_conv=..., **kwargs)`` with every BatchNorm -> ReLU pair kept
    apart: the same call, with the zoo's fusion rule (``blocks.fuses_bn_relu``) answering no."""
    rule = blocks.fuses_bn_relu
    blocks.fuses_bn_relu = lambda *args, **kw: False
    try:
        return get_symbol(network, grouped_conv=grouped_conv, **kwargs)
    finally:
        blocks.fuses_bn_relu = rule


def _step32(sym, values, shapes):
    ex = sym.simple_bind(mx.cpu(), grad_req='write', **shapes)
    for name, arr in list(ex.arg_dict.items()) + list(ex.aux_dict.items()):
        arr[:] = values[name]
    out = ex.forward(is_train=True)[0].asnumpy()
    ex.backward()
    mx.nd.waitall()
    return out, {n: g.asnumpy() for n, g in ex.grad_dict.items()}, {n: a.asnumpy() for n, a in ex.aux_dict.items()}


def _zoo_variants():
    """Every network the zoo builds from a preset, its unshared twin where it has one, and the
    shared wide ResNets WRN-d-k for every depth d with k = 1 and 4, and WRN-28-10 (the papers'
    WRN-40-4 and WRN-28-10 among them), each with 10 classes."""
    for network in symbols.NETWORKS:
        module = symbols.get_module(network)
        twins = 'shared' in inspect.signature(module.get_symbol).parameters
        for depth, setting in module.PRESETS:
            yield network, dict(num_layers=depth, setting=setting, num_classes=10)
            if twins:
                yield network, dict(num_layers=depth, setting=setting, num_classes=10, shared=False)
    for depth, k in [(d, k) for d in sharesnet.WRN_DEPTHS for k in (1, 4)] + [(28, 10)]:
        yield 'sharesnet', dict(num_layers=depth, widen_factor=k, num_classes=10)
        yield 'sharesnet', dict(num_layers=depth, widen_factor=k, num_classes=10, shared=False)


FUSED_NETS = [(n, kw) for n, kw in _zoo_variants()
              if 'BatchNormWithReLU' in get_symbol(n, grouped_conv='blockdiag16', **kw).tojson()]


def test_every_fused_network_of_the_zoo_is_checked():
    """The list the bit-identity test runs is the zoo's whole fused part: the networks named here
    by hand are in it, and those whose widths are not multiples of 16 are not."""
    names = {'%s-%s' % (n, '-'.join('%s=%s' % kv for kv in sorted(k.items()))) for n, k in FUSED_NETS}
    for expected in ('crunet-num_classes=10-num_layers=116-setting=wider',
                     'crunet-num_classes=10-num_layers=56-setting=32x4d-shared=False',
                     'resnet-num_classes=10-num_layers=200-setting=preact',
                     'resnext-num_classes=10-num_layers=101-setting=64x4d',
                     'sharesnet-num_classes=10-num_layers=152-setting=imagenet-shared=False',
                     'sharesnet-num_classes=10-num_layers=40-widen_factor=4'):
        assert expected in names, sorted(names)
    for absent in ('crunet-num_classes=10-num_layers=56-setting=136x1d',
                   'resnext-num_classes=10-num_layers=50-setting=Nx1d'):
        assert absent not in names
    assert len(FUSED_NETS) == 46, sorted(names)


@pytest.mark.parametrize('grouped_conv', ['blockdiag16'])
@pytest.mark.parametrize('network,kwargs', FUSED_NETS,
                         ids=['%s-%s' % (n, '-'.join('%s=%s' % kv for kv in sorted(k.items()))) for n, k in FUSED_NETS])
def test_fused_training_step_is_bit_identical_in_every_network(network, kwargs, grouped_conv):
    """The trained graph (BatchNorm -> ReLU fused) against the same formulation with the pairs
    apart: one float32 oneDNN training step, identical outputs, gradients and moving statistics."""
    fused = get_symbol(network, grouped_conv=grouped_conv, **kwargs)
    apart = _apart(network, kwargs, grouped_conv)
    assert 'BatchNormWithReLU' in fused.tojson() and 'BatchNormWithReLU' not in apart.tojson()
    assert fused.list_arguments() == apart.list_arguments()
    assert fused.list_auxiliary_states() == apart.list_auxiliary_states()
    values = _values(apart, SHAPES, kwargs.get('num_classes', 1000), fast=True)
    for a, b in zip(_step32(apart, values, SHAPES), _step32(fused, values, SHAPES)):
        if isinstance(a, dict):
            assert set(a) == set(b)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_fused_training_step_is_bit_identical_at_the_benchmark_size():
    """CRU-Net-56 at 224x224, batch 8 (the benchmark's step) and the demo's CRU-Net-22 at batch 32."""
    for network, kwargs, shapes in (
            ('crunet', dict(num_layers=56), dict(data=(8, 3, 224, 224), softmax_label=(8,))),
            ('crunet', dict(num_layers=22, setting='cifar', num_classes=10, image_shape='3,32,32'),
             dict(data=(32, 3, 32, 32), softmax_label=(32,)))):
        fused = get_symbol(network, grouped_conv='blockdiag16', **kwargs)
        apart = _apart(network, kwargs, 'blockdiag16')
        values = _values(apart, shapes, kwargs.get('num_classes', 1000))
        a, b = _step32(apart, values, shapes), _step32(fused, values, shapes)
        np.testing.assert_array_equal(a[0], b[0])
        for name in a[1]:
            np.testing.assert_array_equal(a[1][name], b[1][name], err_msg=name)


@pytest.mark.parametrize('network,kwargs', NETS_ALL, ids=IDS_ALL)
def test_network_scoring_equal_float32(network, kwargs):
    """Whole network in float32 (the oneDNN kernels), scoring mode (moving statistics), every
    formulation."""
    plain = get_symbol(network, **kwargs)
    values = _values(plain, SHAPES, kwargs.get('num_classes', 1000))
    outs = []
    for grouped_conv in GROUPED_CONV_CHOICES:
        sym = get_symbol(network, grouped_conv=grouped_conv, **kwargs)
        ex = sym.simple_bind(mx.cpu(), grad_req='null', **SHAPES)
        for name, arr in list(ex.arg_dict.items()) + list(ex.aux_dict.items()):
            arr[:] = values[name]
        outs.append(ex.forward(is_train=False)[0].asnumpy())
    for out in outs[1:]:
        _close(outs[0], out)


# ----------------------------------------------------------------------------- the other ISA
#: A CRU-Net-22 (cifar preset) and a small ResNeXt (cifar stem; 4 channels per group in every
#: stage), trained one float32 step at 32x32, batch 2, in a child process whose oneDNN is capped
#: by DNNL_MAX_CPU_ISA; prints the largest relative differences to the plain graph and the
#: implementations oneDNN ran for the grouped convolutions.
_ISA_CHILD = r'''
import json, sys
import mxnet as mx, numpy as np
import symbols
from symbols.blocks import Stage, build_network
grouped_conv = sys.argv[1]

def nets(g):
    yield 'crunet22', symbols.get_symbol('crunet', num_layers=22, setting='cifar', num_classes=10,
                                         grouped_conv=g)
    yield 'resnext-small', build_network([Stage(1, 32, 64, 8), Stage(1, 64, 128, 16), Stage(1, 128, 256, 32)],
                                         10, stem='cifar', grouped_conv=g)

def step(sym, values):
    ex = sym.simple_bind(mx.cpu(), grad_req='write', data=(2, 3, 32, 32), softmax_label=(2,))
    for name, arr in list(ex.arg_dict.items()) + list(ex.aux_dict.items()):
        arr[:] = values[name]
    out = ex.forward(is_train=True)[0].asnumpy()
    ex.backward()
    mx.nd.waitall()
    return out, {n: g.asnumpy() for n, g in ex.grad_dict.items() if n != 'softmax_label'}

res = {}
for (name, plain), (_, fast) in zip(nets('plain'), nets(grouped_conv)):
    rng = np.random.RandomState(3)
    arg_shapes, _, aux_shapes = plain.infer_shape(data=(2, 3, 32, 32), softmax_label=(2,))
    values = {}
    for n, s in zip(plain.list_arguments(), arg_shapes):
        if n == 'softmax_label':
            values[n] = rng.randint(0, 10, s)
        elif n.endswith('gamma'):
            values[n] = rng.uniform(0.5, 1.5, s)
        elif n.endswith('beta'):
            values[n] = rng.uniform(-0.1, 0.1, s)
        else:
            values[n] = rng.normal(0, np.sqrt(2.0 / max(1, np.prod(s[1:]))), s)
    for n, s in zip(plain.list_auxiliary_states(), aux_shapes):
        values[n] = rng.uniform(0.5, 1.5, s) if n.endswith('var') else rng.uniform(-0.1, 0.1, s)
    print('CHILD_BEGIN ' + name, flush=True)
    (ref, ref_g), (got, got_g) = step(plain, values), step(fast, values)
    print('CHILD_END ' + name, flush=True)
    rel = lambda a, b: float(np.abs(a - b).max() / max(1e-3, float(np.abs(a).max())))
    res[name] = dict(out=rel(ref, got), grads={n: rel(ref_g[n], got_g[n]) for n in ref_g},
                     same_args=plain.list_arguments() == fast.list_arguments())
print('CHILD_RESULT ' + json.dumps(res), flush=True)
'''


def _run_capped(grouped_conv, max_isa):
    env = dict(os.environ, DNNL_VERBOSE='1', OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.pop('DNNL_MAX_CPU_ISA', None)
    if max_isa:
        env['DNNL_MAX_CPU_ISA'] = max_isa
    proc = subprocess.run([sys.executable, '-c', _ISA_CHILD, grouped_conv], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    isa_text = [ln.split('cpu,isa:', 1)[1] for ln in lines if 'cpu,isa:' in ln]
    grouped_impls = {ln.split(',')[4] for ln in lines if ln.startswith('dnnl_verbose,exec,cpu,convolution')
                     and ln.split(',')[-2].startswith('g')}
    result = json.loads([ln for ln in lines if ln.startswith('CHILD_RESULT ')][0].split(' ', 1)[1])
    return isa_text[0], grouped_impls, result


@pytest.mark.parametrize('other_cpu', ['avx2', 'avx512'])
def test_formulation_chosen_for_each_cpu_class_is_correct_under_its_isa(other_cpu):
    """Force each CPU class's choice (``crunet.isa`` on that class's flags: blockdiag8 for AVX2,
    blockdiag16 for AVX-512) and run it with oneDNN capped to that class's ISA where this CPU
    allows it (``DNNL_MAX_CPU_ISA=AVX2`` on an AVX-512 CPU): one training step of a CRU-Net-22
    and a small ResNeXt, outputs and every gradient equal the plain graph's (float32, the ISA's
    own kernels)."""
    from crunet import isa
    flags = AVX2_FLAGS if other_cpu == 'avx2' else AVX512_FLAGS
    grouped_conv = isa.grouped_conv_for('auto', flags=flags, environ={})
    assert grouped_conv == {'avx2': 'blockdiag8', 'avx512': 'blockdiag16'}[other_cpu]
    here = isa.cap_isa(isa.isa_from_flags(isa.cpu_flags()), {})
    if other_cpu == 'avx512' and isa.vector_width(here) < 16:
        pytest.skip('this CPU has no AVX-512 (%s)' % here)
    cap = 'AVX2' if other_cpu == 'avx2' else None
    isa_text, impls, result = _run_capped(grouped_conv, cap)
    if other_cpu == 'avx2':
        assert isa.isa_from_text(isa_text) == 'avx2', isa_text
        assert impls and not any('avx512' in i for i in impls), impls
    else:
        assert isa.vector_width(isa.isa_from_text(isa_text)) == 16, isa_text
    assert set(result) == {'crunet22', 'resnext-small'}
    for name, r in result.items():
        assert r['same_args'], name
        assert r['out'] < 1e-4, (name, r['out'])
        worst = max(r['grads'], key=r['grads'].get)
        assert r['grads'][worst] < 1e-4, (name, worst, r['grads'][worst])


AVX2_FLAGS = set('fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2 sha_ni'.split())
AVX512_FLAGS = AVX2_FLAGS | set('avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16'.split())


# ----------------------------------------------------------------------------- tools that use them
def test_train_builds_the_chosen_formulation_and_keeps_plain_for_checkpoints():
    from crunet.cli import train
    args, _ = train.parse_args(['--benchmark', '1', '--network', 'crunet', '--num-layers', '56'])
    assert args.grouped_conv == 'auto'
    plain = train.build_symbol(args)
    fast = train.build_symbol(args, 'blockdiag16')
    assert plain.list_arguments() == fast.list_arguments()
    assert 'zeros_like' in fast.tojson() and 'zeros_like' not in plain.tojson()
    assert count_macs(plain) == count_macs(get_symbol('crunet', num_layers=56))


def test_perf_configure_never_overrides():
    from crunet import perf
    env = {'OMP_NUM_THREADS': '7'}
    applied = perf.configure(env)
    assert env['OMP_NUM_THREADS'] == '7' and 'OMP_NUM_THREADS' not in applied  # never overrides
    assert env['MXNET_CPU_WORKER_NTHREADS'] == '1'
    assert perf.configure({'CRUNET_PERF_DEFAULTS': '0'}) == {}
    assert int(perf.defaults()['OMP_NUM_THREADS']) == perf.physical_cores() >= 1


MACHINE = dict(cpu='Test CPU Model 9000', cores=2, isa='avx512_core_bf16', source='oneDNN', onednn='2.4.4',
               isa_text='Intel AVX-512 with Intel DL Boost and bfloat16 support')


def test_bench_speed_summary_without_peers_installed():
    """bench.speed imports without gluoncv; ratios are taken within a round, busy rounds dropped;
    the table names the machine (CPU model, cores, oneDNN's ISA)."""
    from bench import speed
    args = speed.parse_args([])
    assert args.models == speed.DEFAULT_MODELS and args.repeat == 3 and args.stat == 'median'
    assert args.grouped_conv == 'auto' and args.modes == ['score', 'train', 'train-cli']
    assert speed.parse_args(['--models', 'crunet56', 'gluoncv2:crunet56@stock']).models[-1].endswith('@stock')
    with pytest.raises(SystemExit):
        speed.parse_args(['--models', 'nonet'])
    with pytest.raises(SystemExit):
        speed.parse_args(['--grouped-conv', 'blockdiag'])
    peer = 'gluoncv2:crunet56'

    def res(key, train, score, others=0.0):
        out = {'model': key, 'macs': 5.63e9, 'train_ips': train, 'score_ips': score,
               'train_others_cpu': others, 'score_others_cpu': others, 'train_peak_mb': 1000.0}
        if key == 'crunet56':               # the peers have no command: only this project's models
            out['train_cli_ips'] = 0.9 * train
        return out
    rounds = [{'crunet56': res('crunet56', 3.0, 12.0), peer: res(peer, 2.0, 10.0)},
              {'crunet56': res('crunet56', 1.0, 6.0, others=0.5), peer: res(peer, 3.0, 10.0)},
              {'crunet56': res('crunet56', 3.3, 12.0), peer: res(peer, 3.0, 12.0)}]
    rows = speed.summarize(rounds, ['crunet56', peer], [peer], max_others=0.15)
    row = rows['crunet56']
    assert row['train_x_%s' % peer] == pytest.approx((1.5 + 1.1) / 2)  # the busy round left out
    assert row['train_gmacs'] == pytest.approx(3 * 5.63 * 3.15)
    assert row['train_cli_x_train'] == pytest.approx(0.9)               # the command against the bare loop
    assert row['train_cli_x_%s' % peer] == pytest.approx(0.9 * (1.5 + 1.1) / 2)   # against the peer's loop
    args = speed.parse_args(['--grouped-conv', 'blockdiag8'])
    args.machine = MACHINE
    speed.resolve_machine(args)
    assert args.grouped_conv == 'blockdiag8' and args.grouped_conv_flag == 'blockdiag8'
    machine = speed.machine_fields(MACHINE, args)
    table = speed.format_table(rows, [peer], machine)
    lines = table.splitlines()
    assert lines[0].startswith('Machine: Test CPU Model 9000, 2 cores, oneDNN 2.4.4 ISA avx512_core_bf16')
    assert 'blockdiag8' in lines[0]
    head = [ln for ln in lines if ln.startswith('| model |')][0]
    assert '| machine |' in head
    assert 'Test CPU Model 9000, 2 cores, avx512_core_bf16' in table and '1.30x' in table
    assert speed.format_table(rows, [peer]).splitlines()[0].startswith('| model |')


def test_bench_speed_auto_resolves_to_this_machines_choice():
    from bench import speed
    from crunet import isa
    args = speed.resolve_machine(speed.parse_args([]))
    assert args.grouped_conv_flag == 'auto'
    assert args.grouped_conv == isa.grouped_conv_for('auto')
    assert args.machine['isa'] in isa.ISAS and args.machine['cores'] >= 1
    assert speed.machine_fields(args.machine, args)['grouped_conv'] == args.grouped_conv


def test_profile_ops_builds_the_formulation_and_reads_layouts():
    from bench import profile_ops
    args = profile_ops.parse_args(['--network', 'resnext', '--num-layers', '50', '--image-size', '32',
                                   '--grouped-conv', 'blockdiag16'])
    sym = profile_ops.build(args)
    by_key, kinds = profile_ops.conv_layers(sym, (8, 3, 32, 32))
    assert kinds['conv2_x__1_c3x3-b__conv'] == 'grouped 3x3 (16 ch/group)'   # 4 merged
    assert kinds['conv3_x__1_c3x3-b__conv'] == 'grouped 3x3 (16 ch/group)'   # 2 merged
    assert kinds['conv4_x__1_c3x3-b__conv'] == 'grouped 3x3 (16 ch/group)'   # as it is
    assert profile_ops.layout('src_f32::blocked:aBcd16b:f0 dst_f32::blocked:aBcd16b:f0') == 'aBcd16b'
    assert profile_ops.layout('data_f32::blocked:abcd:f0 diff_undef::undef::f0') == 'abcd'
    assert profile_ops.parse_args([]).grouped_conv == 'auto'


_FUSED_CAPPED_CHILD = r'''
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import test_speed_equivalence as T
from symbols import get_symbol
for network, kwargs in (('crunet', dict(num_layers=22, setting='cifar', num_classes=10)),
                        ('resnext', dict(num_layers=50))):
    fused = get_symbol(network, grouped_conv='blockdiag16', **kwargs)
    apart = T._apart(network, kwargs, 'blockdiag16')
    values = T._values(apart, T.SHAPES, kwargs.get('num_classes', 1000))
    a, b = T._step32(apart, values, T.SHAPES), T._step32(fused, values, T.SHAPES)
    assert np.array_equal(a[0], b[0]) and all(np.array_equal(a[1][n], b[1][n]) for n in a[1]), network
print('FUSED_CAPPED_OK', flush=True)
'''


def test_fused_training_step_is_bit_identical_under_avx2_kernels():
    """blockdiag16 forced on an AVX2-class oneDNN (DNNL_MAX_CPU_ISA=AVX2): still bit-identical."""
    env = dict(os.environ, DNNL_MAX_CPU_ISA='AVX2', OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    proc = subprocess.run([sys.executable, '-c', _FUSED_CAPPED_CHILD, os.path.join(ROOT, 'tests')], env=env,
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0 and 'FUSED_CAPPED_OK' in proc.stdout, proc.stderr[-3000:]


def test_bench_times_the_training_command_with_the_bare_loops_graph():
    """``--modes train-cli`` runs train_imagenet.py itself, on the formulation of the bare loop,
    with one random batch in memory (as the bare loop), one Speed line per batch and nothing
    written; the record names the machine and the versions."""
    from bench import speed
    args = speed.resolve_machine(speed.parse_args(['--models', 'resnet50', '--grouped-conv', 'blockdiag8',
                                                   '--batch-size', '2', '--warmup', '1', '--iters', '2']))
    cmd = speed.cli_command(speed.MODELS['crunet56'], args)
    assert cmd[1] == os.path.join(ROOT, 'train_imagenet.py')
    flags = dict(zip(cmd[2::2], cmd[3::2]))
    assert flags == {'--network': 'crunet', '--num-layers': '56', '--benchmark': '1', '--batch-size': '2',
                     '--num-examples': '6', '--disp-batches': '1', '--image-shape': '3,224,224', '--num-epochs': '1',
                     '--grouped-conv': 'blockdiag8', '--plot': '0', '--gpus': ''}
    args.image_size = 32
    times, others = speed.train_cli(speed.MODELS['resnet50'], args)
    assert len(times) == 2 and all(t > 0 for t in times)
    from bench import record
    assert record.record_path('/r', 'speed', 0.0) == '/r/speed-19700101T000000Z.json'
    assert record.record_path('', 'speed', 0.0) is None
    assert record.package_versions()['mxnet'] == mx.__version__
