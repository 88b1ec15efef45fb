"""The kvstore of a run: creation, and what the workers of a synchronous cluster agree on
(BatchNorm statistics and validation metrics averaged over the workers).

Synchronous clusters (``dist_sync``, ``dist_device_sync``) run with ``MXNET_UPDATE_ON_KVSTORE=0``:
the servers sum the gradients and every worker applies the same update, so the optimizer states
stay on the workers (and in the checkpoints). ``dist_async`` keeps the optimizer on the servers.

Reproducibility of a synchronous cluster (two runs with the same flags and seed):

* weights and optimizer states: bit-identical with 1 or 2 workers. With 3 or more workers the
  servers add the workers' gradients in the order the pushes arrive, and float addition is not
  associative, so the last bits of a sum (and from there the weights) may differ between runs;
  all workers of one run still agree bit for bit (they pull the same sum);
* BatchNorm statistics and validation metrics: :class:`WorkerSum` adds the workers' values
  locally in rank order, so the result is bit-identical for any number of workers (given
  identical local values).
"""
import os

import mxnet as mx

__all__ = ['create_kvstore', 'rank_devices', 'is_cluster', 'is_sync_cluster', 'worker_sums', 'WorkerSum', 'sum_float16_in_float32']


def create_kvstore(kv_store, num_devices, dtype='float32'):
    """The kvstore for ``--kv-store`` on ``num_devices`` local devices: None for one device and
    no cluster. For a synchronous cluster the workers update locally (see the module docstring),
    and under ``dtype`` float16 the servers sum the gradients in float32
    (:func:`sum_float16_in_float32`), before any key exists. ``horovod``: Horovod's allreduce
    (:class:`crunet.train.horovod.HorovodStore`)."""
    if kv_store == 'horovod':
        from .horovod import HorovodStore
        return HorovodStore()
    if 'dist' in kv_store:
        if kv_store != 'dist_async':
            os.environ['MXNET_UPDATE_ON_KVSTORE'] = '0'
        kv = mx.kv.create(kv_store)
        if dtype == 'float16' and kv_store != 'dist_async':
            sum_float16_in_float32(kv)
        return kv
    if num_devices > 1:
        return mx.kv.create(kv_store)
    return None


def sum_float16_in_float32(kv):
    """Make the parameter servers of ``kv`` add float16 pushes in float32.

    With ``MXNET_UPDATE_ON_KVSTORE=0`` MXNet never registers an optimizer on the servers, so it
    never sends them ``kSetMultiPrecision`` (only ``KVStore.set_optimizer`` does, for a
    multi-precision optimizer). Once a server has received it, it keeps a float32 copy of every
    non-float32 key, merges pushes in float32 and answers pulls with the float16 rounding of the
    float32 sum: one rounding in all, whatever the number of workers.

    Without it, what the servers do was measured not to be fixed: three workers pushing arrays
    where per-addition float16 rounding must show (2048 + 1 + 1) got the sum rounded after each
    addition (2000 of 3000 elements off) in one process environment and rounded once in another
    differing by one unused variable, on the same machine (MXNet 1.9.1, CPU servers). Sending the
    command makes the sum the same everywhere; tests/test_fp16_multidevice.py pins that with the
    switch, in two environments. Must be sent before the keys are initialised (``Run`` does it
    when it creates the kvstore). A float16 training itself needs GPUs and was not run here.
    """
    from mxnet.kvstore.kvstore import _get_kvstore_server_command_type
    kv._send_command_to_servers(_get_kvstore_server_command_type('kSetMultiPrecision'), '')


def rank_devices(contexts, kv):
    """The devices this process trains on: under Horovod with GPUs the one of its local rank
    (``--gpus`` lists the GPUs of the machine, rank ``hvd.local_rank()`` takes the one at that
    position, as GluonCV's Horovod scripts do); otherwise all of ``contexts``."""
    if kv is None or kv.type != 'horovod' or contexts[0].device_type != 'gpu':
        return contexts
    return [contexts[kv.local_rank % len(contexts)]]


def is_cluster(kv_store):
    """Whether ``--kv-store`` trains over several processes (ps-lite or Horovod)."""
    return 'dist' in kv_store or kv_store == 'horovod'


def is_sync_cluster(kv):
    return kv is not None and (kv.type == 'horovod' or ('dist' in kv.type and 'async' not in kv.type))


def worker_sums(kv):
    """What sums arrays over the workers of a synchronous cluster (None without one)."""
    if kv is not None and kv.type == 'horovod':
        from .horovod import RankSum
        return RankSum(kv)
    return WorkerSum(kv) if is_sync_cluster(kv) else None


class WorkerSum(object):
    """Sums (or averages) named arrays over the workers of a synchronous cluster, bit-identically
    from run to run.

    The servers add pushes in their order of arrival (not reproducible for 3+ workers), so each
    worker has its own key per name (``PREFIX NAME @RANK``): every worker pushes its value to its
    own key and zeros to the others' (a synchronous server waits for a push from every worker;
    adding zeros is exact), pulls every key and adds them locally in rank order. Costs
    ``num_workers`` times the data of one sum: meant for the small arrays of the epoch's end
    (BatchNorm statistics, metric counters). Keys are initialised once per name.
    """

    def __init__(self, kv, prefix='__fit_sum__'):
        self.kv = kv
        self.prefix = prefix
        self._ready = set()

    def _keys(self, name, like):
        keys = ['%s%s@%d' % (self.prefix, name, r) for r in range(self.kv.num_workers)]
        if name not in self._ready:
            for key in keys:
                self.kv.init(key, mx.nd.zeros(like.shape, dtype=like.dtype))
            self._ready.add(name)
        return keys

    def sum(self, named):
        """{name: array summed over the workers, in rank order} for {name: local array}."""
        names = sorted(named)
        rank = self.kv.rank
        keys = {n: self._keys(n, named[n]) for n in names}
        pulled = {}
        for i, name in enumerate(names):
            for r, key in enumerate(keys[name]):
                value = named[name] if r == rank else mx.nd.zeros(named[name].shape, dtype=named[name].dtype)
                self.kv.push(key, value, priority=-i)
        for i, name in enumerate(names):
            pulled[name] = [mx.nd.zeros(named[name].shape, dtype=named[name].dtype) for _ in keys[name]]
            for key, out in zip(keys[name], pulled[name]):
                self.kv.pull(key, out=out, priority=-i)
        out = {}
        for name in names:
            total = pulled[name][0].copy()
            for part in pulled[name][1:]:
                total += part
            out[name] = total
        mx.nd.waitall()
        return out

    def mean(self, named):
        return {k: v / self.kv.num_workers for k, v in self.sum(named).items()}
