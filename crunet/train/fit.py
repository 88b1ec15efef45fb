"""Training machinery shared by the training scripts (MXNet example/image-classification layout).

``add_fit_args(parser)`` declares the model, device, optimisation and checkpoint flags;
``fit(args, network, data_loader)`` trains a Symbol with ``mx.mod.Module`` on one or several
devices (GPUs, or CPU contexts with ``--cpus N``), on one machine or on a ps-lite cluster
(``--kv-store dist_sync``; start the processes with ``tools/launch.py``).

What a run writes under ``--model-prefix PREFIX`` (rank 0 only):

- ``PREFIX-symbol.json``, ``PREFIX-%04d.params`` (``arg:``/``aux:`` keys, loadable with
  ``mx.model.load_checkpoint``) and ``PREFIX-%04d.states`` (optimizer states keyed by parameter
  name, update counts and the learning-rate policy's state), every ``--save-period`` epochs.
  Each file is written to ``NAME.tmp`` and renamed into place; the ``.params`` file is written
  last, so an epoch whose ``.params`` exists is complete and ``--resume`` picks the latest one.
- ``PREFIX-metrics.jsonl``: one JSON object per epoch (train/validation top-1, top-5, loss, lr,
  seconds, images/s); ``PREFIX-curves.png``: the training curves, drawn at the end.
- ``PREFIX.log``: a copy of the log; ``PREFIX-args.json``: the flags of the run.

Resuming is exact: the learning rate is a function of (epoch, batch) (``crunet.train.schedule``), the
optimizer states and update counts are restored, and the data iterator of epoch E is built
afresh with seed ``--seed + E``, so a run resumed at epoch N continues as if it never stopped
(given the same flags: the cosine policy, for one, depends on ``--num-epochs``). The ``.states``
files are this trainer's own (a pickle of numpy arrays keyed by parameter name), so a run may
resume on another number of devices; ``Module.load_optimizer_states`` does not read them.

Synchronous clusters (``dist_sync``, ``dist_device_sync``) run with
``MXNET_UPDATE_ON_KVSTORE=0``: the servers sum the gradients and every worker applies the same
update, so optimizer states stay on the workers (and in the checkpoints); BatchNorm statistics
and validation metrics are averaged over the workers at the end of every epoch, so all workers
hold the same model. ``dist_async`` keeps the optimizer on the servers (no plateau policy, no
optimizer states in the checkpoints).
"""
import copy
import glob
import hashlib
import inspect
import json
import logging
import math
import os
import pickle
import random
import re
import time

import mxnet as mx
import numpy as np

from . import schedule as schedule_mod
from ..devices import get_contexts, parse_gpus
from ..errors import CLIError, TrainingDiverged
from ..files import atomic_save, atomic_write_text
from ..log import format_seconds, setup_logging

KV_STORES = ('local', 'device', 'nccl', 'dist_sync', 'dist_device_sync', 'dist_async')
DTYPES = ('float32', 'float16')
LR_POLICIES = ('auto',) + schedule_mod.POLICIES
STATES_FORMAT = 'crunet-mxnet/optimizer-states/1'
_VAL_KEY = '__fit_val_metric_sum__'


# ============================================================================ arguments
def _add(group, parser, *flags, **kw):
    """Add an option unless another module (the data module) already declared it."""
    if any(f in parser._option_string_actions for f in flags):
        return
    group.add_argument(*flags, **kw)


def add_fit_args(parser):
    """Declare the model, device, optimisation, checkpoint and logging flags on ``parser``."""
    g = parser.add_argument_group('Model', 'network of the zoo (symbols.get_symbol)')
    _add(g, parser, '--network', type=str, default='crunet',
         help='crunet, resnext, resnet or sharesnet')
    _add(g, parser, '--num-layers', type=int, default=None,
         help='depth (crunet 56/116/22, resnext 50/101, resnet 50/101/152/200, sharesnet ...); '
              'default: the network\'s own default')
    _add(g, parser, '--setting', type=str, default=None,
         help='preset of the network, e.g. cifar (crunet-22), tiny, 136x1d, wider, 64x4d')
    _add(g, parser, '--num-classes', type=int, default=1000, help='number of classes')

    g = parser.add_argument_group('Devices')
    _add(g, parser, '--gpus', type=str, default='',
         help='GPUs to train on, e.g. 0,1,2,3; empty: train on the CPU')
    _add(g, parser, '--cpus', type=int, default=1,
         help='without --gpus, train data-parallel over this many CPU contexts '
              '(cpu(0)..cpu(N-1)); exercises the multi-device path without a GPU')
    _add(g, parser, '--kv-store', type=str, default='device',
         help='gradient aggregation: %s' % ', '.join(KV_STORES))

    g = parser.add_argument_group('Optimisation', 'defaults follow the CRU-Net paper')
    _add(g, parser, '--batch-size', type=int, default=32,
         help='images per device (the paper: 32 per GPU); the global batch is '
              'this x devices x workers')
    _add(g, parser, '--num-epochs', type=int, default=100, help='epochs to train')
    _add(g, parser, '--optimizer', type=str, default='nag',
         help='nag (Nesterov SGD, the paper\'s), sgd, or another mx.optimizer name')
    _add(g, parser, '--lr', type=float, default=None,
         help='base learning rate; default by depth: 0.1 below 100 layers, sqrt(0.1) deeper')
    _add(g, parser, '--wd', type=float, default=None,
         help='weight decay; default by depth: 5e-4 below 100 layers, 2e-4 deeper')
    _add(g, parser, '--mom', type=float, default=0.9, help='momentum')
    _add(g, parser, '--lr-policy', type=str, default='auto',
         help='%s; auto = step when --lr-step-epochs is given, else plateau' % ', '.join(LR_POLICIES))
    _add(g, parser, '--lr-factor', type=float, default=0.1,
         help='step and plateau policies multiply the rate by this')
    _add(g, parser, '--lr-step-epochs', type=str, default='',
         help='epochs at which the step policy multiplies the rate by --lr-factor, e.g. 30,60,90')
    _add(g, parser, '--lr-patience', type=int, default=5,
         help='plateau policy: epochs without validation top-1 gain before dividing the rate')
    _add(g, parser, '--lr-min-delta', type=float, default=1e-4,
         help='plateau policy: the smallest top-1 gain that counts as an improvement')
    _add(g, parser, '--min-lr', type=float, default=0.0, help='floor of the cosine and plateau policies')
    _add(g, parser, '--warmup-epochs', type=float, default=0.0,
         help='linear warmup over this many epochs (may be fractional)')
    _add(g, parser, '--warmup-lr', type=float, default=0.0, help='learning rate at the start of warmup')
    _add(g, parser, '--clip-gradient', type=float, default=None, help='clip gradients to +-this')
    _add(g, parser, '--dtype', type=str, default='float32',
         help='float32, or float16 on GPUs (multi-precision updates)')
    _add(g, parser, '--seed', type=int, default=0,
         help='seed of the initialisation and of the data order (epoch E uses seed + E)')
    _add(g, parser, '--top-k', type=int, default=5, help='also report top-k accuracy (0: off)')

    g = parser.add_argument_group('Checkpoints')
    _add(g, parser, '--model-prefix', type=str, default=None,
         help='checkpoint prefix PREFIX: PREFIX-symbol.json, PREFIX-%%04d.params, '
              'PREFIX-%%04d.states, PREFIX-metrics.jsonl, PREFIX-curves.png, PREFIX.log; '
              'train_imagenet.py defaults to runs/NETWORK-LAYERS/NETWORK-LAYERS (demo: runs/demo/crunet)')
    _add(g, parser, '--save-period', type=int, default=1, help='save a checkpoint every N epochs')
    _add(g, parser, '--load-epoch', type=int, default=None,
         help='resume from PREFIX-%%04d.params (+ .states) and continue at that epoch')
    _add(g, parser, '--resume', type=int, nargs='?', const=1, default=0,
         help='resume from the latest complete checkpoint under --model-prefix (none: start fresh)')
    _add(g, parser, '--finetune-from', type=str, default=None,
         help='initialise from the checkpoint PREFIX (ours or the released CRU-Net files); '
              'fc6 is replaced when --num-classes differs')
    _add(g, parser, '--finetune-epoch', type=int, default=0, help='epoch of --finetune-from')

    g = parser.add_argument_group('Logging and modes')
    _add(g, parser, '--disp-batches', type=int, default=20, help='log every N batches')
    _add(g, parser, '--metrics-file', type=str, default=None,
         help='per-epoch metrics (JSON lines); default PREFIX-metrics.jsonl')
    _add(g, parser, '--plot', type=int, default=1, help='draw PREFIX-curves.png at the end')
    _add(g, parser, '--log-file', type=str, default=None, help='copy of the log; default PREFIX.log')
    _add(g, parser, '--benchmark', type=int, default=0,
         help='1: train on synthetic data (no files) to measure compute speed')
    _add(g, parser, '--test-io', type=int, default=0, help='1: only read the training data, report speed')
    _add(g, parser, '--test-io-batches', type=int, default=None, help='batches read by --test-io')
    _add(g, parser, '--log-samples', type=str, default=None,
         help='debug: append, per epoch, the labels (and record ids when the iterator gives them) '
              'this worker trained on to this JSON-lines file; {rank} in the name becomes the rank')
    return parser


# ============================================================================ validation
def default_num_layers(network):
    import symbols
    return inspect.signature(symbols.get_module(network).get_symbol).parameters['num_layers'].default


def paper_recipe(num_layers):
    """(lr, wd) of the paper for a depth: the 50-layer class 0.1/5e-4, deeper nets sqrt(0.1)/2e-4."""
    if num_layers is not None and int(num_layers) >= 100:
        return math.sqrt(0.1), 2e-4
    return 0.1, 5e-4


def resolve_policy(args):
    """The learning-rate policy of ``--lr-policy`` (``auto``: step when ``--lr-step-epochs`` is
    given, else the paper's plateau policy; dist_async cannot run the plateau policy)."""
    policy = args.lr_policy
    if policy == 'auto':
        if args.lr_step_epochs.strip() or args.kv_store == 'dist_async':
            policy = 'step'
        else:
            policy = 'plateau'
    return policy


def check_args(args):
    """Validate the flags; raise :class:`CLIError` with a one-line message naming the flag."""
    if args.batch_size is None or args.batch_size <= 0:
        raise CLIError('--batch-size must be a positive number of images per device, got %s' % args.batch_size)
    if args.num_epochs is None or args.num_epochs <= 0:
        raise CLIError('--num-epochs must be positive, got %s' % args.num_epochs)
    if args.kv_store not in KV_STORES:
        raise CLIError('--kv-store %r: unknown kvstore; valid choices: %s' % (args.kv_store, ', '.join(KV_STORES)))
    if args.dtype not in DTYPES:
        raise CLIError('--dtype %r: valid choices: %s' % (args.dtype, ', '.join(DTYPES)))
    if args.lr_policy not in LR_POLICIES:
        raise CLIError('--lr-policy %r: valid choices: %s' % (args.lr_policy, ', '.join(LR_POLICIES)))
    if args.optimizer.lower() not in mx.optimizer.Optimizer.opt_registry:
        raise CLIError('--optimizer %r: unknown optimizer; e.g. nag, sgd, adam' % args.optimizer)
    if args.disp_batches is None or args.disp_batches <= 0:
        raise CLIError('--disp-batches must be positive, got %s' % args.disp_batches)
    if args.save_period <= 0:
        raise CLIError('--save-period must be positive, got %s' % args.save_period)
    if args.num_classes is None or args.num_classes <= 0:
        raise CLIError('--num-classes must be positive, got %s' % args.num_classes)
    if args.cpus is None or args.cpus <= 0:
        raise CLIError('--cpus must be a positive number of CPU contexts, got %s' % args.cpus)
    gpus = parse_gpus(args.gpus)
    if args.kv_store == 'nccl' and not gpus:
        raise CLIError('--kv-store nccl needs GPUs (--gpus) and a CUDA build of MXNet; on the CPU use '
                       '--kv-store device')
    if args.dtype == 'float16' and not gpus:
        raise CLIError('--dtype float16 needs GPUs (--gpus): MXNet trains float16 only on GPUs; '
                       'use --dtype float32 on the CPU')
    if 'dist' in args.kv_store and 'DMLC_ROLE' not in os.environ:
        raise CLIError('--kv-store %s needs the ps-lite cluster environment (DMLC_ROLE, ...): start '
                       'the training through tools/launch.py -n WORKERS -s SERVERS' % args.kv_store)
    if (args.load_epoch is not None or args.resume) and not args.model_prefix:
        raise CLIError('--load-epoch/--resume need --model-prefix')
    if args.load_epoch is not None and args.load_epoch < 0:
        raise CLIError('--load-epoch must be >= 0, got %d' % args.load_epoch)
    if args.load_epoch is not None and not args.resume and \
            not os.path.exists(params_path(args.model_prefix, args.load_epoch)):
        have = list_checkpoints(args.model_prefix)
        raise CLIError('--load-epoch %d: %s not found%s' % (
            args.load_epoch, params_path(args.model_prefix, args.load_epoch),
            ' (available: %s)' % ', '.join(map(str, sorted(have))) if have else ''))
    if args.finetune_from and (args.load_epoch is not None or args.resume):
        raise CLIError('--finetune-from starts a new run; it does not combine with --load-epoch/--resume')
    if args.kv_store == 'dist_async' and resolve_policy(args) == 'plateau':
        raise CLIError('--lr-policy plateau: with --kv-store dist_async the optimizer lives on the servers, '
                       'where the plateau policy cannot act; use --lr-policy step or cosine')
    try:
        [float(e) for e in args.lr_step_epochs.split(',') if e.strip()]
    except ValueError:
        raise CLIError('--lr-step-epochs %r: expected comma-separated epochs such as 30,60' % args.lr_step_epochs)
    return gpus


# ============================================================================ checkpoint files
def params_path(prefix, epoch):
    return '%s-%04d.params' % (prefix, epoch)


def states_path(prefix, epoch):
    return '%s-%04d.states' % (prefix, epoch)


def symbol_path(prefix):
    return '%s-symbol.json' % prefix


def _loadable(path):
    try:
        return bool(mx.nd.load(path))
    except Exception:
        return False


def list_checkpoints(prefix):
    """Epochs N for which ``PREFIX-%04d.params`` exists, newest first."""
    out = []
    for path in glob.glob(glob.escape(prefix) + '-*.params'):
        m = re.fullmatch(re.escape(prefix) + r'-(\d{4,})\.params', path)
        if m:
            out.append(int(m.group(1)))
    return sorted(out, reverse=True)


def latest_checkpoint(prefix):
    """The newest complete epoch under ``prefix`` (``.params`` present and loadable, symbol
    present), or None."""
    for epoch in list_checkpoints(prefix):
        if os.path.exists(symbol_path(prefix)) and _loadable(params_path(prefix, epoch)):
            return epoch
        logging.warning('skipping incomplete checkpoint %s', params_path(prefix, epoch))
    return None


def save_params_file(path, arg_params, aux_params):
    """``mx.model.save_checkpoint``'s params layout, written atomically."""
    blob = {('arg:%s' % k): v.as_in_context(mx.cpu()) for k, v in arg_params.items()}
    blob.update({('aux:%s' % k): v.as_in_context(mx.cpu()) for k, v in aux_params.items()})
    atomic_save(path, lambda tmp: mx.nd.save(tmp, blob))


def load_params_file(path):
    blob = mx.nd.load(path)
    arg, aux = {}, {}
    for k, v in blob.items():
        kind, _, name = k.partition(':')
        if kind == 'arg':
            arg[name] = v
        elif kind == 'aux':
            aux[name] = v
    return arg, aux


def _to_numpy(state):
    if isinstance(state, mx.nd.NDArray):
        return state.asnumpy()
    if isinstance(state, (tuple, list)):
        return type(state)(_to_numpy(s) for s in state)
    return state


def _to_ndarray(state):
    if isinstance(state, np.ndarray):
        return mx.nd.array(state, dtype=state.dtype)
    if isinstance(state, (tuple, list)):
        return type(state)(_to_ndarray(s) for s in state)
    return state


def _updater_of(mod):
    if mod._update_on_kvstore:
        return getattr(mod._kvstore, '_updater', None)      # None: the optimizer lives on the servers
    return mod._updater


def get_optimizer_states(mod):
    """Optimizer states keyed by parameter name, as numpy, whatever the device layout
    (``update_on_kvstore`` keys by name, per-device updaters by ``index * num_devices + k``)."""
    updater = _updater_of(mod)
    if updater is None:
        return None, None
    names = mod._exec_group.param_names
    ndev = 1 if mod._update_on_kvstore else len(mod._context)

    def name_of(key):
        if isinstance(key, str):
            return key
        return names[key // ndev] if key % ndev == 0 else None

    states = {}
    for key, st in updater.states.items():
        name = name_of(key)
        if name is not None:
            states[name] = _to_numpy(st)
    counts = {}
    for per_dev in mod._optimizer._all_index_update_counts.values():
        for key, c in per_dev.items():
            name = key if isinstance(key, str) else names[key // ndev]
            counts[name] = max(counts.get(name, 0), c)
    return states, counts


def set_optimizer_states(mod, states, counts):
    updater = _updater_of(mod)
    if updater is None or states is None:
        return False
    names = mod._exec_group.param_names
    ndev = 1 if mod._update_on_kvstore else len(mod._context)
    new, new_counts = {}, {}
    for i, name in enumerate(names):
        if name not in states:
            continue
        if mod._update_on_kvstore:
            keys = [name]
        else:
            keys = [i * ndev + k for k in range(ndev)]
        for key in keys:
            new[key] = _to_ndarray(states[name])
            if counts and name in counts:
                new_counts[key] = counts[name]
    updater.states = new
    updater.states_synced = dict.fromkeys(new, False)
    opt = mod._optimizer
    for dev in list(opt._all_index_update_counts) or [0]:
        opt._all_index_update_counts[dev].clear()
        opt._all_index_update_counts[dev].update(new_counts)
    opt.num_update = max(new_counts.values()) if new_counts else opt.begin_num_update
    return True


# ============================================================================ helpers
def _count_records(rec_path):
    """Records of a RecordIO file, from its ``.idx`` (None if there is none)."""
    if not rec_path:
        return None
    idx = os.path.splitext(rec_path)[0] + '.idx'
    if not os.path.exists(idx):
        return None
    with open(idx) as f:
        return sum(1 for line in f if line.strip())


def _metrics(num_classes, top_k):
    ms = [mx.metric.Accuracy()]
    if top_k and top_k > 1 and num_classes > top_k:
        ms.append(mx.metric.TopKAccuracy(top_k=top_k))
    ms.append(mx.metric.CrossEntropy())
    return mx.metric.CompositeEvalMetric(ms)


def _metric_values(metric):
    names, values = metric.get()
    if not isinstance(names, list):
        names, values = [names], [values]
    return list(zip(names, values))


def _summary(pairs):
    """{'top1', 'top5', 'loss'} from metric (name, value) pairs."""
    out = {}
    for name, value in pairs:
        if name == 'accuracy':
            out['top1'] = value
        elif name.startswith('top_k_accuracy'):
            out['top%s' % name.rsplit('_', 1)[-1]] = value
        elif name == 'cross-entropy':
            out['loss'] = value
    return out


def _param_checksum(arg_params, aux_params):
    h = hashlib.sha1()
    for kind, params in (('arg', arg_params), ('aux', aux_params)):
        for name in sorted(params):
            h.update(('%s:%s' % (kind, name)).encode())
            h.update(np.ascontiguousarray(params[name].asnumpy()).tobytes())
    return h.hexdigest()


def _bar(frac, width=20):
    n = int(round(max(0.0, min(1.0, frac)) * width))
    return '[' + '#' * n + '.' * (width - n) + ']'


def _setup_logging(args, rank, num_workers):
    tag = 'Node[%d] ' % rank if num_workers > 1 else ''
    fmt = setup_logging(tag)
    log_file = args.log_file if args.log_file is not None else (
        args.model_prefix + '.log' if args.model_prefix else '')
    if log_file and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        root = logging.getLogger()
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(log_file)
                   for h in root.handlers):
            fh = logging.FileHandler(log_file)
            fh.setFormatter(fmt)
            root.addHandler(fh)


class _EpochData(object):
    """Builds the training iterator of each epoch afresh with seed ``seed + epoch`` (exact
    resume, and the same order on every run), and keeps the validation iterator."""

    def __init__(self, args, data_loader, kv, batch_per_worker, begin_epoch, epoch_batches):
        self.args = args
        self.data_loader = data_loader
        self.kv = kv
        self.batch = batch_per_worker
        self.epoch_batches = epoch_batches
        self.resize = epoch_batches if (kv is not None and 'dist' in kv.type and 'async' not in kv.type) else None
        self.first = self._load(begin_epoch, with_val=True)

    def _load(self, epoch, with_val):
        a = copy.copy(self.args)
        a.batch_size = self.batch
        a.seed = self.args.seed + epoch
        if not with_val:
            a.data_val = None
        train, val = self.data_loader(a, self.kv)
        if self.resize:
            train = mx.io.ResizeIter(train, self.resize)
        return epoch, train, val

    @property
    def val(self):
        return self.first[2]

    @property
    def provide(self):
        train = self.first[1]
        return train.provide_data, train.provide_label

    def train(self, epoch):
        if self.first is not None and self.first[0] == epoch:
            train = self.first[1]
            self.first = (None, None, self.first[2])
            return train
        return self._load(epoch, with_val=False)[1]


# ============================================================================ the trainer
def _build_symbol(network, args):
    if isinstance(network, mx.sym.Symbol):
        return network
    return network(args)


def _init_from_checkpoint(sym, arg_params, aux_params, data_shapes, label_shapes, what, finetune):
    """Check checkpoint params against the symbol. Returns (arg, aux, replaced_names).
    Raises CLIError naming ``what`` on a mismatch; with ``finetune``, a differing ``fc6`` is
    dropped (and re-initialised), and names unknown to the symbol are ignored."""
    shapes = dict(data_shapes + label_shapes)
    arg_shapes, _, aux_shapes = sym.infer_shape(**shapes)
    expect_arg = {n: s for n, s in zip(sym.list_arguments(), arg_shapes) if n not in shapes}
    expect_aux = dict(zip(sym.list_auxiliary_states(), aux_shapes))
    problems, replaced = [], []
    out = []
    for expect, got in ((expect_arg, arg_params), (expect_aux, aux_params)):
        keep = {}
        for name, shape in expect.items():
            if name not in got:
                if finetune and name.startswith('fc6_'):
                    replaced.append(name)
                    continue
                problems.append('%s is missing' % name)
            elif tuple(got[name].shape) != tuple(shape):
                if finetune and name.startswith('fc6_'):
                    replaced.append(name)
                    continue
                problems.append('%s has shape %s in the file, %s expected'
                                % (name, tuple(got[name].shape), tuple(shape)))
            else:
                keep[name] = got[name]
        extra = sorted(set(got) - set(expect))
        if extra and not finetune:
            problems.append('%d unknown parameters such as %s' % (len(extra), extra[0]))
        out.append(keep)
    if problems:
        raise CLIError('%s does not match the network: %s%s' % (
            what, problems[0], ' (and %d more)' % (len(problems) - 1) if len(problems) > 1 else ''))
    return out[0], out[1], replaced


def fit(args, network, data_loader, save_network=None):
    """Train ``network`` (a Symbol, or a callable ``network(args) -> Symbol``) on the iterators
    of ``data_loader(args, kv) -> (train, val_or_None)`` (``args.batch_size`` is then the batch
    of this worker). ``save_network`` (same forms) is the graph written as ``PREFIX-symbol.json``
    when it differs from the one trained (e.g. the plain graph of a faster formulation with the
    same parameters). Returns a dict with the final ``epoch``, ``arg_params``, ``aux_params`` and
    the per-epoch ``history``."""
    check_args(args)
    contexts = get_contexts(args.gpus, args.cpus)
    ndev = len(contexts)

    # ---------------------------------------------------------------- kvstore
    kv = None
    if 'dist' in args.kv_store:
        if args.kv_store != 'dist_async':
            # workers apply the summed gradients themselves: optimizer states stay on the workers
            # (checkpointed, exact resume) and every worker holds the same model
            os.environ['MXNET_UPDATE_ON_KVSTORE'] = '0'
        kv = mx.kv.create(args.kv_store)
    elif ndev > 1:
        kv = mx.kv.create(args.kv_store)
    rank = kv.rank if kv is not None else 0
    num_workers = kv.num_workers if kv is not None else 1
    _setup_logging(args, rank, num_workers)
    if args.model_prefix and rank == 0:
        # the flags of the run, for people and for score.py (preprocessing, image shape)
        atomic_write_text(args.model_prefix + '-args.json',
                          json.dumps(vars(args), indent=1, sort_keys=True, default=str) + '\n')

    # ---------------------------------------------------------------- seeds
    random.seed(args.seed)
    np.random.seed(args.seed)
    mx.random.seed(args.seed)

    batch_per_worker = args.batch_size * ndev
    global_batch = batch_per_worker * (num_workers if 'dist' in args.kv_store else 1)

    # ---------------------------------------------------------------- model and recipe
    if args.num_layers is None and not isinstance(network, mx.sym.Symbol):
        args.num_layers = default_num_layers(args.network)
    sym = _build_symbol(network, args)
    saved_sym = sym if save_network is None else _build_symbol(save_network, args)
    lr0, wd0 = paper_recipe(args.num_layers)
    lr = args.lr if args.lr is not None else lr0
    wd = args.wd if args.wd is not None else wd0
    policy = resolve_policy(args)
    sched = schedule_mod.LRSchedule(
        lr, policy, [float(e) for e in args.lr_step_epochs.split(',') if e.strip()], args.lr_factor,
        args.num_epochs, args.warmup_epochs, args.warmup_lr, args.min_lr, args.lr_patience, args.lr_min_delta)

    # ---------------------------------------------------------------- where to start
    prefix = args.model_prefix
    begin_epoch = 0
    load_epoch = None                    # the checkpoint this run continues from, if any
    if args.resume:
        load_epoch = latest_checkpoint(prefix)
        if load_epoch is None:
            logging.info('--resume: no checkpoint under %s yet, starting from epoch 0', prefix)
        else:
            begin_epoch = load_epoch
            logging.info('--resume: latest complete checkpoint is %s', params_path(prefix, load_epoch))
    elif args.load_epoch is not None:
        begin_epoch = load_epoch = args.load_epoch

    if args.benchmark:
        from ..data.iterators import SyntheticDataIter
        image_shape = tuple(int(v) for v in args.image_shape.split(','))
        num_examples = args.num_examples or batch_per_worker * 50
        epoch_batches = max(num_examples // batch_per_worker, 1)
        synth = SyntheticDataIter(args.num_classes, (batch_per_worker,) + image_shape, epoch_batches, np.float32)
        data = None
        provide = (synth.provide_data, synth.provide_label)
        val_iter = None
    else:
        counted = _count_records(getattr(args, 'data_train', None))
        num_examples = counted or args.num_examples
        if counted and args.num_examples and counted != args.num_examples:
            logging.info('%s holds %d records (not --num-examples %d): epochs are %d images',
                         args.data_train, counted, args.num_examples, counted)
        epoch_batches = None
        if num_examples:
            per_worker = int(math.ceil(num_examples / float(num_workers))) if 'dist' in args.kv_store else num_examples
            epoch_batches = int(math.ceil(per_worker / float(batch_per_worker)))
        data = _EpochData(args, data_loader, kv, batch_per_worker, begin_epoch, epoch_batches)
        provide = data.provide
        val_iter = data.val

    if args.test_io:
        return _test_io(data.train(begin_epoch), args, batch_per_worker)

    logging.info('Training %s%s on %s: %d x %d images per device, %d worker(s), global batch %d; '
                 'kvstore %s', args.network, '-%s' % args.num_layers if args.num_layers else '',
                 ','.join(str(c) for c in contexts), ndev, args.batch_size, num_workers, global_batch,
                 args.kv_store if (kv is not None) else 'none (one device)')
    logging.info('Optimizer %s, momentum %g, wd %g; lr policy: %s', args.optimizer, args.mom, wd,
                 sched.describe())
    if num_examples:
        logging.info('%d training images, %d batches per epoch per worker', num_examples, epoch_batches)

    # ---------------------------------------------------------------- module
    mod = mx.mod.Module(sym, context=contexts, data_names=['data'], label_names=['softmax_label'])
    mod.bind(data_shapes=provide[0], label_shapes=provide[1])
    data_shapes = [(d.name, d.shape) for d in mod.data_shapes]
    label_shapes = [(d.name, d.shape) for d in mod.label_shapes]
    initializer = mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2)

    arg_params = aux_params = None
    states_blob = None
    allow_missing = False
    if load_epoch is not None:
        what = params_path(prefix, begin_epoch)
        try:
            arg_params, aux_params = load_params_file(what)
        except mx.base.MXNetError as exc:
            raise CLIError('cannot read %s: %s' % (what, str(exc).strip().splitlines()[-1]))
        try:
            arg_params, aux_params, replaced = _init_from_checkpoint(
                sym, arg_params, aux_params, data_shapes, label_shapes,
                '--load-epoch %d: %s' % (begin_epoch, what), finetune=False)
        except CLIError as exc:
            raise CLIError('%s (same --network, --num-layers, --setting and --num-classes as the run '
                           'that wrote it? to fine-tune with other classes use --finetune-from)' % exc)
        sp = states_path(prefix, begin_epoch)
        if os.path.exists(sp):
            try:
                with open(sp, 'rb') as f:
                    states_blob = pickle.load(f)
                if not isinstance(states_blob, dict) or states_blob.get('format') != STATES_FORMAT:
                    raise ValueError('not a states file of this trainer')
            except Exception as exc:
                raise CLIError('cannot read %s: %s (delete it to resume with fresh optimizer states)'
                               % (sp, exc))
        else:
            logging.warning('%s missing: optimizer momentum restarts from zero', sp)
        logging.info('Resuming from %s at epoch %d', what, begin_epoch)
    elif args.finetune_from:
        import symbols
        what = '--finetune-from %s --finetune-epoch %d' % (args.finetune_from, args.finetune_epoch)
        if not os.path.exists(params_path(args.finetune_from, args.finetune_epoch)):
            raise CLIError('%s: %s not found' % (what, params_path(args.finetune_from, args.finetune_epoch)))
        try:
            _, arg_params, aux_params = symbols.load_checkpoint(args.finetune_from, args.finetune_epoch)
        except (mx.base.MXNetError, IOError, ValueError) as exc:
            raise CLIError('%s: cannot load: %s' % (what, str(exc).strip().splitlines()[-1]))
        arg_params, aux_params, replaced = _init_from_checkpoint(
            sym, arg_params, aux_params, data_shapes, label_shapes, what, finetune=True)
        allow_missing = True
        logging.info('Fine-tuning from %s%s', what,
                     '; new %s (%d classes)' % (', '.join(replaced), args.num_classes) if replaced else '')

    mod.init_params(initializer, arg_params=arg_params, aux_params=aux_params,
                    allow_missing=allow_missing, force_init=True)

    opt_params = {'learning_rate': sched.lr(begin_epoch), 'wd': wd}
    if args.optimizer.lower() in ('nag', 'sgd', 'signum', 'lbsgd', 'dcasgd'):
        opt_params['momentum'] = args.mom
    if args.clip_gradient:
        opt_params['clip_gradient'] = args.clip_gradient
    if args.dtype == 'float16':
        opt_params['multi_precision'] = True
    on_servers = kv is not None and args.kv_store == 'dist_async'
    if on_servers:
        opt_params['lr_scheduler'] = schedule_mod.NumUpdateScheduler(
            sched, (epoch_batches or 1) * num_workers, begin_epoch)
    mod.init_optimizer(kvstore=kv, optimizer=args.optimizer.lower(), optimizer_params=opt_params)
    if kv is not None and 'dist' in kv.type and not mod._update_on_kvstore:
        # kv.init kept worker 0's initial values: start every worker from them
        for name, arrs in zip(mod._exec_group.param_names, mod._exec_group.param_arrays):
            kv.pull(name, out=arrs, priority=0)
        mx.nd.waitall()
    if states_blob is not None:
        if set_optimizer_states(mod, states_blob.get('optimizer_states'), states_blob.get('update_counts')):
            logging.info('Restored optimizer states from %s', states_path(prefix, begin_epoch))
        if states_blob.get('schedule'):
            sched.load_state_dict(states_blob['schedule'])
    elif load_epoch and policy == 'plateau':
        _replay_plateau(sched, args, begin_epoch)
    if on_servers:
        logging.warning('dist_async: optimizer states live on the servers and are not checkpointed')

    # ---------------------------------------------------------------- metrics file
    metrics_file = args.metrics_file or (prefix + '-metrics.jsonl' if prefix else None)
    history = []
    if metrics_file and os.path.exists(metrics_file) and begin_epoch > 0:
        with open(metrics_file) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if row.get('epoch', 1e9) < begin_epoch:
                    history.append(row)
    writer = rank == 0

    train_metric = _metrics(args.num_classes, args.top_k)
    val_metric = _metrics(args.num_classes, args.top_k)
    last_saved = load_epoch
    total_epochs = args.num_epochs - begin_epoch
    run_start = time.time()
    batches_done_run = 0

    if begin_epoch >= args.num_epochs:
        logging.info('Checkpoint epoch %d >= --num-epochs %d: nothing to train', begin_epoch, args.num_epochs)

    try:
        for epoch in range(begin_epoch, args.num_epochs):
            mx.random.seed(args.seed + epoch)
            if args.benchmark:
                train = synth
                train.reset()
            else:
                train = data.train(epoch)
            train_metric.reset()
            seen = dict(labels=[], ids=[]) if args.log_samples else None
            tic = time.time()
            interval_tic, interval_n = tic, 0
            nbatch = 0
            samples = 0
            ce = [m for m in train_metric.metrics if isinstance(m, mx.metric.CrossEntropy)][0]
            for batch in train:
                frac = nbatch / float(epoch_batches) if epoch_batches else 0.0
                cur_lr = sched.lr(epoch + min(frac, 1.0))
                if not on_servers:
                    mod._optimizer.set_learning_rate(cur_lr)
                mod.forward_backward(batch)
                mod.update_metric(train_metric, batch.label)
                if not math.isfinite(ce.sum_metric):
                    raise TrainingDiverged('loss became %s at epoch %d batch %d; last good checkpoint: %s' % (
                        'nan' if ce.sum_metric != ce.sum_metric else 'inf', epoch, nbatch,
                        params_path(prefix, last_saved) if (prefix and last_saved is not None) else 'none'))
                mod.update()
                if seen is not None:
                    _record_samples(seen, batch)
                nbatch += 1
                samples += batch.data[0].shape[0] - (batch.pad or 0)
                interval_n += batch.data[0].shape[0]
                batches_done_run += 1
                if nbatch % args.disp_batches == 0:
                    now = time.time()
                    speed = interval_n / max(now - interval_tic, 1e-9)
                    pairs = _metric_values(train_metric)
                    logging.info('Epoch[%d] Batch [%d]\tSpeed: %.2f samples/sec' + '\t%s=%f' * len(pairs),
                                 epoch, nbatch, speed, *sum(pairs, ()))
                    _log_progress(epoch, nbatch, epoch_batches, speed, now - tic, now - run_start,
                                  batches_done_run, total_epochs, args, num_workers)
                    interval_tic, interval_n = now, 0
            if epoch_batches is None:
                epoch_batches = nbatch
            elapsed = time.time() - tic
            train_pairs = _metric_values(train_metric)
            for name, value in train_pairs:
                logging.info('Epoch[%d] Train-%s=%f', epoch, name, value)
            logging.info('Epoch[%d] Time cost=%.3f', epoch, elapsed)
            ips = samples / max(elapsed, 1e-9)

            # one set of BatchNorm statistics (averaged over devices and workers) for validation,
            # the checkpoint and the next epoch
            arg_p, aux_p = mod.get_params()
            if kv is not None and 'dist' in kv.type and 'async' not in kv.type:
                _average_over_workers(kv, aux_p)
            _sync_aux(mod, aux_p)

            # ------------------------------------------------ validation
            val_pairs = []
            if val_iter is not None:
                val_pairs = _evaluate(mod, val_iter, val_metric, kv)
                for name, value in val_pairs:
                    logging.info('Epoch[%d] Validation-%s=%f', epoch, name, value)
            tr, va = _summary(train_pairs), _summary(val_pairs)
            monitored = va.get('top1', tr.get('top1'))
            decayed = sched.end_epoch(monitored)
            if decayed:
                logging.info('Epoch[%d] no validation gain for %d epochs: learning rate x%g -> %g',
                             epoch, sched.patience, sched.factor, sched.lr(epoch + 1))

            # ------------------------------------------------ checkpoint
            if prefix and writer and ((epoch + 1) % args.save_period == 0 or epoch + 1 == args.num_epochs):
                save_checkpoint(mod, prefix, epoch + 1, saved_sym, arg_p, aux_p, sched)
                last_saved = epoch + 1
            row = dict(epoch=epoch, checkpoint=epoch + 1, lr=cur_lr if nbatch else sched.lr(epoch),
                       seconds=round(elapsed, 3), images_per_sec=round(ips * (num_workers if 'dist' in args.kv_store else 1), 2),
                       global_batch=global_batch,
                       train_top1=tr.get('top1'), train_top5=tr.get('top5'), train_loss=tr.get('loss'),
                       val_top1=va.get('top1'), val_top5=va.get('top5'), val_loss=va.get('loss'))
            history.append(row)
            if metrics_file and writer:
                atomic_write_text(metrics_file, ''.join(json.dumps(r) + '\n' for r in history))
            if seen is not None:
                path = args.log_samples.replace('{rank}', str(rank))
                with open(path, 'a') as f:
                    f.write(json.dumps(dict(rank=rank, num_workers=num_workers, epoch=epoch,
                                            samples=len(seen['labels']), labels=seen['labels'],
                                            ids=seen['ids'] or None)) + '\n')
    finally:
        if prefix and writer and args.plot and history:
            try:
                plot_curves(history, prefix + '-curves.png', title=os.path.basename(prefix))
            except Exception as exc:              # a plot must never fail the run
                logging.warning('could not draw %s-curves.png: %s', prefix, exc)

    arg_p, aux_p = mod.get_params()
    logging.info('Worker %d/%d final parameter checksum %s', rank, num_workers, _param_checksum(arg_p, aux_p))
    if prefix and writer and last_saved is not None:
        logging.info('Final checkpoint: %s', params_path(prefix, last_saved))
    return dict(epoch=args.num_epochs, arg_params=arg_p, aux_params=aux_p, history=history,
                module=mod, last_checkpoint=last_saved)


def _replay_plateau(sched, args, begin_epoch):
    """Without a states file, rebuild the plateau state from the metrics file, if any."""
    mf = args.metrics_file or (args.model_prefix + '-metrics.jsonl')
    if not os.path.exists(mf):
        return
    with open(mf) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in sorted((r for r in rows if r.get('epoch', 1e9) < begin_epoch), key=lambda r: r['epoch']):
        sched.end_epoch(row.get('val_top1') if row.get('val_top1') is not None else row.get('train_top1'))


def _record_samples(seen, batch):
    n = batch.data[0].shape[0] - (batch.pad or 0)
    seen['labels'].extend(float(v) for v in batch.label[0].asnumpy()[:n].ravel())
    index = getattr(batch, 'index', None)
    if index is not None:
        index = [int(i) for i in np.asarray(index)[:n].ravel()]
        if any(index) or len(index) == 1:       # ImageRecordIter leaves it all zeros
            seen['ids'].extend(index)


def _average_over_workers(kv, named):
    """Replace each array of ``named`` by its mean over the workers (synchronous kvstore whose
    servers only sum, i.e. ``MXNET_UPDATE_ON_KVSTORE=0``)."""
    ready = getattr(kv, '_fit_avg_keys', None)
    if ready is None:
        ready = kv._fit_avg_keys = set()
    names = sorted(named)
    for name in names:
        key = '__fit_avg__' + name
        if key not in ready:
            kv.init(key, mx.nd.zeros(named[name].shape, dtype=named[name].dtype))
            ready.add(key)
    for i, name in enumerate(names):
        key = '__fit_avg__' + name
        kv.push(key, named[name], priority=-i)
    for i, name in enumerate(names):
        key = '__fit_avg__' + name
        out = mx.nd.zeros(named[name].shape, dtype=named[name].dtype)
        kv.pull(key, out=out, priority=-i)
        named[name] = out / kv.num_workers
    mx.nd.waitall()


def _sync_aux(mod, aux_params):
    """Give every device the averaged BatchNorm statistics that were just checkpointed, so a run
    that continues and a run resumed from the checkpoint hold the same values."""
    mod._aux_params.update(aux_params)
    for name, arrs in zip(mod._exec_group.aux_names, mod._exec_group.aux_arrays):
        for a in arrs:
            aux_params[name].copyto(a)


def _evaluate(mod, val_iter, metric, kv):
    """Validation metrics over ``val_iter`` (padding excluded); summed over the workers of a
    synchronous cluster so that every worker sees (and acts on) the same numbers."""
    metric.reset()
    val_iter.reset()
    for batch in val_iter:
        mod.forward(batch, is_train=False)
        out = mod.get_outputs(merge_multi_context=True)[0]
        label = batch.label[0]
        n = label.shape[0] - (batch.pad or 0)
        if n <= 0:
            continue
        if n < label.shape[0]:
            out, label = out[:n], label[:n]
        metric.update([label], [out])
    if kv is not None and 'dist' in kv.type and 'async' not in kv.type:
        parts = metric.metrics
        vec = []
        for m in parts:
            vec += [m.sum_metric, m.num_inst]
        local = mx.nd.array(vec, dtype='float32')
        if not getattr(kv, '_fit_val_key_ready', False):
            kv.init(_VAL_KEY, mx.nd.zeros(local.shape, dtype='float32'))
            kv._fit_val_key_ready = True
        total = mx.nd.zeros(local.shape, dtype='float32')
        kv.push(_VAL_KEY, local)
        kv.pull(_VAL_KEY, out=total)
        total = total.asnumpy()
        for i, m in enumerate(parts):
            m.sum_metric, m.num_inst = float(total[2 * i]), int(round(total[2 * i + 1]))
    return _metric_values(metric)


def _log_progress(epoch, nbatch, epoch_batches, speed, epoch_elapsed, run_elapsed, batches_done_run,
                  total_epochs, args, num_workers):
    if epoch_batches:
        frac = min(nbatch / float(epoch_batches), 1.0)
        eta_epoch = epoch_elapsed / nbatch * max(epoch_batches - nbatch, 0)
        remaining = (args.num_epochs - epoch - 1) * epoch_batches + max(epoch_batches - nbatch, 0)
        eta_run = run_elapsed / max(batches_done_run, 1) * remaining
        logging.info('Epoch[%d] %s %d/%d batches  %.1f img/s%s  epoch ETA %s  run ETA %s', epoch,
                     _bar(frac), nbatch, epoch_batches, speed,
                     ' (x%d workers)' % num_workers if num_workers > 1 else '',
                     format_seconds(eta_epoch), format_seconds(eta_run))
    else:
        logging.info('Epoch[%d] %d batches  %.1f img/s  (ETA after the first epoch)', epoch, nbatch, speed)


def save_checkpoint(mod, prefix, epoch, sym, arg_params, aux_params, sched):
    """Write one epoch's files atomically, ``.params`` last (its presence marks completeness)."""
    atomic_save(symbol_path(prefix), lambda tmp: sym.save(tmp))
    states, counts = get_optimizer_states(mod)
    blob = dict(format=STATES_FORMAT, epoch=epoch, optimizer=type(mod._optimizer).__name__,
                optimizer_states=states, update_counts=counts, schedule=sched.state_dict())
    atomic_save(states_path(prefix, epoch), pickle.dumps(blob, protocol=4))
    save_params_file(params_path(prefix, epoch), arg_params, aux_params)
    logging.info('Saved checkpoint to "%s"', params_path(prefix, epoch))


def _test_io(train, args, batch):
    n = args.test_io_batches
    tic = time.time()
    interval = time.time()
    count = 0
    for i, b in enumerate(train):
        for d in b.data:
            d.wait_to_read()
        count += 1
        if count % args.disp_batches == 0:
            now = time.time()
            logging.info('Batch [%d]\tSpeed: %.2f samples/sec', count, args.disp_batches * batch / (now - interval))
            interval = now
        if n and count >= n:
            break
    total = time.time() - tic
    logging.info('Read %d batches (%d images) in %.2f s: %.2f samples/sec', count, count * batch, total,
                 count * batch / max(total, 1e-9))
    return dict(batches=count, seconds=total)


# ============================================================================ curves
def plot_curves(history, path, title=None):
    """Draw top-1 error and loss per epoch (train and validation) into a PNG (matplotlib Agg)."""
    import matplotlib
    matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt
    ep = [r['epoch'] + 1 for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for key, label in (('train_top1', 'train top-1'), ('val_top1', 'val top-1'),
                       ('train_top5', 'train top-5'), ('val_top5', 'val top-5')):
        ys = [r.get(key) for r in history]
        if any(y is not None for y in ys):
            axes[0].plot(ep, [y if y is not None else float('nan') for y in ys], marker='o', ms=3, label=label)
    axes[0].set_ylabel('accuracy')
    for key, label in (('train_loss', 'train'), ('val_loss', 'validation')):
        ys = [r.get(key) for r in history]
        if any(y is not None for y in ys):
            axes[1].plot(ep, [y if y is not None else float('nan') for y in ys], marker='o', ms=3, label=label)
    axes[1].set_ylabel('cross-entropy')
    axes[2].plot(ep, [r.get('lr') for r in history], marker='o', ms=3)
    axes[2].set_ylabel('learning rate')
    axes[2].set_yscale('log')
    for ax in axes:
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format='png', dpi=90))
    plt.close(fig)
    return path
