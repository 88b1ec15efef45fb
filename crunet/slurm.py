"""``crunet-launch --launcher slurm``: the processes of a job started with ``srun`` on the nodes of
the Slurm allocation the launcher runs in (``salloc``, ``sbatch``).

The allocation is read from ``SLURM_JOB_NODELIST`` (expanded by ``scontrol show hostnames``) and
``SLURM_NTASKS``. The launcher's own process (the ps-lite scheduler, or Horovod's rendezvous)
stays where the launcher runs, the first node of the allocation for ``sbatch``; every other
process is one ``srun`` job step of one task on one node (``--nodes 1 --ntasks 1 --nodelist
NODE``), the nodes taken in turn. The steps share the allocation's CPUs (``--overlap``) and get
the launcher's environment (``--export ALL``), with the variables of their role or rank.
``--kill-on-bad-exit 1``: a task that fails ends its step; the launcher then stops the others.
"""
import os
import socket
import subprocess

__all__ = ['Allocation', 'SlurmError', 'allocation', 'srun_argv', 'spread']


class SlurmError(Exception):
    """No allocation, or one that cannot be read: the message says which variable or command."""


class Allocation(object):
    """The nodes and task count of the allocation; ``local``: every node is this machine."""

    def __init__(self, nodes, ntasks, job_id):
        self.nodes = nodes
        self.ntasks = ntasks
        self.job_id = job_id
        here = {socket.gethostname(), socket.gethostname().split('.')[0], 'localhost'}
        self.local = all(n in here for n in nodes)


def allocation(environ=None, scontrol='scontrol'):
    """The :class:`Allocation` of this environment; :class:`SlurmError` outside one."""
    environ = os.environ if environ is None else environ
    nodelist = environ.get('SLURM_JOB_NODELIST') or environ.get('SLURM_NODELIST')
    if not nodelist:
        raise SlurmError('--launcher slurm runs inside a Slurm allocation (SLURM_JOB_NODELIST is unset): start it '
                         'with salloc -N NODES -n TASKS ... or from an sbatch script')
    try:
        out = subprocess.run([scontrol, 'show', 'hostnames', nodelist], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError('--launcher slurm: cannot run %s show hostnames %s: %s' % (scontrol, nodelist, exc))
    nodes = out.stdout.split()
    if out.returncode != 0 or not nodes:
        raise SlurmError('--launcher slurm: SLURM_JOB_NODELIST %r: %s show hostnames failed: %s'
                         % (nodelist, scontrol, ' '.join(out.stderr.split()) or 'no node'))
    ntasks = environ.get('SLURM_NTASKS') or environ.get('SLURM_NPROCS')
    try:
        ntasks = int(ntasks) if ntasks else None
    except ValueError:
        raise SlurmError('--launcher slurm: SLURM_NTASKS %r is not a number' % ntasks)
    return Allocation(nodes, ntasks, environ.get('SLURM_JOB_ID'))


def srun_argv(node, name, command):
    """``srun`` of one task of ``command`` on ``node`` (step named ``name``)."""
    return ['srun', '--nodes=1', '--ntasks=1', '--nodelist=%s' % node, '--overlap', '--kill-on-bad-exit=1',
            '--export=ALL', '--job-name=%s' % name.replace(' ', '-'), '--quiet'] + list(command)


def spread(jobs, nodes, keep_here=('scheduler',)):
    """The jobs ``[(name, argv, env)]`` with every one but ``keep_here`` wrapped in ``srun`` (named
    ``NAME@NODE``): a Horovod rank on the node of its slot (``HOROVOD_HOSTNAME``), the others on the
    nodes in turn."""
    out = []
    i = 0
    for name, argv, env in jobs:
        if name in keep_here:
            out.append((name, argv, env))
            continue
        node = env.get('HOROVOD_HOSTNAME') or nodes[i % len(nodes)]
        i += 1
        out.append(('%s@%s' % (name, node), srun_argv(node, name, argv), env))
    return out
