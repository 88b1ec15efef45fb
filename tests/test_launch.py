"""tools/launch.py and dist_sync training on localhost: sharded data, identical workers, failures stop the job."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

from crunet import launch
from train_helpers import PYTHON, ROOT, TRAIN, env, job_pids, make_rec

LAUNCH = os.path.join(ROOT, 'tools', 'launch.py')


@pytest.fixture(scope='module')
def id_data(tmp_path_factory):
    """64 training records whose label is their record id (so labels name the records read)."""
    d = str(tmp_path_factory.mktemp('dist'))
    return dict(train=make_rec(d, 'train', 64, ids_as_labels=True, seed=1),
                val=make_rec(d, 'val', 16, ids_as_labels=True, seed=2))


def _train_args(data, prefix, epochs, extra=()):
    return ['--network', 'crunet', '--num-layers', '22', '--setting', 'cifar', '--num-classes', '64',
            '--image-shape', '3,32,32', '--data-train', data['train'], '--data-val', data['val'],
            '--batch-size', '4', '--num-epochs', str(epochs), '--lr', '0.05', '--lr-policy', 'constant',
            '--kv-store', 'dist_sync', '--model-prefix', str(prefix), '--data-nthreads', '1',
            '--disp-batches', '2', '--aug-off', '1', '--plot', '0'] + list(extra)


def test_dist_sync_two_workers_one_server(id_data, tmp_path):
    prefix = tmp_path / 'm'
    seen = str(tmp_path / 'seen{rank}.jsonl')
    cmd = [PYTHON, LAUNCH, '-n', '2', '-s', '1', '--launcher', 'local', PYTHON, TRAIN] + \
        _train_args(id_data, prefix, 1, ['--log-samples', seen])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240,
                          env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-5000:]
    sums = dict(re.findall(r'Worker (\d)/2 final parameter checksum (\w+)', proc.stdout))
    assert sorted(sums) == ['0', '1'], proc.stdout[-3000:]
    assert sums['0'] == sums['1']                             # identical parameters on both workers
    assert 'global batch 8' in proc.stdout
    labels = {}
    for rank in (0, 1):
        with open(seen.format(rank=rank)) as f:
            rows = [json.loads(line) for line in f]
        assert len(rows) == 1 and rows[0]['num_workers'] == 2
        labels[rank] = [int(v) for v in rows[0]['labels']]
    # each worker read its own half of the records, once
    for rank in (0, 1):
        assert len(labels[rank]) == 32 and len(set(labels[rank])) == 32
    assert not set(labels[0]) & set(labels[1])
    assert set(labels[0]) | set(labels[1]) == set(range(64))
    assert os.path.exists('%s-0001.params' % prefix)        # rank 0 wrote the checkpoint


def test_killed_worker_stops_the_cluster(id_data, tmp_path):
    port = launch.free_port()
    cmd = [PYTHON, LAUNCH, '-n', '2', '-s', '1', '--port', str(port), PYTHON, TRAIN] + \
        _train_args(id_data, tmp_path / 'm', 100)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=ROOT)
    lines = []
    started = threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line)
            if 'Epoch[0] Batch [2]' in line:
                started.set()
    threading.Thread(target=reader, daemon=True).start()
    try:
        assert started.wait(180), ''.join(lines)[-3000:]
        pids = job_pids(port)
        worker = [pid for pid, role in pids.items() if role.startswith('worker')]
        assert len(pids) == 4 and len(worker) == 2, pids
        os.kill(worker[-1], signal.SIGKILL)
        t0 = time.time()
        rc = proc.wait(timeout=60)
        assert rc != 0
        assert time.time() - t0 < 60
        time.sleep(0.5)
        assert not job_pids(port), 'processes left behind'
        assert any('killed by signal 9' in line for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in job_pids(port):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_failing_process_fails_the_launch_fast():
    t0 = time.time()
    proc = subprocess.run([PYTHON, LAUNCH, '-n', '2', '-s', '1', PYTHON, '-c', 'import sys; sys.exit(3)'],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60, env=env())
    assert proc.returncode == 3 and time.time() - t0 < 20
    assert 'exited with code 3' in proc.stderr


def test_local_jobs_environment():
    jobs = launch.local_jobs(['python', 'x.py'], 2, 3, port=9999)
    roles = [(j[0], j[2]['DMLC_ROLE']) for j in jobs]
    assert roles == [('scheduler', 'scheduler'), ('server 0', 'server'), ('server 1', 'server'),
                     ('worker 0', 'worker'), ('worker 1', 'worker'), ('worker 2', 'worker')]
    for _, argv, e in jobs:
        assert argv == ['python', 'x.py']
        assert (e['DMLC_PS_ROOT_URI'], e['DMLC_PS_ROOT_PORT'], e['DMLC_NUM_SERVER'], e['DMLC_NUM_WORKER']) == \
            ('127.0.0.1', '9999', '2', '3')


def test_ssh_commands(tmp_path):
    hosts = tmp_path / 'hosts'
    hosts.write_text('# cluster\nnode1\nalice@node2:2222\n\n')
    parsed = launch.parse_hostfile(str(hosts))
    assert parsed == [('node1', None), ('alice@node2', 2222)]
    cmd = ['python', 'train_imagenet.py', '--kv-store', 'dist_sync', '--data-train', '/data/my train.rec']
    jobs = launch.ssh_jobs(cmd, 2, 2, parsed, root_uri='10.0.0.1', port=9091, workdir='/shared/crunet',
                           extra_env={'OMP_NUM_THREADS': '4'})
    assert jobs[0][0] == 'scheduler' and jobs[0][1] == cmd          # the scheduler runs here
    assert jobs[0][2]['DMLC_ROLE'] == 'scheduler' and jobs[0][2]['DMLC_PS_ROOT_URI'] == '10.0.0.1'
    names = [j[0] for j in jobs[1:]]
    assert names == ['server 0@node1', 'server 1@alice@node2', 'worker 0@node1', 'worker 1@alice@node2']
    argv = jobs[4][1]                                               # worker 1 on node2, port 2222
    assert argv[:argv.index('alice@node2')] == ['ssh', '-o', 'StrictHostKeyChecking=no', '-o', 'BatchMode=yes',
                                                '-tt', '-p', '2222']
    remote = argv[-1]
    for part in ('DMLC_ROLE=worker', 'DMLC_PS_ROOT_URI=10.0.0.1', 'DMLC_PS_ROOT_PORT=9091',
                 'DMLC_NUM_SERVER=2', 'DMLC_NUM_WORKER=2', 'OMP_NUM_THREADS=4', 'cd /shared/crunet && exec python'):
        assert part in remote, remote
    # the remote shell gets the command back word for word
    assert shlex.split(remote.split(' && exec ', 1)[1]) == cmd
    assert 'DMLC_ROLE=server' in jobs[1][1][-1]


def test_dry_run_and_usage_errors(tmp_path):
    out = subprocess.run([sys.executable, LAUNCH, '-n', '2', '-s', '1', '--dry-run', 'python', 'train.py'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    assert out.returncode == 0 and out.stdout.count('DMLC_ROLE=worker') == 2
    bad = subprocess.run([sys.executable, LAUNCH, '-n', '2', '--launcher', 'ssh', 'python', 'x.py'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    assert bad.returncode != 0 and bad.stderr.strip() == 'error: --launcher ssh needs -H HOSTFILE'
