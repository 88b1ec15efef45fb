"""Checkpoints: a resumed run equals an uninterrupted one, and a SIGKILL in the middle of a save loses nothing."""
import glob
import os
import signal
import subprocess
import time

import mxnet as mx
import numpy as np
import pytest

from crunet.train.state import latest_checkpoint, read_states
from train_helpers import PYTHON, ROOT, TRAIN, env, load_params, max_param_diff, run_train, tiny_args, tiny_data

# the rate changes inside the run (warmup, then a step at epoch 1) so that a resume which got
# the schedule, the update count or the momentum wrong would show
RECIPE = ['--lr-policy', 'step', '--lr-step-epochs', '1', '--lr-factor', '0.5', '--warmup-epochs', '0.5']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp('resume'), num_train=32, num_val=16)


def _states(prefix, epoch):
    meta, states = read_states('%s-%04d.states' % (prefix, epoch))
    return dict(meta, optimizer_states=states)


def _flatten(state):
    if state is None:
        return []
    if isinstance(state, (tuple, list)):
        return [a for s in state for a in _flatten(s)]
    return [state.asnumpy() if isinstance(state, mx.nd.NDArray) else np.asarray(state)]


@pytest.mark.parametrize('cpus', [1, 2])
def test_resume_is_exact(data, tmp_path, cpus):
    extra = RECIPE + ['--cpus', str(cpus)]
    batch = 4                   # per machine: 4 // cpus images per device
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    run_train(tiny_args(data, straight, epochs=2, batch=batch, extra=extra), check=True)
    first = tiny_args(data, resumed, epochs=2, batch=batch, extra=extra)
    # stop after one epoch without changing the schedule: --num-epochs 1 would do too here (the
    # step policy does not depend on it), but this is what an interrupted run looks like
    first[first.index('--num-epochs') + 1] = '1'
    run_train(first, check=True)
    proc = run_train(tiny_args(data, resumed, epochs=2, batch=batch, extra=extra + ['--load-epoch', '1']),
                     check=True)
    assert 'Restored optimizer states' in proc.stderr
    assert max_param_diff(load_params(straight, 2), load_params(resumed, 2)) == 0.0      # bit for bit
    a, b = _states(straight, 2), _states(resumed, 2)
    assert sorted(a['optimizer_states']) == sorted(b['optimizer_states'])
    assert a['update_counts'] == b['update_counts'] and a['schedule'] == b['schedule']
    for name in a['optimizer_states']:
        for x, y in zip(_flatten(a['optimizer_states'][name]), _flatten(b['optimizer_states'][name])):
            np.testing.assert_array_equal(x, y, err_msg=name)
    # the metrics file of the resumed run holds each epoch once
    with open(str(resumed) + '-metrics.jsonl') as f:
        assert [int(line.split('"epoch": ')[1].split(',')[0]) for line in f] == [0, 1]


def test_sigkill_while_saving_keeps_previous_checkpoint(data, tmp_path):
    prefix = tmp_path / 'm'
    args = tiny_args(data, prefix, epochs=3, extra=RECIPE)
    # the save hook pauses between writing PREFIX-0002.params.tmp and renaming it into place
    proc = subprocess.Popen([PYTHON, TRAIN] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env(CRUNET_TEST_SAVE_PAUSE='120:0002.params'), cwd=ROOT)
    try:
        deadline = time.time() + 180
        for line in proc.stderr:
            if line.startswith('CRUNET_TEST_SAVE_PAUSE: writing') and line.rstrip().endswith('-0002.params'):
                break
            assert time.time() < deadline
        else:
            pytest.fail('training ended before saving epoch 2 (rc %s)' % proc.wait())
        assert glob.glob('%s-0002.params.*.tmp' % prefix)          # killed mid-checkpoint
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not os.path.exists('%s-0002.params' % prefix)
    assert latest_checkpoint(str(prefix)) == 1
    mx.model.load_checkpoint(str(prefix), 1)                     # the previous one is intact
    proc = run_train(tiny_args(data, prefix, epochs=3, extra=RECIPE + ['--resume']), check=True)
    assert 'latest complete checkpoint is %s-0001.params' % prefix in proc.stderr
    assert 'Epoch[0]' not in proc.stderr and 'Epoch[2] Validation-accuracy=' in proc.stderr
    assert latest_checkpoint(str(prefix)) == 3
    mx.model.load_checkpoint(str(prefix), 3)
    # the resumed run took the prefix lock, removed the dead process's temporary and let it go
    assert not glob.glob('%s*.tmp' % prefix) and not os.path.exists('%s.lock' % prefix)


def test_resume_without_checkpoint_starts_fresh(data, tmp_path):
    proc = run_train(tiny_args(data, tmp_path / 'new', epochs=1, extra=['--resume']), check=True)
    assert 'no checkpoint under' in proc.stderr and latest_checkpoint(str(tmp_path / 'new')) == 1
