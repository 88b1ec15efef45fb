"""The launcher's fault promises under each engine: ps-lite on this machine, Horovod ranks
(``--engine horovod``) and ps-lite roles started by ``srun`` in a real one-node Slurm allocation
(``--launcher slurm``). A process that dies stops all the others; SIGHUP/SIGTERM/SIGINT to the
launcher stops every process; a frozen (SIGSTOP) process stops the job with a line naming it.
The jobs are small Python programs that sleep; every wait is bounded."""
import os
import shlex
import signal
import subprocess
import sys

import pytest

from engine_helpers import LAUNCH, TAG, Running, kill_tagged, needs_horovod, new_tag, tagged_pids, wait_for
from slurm_helpers import slurm_cluster  # noqa: F401  (fixture)
from train_helpers import env as test_env

SLEEP = [sys.executable, '-c', 'import time; time.sleep(90)']
ENGINES = [pytest.param('ps-lite'), pytest.param('horovod', marks=needs_horovod), pytest.param('slurm')]


@pytest.fixture(scope='module')
def allocation(request):
    """Under the slurm engine: (cluster, job id) of a one-task allocation (salloc --no-shell)."""
    cluster = request.getfixturevalue('slurm_cluster')
    job_id = cluster.allocate(1)
    yield cluster, job_id
    cluster.run(['scancel', job_id], check=False)


class EngineJob(object):
    """``tools/launch.py`` of two workers (ranks) running SLEEP under ``engine``."""

    def __init__(self, engine, request, extra=()):
        self.tag = new_tag()
        self.engine = engine
        flags = ['-n', '2', '--env', '%s=%s' % (TAG, self.tag)] + list(extra)
        environ = test_env()
        if engine == 'horovod':
            flags += ['--engine', 'horovod']
        else:
            flags += ['-s', '1']
        if engine == 'slurm':
            cluster, job_id = request.getfixturevalue('allocation')
            environ = cluster.allocation_env(job_id)
            flags += ['--launcher', 'slurm']
        self.run = Running([sys.executable, LAUNCH] + flags + SLEEP, environ)
        self.expected = 2 if engine == 'horovod' else 4          # programs: ranks, or the ps-lite roles

    def programs(self):
        """{pid: name} of the running SLEEP programs of the job (the Slurm tasks, not the srun clients)."""
        from crunet.cluster import process_environ, process_name
        return {pid: process_name(process_environ(pid), pid) for pid, cmd in tagged_pids(self.tag).items()
                if 'time.sleep' in cmd and not cmd.startswith('srun')}

    def started(self):
        found = wait_for(lambda: len(self.programs()) == self.expected and self.programs(), 40)
        assert found, 'the job did not start: %s' % self.run.output()[-3000:]
        return found

    def pid_of(self, name):
        return [pid for pid, n in self.started().items() if n == name][0]

    def finish(self, timeout=30):
        try:
            rc = self.run.proc.wait(timeout=timeout)
        except Exception:
            rc = None
        left = wait_for(lambda: not tagged_pids(self.tag), 8) or tagged_pids(self.tag)
        return rc, self.run.output(), left

    def cleanup(self):
        self.run.kill()
        kill_tagged(self.tag)


@pytest.fixture
def engine_job(request):
    jobs = []

    def make(engine, extra=()):
        jobs.append(EngineJob(engine, request, extra))
        return jobs[-1]
    yield make
    for j in jobs:
        j.cleanup()


def _second(engine):
    return 'rank 1' if engine == 'horovod' else 'worker 1'


@pytest.mark.parametrize('engine', ENGINES)
def test_a_process_that_dies_stops_every_other(engine_job, engine):
    j = engine_job(engine)
    victim = j.pid_of(_second(engine))
    os.kill(victim, signal.SIGKILL)
    rc, out, left = j.finish()
    assert rc not in (None, 0), out[-3000:]
    assert left is True, 'processes left running: %s' % left
    assert any(_second(engine) in line and ('killed by signal 9' in line or 'exited with code' in line)
               for line in out.splitlines()), out[-3000:]


@pytest.mark.parametrize('sig', [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize('engine', ENGINES)
def test_a_signal_to_the_launcher_stops_every_process(engine_job, engine, sig):
    j = engine_job(engine)
    j.started()
    j.run.proc.send_signal(sig)
    rc, out, left = j.finish()
    assert rc == 128 + sig, (rc, out[-3000:])
    assert left is True, 'processes left running: %s' % left


@pytest.mark.parametrize('engine', ENGINES)
def test_a_frozen_process_stops_the_job_with_its_name(engine_job, engine):
    j = engine_job(engine, ['--frozen-timeout', '1'])
    victim = j.pid_of(_second(engine))
    os.kill(victim, signal.SIGSTOP)
    rc, out, left = j.finish()
    errors = [line for line in out.splitlines() if line.startswith('error:')]
    assert rc == 1 and len(errors) == 1, out[-3000:]
    assert '%s (pid %d) has been stopped (frozen, state T)' % (_second(engine), victim) in errors[0], errors
    assert left is True, 'processes left running: %s' % left


@pytest.mark.parametrize('flags,message', [
    (['--launcher', 'slurm', '-n', '2'], 'error: --launcher slurm runs inside a Slurm allocation (SLURM_JOB_NODELIST '
                                         'is unset)'),
    (['--engine', 'horovod'], 'error: -n WORKERS is needed (the number of ranks)'),
    (['--engine', 'horovod', '-n', '2', '-s', '1'], 'error: -s 1: Horovod has no servers'),
])
def test_engine_and_launcher_usage_errors_are_one_line(flags, message):
    environ = {k: v for k, v in test_env().items() if not k.startswith('SLURM_')}
    res = subprocess.run([sys.executable, LAUNCH] + flags + SLEEP, capture_output=True, text=True, timeout=30,
                         env=environ)
    assert res.returncode == 2 and res.stderr.count('\n') == 1 and res.stderr.startswith(message), res.stderr


@needs_horovod
def test_horovod_dry_run_gives_each_rank_horovodruns_variables():
    res = subprocess.run([sys.executable, LAUNCH, '--engine', 'horovod', '-n', '2', '--dry-run', 'python', 'train.py',
                          '--network', 'crunet'], capture_output=True, text=True, timeout=30, env=test_env())
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines] == [['rank', '0'], ['rank', '1']]
    for rank, line in enumerate(lines):
        for part in ('HOROVOD_RANK=%d' % rank, 'HOROVOD_SIZE=2', 'HOROVOD_LOCAL_RANK=%d' % rank,
                     'HOROVOD_CONTROLLER=gloo', 'HOROVOD_CPU_OPERATIONS=gloo', 'HOROVOD_GLOO_IFACE=lo',
                     'HOROVOD_GLOO_RENDEZVOUS_ADDR=127.0.0.1'):
            assert part in line, line
        assert line.endswith('python train.py --network crunet')        # the command word for word


def test_slurm_steps_of_a_ps_lite_job_go_round_the_nodes_and_the_scheduler_stays():
    from crunet import launch, slurm
    jobs = slurm.spread(launch.local_jobs(['python', 'train.py'], 2, 2, port=9000, root_uri='10.0.0.5',
                                          node_host=None), ['n1', 'n2'])
    assert [j[0] for j in jobs] == ['scheduler', 'server 0@n1', 'server 1@n2', 'worker 0@n1', 'worker 1@n2']
    assert jobs[0][1] == ['python', 'train.py']
    for name, argv, environ in jobs[1:]:
        node = name.rsplit('@', 1)[1]
        assert argv[:argv.index('python')] == ['srun', '--nodes=1', '--ntasks=1', '--nodelist=%s' % node, '--overlap',
                                               '--kill-on-bad-exit=1', '--export=ALL',
                                               '--job-name=%s' % name.split('@')[0].replace(' ', '-'), '--quiet']
        assert argv[-2:] == ['python', 'train.py']
        assert environ['DMLC_PS_ROOT_URI'] == '10.0.0.5' and 'DMLC_NODE_HOST' not in environ


@needs_horovod
def test_slurm_puts_each_horovod_rank_on_the_node_of_its_slot():
    from crunet import hvdlaunch, slurm
    plan = hvdlaunch.slot_plan([('n1', 2), ('n2', 2)], 4)
    jobs = slurm.spread(hvdlaunch.rank_jobs(['python', 't.py'], plan, '10.0.0.5', 1234, 'ib0', {}), ['n1', 'n2'])
    assert [j[0] for j in jobs] == ['rank 0@n1', 'rank 1@n1', 'rank 2@n2', 'rank 3@n2']
    assert [(j[2]['HOROVOD_LOCAL_RANK'], j[2]['HOROVOD_CROSS_RANK']) for j in jobs] == \
        [('0', '0'), ('1', '0'), ('0', '1'), ('1', '1')]
    assert all('--nodelist=%s' % j[2]['HOROVOD_HOSTNAME'] in j[1] for j in jobs)
    assert all(j[2]['HOROVOD_GLOO_IFACE'] == 'ib0' and j[2]['HOROVOD_GLOO_RENDEZVOUS_PORT'] == '1234' for j in jobs)


def test_horovod_over_ssh_is_horovodrun_with_the_command_as_one_word(tmp_path):
    hosts = tmp_path / 'hosts'
    hosts.write_text('node1\nnode2\n')
    res = subprocess.run([sys.executable, LAUNCH, '--engine', 'horovod', '--launcher', 'ssh', '-H', str(hosts), '-n',
                          '8', '--interface', 'ib0', '--dry-run', 'python', 'train.py', '--network', 'crunet'],
                         capture_output=True, text=True, timeout=30, env=test_env())
    assert res.returncode == 0, res.stderr
    name, rest = res.stdout.split(None, 1)
    assert name == 'horovodrun'
    assert shlex.split(rest) == ['horovodrun', '-np', '8', '-H', 'node1:4,node2:4', '--gloo', '--network-interface',
                                 'ib0', 'sh', '-c', 'exec python train.py --network crunet']
