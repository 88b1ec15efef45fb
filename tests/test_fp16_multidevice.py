"""The float16 and multi-device paths of the trainer, on CPU contexts.

MXNet cannot run a float16 forward on the CPU, but it binds float16 graphs, runs the
multi-precision optimizer and sums float16 arrays on parameter servers there, which is what
the checkpoint, resume and kvstore code of the float16 path depends on."""
import json
import os
import re
import subprocess

import mxnet as mx
import numpy as np
import pytest

import symbols
from crunet.cli import train as train_cli
from crunet.data.iterators import get_rec_iter
from crunet.errors import CLIError
from crunet.train import state
from train_helpers import PYTHON, ROOT, env, load_params, run_train, tiny_args, tiny_data

# an exception inside MXNet's kvstore updater callback is only a warning: make it fail the test
pytestmark = pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')

LAUNCH = os.path.join(ROOT, 'tools', 'launch.py')
SCORE = os.path.join(ROOT, 'score.py')
NET = dict(num_classes=4, num_layers=22, setting='cifar', image_shape='3,32,32')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp('fp16md'), num_train=24, num_val=12)


def _module(dtype, contexts=2, multi_precision=None, optimizer='nag', seed=0):
    """CRU-Net-22 (cifar) in ``dtype`` on ``contexts`` CPU contexts, kvstore ``device``, one update
    with fixed random gradients applied (so the optimizer states exist)."""
    sym = symbols.get_symbol('crunet', dtype=dtype, **NET)
    mod = mx.mod.Module(sym, context=[mx.cpu(i) for i in range(contexts)], data_names=['data'],
                        label_names=['softmax_label'])
    mod.bind(data_shapes=[('data', (2 * contexts, 3, 32, 32))], label_shapes=[('softmax_label', (2 * contexts,))])
    mx.random.seed(seed)
    mod.init_params(mx.init.Xavier(magnitude=2))
    params = {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}
    if multi_precision is None:
        multi_precision = dtype == 'float16'
    if multi_precision:
        params['multi_precision'] = True
    mod.init_optimizer(kvstore=mx.kv.create('device'), optimizer=optimizer, optimizer_params=params)
    _step(mod, seed)
    return mod


def _step(mod, seed):
    rng = np.random.RandomState(seed)
    for grads in mod._exec_group.grad_arrays:
        value = rng.normal(0, 1e-2, grads[0].shape)
        for g in grads:
            g[:] = value
    mod.update()


def _weights16(mod):
    group = mod._exec_group
    return {n: a[0].asnumpy() for n, a in zip(group.param_names, group.param_arrays)}


def test_float16_checkpoint_is_the_plain_float32_graph_with_master_weights(data, tmp_path):
    mod = _module('float16')
    assert mod._exec_group.param_arrays[0][0].dtype == np.float16
    arg, aux = state.device_params(mod)
    prefix = str(tmp_path / 'fp16')
    state.save_epoch(mod, prefix, 1, symbols.get_symbol('crunet', **NET), arg, aux, None, 'float16')
    sym, saved_arg, saved_aux = mx.model.load_checkpoint(prefix, 1)
    assert 'Cast' not in [node['op'] for node in json.loads(sym.tojson())['nodes']]
    assert all(v.dtype == np.float32 for v in list(saved_arg.values()) + list(saved_aux.values()))
    # the weights are the float32 master copies, not the float16 weights cast back
    w16 = _weights16(mod)
    assert sorted(saved_arg) == sorted(w16)
    assert any(not np.array_equal(saved_arg[n].asnumpy(), w16[n].astype(np.float32)) for n in w16)
    for n in w16:       # float16 weights are their masters rounded (BatchNorm's stay float32)
        np.testing.assert_array_equal(saved_arg[n].asnumpy().astype(w16[n].dtype), w16[n])
    assert all(w.dtype == np.float16 for n, w in w16.items() if n.endswith('_weight'))
    meta, _ = state.read_states(state.states_path(prefix, 1))
    assert meta['dtype'] == 'float16'

    # scored on the CPU by crunet-score, exported without a Cast
    proc = subprocess.run([PYTHON, SCORE, '--model', prefix, '--epoch', '1', '--data-val', data['val'],
                           '--image-shape', '3,32,32', '--batch-size', '4'], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'top-1 error \d+\.\d+%', proc.stdout), proc.stdout
    out = str(tmp_path / 'deploy')
    proc = subprocess.run([PYTHON, '-m', 'symbols.export', 'inference', '--model', prefix, '--epoch', '1',
                           '--out', out, '--image-shape', '3,32,32'], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out + '-symbol.json') as f:
        assert 'Cast' not in [node['op'] for node in json.load(f)['nodes']]


def _flat(st):
    if st is None:
        return []
    if isinstance(st, (tuple, list)):
        return [a for s in st for a in _flat(s)]
    return [st]


def test_dtype_changing_resume_converts_optimizer_states_both_ways(tmp_path):
    # float16 (momentum + float32 master) -> float32 (momentum only)
    mod16 = _module('float16')
    arg16, aux16 = state.device_params(mod16)
    p16 = str(tmp_path / 'fp16')
    state.save_epoch(mod16, p16, 1, symbols.get_symbol('crunet', **NET), arg16, aux16, None, 'float16')
    meta, states = state.read_states(state.states_path(p16, 1))
    name = sorted(states)[0]
    saved = [a.asnumpy() for a in _flat(states[name])]
    assert len(saved) == 2                                    # momentum and master copy
    mod32 = _module('float32', seed=1)
    mod32.set_params(arg16, aux16)
    assert state.restore_optimizer(mod32, meta, states, arg16, 'float32', 'fp16.states')
    got = mod32._kvstore._updater.states[name]
    assert isinstance(got, mx.nd.NDArray) and got.dtype == np.float32
    momentum = [a for a in saved if not np.array_equal(a, arg16[name].asnumpy())]
    assert len(momentum) == 1
    np.testing.assert_array_equal(got.asnumpy(), momentum[0])
    _step(mod32, 2)                                           # and the converted state trains

    # float32 (momentum) -> float16 multi-precision: the master copy comes from the checkpoint
    arg32, aux32 = state.device_params(mod32)
    p32 = str(tmp_path / 'fp32')
    state.save_epoch(mod32, p32, 2, symbols.get_symbol('crunet', **NET), arg32, aux32, None, 'float32')
    meta, states = state.read_states(state.states_path(p32, 2))
    mom32 = states[name].asnumpy()
    fresh16 = _module('float16', seed=3)
    fresh16.set_params(arg32, aux32)
    assert state.restore_optimizer(fresh16, meta, states, arg32, 'float16', 'fp32.states')
    parts = [a.asnumpy() for a in _flat(fresh16._kvstore._updater.states[name])]
    assert len(parts) == 2 and all(p.dtype == np.float32 for p in parts)
    assert any(np.array_equal(p, mom32) for p in parts)
    assert any(np.array_equal(p, arg32[name].asnumpy()) for p in parts)
    _step(fresh16, 4)
    assert state.device_params(fresh16)[0][name].dtype == np.float32

    # states of another optimizer are refused in one line naming the file and the flag
    sgd = _module('float32', optimizer='sgd')
    with pytest.raises(CLIError) as exc:
        state.restore_optimizer(sgd, meta, states, arg32, 'float32', 'fp32.states')
    assert str(exc.value) == 'fp32.states was written by the NAG optimizer, this run uses SGD (--optimizer)'


def test_aggregated_kvstore_update_equals_module_update():
    """The grouped pushpull MXNet has for nccl (state.update(aggregated=True)) updates the
    weights exactly as Module.update's per-parameter path does."""
    a, b = _module('float32', seed=5), _module('float32', seed=5)
    for step in range(2):
        for mod, aggregated in ((a, True), (b, False)):
            rng = np.random.RandomState(10 + step)
            group = mod._exec_group
            for grads in group.grad_arrays:
                value = rng.normal(0, 1e-2, grads[0].shape)
                for g in grads:
                    g[:] = value
            state.update(mod, aggregated=aggregated)
    wa, wb = state.device_params(a)[0], state.device_params(b)[0]
    assert all(np.array_equal(wa[n].asnumpy(), wb[n].asnumpy()) for n in wa)
    assert state.replica_spread(a) == 0.0


def test_iterator_is_float32_under_float16(data):
    args, _ = train_cli.parse_args(tiny_args(data, '/nonexistent/m', epochs=1, batch=4) + ['--dtype', 'float16'])
    train, val = get_rec_iter(args)
    for it in (train, val):
        assert [d.dtype for d in it.provide_data] == [np.float32]
        batch = next(iter(it))
        assert batch.data[0].dtype == np.float32


def _same(a, b, epoch):
    pa, pb = load_params(a, epoch), load_params(b, epoch)
    assert sorted(pa) == sorted(pb)
    bad = sorted(k for k in pa if not np.array_equal(pa[k], pb[k]))
    assert not bad, bad[:5]
    with open('%s-%04d.states' % (a, epoch), 'rb') as f, open('%s-%04d.states' % (b, epoch), 'rb') as g:
        assert f.read() == g.read()


RECIPE = ['--lr-policy', 'step', '--lr-step-epochs', '1', '--lr-factor', '0.5', '--warmup-epochs', '0.5']


def test_resume_on_three_cpu_contexts_is_bit_exact(data, tmp_path):
    extra = RECIPE + ['--cpus', '3', '--kv-store', 'device']
    straight, resumed = tmp_path / 's', tmp_path / 'r'
    run_train(tiny_args(data, straight, epochs=2, batch=6, extra=extra), check=True)
    run_train(tiny_args(data, resumed, epochs=1, batch=6, extra=extra), check=True)
    proc = run_train(tiny_args(data, resumed, epochs=2, batch=6, extra=extra + ['--resume']), check=True)
    assert 'Restored optimizer states' in proc.stderr and '3 device(s)' in proc.stderr
    _same(straight, resumed, 2)


RUNNER = r'''
import sys
sys.path.insert(0, {root!r})
from crunet.cli import train
from crunet.train import state
result = train.main(sys.argv[1:])
print('replica spread %r' % state.replica_spread(result['module']), flush=True)
'''


def test_dist_sync_one_worker_two_devices_resume_keeps_replicas_identical(data, tmp_path):
    runner = tmp_path / 'runner.py'
    runner.write_text(RUNNER.format(root=ROOT))
    extra = RECIPE + ['--cpus', '2', '--kv-store', 'dist_sync']

    def launch(prefix, epochs, more=()):
        proc = subprocess.run([PYTHON, LAUNCH, '-n', '1', '-s', '1', '--launcher', 'local', PYTHON, str(runner)] +
                              tiny_args(data, prefix, epochs=epochs, batch=4, extra=extra + list(more)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240,
                              env=env(), cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-4000:]
        assert re.findall(r'replica spread (\S+)', proc.stdout) == ['0.0'], proc.stdout[-2000:]
        return proc.stdout
    straight, resumed = tmp_path / 's', tmp_path / 'r'
    launch(straight, 2)
    launch(resumed, 1)
    out = launch(resumed, 2, ['--resume'])
    assert 'Restored optimizer states' in out
    _same(straight, resumed, 2)


FP16_SUM = r'''
import os, sys
sys.path.insert(0, {root!r})
import mxnet as mx, numpy as np
from crunet.train import dist
os.environ['MXNET_UPDATE_ON_KVSTORE'] = '0'
kv = mx.kv.create('dist_sync')
if sys.argv[1] == 'switch':
    dist.sum_float16_in_float32(kv)                  # before any key exists, as Run does
rank, n = kv.rank, kv.num_workers
# element k: worker k % n pushes 2048, the others 1. In float16, 2048 + 1 rounds to 2048 (a tie,
# to even), so a sum that rounds after each addition gives 2048 wherever the 2048 is among the
# first two arrivals (two elements in three, in any arrival order); rounded once: 2050, exact.
vals = [np.where(np.arange(3000) % n == r, 2048, 1).astype(np.float16) for r in range(n)]
once = sum(v.astype(np.float32) for v in vals).astype(np.float16)
assert (once == 2048 + n - 1).all()
kv.init('g', mx.nd.zeros((3000,), dtype='float16'))
kv.push('g', mx.nd.array(vals[rank], dtype='float16'))
out = mx.nd.zeros((3000,), dtype='float16')
kv.pull('g', out=out)
print('rank %d dtype %s differ %d' % (rank, out.dtype.__name__, int((out.asnumpy() != once).sum())), flush=True)
'''


@pytest.mark.parametrize('extra_env', [{}, {'CRUNET_UNUSED_VARIABLE': 'x'}], ids=['env', 'env+1'])
def test_servers_sum_float16_gradients_rounded_once(tmp_path, extra_env):
    """Three workers push float16 arrays built so that a sum rounded to float16 after each
    addition differs from the exact one in two elements of three, whatever the arrival order.
    With dist.sum_float16_in_float32 the servers return the sum rounded once, in every process
    environment. (Without the switch the same servers rounded after each addition in one
    environment and once in another that differed by one unused variable: no test can pin that
    case, and the switch is the safeguard that makes the sum the same everywhere.)"""
    script = tmp_path / 'fp16_sum.py'
    script.write_text(FP16_SUM.format(root=ROOT))
    proc = subprocess.run([PYTHON, LAUNCH, '-n', '3', '-s', '1', '--launcher', 'local', PYTHON, str(script), 'switch'],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
                          env=env(**extra_env), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    rows = re.findall(r'rank (\d) dtype (\w+) differ (\d+)', proc.stdout)
    assert sorted(rows) == [('0', 'float16', '0'), ('1', 'float16', '0'), ('2', 'float16', '0')], proc.stdout[-3000:]
