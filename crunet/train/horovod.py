"""``--kv-store horovod``: Horovod's allreduce (``horovod.mxnet``, built against this MXNet) as the
kvstore of ``mx.mod.Module``.

MXNet 1.9.1 ships no ``horovod`` kvstore type (MXNet 2.0 does); :class:`HorovodStore` is that type
for 1.9.1, a ``mx.kvstore.KVStoreBase`` that Module accepts as its kvstore:

* ``hvd.init()`` when the store is made; ``rank``/``num_workers`` are Horovod's, so the record
  iterators read ``num_parts=hvd.size(), part_index=hvd.rank()`` and rank 0 alone writes;
* ``pushpull`` of a gradient: the devices of this rank summed, then ``hvd.allreduce_`` averaged over
  the ranks. Module scales the gradients by 1 / (its own batch), so the update is the one of the
  mean gradient over the global batch, as with ``dist_sync`` (where the servers sum and the scale
  is 1 / global batch): with a power-of-two number of ranks the two are the same numbers;
* the optimizer stays on every rank (``is_capable(OPTIMIZER)`` is False): its states are those
  of the checkpoint, as with ``dist_sync``;
* ``broadcast``: rank 0's values to every rank, used for the initial weights and BatchNorm
  statistics (:func:`crunet.train.state.pull_initial_params`).

:class:`RankSum` is :class:`crunet.train.dist.WorkerSum` for Horovod (BatchNorm statistics and
validation counters summed over the ranks at the end of an epoch): one allreduce per array,
whose result every rank receives bit for bit (the ring reduces each chunk once).

Processes are started by ``horovodrun -np N`` or ``crunet-launch --engine horovod``
(:mod:`crunet.hvdlaunch`); each finds its rank in ``HOROVOD_RANK``/``HOROVOD_SIZE``.
"""
import importlib.util
import os

import mxnet as mx

from ..errors import CLIError

__all__ = ['RANK_VARIABLES', 'HorovodStore', 'RankSum', 'check_horovod_args']

#: the variables horovodrun (and crunet-launch --engine horovod) give every rank
RANK_VARIABLES = ('HOROVOD_RANK', 'HOROVOD_SIZE')


def check_horovod_args(args, gpus, environ=None):
    """``--kv-store horovod`` needs the horovod package and a rank environment; one line naming
    the flag otherwise (:class:`CLIError`)."""
    environ = os.environ if environ is None else environ
    if args.kv_store != 'horovod':
        return
    if importlib.util.find_spec('horovod') is None:
        raise CLIError('--kv-store horovod: the horovod package is not installed; build it against this '
                       'MXNet with make install HOROVOD=1 (or pip install -e .[horovod], see README "Horovod")')
    missing = [v for v in RANK_VARIABLES if v not in environ]
    if missing:
        raise CLIError('--kv-store horovod needs the environment of a Horovod rank (%s unset): start the '
                       'training with horovodrun -np N ... or crunet-launch --engine horovod -n N ...'
                       % ', '.join(missing))
    if gpus and not _horovod_gpu_ops():
        raise CLIError('--kv-store horovod --gpus %s: this Horovod was built without GPU operations; rebuild '
                       'it with HOROVOD_GPU_OPERATIONS=NCCL (README "Horovod")' % args.gpus)


def _horovod_gpu_ops():
    import horovod.mxnet as hvd
    return hvd.nccl_built()


class HorovodStore(mx.kvstore.KVStoreBase):
    """MXNet's ``horovod`` kvstore type (see the module docstring)."""

    def __init__(self):
        import horovod.mxnet as hvd
        hvd.init()
        self._hvd = hvd

    @property
    def type(self):
        return 'horovod'

    @property
    def rank(self):
        return self._hvd.rank()

    @property
    def local_rank(self):
        return self._hvd.local_rank()

    @property
    def num_workers(self):
        return self._hvd.size()

    @staticmethod
    def is_capable(capability):
        return False                           # no optimizer, no server-side anything

    def init(self, key, value):
        """Nothing to keep: every rank holds its own copy (the initial values come from :meth:`broadcast`)."""

    def broadcast(self, key, value, out, priority=0):
        """Rank 0's ``value`` into every array of ``out``."""
        outs = out if isinstance(out, (list, tuple)) else [out]
        self._hvd.broadcast_(value, root_rank=0, name='bcast.%s' % key, priority=priority)
        for o in outs:
            if o is not value:
                value.copyto(o)

    def pushpull(self, key, value, out=None, priority=0):
        """Every array of ``value`` (one per device of this rank) replaced by the mean over the ranks of
        this rank's device sum; written to ``out`` instead when it is given."""
        values = value if isinstance(value, (list, tuple)) else [value]
        total = values[0] if out is None and len(values) == 1 else _device_sum(values)
        self._hvd.allreduce_(total, op=self._hvd.Average, name='grad.%s' % key, priority=priority)
        targets = values if out is None else (out if isinstance(out, (list, tuple)) else [out])
        for t in targets:
            if t is not total:
                total.copyto(t)

    def set_optimizer(self, optimizer):
        raise NotImplementedError('the horovod kvstore keeps no optimizer: every rank updates locally')

    def save_optimizer_states(self, fname, dump_optimizer=False):
        raise NotImplementedError('the horovod kvstore keeps no optimizer states')

    def load_optimizer_states(self, fname):
        raise NotImplementedError('the horovod kvstore keeps no optimizer states')


def _device_sum(values):
    total = values[0].copy()
    for v in values[1:]:
        total += v.as_in_context(total.context)
    return total


class RankSum(object):
    """{name: array} summed (or averaged) over the ranks, the same bits on every rank."""

    def __init__(self, kv):
        self.kv = kv

    def sum(self, named):
        hvd = self.kv._hvd
        out = {}
        for i, name in enumerate(sorted(named)):
            out[name] = named[name].copy()
            hvd.allreduce_(out[name], op=hvd.Sum, name='sum.%s' % name, priority=-i)
        mx.nd.waitall()
        return out

    def mean(self, named):
        return {k: v / self.kv.num_workers for k, v in self.sum(named).items()}
