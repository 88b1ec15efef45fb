"""Helpers of the Horovod and Slurm tests: finding a job's processes by a variable the test gives
them (``--env CRUNET_TEST_TAG=...``), waiting with a bound, a running job that is always killed,
and whether horovod is installed."""
import importlib.util
import os
import signal
import subprocess
import threading
import time
import uuid

import pytest

from train_helpers import ROOT

LAUNCH = os.path.join(ROOT, 'tools', 'launch.py')
TAG = 'CRUNET_TEST_TAG'

needs_horovod = pytest.mark.skipif(
    importlib.util.find_spec('horovod') is None,
    reason='horovod is not installed in this environment (make install HOROVOD=1 builds it; make test does)')


def new_tag():
    return uuid.uuid4().hex


def tagged_pids(tag):
    """{pid: command line} of the live processes whose environment holds ``CRUNET_TEST_TAG=tag``."""
    out = {}
    want = ('%s=%s' % (TAG, tag)).encode()
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/environ' % pid, 'rb') as f:
                if want not in f.read().split(b'\0'):
                    continue
            with open('/proc/%s/stat' % pid) as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    continue
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                out[int(pid)] = f.read().replace(b'\0', b' ').decode(errors='replace')
        except (OSError, IndexError):
            continue
    return out


def process_env(pid):
    with open('/proc/%d/environ' % pid, 'rb') as f:
        return dict(kv.decode(errors='replace').split('=', 1) for kv in f.read().split(b'\0') if b'=' in kv)


def wait_for(cond, timeout, step=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    return cond()


def kill_tagged(tag):
    for pid in tagged_pids(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Running(object):
    """A command run in the background, its output collected line by line; ``kill`` at the end."""

    def __init__(self, argv, env, cwd=ROOT):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     cwd=cwd)
        self.lines = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def saw(self, text, timeout):
        return wait_for(lambda: any(text in line for line in self.lines), timeout)

    def output(self):
        self._thread.join(timeout=5)
        return ''.join(self.lines)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
