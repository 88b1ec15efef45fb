"""``crunet-launch --launcher slurm`` on a real one-node Slurm (slurmctld, slurmd, munge on
127.0.0.1 under a temporary directory, see slurm_helpers): the ps-lite roles (or the Horovod
ranks) started by ``srun`` in the allocation train exactly as the local launcher's processes do,
and ``scancel`` of the job stops every process and leaves the last checkpoint intact."""
import shlex
import subprocess

import numpy as np
import pytest

from crunet.train.state import latest_checkpoint, read_states
from engine_helpers import LAUNCH, TAG, kill_tagged, needs_horovod, new_tag, tagged_pids, wait_for
from slurm_helpers import slurm_cluster  # noqa: F401  (fixture)
from train_helpers import PYTHON, ROOT, TRAIN, env, load_params, tiny_args, tiny_data


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp('slurm_data'), num_train=16, num_val=8)


def _engine_flags(engine):
    return ['-n', '2', '-s', '1'] if engine == 'ps-lite' else ['--engine', 'horovod', '-n', '2']


def _train(data, prefix, epochs, engine):
    kv = 'dist_sync' if engine == 'ps-lite' else 'horovod'
    return [PYTHON, TRAIN] + tiny_args(data, prefix, epochs=epochs, batch=4, extra=['--kv-store', kv])


def _run(argv, environ, timeout=240):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          env=environ, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout


@pytest.mark.parametrize('engine', ['ps-lite', pytest.param('horovod', marks=needs_horovod)])
def test_a_job_started_by_srun_writes_the_local_launchers_checkpoint(slurm_cluster, data, tmp_path, engine):
    here, there = tmp_path / 'local' / 'm', tmp_path / 'slurm' / 'm'
    _run([PYTHON, LAUNCH] + _engine_flags(engine) + _train(data, here, 1, engine), env())
    job_id = slurm_cluster.allocate(1)
    try:
        out = _run([PYTHON, LAUNCH, '--launcher', 'slurm'] + _engine_flags(engine) + _train(data, there, 1, engine),
                   slurm_cluster.allocation_env(job_id))
    finally:
        slurm_cluster.run(['scancel', job_id], check=False)
    assert 'global batch 8' in out
    a, b = load_params(here, 1), load_params(there, 1)
    assert sorted(a) == sorted(b)
    assert all(np.array_equal(a[k], b[k]) for k in a), [k for k in a if not np.array_equal(a[k], b[k])][:5]


def test_scancel_stops_every_process_and_leaves_the_last_checkpoint_intact(slurm_cluster, data, tmp_path):
    prefix = tmp_path / 'm'
    tag = new_tag()
    script = tmp_path / 'job.sh'
    command = [PYTHON, LAUNCH, '--launcher', 'slurm', '-n', '2', '-s', '1', '--env', '%s=%s' % (TAG, tag)] + \
        _train(data, prefix, 200, 'ps-lite')
    script.write_text('#!/bin/sh\nexec %s\n' % ' '.join(shlex.quote(c) for c in command))
    out = slurm_cluster.run(['sbatch', '--parsable', '-N', '1', '-n', '1', '--oversubscribe',
                             '--chdir', ROOT, '-o', str(tmp_path / 'job.out'), str(script)],
                            )
    job_id = out.stdout.strip().split(';')[0]
    try:
        assert wait_for(lambda: (latest_checkpoint(str(prefix)) or 0) >= 1, 180, step=0.5), \
            open(str(tmp_path / 'job.out')).read()[-4000:]
        assert len([c for c in tagged_pids(tag).values() if TRAIN in c and not c.startswith('srun')]) == 4
        slurm_cluster.run(['scancel', job_id])
        left = wait_for(lambda: not tagged_pids(tag), 30) or tagged_pids(tag)
        assert left is True, 'processes left running: %s' % left
        last = latest_checkpoint(str(prefix))
        assert last >= 1
        params = load_params(prefix, last)
        assert params and all(np.isfinite(v).all() for v in params.values())
        assert read_states('%s-%04d.states' % (prefix, last))[1]
    finally:
        slurm_cluster.run(['scancel', job_id], check=False)
        kill_tagged(tag)
