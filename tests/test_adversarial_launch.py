"""The cluster launcher (tools/launch.py, crunet-launch) under signals, frozen processes and bad
input: every process it started is stopped, the job ends with a non-zero status and one
``error:`` line naming the culprit, and nothing is left running. The jobs here are small Python
programs that sleep (no MXNet, nothing listening); every wait is bounded."""
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

from crunet import launch
from train_helpers import ROOT, job_pids

LAUNCH = os.path.join(ROOT, 'tools', 'launch.py')
SLEEP = [sys.executable, '-c', 'import time; time.sleep(60)']


def _wait_for(cond, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    return cond()


class Job(object):
    """tools/launch.py -n 2 -s 1 on a command, on a port of its own; killed at the end whatever happens."""

    def __init__(self, command=SLEEP, extra=()):
        self.port = launch.free_port()
        self.proc = subprocess.Popen([sys.executable, LAUNCH, '-n', '2', '-s', '1', '--port', str(self.port)]
                                     + list(extra) + list(command),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)

    def started(self):
        pids = _wait_for(lambda: len(job_pids(self.port)) == 4 and job_pids(self.port), 20)
        assert pids, 'the job did not start: %s' % (self.proc.poll(),)
        return pids

    def finish(self, timeout=20):
        t0 = time.time()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        out, err = self.proc.communicate() if rc is not None else ('', '')
        left = _wait_for(lambda: not job_pids(self.port), 2) is True or job_pids(self.port)
        return rc, time.time() - t0, err, left

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
        for pid in job_pids(self.port):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def job():
    jobs = []

    def make(*args, **kwargs):
        jobs.append(Job(*args, **kwargs))
        return jobs[-1]
    yield make
    for j in jobs:
        j.cleanup()


def _one_error(err, *names):
    lines = [ln for ln in err.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and 'Traceback' not in err, err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize('sig', [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_launcher_stops_every_process_it_started(job, sig):
    """A closed terminal or a dropped ssh session (SIGHUP), kill (SIGTERM), Ctrl-C (SIGINT)."""
    j = job()
    j.started()
    j.proc.send_signal(sig)
    rc, took, err, left = j.finish()
    assert rc == 128 + sig and took < 8, (rc, took, err)
    assert left is True, 'processes left running: %s' % left


def test_launcher_killed_with_sigkill_takes_its_processes_along(job):
    j = job()
    j.started()
    j.proc.kill()
    rc, took, err, left = j.finish()
    assert rc == -signal.SIGKILL
    assert left is True, 'processes left running: %s' % left


def test_frozen_server_stops_the_job_and_is_named(job):
    j = job(extra=['--frozen-timeout', '1'])
    pids = j.started()
    server = [pid for pid, role in pids.items() if role == 'server 0'][0]
    os.kill(server, signal.SIGSTOP)
    rc, took, err, left = j.finish()
    assert rc == 1 and took < 10, (rc, took, err)
    _one_error(err, 'server 0 (pid %d)' % server, 'stopped (frozen, state T)')
    assert left is True, 'processes left running: %s' % left


def test_frozen_worker_with_the_default_timeout_is_not_stopped_at_once(job):
    """The default bound (30 s) leaves a short pause (Ctrl-Z, a debugger) alone."""
    j = job()
    pids = j.started()
    worker = [pid for pid, role in pids.items() if role == 'worker 1'][0]
    os.kill(worker, signal.SIGSTOP)
    time.sleep(2)
    assert j.proc.poll() is None
    os.kill(worker, signal.SIGCONT)
    j.proc.send_signal(signal.SIGTERM)
    rc, _, _, left = j.finish()
    assert rc == 143 and left is True


def test_job_without_cpu_progress_stops_with_stall_timeout(job):
    j = job(extra=['--stall-timeout', '1.5'])
    j.started()
    rc, took, err, left = j.finish()
    assert rc == 1 and took < 10, (rc, took, err)
    _one_error(err, 'no process used any CPU time for', 'scheduler pid', 'worker 1 pid')
    assert left is True


def test_program_that_does_not_exist_is_one_line(job, tmp_path):
    for prog, why in (('no-such-program-xyz', 'not found on PATH'), (str(tmp_path / 'nope.py'), 'no such file')):
        res = subprocess.run([sys.executable, LAUNCH, '-n', '1', prog, '--flag'], capture_output=True, text=True,
                             timeout=30)
        assert res.returncode == 2 and res.stderr == "error: cannot run %r: %s\n" % (prog, why)


def test_port_already_in_use_names_the_port_and_the_flag():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(('127.0.0.1', 0))
        s.listen(1)
        port = s.getsockname()[1]
        t0 = time.time()
        res = subprocess.run([sys.executable, LAUNCH, '-n', '1', '-s', '1', '--port', str(port)] + SLEEP,
                             capture_output=True, text=True, timeout=30)
    finally:
        s.close()
    assert res.returncode == 2 and time.time() - t0 < 10
    assert res.stderr == ('error: --port %d: already in use on 127.0.0.1; pick another or leave --port out '
                          '(a free port)\n' % port)
    assert not job_pids(port)


@pytest.mark.parametrize('flags,message', [
    (['--frozen-timeout', '-1'], '--frozen-timeout must be 0 or more seconds'),
    (['--stall-timeout', 'nan'], '--stall-timeout must be 0 or more seconds'),
    (['--env', '1BAD=x'], "--env '1BAD=x': not NAME or NAME=VALUE"),
    (['--port', '70000'], '--port 70000: not a port number'),
    (['-n', '0'], '-n must be at least 1'),
])
def test_bad_flags_are_one_line(flags, message):
    argv = [sys.executable, LAUNCH] + (['-n', '1'] if '-n' not in flags else []) + flags + SLEEP
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and res.stderr.count('\n') == 1 and res.stderr.startswith('error: ')
    assert message in res.stderr, res.stderr


def test_ssh_dry_run_shows_the_forwarded_variables(tmp_path):
    hosts = tmp_path / 'hosts'
    hosts.write_text('node1\nalice@node2:2222\n')
    env = dict(os.environ, LD_LIBRARY_PATH='/opt/cuda/lib64', CUDA_VISIBLE_DEVICES='0,1', NCCL_DEBUG='INFO',
               NCCL_SOCKET_IFNAME='eth0', OMP_NUM_THREADS='4', MY_SETTING='from here', UNRELATED='no')
    res = subprocess.run([sys.executable, LAUNCH, '--dry-run', '--launcher', 'ssh', '-H', str(hosts), '-n', '2',
                          '-s', '1', '--host-ip', '10.0.0.1', '--env', 'MY_SETTING', '--env', 'EXTRA=a b',
                          'python', 'train_imagenet.py', '--kv-store', 'dist_sync'],
                         capture_output=True, text=True, timeout=30, env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ['scheduler', 'server', 'worker', 'worker']
    for line in lines[1:]:                                  # the remote shell line of each ssh command
        remote = shlex.split(line.split(None, 2)[2])[-1]
        exports = dict(kv.split('=', 1) for kv in shlex.split(remote.split(';', 1)[0])[1:])
        assert exports['LD_LIBRARY_PATH'] == '/opt/cuda/lib64' and exports['CUDA_VISIBLE_DEVICES'] == '0,1'
        assert exports['NCCL_DEBUG'] == 'INFO' and exports['NCCL_SOCKET_IFNAME'] == 'eth0'
        assert exports['OMP_NUM_THREADS'] == '4' and exports['DMLC_PS_ROOT_URI'] == '10.0.0.1'
        assert exports['MY_SETTING'] == 'from here' and exports['EXTRA'] == 'a b'
        assert 'UNRELATED' not in exports
    assert 'LD_LIBRARY_PATH=/opt/cuda/lib64' in lines[0] and 'NCCL_DEBUG=INFO' in lines[0]
