"""Training, scoring and the benchmark on GPUs (``make test-gpu``, marker ``gpu``).

Each test runs the real command line on the GPUs the installed CUDA build of MXNet can drive
(compute capability 5.0 to 8.9 for the cu112/cu117 wheels) and is skipped, with the reason, on
the CPU build, without a driver, or when every GPU present is one the build has no code for
(Hopper and newer). A tiny CRU-Net-22 at 32x32 on a generated RecordIO set keeps them short.
"""
import json
import os
import subprocess
import sys

import pytest

from crunet import cudabuild, gpu

pytestmark = pytest.mark.gpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _usable_gpus():
    """``(ids, '')`` of the GPUs this build can drive, or ``([], why not)``."""
    build = cudabuild.mxnet_build()
    if not build.cuda:
        return [], 'the installed MXNet (%s) is the CPU build: make install MXNET=cu117' % build.distribution
    try:
        cudabuild.preload_cuda_libraries(build.library)
        gpus = gpu.driver_gpus()
    except cudabuild.CudaSetupError as exc:
        return [], str(exc)
    usable = [g.index for g in gpus if gpu.can_run(g.compute_capability, build.cubin, build.ptx)]
    if not usable:
        return [], 'no GPU this build can drive: %s; %s %s holds %s' % (
            ', '.join('%s (%d.%d)' % ((g.name,) + g.compute_capability) for g in gpus) or 'none',
            build.distribution, build.version, gpu.describe_archs(build.cubin, build.ptx))
    return usable, ''


USABLE, WHY_NOT = _usable_gpus()
needs_gpu = pytest.mark.skipif(not USABLE, reason=WHY_NOT or 'no usable GPU')


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('OMP_NUM_THREADS', '2')
    return env


def _run(cmd, cwd, timeout=600):
    proc = subprocess.run([sys.executable] + cmd, cwd=str(cwd), env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)
    assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-5000:])
    return proc


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from train_helpers import tiny_data       # imports mxnet: after the CUDA libraries are loaded
    return tiny_data(tmp_path_factory.mktemp('gpu-data'))


def _train(data, prefix, *extra):
    from train_helpers import tiny_args
    _run([os.path.join(ROOT, 'train_imagenet.py')] + tiny_args(data, prefix, epochs=1, extra=extra), ROOT)
    import mxnet as mx
    params = mx.nd.load('%s-0001.params' % prefix)
    assert params
    for name, value in params.items():
        value = value.asnumpy()
        assert value.dtype.name == 'float32', name      # float16 runs save the float32 master copy
        assert (value == value).all() and abs(value).max() < 1e4, name
    return params


@needs_gpu
@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_training_steps_on_gpu0(data, tmp_path, dtype):
    """One epoch on GPU 0; float16 trains with multi-precision updates (float32 master weights)."""
    _train(data, tmp_path / 'm', '--gpus', str(USABLE[0]), '--dtype', dtype)


@needs_gpu
@pytest.mark.parametrize('kv_store', ['device', 'nccl'])
def test_data_parallel_training_over_the_gpus_present(data, tmp_path, kv_store):
    """All usable GPUs (one is enough to run the kvstore's code path) with kvstore device / nccl."""
    _train(data, tmp_path / 'm', '--gpus', ','.join(map(str, USABLE)), '--kv-store', kv_store)


@needs_gpu
def test_scoring_on_gpu_matches_the_cpu(data, tmp_path):
    prefix = tmp_path / 'm'
    _train(data, prefix, '--gpus', str(USABLE[0]))
    results = {}
    for where, flags in (('gpu', ['--gpus', str(USABLE[0])]), ('cpu', [])):
        out = tmp_path / ('%s.json' % where)
        _run([os.path.join(ROOT, 'score.py'), '--model', str(prefix), '--epoch', '1', '--data-val',
              data['val'], '--batch-size', '8', '--json', str(out)] + flags, tmp_path)
        results[where] = json.loads(out.read_text())
    assert results['gpu']['images'] == results['cpu']['images'] == data['num_val']
    # cuDNN and oneDNN round differently: at most one of the 32 images may change its answer
    assert abs(results['gpu']['top1_error'] - results['cpu']['top1_error']) <= 1.0 / data['num_val'] + 1e-9


@needs_gpu
def test_bench_speed_on_gpu0(tmp_path):
    out = tmp_path / 'speed.json'
    _run(['-m', 'bench.speed', '--gpus', str(USABLE[0]), '--models', 'crunet56', '--modes', 'score', 'train',
          '--batch-size', '2', '--image-size', '64', '--iters', '2', '--warmup', '1', '--repeat', '1',
          '--json', str(out)], ROOT)
    report = json.loads(out.read_text())
    assert report['rows'] and all('error' not in row for row in report['rows']), report['rows']
