"""crunet-train / train_imagenet.py under hostile conditions: nothing lost, nothing hung, nothing
crashed. Every failure is one ``error:`` line naming the flag, file, prefix or process at fault,
with the exit code of crunet.errors, no traceback, and no checkpoint lost or left half-written."""
import glob
import os
import re
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from crunet.cli import train as train_cli
from crunet.errors import EXIT_DIVERGED, EXIT_INTERNAL, EXIT_USER
from crunet.files import PrefixInUse, PrefixLock, SaveError, atomic_save, temp_path
from crunet.train.state import finite_params, latest_checkpoint
from train_helpers import PYTHON, ROOT, TRAIN, env, load_params, run_train, tiny_args, tiny_data

LAUNCH = os.path.join(ROOT, 'tools', 'launch.py')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp('adv'), num_train=32, num_val=16)


def _one_error_line(stderr):
    """The single ``error:`` line of a failed run (and no traceback)."""
    assert 'Traceback' not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def _no_temporaries(directory):
    assert not glob.glob(os.path.join(str(directory), '*.tmp')), os.listdir(str(directory))


# ----------------------------------------------------------------------------- bad flags
@pytest.mark.parametrize('flags, named', [
    (['--lr', '-1'], '--lr -1.0: expected a learning rate >= 0'),
    (['--lr', 'nan'], '--lr nan: must be a finite number'),
    (['--wd', 'nan'], '--wd nan: must be a finite number'),
    (['--wd', '-0.1'], '--wd -0.1: expected a weight decay'),
    (['--mom', '-5'], '--mom -5.0: expected a momentum in [0, 1)'),
    (['--mom', '1'], '--mom 1.0: expected a momentum'),
    (['--scale', 'nan'], '--scale nan: must be a finite number'),
    (['--min-random-area', 'inf'], '--min-random-area inf: must be a finite number'),
    (['--seed', '-1'], '--seed -1: expected a seed'),
    (['--lr-factor', '0'], '--lr-factor 0.0: expected a positive factor'),
    (['--warmup-epochs', '-2'], '--warmup-epochs -2.0'),
    (['--clip-gradient', '-1'], '--clip-gradient -1.0'),
    (['--lr-patience', '0'], '--lr-patience 0'),
    (['--top-k', '-1'], '--top-k -1'),
    (['--model-prefix', ''], "--model-prefix '': empty"),
    (['--lr', '1e39'], '--lr 1e+39: the learning rate reaches 1e+39, beyond float32'),
    (['--warmup-lr', '5e38', '--warmup-epochs', '1'], '--warmup-lr 5e+38: the learning rate reaches 5e+38'),
    (['--lr-policy', 'step', '--lr-step-epochs', '1,2', '--lr-factor', '1e300'],
     '--lr 0.05 x --lr-factor 1e+300 at epochs 1,2: the learning rate reaches inf, beyond float32'),
])
def test_bad_numeric_flag_is_one_line_naming_it(data, tmp_path, capsys, flags, named):
    argv = tiny_args(data, tmp_path / 'm', epochs=1) + flags
    with pytest.raises(SystemExit) as exc:
        train_cli.run(argv)
    assert exc.value.code == EXIT_USER
    err = capsys.readouterr().err
    assert _one_error_line(err).startswith('error: ' + named), err
    assert not os.listdir(str(tmp_path))                    # refused before anything was written


def test_default_learning_rate_times_the_step_factors_beyond_float32_is_refused(data, tmp_path, capsys):
    argv = tiny_args(data, tmp_path / 'm', epochs=1)
    del argv[argv.index('--lr'):argv.index('--lr') + 2]
    with pytest.raises(SystemExit) as exc:
        train_cli.run(argv + ['--lr-policy', 'step', '--lr-step-epochs', '1', '--lr-factor', '1e40'])
    assert exc.value.code == EXIT_USER
    assert _one_error_line(capsys.readouterr().err) == (
        "error: --lr 0.1 (the default for the depth) x --lr-factor 1e+40 at epochs 1: the learning rate reaches "
        "1e+39, beyond float32 (largest 3.40282e+38), the type MXNet's optimizers take it in")
    assert not os.listdir(str(tmp_path))


def test_nan_learning_rate_is_a_bad_flag_not_a_divergence(data, tmp_path):
    proc = run_train(tiny_args(data, tmp_path / 'm', epochs=1, extra=['--lr', 'nan']))
    assert proc.returncode == EXIT_USER
    assert _one_error_line(proc.stderr) == 'error: --lr nan: must be a finite number'
    assert not os.listdir(str(tmp_path))


# ----------------------------------------------------------------------------- work thrown away
def test_resume_without_symbol_file_continues_and_keeps_earlier_epochs(data, tmp_path):
    prefix = tmp_path / 'm'
    run_train(tiny_args(data, prefix, epochs=1), check=True)
    os.remove('%s-symbol.json' % prefix)
    with open('%s-0001.params' % prefix, 'rb') as f:
        first = f.read()
    proc = run_train(tiny_args(data, prefix, epochs=2, extra=['--resume']), check=True)
    assert 'latest complete checkpoint is %s-0001.params' % prefix in proc.stderr
    assert 'Epoch[0]' not in proc.stderr and 'Epoch[1] Validation-accuracy=' in proc.stderr
    with open('%s-0001.params' % prefix, 'rb') as f:
        assert f.read() == first                            # epoch 1 was not trained (or written) again
    assert latest_checkpoint(str(prefix)) == 2
    mx.model.load_checkpoint(str(prefix), 2)                # the graph is written again


def test_second_training_on_a_prefix_fails_at_once_and_a_dead_holder_does_not_block(data, tmp_path):
    prefix = tmp_path / 'm'
    args = tiny_args(data, prefix, epochs=1)
    # the first run pauses between writing PREFIX-0001.params's temporary and renaming it
    first = subprocess.Popen([PYTHON, TRAIN] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=env(CRUNET_TEST_SAVE_PAUSE='120:0001.params'), cwd=ROOT)
    try:
        deadline = time.time() + 180
        for line in first.stderr:
            if line.startswith('CRUNET_TEST_SAVE_PAUSE: writing') and line.rstrip().endswith('-0001.params'):
                break
            assert time.time() < deadline
        else:
            pytest.fail('the first run ended before saving (rc %s)' % first.wait())
        t0 = time.time()
        second = run_train(args, timeout=60)
        assert time.time() - t0 < 30
        assert second.returncode == EXIT_USER
        line = _one_error_line(second.stderr)
        assert line.startswith('error: --model-prefix %s is in use by process %d on ' % (prefix, first.pid)), line
        assert '%s.lock' % prefix in line
        assert glob.glob('%s-0001.params.*.tmp' % prefix)  # the first run's files were left alone
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # the lock file of the dead run is still there, holding its pid: it does not block
    with open('%s.lock' % prefix) as f:
        assert f.read().split()[0] == str(first.pid)
    third = run_train(args + ['--resume'], check=True)
    assert 'no checkpoint under' in third.stderr            # the killed run never completed epoch 1
    assert latest_checkpoint(str(prefix)) == 1
    _no_temporaries(tmp_path)                               # the dead run's temporary was removed
    assert not os.path.exists('%s.lock' % prefix)          # released at the end


def test_prefix_lock_in_process(tmp_path):
    prefix = str(tmp_path / 'sub' / 'm')
    lock = PrefixLock(prefix)
    with pytest.raises(PrefixInUse) as exc:
        PrefixLock(prefix)
    assert str(exc.value).startswith('--model-prefix %s is in use by process %d on ' % (prefix, os.getpid()))
    lock.release()
    with PrefixLock(prefix):                                # free again once released
        assert os.path.exists(prefix + '.lock')
    assert not os.path.exists(prefix + '.lock')


def test_atomic_save_temporaries_are_unique_per_process_and_call(tmp_path):
    path = str(tmp_path / 'x.params')
    seen = []
    atomic_save(path, lambda tmp: (seen.append(tmp), open(tmp, 'w').write('a')))
    atomic_save(path, lambda tmp: (seen.append(tmp), open(tmp, 'w').write('b')))
    assert seen[0] != seen[1] and all(s.startswith(path + '.') and s.endswith('.tmp') for s in seen)
    assert ('-%d-' % os.getpid()) in seen[0] and ('-%d-' % os.getpid()) in temp_path(path)
    # another process writing the same path concurrently never shares (or renames away) our temporary
    code = ('import sys; sys.path.insert(0, %r); from crunet.files import atomic_save; '
            'atomic_save(%r, lambda tmp: open(tmp, "w").write("other"))' % (ROOT, path))

    def writer(tmp):
        with open(tmp, 'w') as f:
            f.write('mine')
        subprocess.run([sys.executable, '-c', code], check=True)
        assert open(tmp).read() == 'mine'
    atomic_save(path, writer)
    assert open(path).read() == 'mine'
    _no_temporaries(tmp_path)


# ----------------------------------------------------------------------------- disk full
# an epoch's files take ~4.0 MB with the best copies (params ~1 MB, states ~1 MB each): with 5 MB
# epoch 2's .states fits and its .params does not, with 4.5 MB its .states does not fit either
@pytest.mark.parametrize('size, failing', [('5m', 'params'), ('4500k', 'states')])
def test_disk_full_while_saving_names_the_checkpoint_and_keeps_the_previous_one(data, tmp_path, size, failing):
    """A full disk in the middle of epoch 2's checkpoint: exit 1, one line naming PREFIX-0002.params
    (and the file of it that failed) and saying no space is left; epoch 1 intact, nothing temporary."""
    disk = tmp_path / 'disk'
    disk.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%s' % size, 'tmpfs', str(disk)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if mounted.returncode != 0:
        pytest.skip('cannot mount a small tmpfs here: %s' % mounted.stdout.strip())
    try:
        prefix = disk / 'm'
        proc = run_train(tiny_args(data, prefix, epochs=3, batch=4))
        assert proc.returncode == EXIT_INTERNAL, proc.stderr[-3000:]
        line = _one_error_line(proc.stderr)
        part = r' \(its %s-0002\.states\)' % re.escape(str(prefix)) if failing == 'states' else ''
        assert re.fullmatch(r'error: cannot write %s-0002\.params%s: no space left on device \(%s has \d+ KiB free\)'
                            % (re.escape(str(prefix)), part, re.escape(str(disk))), line), line
        assert 'fwrite' not in line and 'MXNet' not in line and '.tmp' not in line
        _no_temporaries(disk)
        assert latest_checkpoint(str(prefix)) == 1            # the previous checkpoint is intact
        mx.model.load_checkpoint(str(prefix), 1)
        assert not os.path.exists('%s-0002.params' % prefix)
    finally:
        subprocess.run(['umount', str(disk)], check=True)


def test_failed_write_raises_save_error_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / 'x.params')
    atomic_save(path, b'old')

    def failing(tmp):
        mx.nd.save(tmp, {'a': mx.nd.ones((2,))})
        raise OSError(28, 'No space left on device')
    with pytest.raises(SaveError) as exc:
        atomic_save(path, failing)
    assert str(exc.value) == 'cannot write %s: no space left on device' % path
    assert open(path, 'rb').read() == b'old'
    _no_temporaries(tmp_path)


# ----------------------------------------------------------------------------- non-finite values
# An update that overflows float32 on every CPU, whatever its kernels. Epoch 0 runs at a rate of
# 1e-30 (weights unchanged; the momentum buffer takes the decay term, 1000 x each weight); the step
# policy then raises the rate to 3e38 for epoch 1, whose NAG step is about 3e38 x 2700 x w: past
# float32's largest value (3.4e38) for every weight over 4e-4 in magnitude, which the initialised
# convolutions have by the hundreds. IEEE 754 rounds such a product to Inf, on any CPU.
OVERFLOWING_UPDATE = ['--lr', '1e-30', '--wd', '1000', '--lr-policy', 'step', '--lr-step-epochs', '1',
                      '--lr-factor', '3e68']


@pytest.mark.parametrize('formulation', ['plain', 'blockdiag8', 'blockdiag16'])
def test_non_finite_weights_in_an_epochs_last_batch_never_make_a_good_checkpoint(tmp_path, formulation):
    """Epoch 0 trains and saves; epoch 1 has one batch whose loss is finite (computed before the
    update) and whose update overflows: the run stops with exit 3 naming the parameter and the
    last good checkpoint, and never writes epoch 2; with every grouped-convolution formulation."""
    one = tiny_data(tmp_path / 'one', num_train=8, num_val=8)
    prefix = tmp_path / 'm'
    proc = run_train(tiny_args(one, prefix, epochs=2, batch=8,
                               extra=OVERFLOWING_UPDATE + ['--grouped-conv', formulation]))
    assert proc.returncode == EXIT_DIVERGED, proc.stderr[-3000:]
    assert 'Epoch[1] Train-cross-entropy=' in proc.stderr         # the epoch's one loss was finite
    line = _one_error_line(proc.stderr)
    assert re.fullmatch(r'error: \S+ became NaN/Inf at epoch 1 batch 1; '
                        r'last good checkpoint: %s-0001\.params' % re.escape(str(prefix)), line), line
    assert latest_checkpoint(str(prefix)) == 1 and not os.path.exists('%s-0002.params' % prefix)
    _no_temporaries(tmp_path)


def test_a_checkpoint_holding_nan_is_skipped_by_resume(tmp_path):
    """A checkpoint holding NaN (say, written by an older trainer) is skipped by --resume, which
    continues from the last finite one and writes that epoch again, finite."""
    one = tiny_data(tmp_path / 'one', num_train=8, num_val=8)
    prefix = tmp_path / 'm'
    run_train(tiny_args(one, prefix, epochs=1, batch=8), check=True)
    blob = {k: mx.nd.array(v) for k, v in load_params(prefix, 1).items()}
    name = sorted(k for k in blob if k.startswith('aux:'))[0]
    bad = blob[name].asnumpy()
    bad[0] = np.nan
    blob[name] = mx.nd.array(bad)
    mx.nd.save('%s-0002.params' % prefix, blob)
    resumed = run_train(tiny_args(one, prefix, epochs=2, batch=8, extra=['--resume']), check=True)
    assert ('--resume: skipping %s-0002.params: %s is not finite (NaN/Inf)' % (prefix, name[4:])) in resumed.stderr
    assert 'latest complete checkpoint is %s-0001.params' % prefix in resumed.stderr
    arg2, aux2 = mx.model.load_checkpoint(str(prefix), 2)[1:]
    assert finite_params(arg2, aux2) is None                # epoch 2 written again, finite


def test_non_finite_loss_mid_epoch_names_the_last_good_checkpoint(data, tmp_path):
    """Epoch 1's first update overflows (as above); its second batch's loss is then NaN: the run
    stops at that batch with exit 3 naming the last good checkpoint."""
    two = tiny_data(tmp_path / 'two', num_train=16, num_val=8)
    prefix = tmp_path / 'm'
    proc = run_train(tiny_args(two, prefix, epochs=3, batch=8, extra=OVERFLOWING_UPDATE))
    assert proc.returncode == EXIT_DIVERGED, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert re.fullmatch(r'error: loss became nan at epoch 1 batch 1; '
                        r'last good checkpoint: %s-0001\.params' % re.escape(str(prefix)), line), line
    assert latest_checkpoint(str(prefix)) == 1 and not os.path.exists('%s-0002.params' % prefix)


def test_finite_params_covers_weights_and_batchnorm_statistics():
    arg = {'w': mx.nd.ones((3,))}
    assert finite_params(arg, {'s_moving_var': mx.nd.ones((2,))}) is None
    assert finite_params(arg, {'s_moving_var': mx.nd.array([1, np.inf])}) == 's_moving_var'
    assert finite_params({'w': mx.nd.array([np.nan])}, {}) == 'w'


# ----------------------------------------------------------------------------- dist_sync
def _dist_args(data, prefix, epochs, extra=()):
    return ['--network', 'crunet', '--num-layers', '22', '--setting', 'cifar', '--num-classes', '4',
            '--image-shape', '3,32,32', '--data-train', data['train'], '--data-val', data['val'],
            '--batch-size', '4', '--num-epochs', str(epochs), '--lr', '0.05', '--lr-policy', 'step',
            '--lr-step-epochs', '1', '--lr-factor', '0.5', '--kv-store', 'dist_sync', '--model-prefix', str(prefix),
            '--data-nthreads', '1', '--disp-batches', '2', '--aug-off', '1', '--plot', '0'] + list(extra)


def _launch(workers, argv, timeout=240):
    proc = subprocess.run([PYTHON, LAUNCH, '-n', str(workers), '-s', '1', '--launcher', 'local', PYTHON] + argv,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout


def _same_checkpoint(a, b, epoch):
    pa, pb = load_params(a, epoch), load_params(b, epoch)
    assert sorted(pa) == sorted(pb)
    diff = {k: float(np.abs(pa[k] - pb[k]).max()) for k in pa if not np.array_equal(pa[k], pb[k])}
    assert not diff, sorted(diff.items(), key=lambda kv: -kv[1])[:5]


def test_dist_sync_runs_are_bit_identical_batchnorm_included_and_resume_exactly(data, tmp_path):
    """Two identical 2-worker runs write identical checkpoints (weights, BatchNorm moving
    statistics, optimizer states); a run stopped after epoch 1 and resumed writes the same epoch 2."""
    a, b, c = tmp_path / 'a' / 'm', tmp_path / 'b' / 'm', tmp_path / 'c' / 'm'
    _launch(2, [TRAIN] + _dist_args(data, a, 2))
    _launch(2, [TRAIN] + _dist_args(data, b, 2))
    _launch(2, [TRAIN] + _dist_args(data, c, 1))
    out = _launch(2, [TRAIN] + _dist_args(data, c, 2, ['--resume']))
    assert 'latest complete checkpoint is %s-0001.params' % c in out
    for other in (b, c):
        _same_checkpoint(a, other, 2)
        with open('%s-0002.states' % a, 'rb') as f, open('%s-0002.states' % other, 'rb') as g:
            assert f.read() == g.read()
    _same_checkpoint(a, b, 1)
    _same_checkpoint(a, c, 1)


WORKER_SUM = r'''
import os, sys
sys.path.insert(0, {root!r})
import mxnet as mx, numpy as np
from crunet.train import dist
os.environ['MXNET_UPDATE_ON_KVSTORE'] = '0'
kv = mx.kv.create('dist_sync')
rank, n = kv.rank, kv.num_workers
# values of very different magnitudes: their float32 sum depends on the order of the additions
vals = [(np.random.RandomState(r).uniform(-1, 1, (500,)) * 10.0 ** (3 * r)).astype(np.float32) for r in range(n)]
want = vals[0].copy()
for v in vals[1:]:
    want = want + v
sums = dist.WorkerSum(kv)
for _ in range(3):
    got = sums.sum({{'x': mx.nd.array(vals[rank]), 'y': mx.nd.array(-vals[rank])}})
    assert np.array_equal(got['x'].asnumpy(), want), rank
    assert np.array_equal(got['y'].asnumpy(), -want), rank
os.write(1, ('worker sum ok %d\n' % rank).encode())   # one write: lines of the workers never interleave
'''


def test_worker_sum_adds_in_rank_order_whatever_the_arrival_order(tmp_path):
    script = tmp_path / 'worker_sum.py'
    script.write_text(WORKER_SUM.format(root=ROOT))
    out = _launch(3, [str(script)], timeout=120)
    assert sorted(re.findall(r'worker sum ok (\d)', out)) == ['0', '1', '2'], out[-3000:]
