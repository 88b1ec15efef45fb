"""The kvstore of a run: creation, and what the workers of a synchronous cluster agree on
(BatchNorm statistics and validation metrics averaged over the workers).

Synchronous clusters (``dist_sync``, ``dist_device_sync``) run with ``MXNET_UPDATE_ON_KVSTORE=0``:
the servers sum the gradients and every worker applies the same update, so the optimizer states
stay on the workers (and in the checkpoints). ``dist_async`` keeps the optimizer on the servers.
"""
import os

import mxnet as mx

__all__ = ['create_kvstore', 'is_sync_cluster', 'WorkerSum']


def create_kvstore(kv_store, num_devices):
    """The kvstore for ``--kv-store`` on ``num_devices`` local devices: None for one device and
    no cluster. For a synchronous cluster the workers update locally (see the module docstring)."""
    if 'dist' in kv_store:
        if kv_store != 'dist_async':
            os.environ['MXNET_UPDATE_ON_KVSTORE'] = '0'
        return mx.kv.create(kv_store)
    if num_devices > 1:
        return mx.kv.create(kv_store)
    return None


def is_sync_cluster(kv):
    return kv is not None and 'dist' in kv.type and 'async' not in kv.type


class WorkerSum(object):
    """Sums (or averages) named arrays over the workers of a synchronous cluster through its
    servers (which only sum when workers update locally). Keys are initialised once per name."""

    def __init__(self, kv, prefix='__fit_sum__'):
        self.kv = kv
        self.prefix = prefix
        self._ready = set()

    def _key(self, name, like):
        key = self.prefix + name
        if key not in self._ready:
            self.kv.init(key, mx.nd.zeros(like.shape, dtype=like.dtype))
            self._ready.add(key)
        return key

    def sum(self, named):
        """{name: array summed over the workers} for {name: local array}."""
        names = sorted(named)
        keys = [self._key(n, named[n]) for n in names]
        for i, (name, key) in enumerate(zip(names, keys)):
            self.kv.push(key, named[name], priority=-i)
        out = {}
        for i, (name, key) in enumerate(zip(names, keys)):
            out[name] = mx.nd.zeros(named[name].shape, dtype=named[name].dtype)
            self.kv.pull(key, out=out[name], priority=-i)
        mx.nd.waitall()
        return out

    def mean(self, named):
        return {k: v / self.kv.num_workers for k, v in self.sum(named).items()}
