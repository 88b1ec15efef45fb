#!/usr/bin/env python
"""Start a ps-lite cluster (scheduler, servers, workers) and run a training command on it.

Interface of MXNet's ``tools/launch.py``::

    python tools/launch.py -n 2 -s 1 --launcher local \\
        python train_imagenet.py --kv-store dist_sync --data-train train.rec ...
    python tools/launch.py -n 4 -s 4 --launcher ssh -H hosts \\
        python train_imagenet.py --kv-store dist_sync ...

Every process runs the same command with the DMLC environment (``DMLC_ROLE``,
``DMLC_PS_ROOT_URI``, ``DMLC_PS_ROOT_PORT``, ``DMLC_NUM_SERVER``, ``DMLC_NUM_WORKER``);
``import mxnet`` turns the scheduler and server processes into ps-lite nodes, the workers train.

The launcher watches every process it started. When one fails (non-zero exit, or killed), it
stops all the others (their whole process groups: SIGTERM, then SIGKILL) and exits non-zero
within seconds; it never waits on a dead peer. When all workers succeed it waits briefly for the
scheduler and servers to finish, then exits 0.

``--launcher ssh``: the scheduler runs here; servers and workers are spread round-robin over the
hosts of ``-H`` (one per line: ``host``, ``user@host`` or ``host:ssh_port``), each started with
``ssh HOST 'export DMLC_...; cd DIR; COMMAND'``. ``DIR`` is ``--sync-dst-dir`` (the current
directory is rsync'ed there first) or the current directory's path, which must then exist on
every host (a shared file system). Data files must be readable at the same path on every host.
"""
import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

FORWARD_PREFIXES = ('DMLC_', 'PS_', 'MXNET_', 'OMP_')


def free_port(host='127.0.0.1'):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def parse_hostfile(path):
    """``[(host, ssh_port or None)]`` from a hosts file (``#`` comments, blank lines ignored)."""
    hosts = []
    with open(path) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            host, port = line, None
            if ':' in line and not line.startswith('['):
                host, _, p = line.rpartition(':')
                if not p.isdigit():
                    raise ValueError('%s: bad line %r (host or host:port)' % (path, line))
                port = int(p)
            hosts.append((host, port))
    if not hosts:
        raise ValueError('%s lists no host' % path)
    return hosts


def dmlc_env(role, root_uri, root_port, num_servers, num_workers, extra=None):
    env = {'DMLC_ROLE': role, 'DMLC_PS_ROOT_URI': str(root_uri), 'DMLC_PS_ROOT_PORT': str(root_port),
           'DMLC_NUM_SERVER': str(num_servers), 'DMLC_NUM_WORKER': str(num_workers)}
    env.update(extra or {})
    return env


def parse_env_flags(items):
    """``--env NAME`` (take it from this environment) or ``--env NAME=VALUE``."""
    out = {}
    for item in items or ():
        name, eq, value = item.partition('=')
        if not eq:
            if name not in os.environ:
                continue
            value = os.environ[name]
        out[name] = value
    return out


def roles(num_servers, num_workers):
    """[(role, index)]: the scheduler first, then servers, then workers."""
    return ([('scheduler', 0)] + [('server', i) for i in range(num_servers)]
            + [('worker', i) for i in range(num_workers)])


# ----------------------------------------------------------------------------- local
def local_jobs(command, num_servers, num_workers, port=None, extra_env=None):
    """[(name, argv, env)] of a cluster on this machine (127.0.0.1)."""
    port = port or free_port()
    jobs = []
    for role, i in roles(num_servers, num_workers):
        env = dict(os.environ)
        env.update(extra_env or {})
        env.update(dmlc_env(role, '127.0.0.1', port, num_servers, num_workers,
                            {'DMLC_NODE_HOST': '127.0.0.1'}))
        if role == 'worker':
            env['DMLC_WORKER_ID'] = str(i)
        elif role == 'server':
            env['DMLC_SERVER_ID'] = str(i)
        jobs.append(('%s %d' % (role, i) if role != 'scheduler' else role, list(command), env))
    return jobs


# ----------------------------------------------------------------------------- ssh
def this_host_ip(peer=None):
    """An address of this machine that ``peer`` can reach (the route towards it)."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect((peer or '8.8.8.8', 9))
            return s.getsockname()[0]
        finally:
            s.close()
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def ssh_base(host, port=None, tty=True):
    cmd = ['ssh', '-o', 'StrictHostKeyChecking=no', '-o', 'BatchMode=yes']
    if tty:
        cmd.append('-tt')          # the remote job gets SIGHUP when this ssh client is killed
    if port:
        cmd += ['-p', str(port)]
    return cmd + [host]


def remote_command(env, workdir, command):
    """The shell line run on a host: export the environment, cd, exec the command."""
    exports = ' '.join('%s=%s' % (k, shlex.quote(str(v))) for k, v in sorted(env.items()))
    return 'export %s; cd %s && exec %s' % (exports, shlex.quote(workdir), ' '.join(shlex.quote(c) for c in command))


def ssh_jobs(command, num_servers, num_workers, hosts, root_uri=None, port=None, workdir=None,
             extra_env=None, interface=None, tty=True):
    """[(name, argv, env)]: the scheduler locally, servers and workers over ``hosts`` via ssh."""
    root_uri = root_uri or this_host_ip(hosts[0][0].rpartition('@')[2])
    port = port or free_port('0.0.0.0')
    workdir = workdir or os.getcwd()
    forward = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_PREFIXES)}
    forward.update(extra_env or {})
    if interface:
        forward['DMLC_INTERFACE'] = interface
    jobs = []
    s_i = w_i = 0
    for role, i in roles(num_servers, num_workers):
        env = dict(forward)
        env.update(dmlc_env(role, root_uri, port, num_servers, num_workers))
        if role == 'scheduler':
            local_env = dict(os.environ)
            local_env.update(env)
            local_env['DMLC_NODE_HOST'] = root_uri
            jobs.append(('scheduler', list(command), local_env))
            continue
        if role == 'server':
            host, hport = hosts[s_i % len(hosts)]
            s_i += 1
            env['DMLC_SERVER_ID'] = str(i)
        else:
            host, hport = hosts[w_i % len(hosts)]
            w_i += 1
            env['DMLC_WORKER_ID'] = str(i)
        argv = ssh_base(host, hport, tty) + [remote_command(env, workdir, command)]
        jobs.append(('%s %d@%s' % (role, i, host), argv, dict(os.environ)))
    return jobs


def sync_dir(hosts, local_dir, dst_dir):
    for host, port in hosts:
        rsh = ' '.join(ssh_base(host, port, tty=False)[:-1])
        subprocess.check_call(['ssh'] + ssh_base(host, port, tty=False)[1:] + ['mkdir -p %s' % shlex.quote(dst_dir)])
        subprocess.check_call(['rsync', '-az', '--delete', '--exclude', '.git', '--exclude', 'runs', '--rsh', rsh,
                               local_dir.rstrip('/') + '/', '%s:%s/' % (host, dst_dir.rstrip('/'))])


# ----------------------------------------------------------------------------- running
class Cluster(object):
    def __init__(self, jobs, log=None, kill_grace=3.0):
        self.jobs = jobs
        self.procs = []
        self.log = log or (lambda msg: sys.stderr.write('launch.py: %s\n' % msg))
        self.kill_grace = kill_grace

    def start(self):
        for name, argv, env in self.jobs:
            p = subprocess.Popen(argv, env=env, start_new_session=True)
            self.procs.append((name, p))

    def stop(self, sig=signal.SIGTERM):
        """Stop every process group still running: ``sig``, then SIGKILL after the grace period."""
        alive = [(n, p) for n, p in self.procs if p.poll() is None]
        for _, p in alive:
            _killpg(p, sig)
        deadline = time.time() + self.kill_grace
        while time.time() < deadline and any(p.poll() is None for _, p in alive):
            time.sleep(0.05)
        for _, p in self.procs:
            _killpg(p, signal.SIGKILL)       # the group may hold children of a finished leader
        for _, p in alive:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def wait(self, finish_timeout=30.0, poll=0.1):
        """Monitor until the workers finish (0) or any process fails (its code, non-zero)."""
        workers = [(n, p) for n, p in self.procs if n.startswith('worker')]
        workers_done_at = None
        while True:
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


def _killpg(p, sig):
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def build_parser():
    p = argparse.ArgumentParser(description='Launch a distributed (ps-lite) MXNet job',
                                usage='%(prog)s -n WORKERS [-s SERVERS] [--launcher local|ssh] [-H HOSTFILE] command ...')
    p.add_argument('-n', '--num-workers', required=True, type=int, help='number of worker processes')
    p.add_argument('-s', '--num-servers', type=int, default=None, help='number of servers (default: as many as workers)')
    p.add_argument('--launcher', choices=['local', 'ssh'], default='local', help='where the processes run')
    p.add_argument('-H', '--hostfile', type=str, help='ssh: file with one host per line')
    p.add_argument('--sync-dst-dir', type=str, help='ssh: rsync the current directory to this path on every host '
                                                    'and run there')
    p.add_argument('--env', action='append', default=[], help='NAME or NAME=VALUE forwarded to every process')
    p.add_argument('--port', type=int, default=None, help='scheduler port (default: a free one)')
    p.add_argument('--host-ip', type=str, default=None, help='ssh: address of this host as the workers see it')
    p.add_argument('--interface', type=str, default=None, help='ssh: network interface for ps-lite (DMLC_INTERFACE)')
    p.add_argument('--no-tty', action='store_true', help='ssh: do not allocate a remote tty (-tt)')
    p.add_argument('--finish-timeout', type=float, default=30.0,
                   help='seconds to wait for scheduler/servers after all workers succeeded')
    p.add_argument('--dry-run', action='store_true', help='print the commands instead of running them')
    p.add_argument('command', nargs=argparse.REMAINDER, help='the command every process runs')
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    command = args.command
    if command and command[0] == '--':
        command = command[1:]

    def fail(msg):
        sys.stderr.write('error: %s\n' % msg)
        return 2

    if not command:
        return fail('no command to launch')
    if args.num_workers < 1:
        return fail('-n must be at least 1')
    num_servers = args.num_servers if args.num_servers is not None else args.num_workers
    if num_servers < 1:
        return fail('-s must be at least 1')
    extra = parse_env_flags(args.env)
    if args.launcher == 'local':
        jobs = local_jobs(command, num_servers, args.num_workers, args.port, extra)
    else:
        if not args.hostfile:
            return fail('--launcher ssh needs -H HOSTFILE')
        try:
            hosts = parse_hostfile(args.hostfile)
        except (OSError, ValueError) as exc:
            return fail('-H %s: %s' % (args.hostfile, exc))
        workdir = args.sync_dst_dir or os.getcwd()
        jobs = ssh_jobs(command, num_servers, args.num_workers, hosts, args.host_ip, args.port, workdir,
                        extra, args.interface, tty=not args.no_tty)
        if args.sync_dst_dir and not args.dry_run:
            try:
                sync_dir(hosts, os.getcwd(), args.sync_dst_dir)
            except (OSError, subprocess.CalledProcessError) as exc:
                return fail('--sync-dst-dir: %s' % exc)
    if args.dry_run:
        for name, argv_, env in jobs:
            dm = ' '.join('%s=%s' % (k, env[k]) for k in sorted(env) if k.startswith('DMLC_')) \
                if args.launcher == 'local' or name == 'scheduler' else ''
            print('%-12s %s%s' % (name, dm + ' ' if dm else '', ' '.join(shlex.quote(a) for a in argv_)))
        return 0

    cluster = Cluster(jobs)

    def on_signal(signum, frame):
        cluster.log('received signal %d; stopping the cluster' % signum)
        cluster.stop()
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cluster.start()
    return cluster.wait(args.finish_timeout)


def run(argv=None):
    """The ``crunet-launch`` command: :func:`main`'s exit status."""
    return main(argv)


if __name__ == '__main__':
    sys.exit(run())
