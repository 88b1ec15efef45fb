"""The processes of a Horovod job (``crunet-launch --engine horovod``): ``N`` ranks of the same
command and the gloo rendezvous they meet at.

This is what ``horovodrun -np N --gloo`` does (horovod/runner/gloo_run.py): Horovod's own
rendezvous server (``RendezvousHTTPServer``, given the slot plan of
``horovod.runner.common.util.hosts.get_host_assignments``) runs in the launcher, and every rank
gets the variables horovodrun gives it (``HOROVOD_RANK``, ``HOROVOD_SIZE``,
``HOROVOD_LOCAL_RANK``, ..., ``HOROVOD_GLOO_RENDEZVOUS_ADDR``/``PORT``, ``HOROVOD_CONTROLLER=gloo``,
``HOROVOD_CPU_OPERATIONS=gloo``, ``HOROVOD_GLOO_IFACE``). The ranks are then started and watched
by :class:`crunet.cluster.Cluster` like the roles of a ps-lite job, so a rank that dies, freezes
or a signal to the launcher stops the whole job with a line naming the rank (horovodrun prints
a traceback and does not watch for frozen ranks). The command is passed as it is: no option of
the training command is taken for one of horovodrun's.

Over ssh (``--launcher ssh -H HOSTFILE``) the launcher is a thin front to ``horovodrun`` itself
(:func:`horovodrun_jobs`): one process, ``horovodrun -np N -H host:slots,... --gloo sh -c
'COMMAND'``, the command as one word so that horovodrun does not read its options as its own.
"""
import shlex
import threading

__all__ = ['Rendezvous', 'horovodrun_jobs', 'rank_env', 'rank_jobs', 'slot_plan']


class HorovodMissing(Exception):
    """The horovod package (its runner) cannot be imported here."""


def _runner():
    try:
        from horovod.runner.common.util import hosts
        from horovod.runner.http import http_server
    except ImportError as exc:
        raise HorovodMissing('the horovod package is not installed (%s); build it with make install '
                             'HOROVOD=1 or pip install -e .[horovod] (README "Horovod")' % exc)
    return hosts, http_server


def slot_plan(hosts_slots, num_ranks):
    """Horovod's SlotInfo of ``num_ranks`` ranks over ``[(host, slots)]``, each host filled in turn."""
    hosts, _ = _runner()
    infos = [hosts.HostInfo(h, s) for h, s in hosts_slots]
    return hosts.get_host_assignments(infos, num_ranks, num_ranks)


class Rendezvous(object):
    """Horovod's gloo rendezvous server on ``bind_host`` (a free port), serving ``plan``; ``stop()`` ends it."""

    def __init__(self, plan, bind_host='127.0.0.1'):
        _, http_server = _runner()
        self._httpd = http_server.RendezvousHTTPServer((bind_host, 0), http_server.RendezvousHandler, 0)
        self._httpd.init(plan)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()


def rank_env(slot, addr, port, iface):
    """The variables horovodrun gives the rank of ``slot`` (gloo controller and CPU operations)."""
    return {
        'HOROVOD_HOSTNAME': str(slot.hostname), 'HOROVOD_RANK': str(slot.rank), 'HOROVOD_SIZE': str(slot.size),
        'HOROVOD_LOCAL_RANK': str(slot.local_rank), 'HOROVOD_LOCAL_SIZE': str(slot.local_size),
        'HOROVOD_CROSS_RANK': str(slot.cross_rank), 'HOROVOD_CROSS_SIZE': str(slot.cross_size),
        'HOROVOD_GLOO_RENDEZVOUS_ADDR': str(addr), 'HOROVOD_GLOO_RENDEZVOUS_PORT': str(port),
        'HOROVOD_CONTROLLER': 'gloo', 'HOROVOD_CPU_OPERATIONS': 'gloo', 'HOROVOD_GLOO_IFACE': iface,
        'PYTHONUNBUFFERED': '1',
    }


def horovodrun_jobs(command, num_ranks, hosts, base_env, interface=None, horovodrun='horovodrun'):
    """[('horovodrun', argv, env)]: ``num_ranks`` ranks over ``hosts`` ([(host, ssh_port or None)], as
    many slots on each, filled in turn) started by horovodrun over ssh."""
    names = [h for h, _ in hosts]
    slots = -(-num_ranks // len(names))
    argv = [horovodrun, '-np', str(num_ranks), '-H', ','.join('%s:%d' % (h, slots) for h in names), '--gloo']
    ports = set(p for _, p in hosts if p)
    if ports:
        argv += ['-p', str(ports.pop())]
    if interface:
        argv += ['--network-interface', interface]
    return [('horovodrun', argv + ['sh', '-c', 'exec ' + ' '.join(shlex.quote(c) for c in command)], dict(base_env))]


def rank_jobs(command, plan, addr, port, iface, base_env, extra_env=None):
    """[(name, argv, env)] of the ranks of ``plan`` (``rank R``), every one running ``command``."""
    jobs = []
    for slot in plan:
        env = dict(base_env)
        env.update(extra_env or {})
        env.update(rank_env(slot, addr, port, iface))
        jobs.append(('rank %d' % slot.rank, list(command), env))
    return jobs
