"""Starting and watching the processes of a job (ps-lite roles, Horovod ranks, or the ``srun``
clients that start them): every process in its own process group, all of them stopped (SIGTERM,
SIGCONT, then SIGKILL) as soon as one fails or is frozen (stopped, state ``T`` in
``/proc/PID/stat``) for ``frozen_timeout`` seconds, or when no process used any CPU for
``stall_timeout`` seconds. Used by :mod:`crunet.launch`.

Every process of a job carries ``CRUNET_JOB=<id>`` in its environment (``srun`` hands it on to
the tasks it starts), so the processes of the job that run on this machine without being its
children (a Slurm task under ``slurmstepd``) are watched and stopped too."""
import os
import signal
import subprocess
import sys
import time
import uuid

#: the variable naming the job of a process (see the module docstring)
JOB_VARIABLE = 'CRUNET_JOB'


def _log(msg):
    try:                                       # the terminal may be gone (SIGHUP): stopping comes first
        sys.stderr.write('launch.py: %s\n' % msg)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _die_with_parent():
    """In the child: SIGTERM when the launcher dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def process_environ(pid):
    """The environment of ``pid`` as {bytes: bytes} ({} when it cannot be read)."""
    try:
        with open('/proc/%d/environ' % pid, 'rb') as f:
            return dict(kv.split(b'=', 1) for kv in f.read().split(b'\0') if b'=' in kv)
    except (OSError, ValueError):
        return {}


def process_name(environ, pid):
    """``worker 1``, ``rank 0``, ... from the variables of a job's process (``pid N`` otherwise)."""
    get = lambda k: environ.get(k.encode(), b'').decode(errors='replace')   # noqa: E731
    if get('HOROVOD_RANK'):
        return 'rank %s' % get('HOROVOD_RANK')
    role = get('DMLC_ROLE')
    if role:
        return ('%s %s' % (role, get('DMLC_WORKER_ID') or get('DMLC_SERVER_ID'))).strip()
    return 'pid %d' % pid


def job_processes(job_id):
    """{pid: name} of the live processes of this machine whose environment holds ``CRUNET_JOB=job_id``."""
    out = {}
    want = job_id.encode()
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        environ = process_environ(int(entry))
        if environ.get(JOB_VARIABLE.encode()) == want and proc_state(int(entry))[0] not in (None, 'Z'):
            out[int(entry)] = process_name(environ, int(entry))
    return out


def proc_state(pid):
    """``(state letter, utime + stime in clock ticks)`` of ``pid`` from ``/proc/PID/stat``, or
    ``(None, None)`` when it cannot be read (gone, not Linux)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
    except OSError:
        return None, None
    fields = stat[stat.rfind(')') + 2:].split()      # the name in parentheses may hold spaces
    try:
        return fields[0], int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None, None


class JobFrozen(Exception):
    """A process of the job is frozen (stopped) or the whole job made no progress; the message names it."""


class Cluster(object):
    """The processes of a job: ``start``, ``wait`` (watching for failed and frozen ones), ``stop``.

    ``frozen_timeout``: seconds a process may stay stopped (state T) before the job is stopped
    (0: never); ``stall_timeout``: seconds without CPU use by any process (0: never)."""

    def __init__(self, jobs, log=None, kill_grace=3.0, frozen_timeout=30.0, stall_timeout=0.0, job_id=None):
        self.job_id = job_id or uuid.uuid4().hex
        self.jobs = [(name, argv, dict(env, **{JOB_VARIABLE: self.job_id})) for name, argv, env in jobs]
        self.procs = []
        self.log = log or _log
        self.kill_grace = kill_grace
        self.frozen_timeout = frozen_timeout
        self.stall_timeout = stall_timeout
        self._stopped_since = {}
        self._cpu = None
        self._cpu_since = None

    def start(self):
        for name, argv, env in self.jobs:
            try:
                p = subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=_die_with_parent)
            except OSError as err:
                self.stop()
                raise JobStartError('cannot start %s: %s: %s' % (name, argv[0], err.strerror or err))
            self.procs.append((name, p))

    def watch(self, now=None):
        """Raise :class:`JobFrozen` when a process has stayed stopped past ``frozen_timeout`` or no
        process used CPU for ``stall_timeout``."""
        now = time.time() if now is None else now
        total = 0
        watched = dict((p.pid, name) for name, p in self.procs if p.poll() is None)
        for pid, name in job_processes(self.job_id).items():
            watched.setdefault(pid, name)
        for pid in list(self._stopped_since):
            if pid not in watched:
                del self._stopped_since[pid]
        for pid, name in watched.items():
            state, cpu = proc_state(pid)
            total += cpu or 0
            if state in ('T', 't'):
                since = self._stopped_since.setdefault(pid, now)
                if self.frozen_timeout and now - since >= self.frozen_timeout:
                    raise JobFrozen('%s (pid %d) has been stopped (frozen, state %s) for %.0f s'
                                    % (name, pid, state, now - since))
            else:
                self._stopped_since.pop(pid, None)
        if self.stall_timeout:
            if self._cpu is None or total != self._cpu:
                self._cpu, self._cpu_since = total, now
            elif now - self._cpu_since >= self.stall_timeout:
                raise JobFrozen('no process used any CPU time for %.0f s (%s)' % (
                    now - self._cpu_since, ', '.join('%s pid %d' % (n, p.pid) for n, p in self.procs
                                                     if p.poll() is None)))

    def _strays(self):
        """Processes of the job on this machine that are not one of its process groups (Slurm tasks)."""
        groups = set(p.pid for _, p in self.procs)
        out = []
        for pid in job_processes(self.job_id):
            try:
                if os.getpgid(pid) not in groups:
                    out.append(pid)
            except OSError:
                pass
        return out

    def stop(self, sig=signal.SIGTERM):
        """Stop every process group still running: ``sig``, then SIGKILL after the grace period."""
        alive = [(n, p) for n, p in self.procs if p.poll() is None]
        strays = self._strays()
        for _, p in alive:
            _killpg(p, sig)
            _killpg(p, signal.SIGCONT)       # a stopped process handles SIGTERM only once continued
        for pid in strays:
            _kill(pid, sig)
            _kill(pid, signal.SIGCONT)
        deadline = time.time() + self.kill_grace
        while time.time() < deadline and (any(p.poll() is None for _, p in alive) or self._strays()):
            time.sleep(0.05)
        for _, p in self.procs:
            _killpg(p, signal.SIGKILL)       # the group may hold children of a finished leader
        for pid in self._strays():
            _kill(pid, signal.SIGKILL)
        for _, p in alive:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def wait(self, finish_timeout=30.0, poll=0.1):
        """Monitor until the workers (or Horovod ranks) finish (0) or any process fails (its code,
        non-zero) or freezes (1)."""
        workers = [(n, p) for n, p in self.procs if not n.startswith(('scheduler', 'server'))]
        workers_done_at = None
        next_watch = 0.0
        while True:
            if time.time() >= next_watch:
                next_watch = time.time() + 0.5
                try:
                    self.watch()
                except JobFrozen as exc:
                    self.stop()
                    error_line_out('%s; the job was stopped' % exc)
                    return 1
            for name, p in self.procs:
                rc = p.poll()
                if rc is not None and rc != 0:
                    how = 'killed by signal %d' % -rc if rc < 0 else 'exited with code %d' % rc
                    self.log('%s (pid %d) %s; stopping the other processes' % (name, p.pid, how))
                    self.stop()
                    return rc if rc > 0 else 128 - rc
            if all(p.poll() == 0 for _, p in workers):
                if all(p.poll() is not None for _, p in self.procs):
                    return 0
                if workers_done_at is None:
                    workers_done_at = time.time()
                elif time.time() - workers_done_at > finish_timeout:
                    self.log('workers finished; scheduler/servers still running after %.0f s: stopping them'
                             % finish_timeout)
                    self.stop()
                    return 0
            time.sleep(poll)


class JobStartError(Exception):
    """A process of the job could not be started (the others were stopped)."""


def error_line_out(msg):
    """One ``error:`` line on stderr (a closed stderr is ignored)."""
    try:
        sys.stderr.write('error: %s\n' % ' '.join(str(msg).split()))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _killpg(p, sig):
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError:
        pass
