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
scheduler and servers to finish, then exits 0. The launcher itself stopped by SIGINT, SIGTERM or
SIGHUP (a closed terminal, a dropped ssh session) stops every process it started first (exit
128 + the signal); killed with SIGKILL, its children receive SIGTERM from the kernel (Linux
``PR_SET_PDEATHSIG``).

Frozen processes: ps-lite waits for a peer that stopped answering forever, so a process that
stays stopped (``SIGSTOP``/``SIGTSTP``, state ``T`` in ``/proc/PID/stat``) for
``--frozen-timeout`` seconds (default 30; 0: never) stops the job with a line naming it (role,
rank, pid) and exit status 1. ``--stall-timeout SECONDS`` (default 0: off) also stops a job in
which no process it started here has used any CPU time for that long (a deadlock). Both see the
processes of this machine: in ``ssh`` mode the scheduler and the ssh clients, not the remote
processes.

Bad input is one line ``error: ...`` and exit status 2: a program that does not exist, a
``--port`` already in use, a bad hosts file.

``--launcher ssh``: the scheduler runs here; servers and workers are spread round-robin over the
hosts of ``-H`` (one per line: ``host``, ``user@host`` or ``host:ssh_port``), each started with
``ssh HOST 'export DMLC_...; cd DIR; COMMAND'``. ``DIR`` is ``--sync-dst-dir`` (the current
directory is rsync'ed there first) or the current directory's path, which must then exist on
every host (a shared file system). Data files must be readable at the same path on every host.
The remote processes get this environment's ``DMLC_*``, ``PS_*``, ``MXNET_*``, ``OMP_*``,
``NCCL_*``, ``LD_LIBRARY_PATH`` and ``CUDA_VISIBLE_DEVICES`` variables and those of ``--env
NAME[=VALUE]``; ``--dry-run`` prints them.

``--engine horovod``: ``-n`` ranks of the command (``--kv-store horovod``), started as horovodrun's
gloo mode starts them (:mod:`crunet.hvdlaunch`) and watched as above (over ssh: by horovodrun).
``--launcher slurm``: inside a ``salloc``/``sbatch`` allocation, every process but the scheduler
is one ``srun`` step on the allocated nodes (:mod:`crunet.slurm`); ``-n`` defaults to ``SLURM_NTASKS``.
"""
import argparse
import errno
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys

from . import hvdlaunch, slurm
from .args import ArgParser
from .cluster import Cluster, JobStartError, error_line_out

#: variables of this environment the ssh launcher passes to the remote processes
FORWARD_PREFIXES = ('DMLC_', 'PS_', 'MXNET_', 'OMP_', 'NCCL_')
FORWARD_NAMES = ('LD_LIBRARY_PATH', 'CUDA_VISIBLE_DEVICES')
#: signals that stop the launcher and, first, every process it started
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def forwarded_env(environ=None):
    """The variables of ``environ`` (default: this process's) that the ssh launcher forwards."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(FORWARD_PREFIXES) or k in FORWARD_NAMES}


def check_port(port, host):
    """``None`` if ``port`` can be bound on ``host``, else why not (one line)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        return None
    except OverflowError:
        return 'not a port number (1-65535)'
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            return 'already in use on %s' % host
        return 'cannot be bound on %s (%s)' % (host, err.strerror or err)
    finally:
        s.close()


def find_program(name):
    """``None`` if ``name`` can be run here (a path to an executable file, or on PATH), else why not."""
    if os.sep in name:
        if not os.path.isfile(name):
            return 'no such file'
        if not os.access(name, os.X_OK):
            return 'not executable'
        return None
    return None if shutil.which(name) else 'not found on PATH'


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
def local_jobs(command, num_servers, num_workers, port=None, extra_env=None, root_uri='127.0.0.1',
               node_host='127.0.0.1'):
    """[(name, argv, env)] of a cluster on this machine (127.0.0.1); with another ``root_uri`` and
    no ``node_host``, the same roles for nodes that reach the scheduler at ``root_uri`` (Slurm)."""
    port = port or free_port('127.0.0.1' if root_uri.startswith('127.') else '0.0.0.0')
    jobs = []
    for role, i in roles(num_servers, num_workers):
        env = dict(os.environ)
        env.update(extra_env or {})
        env.update(dmlc_env(role, root_uri, port, num_servers, num_workers,
                            {'DMLC_NODE_HOST': node_host} if node_host else {}))
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
    forward = forwarded_env()
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
def build_parser():
    p = ArgParser(description='Launch a distributed MXNet job (ps-lite or Horovod)',
                  usage='%(prog)s -n WORKERS [-s SERVERS] [--engine ps-lite|horovod] [--launcher local|ssh|slurm] '
                        '[-H HOSTFILE] command ...')
    p.add_argument('-n', '--num-workers', type=int, default=None,
                   help='number of worker processes (Horovod: ranks); --launcher slurm: default SLURM_NTASKS')
    p.add_argument('-s', '--num-servers', type=int, default=None,
                   help='ps-lite: number of servers (default: as many as workers)')
    p.add_argument('--engine', choices=['ps-lite', 'horovod'], default='ps-lite',
                   help='ps-lite: scheduler, servers and workers (--kv-store dist_sync ...); horovod: N ranks '
                        'meeting at a gloo rendezvous, as horovodrun starts them (--kv-store horovod)')
    p.add_argument('--launcher', choices=['local', 'ssh', 'slurm'], default='local',
                   help='where the processes run: this machine, ssh to -H hosts, or srun on the nodes of '
                        'the Slurm allocation the launcher runs in')
    p.add_argument('-H', '--hostfile', type=str, help='ssh: file with one host per line')
    p.add_argument('--sync-dst-dir', type=str, help='ssh: rsync the current directory to this path on every host '
                                                    'and run there')
    p.add_argument('--env', action='append', default=[], metavar='NAME[=VALUE]',
                   help='forwarded to every process (NAME alone: its value here)')
    p.add_argument('--port', type=int, default=None, help='scheduler port (default: a free one)')
    p.add_argument('--host-ip', type=str, default=None, help='ssh, slurm: address of this host as the workers see it')
    p.add_argument('--interface', type=str, default=None,
                   help='ssh, slurm: network interface (ps-lite: DMLC_INTERFACE; horovod: HOROVOD_GLOO_IFACE)')
    p.add_argument('--no-tty', action='store_true', help='ssh: do not allocate a remote tty (-tt)')
    p.add_argument('--finish-timeout', type=float, default=30.0,
                   help='seconds to wait for scheduler/servers after all workers succeeded')
    p.add_argument('--frozen-timeout', type=float, default=30.0,
                   help='stop the job when one of its processes stays stopped (SIGSTOP, state T) this many '
                        'seconds (0: never)')
    p.add_argument('--stall-timeout', type=float, default=0.0,
                   help='stop the job when none of its processes here used CPU time for this many seconds '
                        '(0, the default: never)')
    p.add_argument('--dry-run', action='store_true', help='print the commands instead of running them')
    p.add_argument('command', nargs=argparse.REMAINDER, help='the command every process runs')
    return p


class _Refused(Exception):
    """A bad flag or command: one ``error:`` line, exit 2."""


def _checked_flags(args):
    """``(command, num_servers)`` of valid flags; :class:`_Refused` naming the flag otherwise."""
    command = args.command[1:] if args.command and args.command[0] == '--' else args.command
    if not command:
        raise _Refused('no command to launch')
    if args.num_workers is None and args.launcher != 'slurm':
        raise _Refused('-n WORKERS is needed (the number of %s)' % ('ranks' if args.engine == 'horovod' else 'workers'))
    if args.num_workers is not None and args.num_workers < 1:
        raise _Refused('-n must be at least 1')
    if args.engine == 'horovod' and args.num_servers is not None:
        raise _Refused('-s %d: Horovod has no servers (-s is a ps-lite flag); -n is the number of ranks'
                       % args.num_servers)
    num_servers = args.num_servers if args.num_servers is not None else args.num_workers
    if num_servers is not None and num_servers < 1:
        raise _Refused('-s must be at least 1')
    for flag in ('finish_timeout', 'frozen_timeout', 'stall_timeout'):
        value = getattr(args, flag)
        if not value >= 0:
            raise _Refused('--%s must be 0 or more seconds, not %r' % (flag.replace('_', '-'), value))
    for item in args.env:
        name = item.partition('=')[0]
        if not name or not (name[0].isalpha() or name[0] == '_') or not name.replace('_', 'a').isalnum():
            raise _Refused('--env %r: not NAME or NAME=VALUE with a variable name' % item)
    if not args.dry_run:
        why = find_program(command[0])
        if why:
            raise _Refused('cannot run %r: %s' % (command[0], why))
    if args.port is not None and not args.dry_run:
        why = check_port(args.port, '127.0.0.1' if args.launcher == 'local' else '0.0.0.0')
        if why:
            raise _Refused('--port %d: %s; pick another or leave --port out (a free port)' % (args.port, why))
    return command, num_servers


def _cluster_jobs(args, command, num_servers, extra):
    """``(jobs, rendezvous or None)``: the (name, argv, env) of every process of ``--engine`` on
    ``--launcher`` and, for Horovod, the rendezvous server the ranks meet at (running)."""
    if args.launcher == 'ssh':
        return (hvdlaunch.horovodrun_jobs(command, args.num_workers, _hosts(args), dict(os.environ, **extra),
                                          args.interface) if args.engine == 'horovod' else
                _jobs(args, command, num_servers, extra)), None
    alloc = None
    if args.launcher == 'slurm':
        try:
            alloc = slurm.allocation()
        except slurm.SlurmError as exc:
            raise _Refused(exc)
    here = alloc is None or alloc.local
    host = '127.0.0.1' if here else (args.host_ip or this_host_ip(alloc.nodes[-1]))
    if host.startswith('127.') and not here:
        raise _Refused('--launcher slurm: this host\'s address for %s is %s (loopback); pass --host-ip ADDRESS'
                       % (alloc.nodes[-1], host))
    num = args.num_workers or alloc.ntasks or len(alloc.nodes)
    rendezvous = None
    if args.engine == 'horovod':
        if not here and not args.interface:
            raise _Refused('--engine horovod on several nodes (%s) needs --interface NAME: the network interface '
                           'the ranks reach each other on (eth0, ib0, ...)' % ','.join(alloc.nodes))
        nodes = alloc.nodes if alloc else ['localhost']
        try:
            plan = hvdlaunch.slot_plan([(n, -(-num // len(nodes))) for n in nodes], num)
            rendezvous = None if args.dry_run else hvdlaunch.Rendezvous(plan, host if here else '0.0.0.0')
        except hvdlaunch.HorovodMissing as exc:
            raise _Refused('--engine horovod: %s' % exc)
        jobs = hvdlaunch.rank_jobs(command, plan, host, rendezvous.port if rendezvous else 0,
                                   args.interface or 'lo', os.environ, extra)
    else:
        if args.interface:
            extra = dict(extra, DMLC_INTERFACE=args.interface)
        jobs = local_jobs(command, num_servers or num, num, args.port, extra, root_uri=host,
                          node_host=host if here else None)
    return (slurm.spread(jobs, alloc.nodes) if alloc else jobs), rendezvous


def _hosts(args):
    if not args.hostfile:
        raise _Refused('--launcher ssh needs -H HOSTFILE')
    try:
        return parse_hostfile(args.hostfile)
    except (OSError, ValueError) as exc:
        raise _Refused('-H %s: %s' % (args.hostfile, exc))


def _jobs(args, command, num_servers, extra):
    """The (name, argv, env) of every process over ssh (the folder synced first)."""
    hosts = _hosts(args)
    workdir = args.sync_dst_dir or os.getcwd()
    root_uri = args.host_ip or this_host_ip(hosts[0][0].rpartition('@')[2])
    remote = [h for h, _ in hosts if h.rpartition('@')[2] not in ('localhost', '127.0.0.1', '::1')]
    if root_uri.startswith('127.') and remote and not args.dry_run:
        raise _Refused('--launcher ssh: the address of this host that %s would use is %s (loopback); pass '
                       '--host-ip ADDRESS' % (remote[0], root_uri))
    jobs = ssh_jobs(command, num_servers, args.num_workers, hosts, root_uri, args.port, workdir,
                    extra, args.interface, tty=not args.no_tty)
    if args.sync_dst_dir and not args.dry_run:
        try:
            sync_dir(hosts, os.getcwd(), args.sync_dst_dir)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise _Refused('--sync-dst-dir: %s' % exc)
    return jobs


def _print_jobs(args, jobs, extra):
    shown = set(extra) | set(forwarded_env())
    for name, argv_, env in jobs:
        dm = ' '.join('%s=%s' % (k, shlex.quote(env[k])) for k in sorted(env)
                      if k.startswith(('DMLC_', 'HOROVOD_')) or k in shown) \
            if args.launcher != 'ssh' or name == 'scheduler' else ''
        print('%-12s %s%s' % (name, dm + ' ' if dm else '', ' '.join(shlex.quote(a) for a in argv_)))


def _stop_on_signals(cluster):
    """SIGHUP, SIGTERM, SIGINT: stop every process group once, exit 128 + the signal."""
    def on_signal(signum, frame):
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # one stop, however many signals follow
        cluster.log('received signal %d (%s); stopping the cluster' % (signum, signal.Signals(signum).name))
        cluster.stop()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(128 + signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        command, num_servers = _checked_flags(args)
        extra = parse_env_flags(args.env)
        jobs, rendezvous = _cluster_jobs(args, command, num_servers, extra)
        if args.dry_run:
            _print_jobs(args, jobs, extra)
            return 0
        cluster = Cluster(jobs, frozen_timeout=args.frozen_timeout, stall_timeout=args.stall_timeout)
        _stop_on_signals(cluster)
        try:
            cluster.start()
        except JobStartError as exc:
            raise _Refused(exc)
    except _Refused as exc:
        error_line_out(exc)
        return 2
    try:
        return cluster.wait(args.finish_timeout)
    finally:
        if rendezvous is not None:
            rendezvous.stop()


def run(argv=None):
    """The ``crunet-launch`` command: :func:`main`'s exit status."""
    return main(argv)


if __name__ == '__main__':
    sys.exit(run())
