"""The training state: checkpoint files, optimizer states, resume discovery.

This is the one module that touches MXNet's private ``Module``/``Updater``/``Optimizer`` state
(``mod._exec_group``, ``mod._updater``, ``mod._optimizer._all_index_update_counts``, ...): MXNet
1.9.1 has no public API for per-device optimizer states, update counts or one device's copy of
the weights, and exact resume needs all three. Everything else in the trainer goes through the
functions here.

Files of epoch N under a prefix (``symbols.checkpoint`` names them):

* ``PREFIX-symbol.json``: always the plain float32 graph (no ``Cast`` nodes, plain grouped
  convolutions), whatever ``--dtype``/``--grouped-conv`` the run used;
* ``PREFIX-%04d.params``: float32 weights (under float16 multi-precision: the float32 master
  copies), one device's copy (the copies are identical), BatchNorm statistics averaged over
  devices and workers; written last, so an epoch whose ``.params`` exists is complete;
* ``PREFIX-%04d.states``: data only, MXNet's NDArray file format (``mx.nd.save`` of a dict):
  the optimizer-state arrays under ``state:NAME:I`` and one uint8 array ``__meta__`` holding
  JSON (format, epoch, optimizer, dtype, update counts, the learning-rate policy's state, the
  layout of each state). ``mx.nd.load`` reads it; nothing in it can run code. Files of the
  earlier pickle format are refused, never unpickled (``crunet-train convert-states``).
"""
import copy
import glob
import json
import logging
import re
import warnings

import mxnet as mx
import numpy as np

from symbols.checkpoint import CheckpointError, load_params, params_path, save_params, symbol_path

from ..errors import ConfigError
from ..files import SaveError, atomic_save

__all__ = ['STATES_FORMAT', 'states_path', 'list_checkpoints', 'latest_checkpoint', 'finite_params',
           'save_epoch', 'read_states', 'write_states', 'restore_optimizer', 'device_params', 'replica_spread', 'mean_aux', 'sync_aux', 'settle',
           'update', 'set_learning_rate', 'pull_initial_params', 'optimizer_on_servers', 'is_pickle']

STATES_FORMAT = 'crunet-mxnet/optimizer-states/2'
_META = '__meta__'
#: first bytes of MXNet's NDArray list files (kMXAPINDArrayListMagic, little endian uint64)
_NDARRAY_MAGIC = (0x112).to_bytes(8, 'little')


def states_path(prefix, epoch):
    return '%s-%04d.states' % (prefix, epoch)


# ----------------------------------------------------------------------------- resume discovery
def list_checkpoints(prefix):
    """Epochs N for which ``PREFIX-%04d.params`` exists, newest first."""
    out = []
    for path in glob.glob(glob.escape(prefix) + '-*.params'):
        m = re.fullmatch(re.escape(prefix) + r'-(\d{4,})\.params', path)
        if m:
            out.append(int(m.group(1)))
    return sorted(out, reverse=True)


def finite_params(arg_params, aux_params):
    """The name of the first parameter or auxiliary state holding NaN or Inf, or None."""
    for params in (arg_params, aux_params):
        for name in sorted(params):
            if not np.isfinite(params[name].asnumpy()).all():
                return name
    return None


def latest_checkpoint(prefix):
    """The newest epoch under ``prefix`` whose ``.params`` loads and holds only finite values
    (the symbol file is not needed: the network is rebuilt from the flags), or None. Epochs
    skipped on the way (a torn or non-finite file) are named in a warning; a pickle where a
    ``.params`` should be is refused (:class:`CheckpointError`), never skipped over silently."""
    for epoch in list_checkpoints(prefix):
        path = params_path(prefix, epoch)
        with open(path, 'rb') as f:
            if is_pickle(f.read(1)):
                raise CheckpointError('%s is a pickle, not an MXNet params file; it is never loaded (it could run '
                               'code): move it away to resume from the epoch before' % path)
        try:
            arg, aux = load_params(path)
        except CheckpointError as exc:
            logging.warning('--resume: skipping %s: %s', path, exc)
            continue
        if not arg:
            logging.warning('--resume: skipping %s: no parameters in it', path)
            continue
        bad = finite_params(arg, aux)
        if bad is not None:
            logging.warning('--resume: skipping %s: %s is not finite (NaN/Inf)', path, bad)
            continue
        return epoch
    return None


# ----------------------------------------------------------------------------- .states files
def is_pickle(head):
    """Whether the first bytes of a file are a pickle (protocol 2 and later start with 0x80)."""
    return head[:1] == b'\x80'


def _flatten(state, arrays, prefix):
    """Layout of an optimizer state (None, an array, or nested tuples/lists), arrays appended."""
    if state is None:
        return None
    if isinstance(state, mx.nd.NDArray):
        arrays['%s:%d' % (prefix, len(arrays))] = state.as_in_context(mx.cpu())
        return {'array': '%s:%d' % (prefix, len(arrays) - 1), 'dtype': np.dtype(state.dtype).name}
    if isinstance(state, (tuple, list)):
        return {'tuple': [_flatten(s, arrays, prefix) for s in state]}
    raise TypeError('optimizer state of type %s cannot be saved' % type(state).__name__)


def _unflatten(layout, arrays, path):
    if layout is None:
        return None
    if 'array' in layout:
        key = layout['array']
        if key not in arrays:
            raise CheckpointError('%s: array %s is missing' % (path, key))
        return arrays[key]
    return tuple(_unflatten(s, arrays, path) for s in layout['tuple'])


def write_states(path, meta, states):
    """Write ``states`` ({name: optimizer state}) and ``meta`` (JSON-able) atomically."""
    arrays, layout = {}, {}
    for name in sorted(states):
        sub = {}
        layout[name] = _flatten(states[name], sub, 'state:%s' % name)
        arrays.update(sub)
    blob = dict(meta, format=STATES_FORMAT, layout=layout)
    arrays[_META] = mx.nd.array(np.frombuffer(json.dumps(blob, sort_keys=True).encode(), np.uint8), dtype='uint8')
    atomic_save(path, lambda tmp: mx.nd.save(tmp, arrays))
    return path


def read_states(path):
    """``(meta, states)`` of a ``.states`` file; :class:`CheckpointError` naming the file when it is not one
    of this format (a pickle of the earlier format is refused without being read)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(8)
    except OSError as exc:
        raise CheckpointError('cannot read %s: %s' % (path, exc.strerror or exc))
    ways = ('resume with fresh optimizer states by deleting or moving it away, or convert a file you trust '
            'with: crunet-train convert-states %s --trust-pickle' % path)
    if is_pickle(head):
        raise CheckpointError('%s is in the old pickle format, which is never loaded (it could run code); %s' % (path, ways))
    if head != _NDARRAY_MAGIC:
        raise CheckpointError('%s is not an optimizer-states file of this trainer; %s' % (path, ways))
    try:
        arrays = mx.nd.load(path)
        meta = json.loads(bytes(arrays.pop(_META).asnumpy().astype(np.uint8)).decode())
    except (mx.base.MXNetError, KeyError, ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise CheckpointError('cannot read %s: %s; %s' % (path, type(exc).__name__, ways))
    if not isinstance(meta, dict) or meta.get('format') != STATES_FORMAT:
        raise CheckpointError('%s: unknown states format %r; %s' % (path, meta.get('format') if isinstance(meta, dict) else None, ways))
    layout = meta.get('layout') or {}
    states = {name: _unflatten(lay, arrays, path) for name, lay in layout.items()}
    return meta, states


# ----------------------------------------------------------------------------- MXNet's private state
def optimizer_on_servers(mod):
    """True when the optimizer lives on the parameter servers (``dist_async``): nothing to save."""
    return mod._update_on_kvstore and getattr(mod._kvstore, '_updater', None) is None


def _updater(mod):
    return mod._kvstore._updater if mod._update_on_kvstore else mod._updater


def _num_devices(mod):
    return 1 if mod._update_on_kvstore else len(mod._context)


def update(mod, aggregated=None):
    """``mod.update()``, except that with the ``nccl`` kvstore (``aggregated`` None: decided from the
    kvstore; True/False force it) the gradients go through MXNet's aggregated path.

    ``Module.update`` (module/module.py 646-673) calls ``_update_params_on_kvstore`` (model.py
    154-167): one ``pushpull`` per parameter, i.e. one NCCL reduce + broadcast per array. MXNet
    has the aggregated ``_update_params_on_kvstore_nccl`` (model.py 134-152: one ``pushpull`` of
    ``MXNET_UPDATE_AGGREGATION_SIZE`` (16) parameters at a time), which only the old
    ``FeedForward`` uses (model.py 326). Both update the weights on the kvstore with the same
    optimizer; only the grouping of the calls differs."""
    kv = mod._kvstore
    if aggregated is None:
        aggregated = kv is not None and mod._update_on_kvstore and kv.type == 'nccl'
    if not aggregated:
        mod.update()
        return
    assert mod.binded and mod.params_initialized and mod.optimizer_initialized and mod._update_on_kvstore
    mod._params_dirty = True
    group = mod._exec_group
    mx.model._update_params_on_kvstore_nccl(group.param_arrays, group.grad_arrays, kv, group.param_names)


def set_learning_rate(mod, lr):
    """Set the rate of the next update (a no-op when the optimizer lives on the servers)."""
    if not optimizer_on_servers(mod):
        mod._optimizer.set_learning_rate(lr)


def _layout(state):
    """The nesting of an optimizer state: None, 'a' (an array) or a tuple of layouts."""
    if state is None:
        return None
    if isinstance(state, mx.nd.NDArray):
        return 'a'
    return tuple(_layout(s) for s in state)


def _mp_probe(opt):
    """``(position, layout)`` of the float32 master copy in the state a multi-precision ``opt``
    creates for a float16 weight (``SGD``/``NAG`` put it last, the base ``Optimizer`` first), and
    that state's layout; ``(None, None)`` when there is none."""
    probe = mx.nd.ones((2,), dtype='float16')
    opt = copy.copy(opt)                    # where the master would be, whatever this run's setting
    opt.multi_precision = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            state = opt.create_state_multi_precision(0, probe)
    except Exception:                       # optimizers that refuse float16
        return None, None
    if not isinstance(state, (tuple, list)):
        return None, None
    for i, s in enumerate(state):
        if isinstance(s, mx.nd.NDArray) and s.dtype == np.float32 and s.shape == (2,) and \
                float(s.asnumpy().min()) == 1.0:
            return i, _layout(state)
    return None, None


def _master_position(opt):
    return _mp_probe(opt)[0]


def _states_by_name(mod):
    """{parameter name: optimizer state} from device 0's updater keys."""
    updater = _updater(mod)
    names = mod._exec_group.param_names
    ndev = _num_devices(mod)
    out = {}
    for key, st in updater.states.items():
        if isinstance(key, str):
            out[key] = st
        elif key % ndev == 0:
            out[names[key // ndev]] = st
    return out


def _counts_by_name(mod):
    names = mod._exec_group.param_names
    ndev = _num_devices(mod)
    counts = {}
    for per_dev in mod._optimizer._all_index_update_counts.values():
        for key, c in per_dev.items():
            name = key if isinstance(key, str) else names[key // ndev]
            counts[name] = max(counts.get(name, 0), int(c))
    return counts


def settle():
    """Wait for every queued operation before BatchNorm statistics are read or replaced.

    MXNet 1.9.1's oneDNN BatchNorm updates ``moving_mean``/``moving_var`` in its *backward*
    pass (``MKLDNNBatchNormBackward``: ``moving_mean_ptr[i] = moving_mean_ptr[i] * momentum +
    out_mean_ptr[i] * (1 - momentum)``, src/operator/nn/mkldnn/mkldnn_batch_norm-inl.h), where
    the engine knows them only as inputs, so a read queued after the last batch does not wait
    for that write. Measured: two identical dist_sync runs (1 or 2 workers) wrote moving
    statistics differing by up to 2.0 (weights bit-identical); identical with this wait (and
    with ``MXNET_ENGINE_TYPE=NaiveEngine``)."""
    mx.nd.waitall()


def device_params(mod):
    """``(arg_params, aux_params)`` as float32 CPU arrays from one device's copy: the weights
    (their float32 master copies under float16 multi-precision) and the BatchNorm statistics."""
    group = mod._exec_group
    settle()
    states = _states_by_name(mod) if not optimizer_on_servers(mod) and mod._optimizer.multi_precision else {}
    pos = _master_position(mod._optimizer) if states else None
    arg = {}
    for name, arrs in zip(group.param_names, group.param_arrays):
        value = arrs[0]
        st = states.get(name)
        if pos is not None and value.dtype == np.float16 and isinstance(st, (tuple, list)):
            value = st[pos]
        arg[name] = value.astype('float32').as_in_context(mx.cpu())
    aux = {name: arrs[0].astype('float32').as_in_context(mx.cpu())
           for name, arrs in zip(group.aux_names, group.aux_arrays)}
    return arg, aux


def replica_spread(mod):
    """The largest absolute difference between two devices' copies of a weight or a BatchNorm
    statistic (0.0: every replica identical; 0.0 for one device)."""
    group = mod._exec_group
    settle()
    worst = 0.0
    for arrays in list(group.param_arrays) + list(group.aux_arrays):
        first = arrays[0].asnumpy()
        for a in arrays[1:]:
            worst = max(worst, float(np.abs(a.asnumpy().astype(np.float64) - first).max()))
    return worst


def mean_aux(mod):
    """BatchNorm statistics averaged over this worker's devices (float32, CPU)."""
    group = mod._exec_group
    settle()
    out = {}
    for name, arrs in zip(group.aux_names, group.aux_arrays):
        total = arrs[0].astype('float32').as_in_context(mx.cpu())
        for a in arrs[1:]:
            total = total + a.astype('float32').as_in_context(mx.cpu())
        out[name] = total / len(arrs)
    return out


def sync_aux(mod, aux_params):
    """Give every device the BatchNorm statistics that were just checkpointed, so a run that
    continues and a run resumed from the checkpoint hold the same values."""
    settle()
    mod._aux_params.update(aux_params)
    for name, arrs in zip(mod._exec_group.aux_names, mod._exec_group.aux_arrays):
        for a in arrs:
            aux_params[name].astype(a.dtype).copyto(a)


def pull_initial_params(mod, kv):
    """Start every worker of a synchronous cluster from worker 0's initial values (``kv.init``
    kept them) when the workers update locally; under Horovod rank 0's weights and BatchNorm
    statistics are broadcast to every rank."""
    if kv is not None and kv.type == 'horovod':
        group = mod._exec_group
        for name, arrs in zip(group.param_names + group.aux_names, group.param_arrays + group.aux_arrays):
            kv.broadcast(name, arrs[0], out=arrs)
        mod._params_dirty = True
        return
    if kv is None or 'dist' not in kv.type or mod._update_on_kvstore:
        return
    for name, arrs in zip(mod._exec_group.param_names, mod._exec_group.param_arrays):
        kv.pull(name, out=arrs, priority=0)


def _convert_state(state, pos_from, pos_to, master):
    """A state saved with master-copy position ``pos_from`` (None: no master) as one with ``pos_to``."""
    if pos_from is not None and isinstance(state, (tuple, list)):
        inner = [s for i, s in enumerate(state) if i != pos_from]
        state = inner[0] if len(inner) == 1 else tuple(inner)
    if pos_to is None:
        return state
    parts = [state]
    parts.insert(pos_to, master)
    return tuple(parts)


def restore_optimizer(mod, meta, states, arg_params, dtype, path):
    """Load ``states``/``meta['update_counts']`` into the module's updater, on every device, the
    update counts of every device included. States saved by a run of another ``--dtype`` are
    converted (the float32 master copies come from ``arg_params``). Returns False when the
    optimizer lives on the servers."""
    if optimizer_on_servers(mod):
        return False
    opt = mod._optimizer
    if meta.get('optimizer') and meta['optimizer'] != type(opt).__name__:
        raise ConfigError('%s was written by the %s optimizer, this run uses %s (--optimizer)'
                       % (path, meta['optimizer'], type(opt).__name__))
    saved_fp16 = meta.get('dtype') == 'float16'
    pos, mp_layout = _mp_probe(opt)
    if saved_fp16 != (dtype == 'float16'):
        logging.info('%s was written by a %s run: optimizer states converted for --dtype %s', path,
                     meta.get('dtype'), dtype)
    updater = _updater(mod)
    names = mod._exec_group.param_names
    ndev = _num_devices(mod)
    counts = meta.get('update_counts') or {}
    new, new_counts = {}, {}
    for i, name in enumerate(names):
        if name not in states:
            continue
        state = states[name]
        # per parameter: a float16 run keeps float32 weights (BatchNorm's) without a master copy
        has_master = pos is not None and saved_fp16 and _layout(state) == mp_layout
        wants_master = pos is not None and opt.multi_precision and \
            mod._exec_group.param_arrays[i][0].dtype == np.float16
        if has_master != wants_master:
            state = _convert_state(state, pos if has_master else None, pos if wants_master else None,
                                   arg_params[name].astype('float32'))
        keys = [name] if mod._update_on_kvstore else [i * ndev + k for k in range(ndev)]
        for key in keys:
            new[key] = _copy_state(state)
            if name in counts:
                new_counts[key] = int(counts[name])
    updater.states = new
    updater.states_synced = dict.fromkeys(new, False)
    devices = {0} | {c.device_id for c in mod._context}
    for dev in devices | set(opt._all_index_update_counts):
        opt._all_index_update_counts[dev] = dict(new_counts)
    opt._index_update_count = opt._all_index_update_counts[0]
    opt.num_update = max(new_counts.values()) if new_counts else opt.begin_num_update
    return True


def _copy_state(state):
    if isinstance(state, mx.nd.NDArray):
        return state.copy()
    if isinstance(state, (tuple, list)):
        return tuple(_copy_state(s) for s in state)
    return state


# ----------------------------------------------------------------------------- one epoch's files
def save_epoch(mod, prefix, epoch, sym, arg_params, aux_params, schedule_state, dtype):
    """Write one epoch's files atomically, ``.params`` last (its presence marks completeness).
    A failed write names the checkpoint (``PREFIX-NNNN.params``) and the file that failed."""
    checkpoint = params_path(prefix, epoch)
    try:
        atomic_save(symbol_path(prefix), lambda tmp: sym.save(tmp))
        if not optimizer_on_servers(mod):
            meta = dict(epoch=epoch, optimizer=type(mod._optimizer).__name__, dtype=dtype,
                        update_counts=_counts_by_name(mod), schedule=schedule_state)
            write_states(states_path(prefix, epoch), meta, _states_by_name(mod))
    except SaveError as exc:
        raise exc.part_of(checkpoint) from None
    save_params(checkpoint, arg_params, aux_params)
    logging.info('Saved checkpoint to "%s"', params_path(prefix, epoch))
