"""``--kv-store horovod`` on CPU with gloo: a real Horovod 0.28.1 (built against this MXNet) under
``horovodrun`` and under ``crunet-launch --engine horovod``, training the tiny CRU-Net-22 (cifar
preset) at 32x32 on RecordIO files the tests write."""
import io
import json
import os
import re
import shlex
import signal
import subprocess
import time

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from crunet.train.state import latest_checkpoint, read_states
from engine_helpers import LAUNCH, TAG, Running, kill_tagged, needs_horovod, new_tag, process_env, tagged_pids
from train_helpers import PYTHON, ROOT, TRAIN, env, load_params, make_image, make_rec, run_train, tiny_args, tiny_data

pytestmark = needs_horovod


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp('hvd'), num_train=16, num_val=8)


@pytest.fixture(scope='module')
def id_data(tmp_path_factory):
    """16 training records whose label is their record id (the labels a rank saw name its records)."""
    d = str(tmp_path_factory.mktemp('hvd_ids'))
    return dict(train=make_rec(d, 'train', 16, num_classes=16, ids_as_labels=True, seed=1),
                val=make_rec(d, 'val', 8, num_classes=16, ids_as_labels=True, seed=2), num_train=16, num_classes=16)


def _hvd_args(data, prefix, epochs, batch=4, extra=()):
    return tiny_args(data, prefix, epochs=epochs, batch=batch, extra=['--kv-store', 'horovod'] + list(extra))


def _launch(argv, ranks=2, timeout=240, flags=()):
    proc = subprocess.run([PYTHON, LAUNCH, '--engine', 'horovod', '-n', str(ranks)] + list(flags) + [PYTHON, TRAIN]
                          + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout


def _checksums(out):
    """{epoch: {rank: checksum}} of the per-epoch lines of every rank."""
    found = {}
    for epoch, rank, value in re.findall(r'Epoch\[(\d+)\] Worker (\d+)/\d+ parameter checksum (\w+)', out):
        found.setdefault(int(epoch), {})[int(rank)] = value
    return found


def _bits_equal(a, b, epoch):
    pa, pb = load_params(a, epoch), load_params(b, epoch)
    assert sorted(pa) == sorted(pb)
    diff = sorted(((float(np.abs(pa[k] - pb[k]).max()), k) for k in pa if not np.array_equal(pa[k], pb[k])),
                  reverse=True)
    assert not diff, diff[:5]


def test_horovodrun_two_ranks_agree_after_every_epoch_and_read_half_the_records_each(id_data, tmp_path):
    """Under horovodrun itself (the command as one word: horovodrun would take --network for its
    own --network-interface), every rank holds the same weights and BatchNorm statistics after
    each epoch, each read its own half of the records, and rank 0 alone wrote the checkpoint."""
    prefix = tmp_path / 'm'
    seen = str(tmp_path / 'seen{rank}.jsonl')
    train = ' '.join(shlex.quote(a) for a in [PYTHON, TRAIN] + _hvd_args(id_data, prefix, 2, extra=[
        '--log-samples', seen, '--log-file', str(tmp_path / 'run.log')]))
    proc = subprocess.run([os.path.join(os.path.dirname(PYTHON), 'horovodrun'), '-np', '2', '-H', 'localhost:2',
                           '--gloo', 'sh', '-c', train], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=240, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-5000:]
    sums = _checksums(proc.stdout)
    assert sorted(sums) == [0, 1] and all(sorted(v) == [0, 1] and v[0] == v[1] for v in sums.values()), sums
    assert sums[0][0] != sums[1][0]                                  # the weights moved
    assert 'global batch 8; kvstore horovod' in proc.stdout
    records = {}
    for rank in (0, 1):
        with open(seen.format(rank=rank)) as f:
            rows = [json.loads(line) for line in f]
        assert [r['num_workers'] for r in rows] == [2, 2]
        records[rank] = [int(v) for v in rows[0]['labels']]
        assert len(records[rank]) == 8 and len(set(records[rank])) == 8
    assert not set(records[0]) & set(records[1]) and set(records[0]) | set(records[1]) == set(range(16))
    assert latest_checkpoint(str(prefix)) == 2
    with open(str(tmp_path / 'run.log')) as f:
        assert 'Node[1]' not in f.read()                             # rank 0's log only


def test_stop_and_resume_is_bit_exact(data, tmp_path):
    """Two epochs in one go and one epoch, stop, --resume: the same epoch-2 checkpoint, optimizer
    states included."""
    a, b = tmp_path / 'a' / 'm', tmp_path / 'b' / 'm'
    _launch(_hvd_args(data, a, 2))
    _launch(_hvd_args(data, b, 1))
    out = _launch(_hvd_args(data, b, 2, extra=['--resume']))
    assert 'latest complete checkpoint is %s-0001.params' % b in out
    _bits_equal(a, b, 1)
    _bits_equal(a, b, 2)
    with open('%s-0002.states' % a, 'rb') as f, open('%s-0002.states' % b, 'rb') as g:
        assert f.read() == g.read()


def _same_image_records(directory, num):
    """``num`` records holding one and the same image and label: every split of them into
    batches, shards and devices gives the same batches."""
    os.makedirs(directory, exist_ok=True)
    rec, idx = os.path.join(directory, 'same.rec'), os.path.join(directory, 'same.idx')
    buf = io.BytesIO()
    Image.fromarray(make_image(1, 4, 32, np.random.RandomState(3))).save(buf, format='PNG')
    writer = mx.recordio.MXIndexedRecordIO(idx, rec, 'w')
    for i in range(num):
        writer.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, 1.0, i, 0), buf.getvalue()))
    writer.close()
    return dict(train=rec, val=rec, num_train=num, num_classes=4)


def test_two_ranks_equal_one_process_with_two_cpu_contexts_at_the_same_global_batch(tmp_path):
    """2 ranks x --batch-size 4 against one process --cpus 2 --batch-size 8 (global batch 8 both).
    Each rank shuffles its own half of the records while the one process shuffles all of them, so
    with distinct images the two see other batches; here every record is the same image, so the
    batches are the same and what is compared is the arithmetic: allreduce-average of the two
    gradients x 1/4 against the device sum x 1/8, BatchNorm statistics averaged over ranks against
    over devices. Measured: equal bit for bit (max |difference| 0.0); allowed: 1e-6 (float32
    rounding of a different order of the same additions)."""
    same = _same_image_records(str(tmp_path / 'data'), 16)
    hv, one = tmp_path / 'hvd' / 'm', tmp_path / 'one' / 'm'
    _launch(_hvd_args(same, hv, 2))
    run_train(tiny_args(same, one, epochs=2, batch=8, extra=['--cpus', '2', '--kv-store', 'device']), check=True)
    for epoch in (1, 2):
        pa, pb = load_params(hv, epoch), load_params(one, epoch)
        assert sorted(pa) == sorted(pb)
        worst = max(float(np.abs(pa[k] - pb[k]).max()) for k in pa)
        assert worst <= 1e-6, (epoch, worst)
        moved = load_params(hv, 1) if epoch == 2 else None
        if moved is not None:
            assert any(not np.array_equal(moved[k], pa[k]) for k in pa)       # training did something


def test_a_rank_killed_mid_epoch_stops_the_job_naming_it_and_keeps_the_checkpoint(data, tmp_path):
    prefix = tmp_path / 'm'
    tag = new_tag()
    job = Running([PYTHON, LAUNCH, '--engine', 'horovod', '-n', '2', '--env', '%s=%s' % (TAG, tag), PYTHON, TRAIN]
                  + _hvd_args(data, prefix, 50, extra=['--disp-batches', '1']), env(), ROOT)
    try:
        assert job.saw('Epoch[1] Batch [1]', 180), job.output()[-4000:]
        assert latest_checkpoint(str(prefix)) >= 1
        ranks = {process_env(pid).get('HOROVOD_RANK'): pid for pid in tagged_pids(tag)}
        os.kill(ranks['1'], signal.SIGKILL)
        t0 = time.time()
        rc = job.proc.wait(timeout=30)
        took = time.time() - t0
        out = job.output()
        assert rc != 0 and took < 10, (rc, took)   # measured: about 3 s (the others get SIGTERM, 3 s grace)
        assert 'launch.py: rank 1 (pid %d) killed by signal 9; stopping the other processes' % ranks['1'] in out
        assert not tagged_pids(tag)
        last = latest_checkpoint(str(prefix))
        assert last >= 1
        params = load_params(prefix, last)
        assert params and all(np.isfinite(v).all() for v in params.values())
        meta, states = read_states('%s-%04d.states' % (prefix, last))
        assert states
    finally:
        job.kill()
        kill_tagged(tag)


def _one_error(text):
    lines = [ln for ln in text.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and 'Traceback' not in text, text[-3000:]
    return lines[0]


def test_wrong_combinations_are_one_error_line(data, tmp_path):
    """--kv-store horovod started without horovodrun; with --gpus on this CPU build; -s (ps-lite)
    given to the horovod engine: one line each, exit 2, nothing trained."""
    alone = run_train(_hvd_args(data, tmp_path / 'a', 1))
    assert alone.returncode == 2
    assert 'needs the environment of a Horovod rank' in _one_error(alone.stderr)
    assert 'horovodrun' in _one_error(alone.stderr)
    gpus = run_train(_hvd_args(data, tmp_path / 'g', 1, extra=['--gpus', '0']),
                     extra_env={'HOROVOD_RANK': '0', 'HOROVOD_SIZE': '1'})
    assert gpus.returncode == 2
    assert _one_error(gpus.stderr).startswith('error: --gpus 0: this MXNet build sees no GPU')
    servers = subprocess.run([PYTHON, LAUNCH, '--engine', 'horovod', '-n', '2', '-s', '1', PYTHON, TRAIN],
                             capture_output=True, text=True, timeout=60, env=env())
    assert servers.returncode == 2 and servers.stderr.startswith('error: -s 1: Horovod has no servers')
    assert servers.stderr.count('\n') == 1
    assert not os.path.exists(str(tmp_path / 'a-0001.params'))
