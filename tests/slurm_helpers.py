"""A real one-node Slurm for the tests: ``munged``, ``slurmctld`` and ``slurmd`` (Debian's
slurm-wlm 22.05 and munge, installed by ``make slurm``) on 127.0.0.1, everything (key, sockets,
state, spool, logs, pid files) under one temporary directory, on ports found free at run time.

:func:`start_slurm` starts the daemons and waits for the node to be ``idle``; :meth:`Slurm.stop`
stops them (SIGTERM, then SIGKILL) and is always called by the fixture's finalizer. Commands
run with :meth:`Slurm.env` reach this controller only (``SLURM_CONF``)."""
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from crunet.launch import free_port
from train_helpers import env as test_env

DAEMONS = ('munged', 'slurmctld', 'slurmd', 'srun', 'salloc', 'sbatch', 'scancel', 'sinfo', 'scontrol')

SLURM_CONF = """\
ClusterName=crunettest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket}
CredType=cred/munge
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
KillWait=5
InactiveLimit=0
MailProg=/bin/true
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def missing_programs():
    return [p for p in DAEMONS if shutil.which(p) is None]


class Slurm(object):
    def __init__(self, directory):
        self.dir = str(directory)
        self.host = socket.gethostname().split('.')[0]
        self.conf = os.path.join(self.dir, 'slurm.conf')
        self.socket = os.path.join(self.dir, 'munge.socket')
        self.procs = []

    def env(self, **extra):
        """The tests' environment (train_helpers.env) with this cluster's ``SLURM_CONF``."""
        e = dict(test_env(), SLURM_CONF=self.conf)
        for k in [k for k in e if k.startswith('SLURM_') and k != 'SLURM_CONF']:
            del e[k]                               # never the allocation of whoever runs the tests
        e.update(extra)
        return e

    def _spawn(self, argv, log):
        with open(os.path.join(self.dir, log), 'ab') as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        self.procs.append(p)
        return p

    def start(self, timeout=60):
        for sub in ('state', 'spool', 'munge'):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        key = os.path.join(self.dir, 'munge', 'munge.key')
        with open(key, 'wb') as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        self._spawn(['munged', '-F', '-f', '--key-file', key, '--socket', self.socket,
                     '--pid-file', os.path.join(self.dir, 'munge', 'munged.pid'),
                     '--log-file', os.path.join(self.dir, 'munge', 'munged.log'),
                     '--seed-file', os.path.join(self.dir, 'munge', 'munged.seed')], 'munged.out')
        self._wait(lambda: os.path.exists(self.socket), 20, 'munged did not create its socket')
        with open(self.conf, 'w') as f:
            f.write(SLURM_CONF.format(host=self.host, socket=self.socket, dir=self.dir, cpus=os.cpu_count(),
                                      ctld_port=free_port(), slurmd_port=free_port()))
        self._spawn(['slurmctld', '-D', '-i', '-f', self.conf], 'slurmctld.out')
        self._spawn(['slurmd', '-D', '-f', self.conf], 'slurmd.out')
        self._wait(self._idle, timeout, 'the node did not become idle')

    def _idle(self):
        out = self.run(['sinfo', '-h', '-o', '%T'], check=False)
        return out.returncode == 0 and out.stdout.strip() in ('idle', 'mixed', 'allocated')

    def _wait(self, cond, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            if cond():
                return
            time.sleep(0.3)
        logs = ''.join(open(os.path.join(self.dir, n)).read()[-1500:] for n in os.listdir(self.dir)
                       if n.endswith(('.out', '.log')))
        self.stop()
        raise RuntimeError('%s within %d s:\n%s' % (what, timeout, logs))

    def run(self, argv, check=True, timeout=60, **extra_env):
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
                             env=self.env(**extra_env))
        if check and out.returncode != 0:
            raise AssertionError('%s: %s %s' % (' '.join(argv), out.stdout, out.stderr))
        return out

    def allocate(self, ntasks=1):
        """A job id of an allocation of ``ntasks`` tasks on the node (no shell: ``salloc --no-shell``)."""
        out = self.run(['salloc', '--no-shell', '-N', '1', '-n', str(ntasks), '--oversubscribe'])
        for word in (out.stderr + out.stdout).split():
            if word.isdigit():
                return word
        raise AssertionError('salloc printed no job id: %s' % out.stderr)

    def allocation_env(self, job_id, ntasks=1, **extra):
        """The environment of a command inside allocation ``job_id`` (as salloc gives its shell)."""
        return self.env(SLURM_JOB_ID=job_id, SLURM_JOBID=job_id, SLURM_JOB_NODELIST=self.host,
                        SLURM_NODELIST=self.host, SLURM_NTASKS=str(ntasks), SLURM_NNODES='1', **extra)

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.time() + 3          # then SIGKILL: nothing of this cluster outlives the tests
        for p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait(timeout=5)
        self.procs = []


@pytest.fixture(scope='module')
def slurm_cluster(tmp_path_factory):
    """A running one-node Slurm; skipped, with the reason, where it is not installed (``make slurm``)."""
    if os.geteuid() != 0:
        pytest.skip('the test Slurm runs its daemons as root (slurmd); not root here')
    missing = missing_programs()
    if missing:
        pytest.skip('Slurm/munge not installed (%s missing): make slurm installs Debian\'s slurm-wlm and munge'
                    % ', '.join(missing))
    cluster = Slurm(tmp_path_factory.mktemp('slurm'))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
