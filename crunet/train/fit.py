"""``fit``: train a Symbol with ``mx.mod.Module`` on one or several devices (GPUs, or CPU contexts
with ``--cpus N``), on one machine or on a cluster (ps-lite ``--kv-store dist_sync`` or Horovod
``--kv-store horovod``, processes started by ``crunet-launch``), as a short driver of named steps:

1. :class:`Run` -- devices, kvstore, rank, logging, seeds, ``PREFIX-args.json``;
2. :func:`starting_point` -- fresh, ``--resume`` (latest complete, finite checkpoint) or ``--load-epoch``;
3. :class:`EpochData` -- the training iterator of epoch E built afresh with seed ``--seed + E``;
4. :func:`bind_module` and :func:`initial_params` -- the Module, the weights (initialiser,
   checkpoint or ``--finetune-from``);
5. :func:`init_optimizer` -- optimizer, learning-rate schedule, restored states
   (:mod:`crunet.train.state`);
6. per epoch :func:`train_epoch` then :func:`end_epoch` -- BatchNorm statistics agreed on,
   validation, schedule, checkpoint (:mod:`crunet.train.state`), metrics (:mod:`crunet.train.report`).

Resuming is exact: the learning rate is a function of (epoch, batch) (``crunet.train.schedule``),
the optimizer states and update counts are restored on every device, the data iterator of epoch
E is built afresh with seed ``--seed + E``, so a run resumed at epoch N continues as if it never
stopped (given the same flags: the cosine policy, for one, depends on ``--num-epochs``).

What a run writes under ``--model-prefix PREFIX`` (rank 0 only): the checkpoint files of
:mod:`crunet.train.state`, ``PREFIX-metrics.jsonl`` (one JSON object per epoch),
``PREFIX-curves.png``, ``PREFIX.log`` and ``PREFIX-args.json`` (the flags of the run).
"""
import copy
import json
import logging
import math
import os
import random
import time

import mxnet as mx
import numpy as np

from symbols.checkpoint import CheckpointError, check_params, expected_shapes, load_params, params_path

from ..data import recordio
from ..devices import get_contexts
from ..errors import ConfigError, TrainingDiverged
from ..files import PrefixLock, atomic_write_text
from . import dist, recipe, report, schedule as schedule_mod, state
from .flags import paper_recipe, resolve_policy

__all__ = ['fit', 'Run', 'EpochData', 'starting_point', 'bind_module', 'initial_params', 'init_optimizer',
           'train_epoch', 'end_epoch']


class Run(object):
    """Devices, kvstore and identity of this process in the job."""

    def __init__(self, args):
        self.contexts = get_contexts(args.gpus, args.cpus)
        self.kv = dist.create_kvstore(args.kv_store, len(self.contexts), args.dtype)
        self.contexts = dist.rank_devices(self.contexts, self.kv)
        self.rank = self.kv.rank if self.kv is not None else 0
        self.num_workers = self.kv.num_workers if self.kv is not None else 1
        self.cluster = dist.is_cluster(args.kv_store)
        self.batch_per_worker = args.batch_size             # per machine, split over the devices (MXNet's meaning)
        self.batch_per_device = args.batch_size // len(self.contexts)
        self.global_batch = self.batch_per_worker * (self.num_workers if self.cluster else 1)
        self.writer = self.rank == 0
        self.sums = dist.worker_sums(self.kv)
        log_file = args.log_file if args.log_file is not None else (
            args.model_prefix + '.log' if args.model_prefix else '')
        # one run per prefix: a second one fails here, before touching its log (crunet.files.PrefixLock)
        self.lock = PrefixLock(args.model_prefix) if args.model_prefix and self.writer else None
        report.setup_run_logging(log_file, self.rank, self.num_workers)
        if args.model_prefix and self.writer:
            # the flags of the run, for people and for crunet-score (preprocessing, image shape)
            atomic_write_text(args.model_prefix + '-args.json',
                              json.dumps(vars(args), indent=1, sort_keys=True, default=str) + '\n')
        random.seed(args.seed)
        np.random.seed(args.seed)
        mx.random.seed(args.seed)


def make_schedule(args):
    lr0, _ = paper_recipe(args.num_layers)
    return schedule_mod.LRSchedule(
        args.lr if args.lr is not None else lr0, resolve_policy(args),
        [float(e) for e in args.lr_step_epochs.split(',') if e.strip()], args.lr_factor, args.num_epochs,
        args.warmup_epochs, args.warmup_lr, args.min_lr, args.lr_patience, args.lr_min_delta)


def starting_point(args):
    """``(begin_epoch, load_epoch)``: where training starts and the checkpoint it continues from."""
    if args.resume:
        load_epoch = state.latest_checkpoint(args.model_prefix)
        if load_epoch is None:
            logging.info('--resume: no checkpoint under %s yet (none complete and finite), starting from epoch 0', args.model_prefix)
            return 0, None
        logging.info('--resume: latest complete checkpoint is %s', params_path(args.model_prefix, load_epoch))
        return load_epoch, load_epoch
    if args.load_epoch is not None:
        return args.load_epoch, args.load_epoch
    return 0, None


def count_records(rec_path, idx_path=None):
    """Records of a RecordIO file, from its ``.idx`` (None if there is none)."""
    idx = (idx_path or recordio.index_path(rec_path)) if rec_path else None
    if not idx or not os.path.exists(idx):
        return None
    return len(recordio.read_index(idx)[0])


def epoch_batches_of(args, run):
    """``(num_examples, batches per epoch per worker)``; either may be None (unknown)."""
    counted = count_records(args.data_train, args.data_train_idx)
    num_examples = counted or args.num_examples
    if counted and args.num_examples and counted != args.num_examples:
        logging.info('%s holds %d records (not --num-examples %d): epochs are %d images',
                     args.data_train, counted, args.num_examples, counted)
    if not num_examples:
        return None, None
    per_worker = int(math.ceil(num_examples / float(run.num_workers))) if run.cluster else num_examples
    return num_examples, int(math.ceil(per_worker / float(run.batch_per_worker)))


class EpochData(object):
    """The training iterator, serving epoch E's permutation (seed ``--seed + E``, see
    ``crunet.data.iterators.TrainIter.set_epoch``: exact resume, the same order on every run), and
    the validation iterator. Synchronous clusters cut every worker's epoch to the same number of
    batches."""

    def __init__(self, args, data_loader, kv, batch_per_worker, epoch_batches):
        a = copy.copy(args)
        a.batch_size = batch_per_worker
        self.train_iter, self.val = data_loader(a, kv)
        self.resize = epoch_batches if dist.is_sync_cluster(kv) else None
        self.provide = (self.train_iter.provide_data, self.train_iter.provide_label)

    def train(self, epoch):
        self.train_iter.set_epoch(epoch)
        return mx.io.ResizeIter(self.train_iter, self.resize) if self.resize else self.train_iter


class SyntheticData(object):
    """``--benchmark 1``: one random batch in memory, the same every epoch."""

    def __init__(self, args, batch_per_worker, epoch_batches):
        from ..data.iterators import SyntheticDataIter
        shape = (batch_per_worker,) + tuple(int(v) for v in args.image_shape.split(','))
        self.it = SyntheticDataIter(args.num_classes, shape, epoch_batches, np.float32)
        if args.gpus:   # page-locked: the copy to each GPU is a DMA, not a staged pageable copy
            self.it.data = self.it.data.as_in_context(mx.cpu_pinned(0))
            self.it.label = self.it.label.as_in_context(mx.cpu_pinned(0))
        self.val = None
        self.provide = (self.it.provide_data, self.it.provide_label)

    def train(self, epoch):
        self.it.reset()
        return self.it


def bind_module(sym, contexts, provide):
    mod = mx.mod.Module(sym, context=contexts, data_names=['data'], label_names=['softmax_label'])
    mod.bind(data_shapes=provide[0], label_shapes=provide[1])
    return mod


def _fitting(sym, arg_params, aux_params, data_shape, what, finetune):
    """The checkpoint's params that fit ``sym``; with ``finetune`` a classifier (``fc6``) of
    another shape is left out (to be initialised afresh), and so are names ``sym`` does not use.
    Returns ``(arg, aux, replaced)``; a mismatch raises :class:`crunet.errors.ConfigError` naming ``what``."""
    replaced = []
    if finetune:
        args, aux = expected_shapes(sym, data_shape)
        for name in [n for n in args if n.startswith('fc6_')]:            # graph order
            if name not in arg_params or tuple(arg_params[name].shape) != args[name]:
                replaced.append(name)
        arg_params = {k: v for k, v in arg_params.items() if k in args and k not in replaced}
        aux_params = {k: v for k, v in aux_params.items() if k in aux}
        filled = dict(arg_params, **{n: mx.nd.zeros(args[n]) for n in replaced})
    else:
        filled = arg_params
    try:
        check_params(sym, filled, aux_params, data_shape)
    except CheckpointError as exc:
        raise ConfigError('%s does not match the network: %s' % (what, exc))
    return arg_params, aux_params, replaced


def initial_params(mod, args, load_epoch):
    """``(arg_params, aux_params, allow_missing)`` to initialise ``mod`` with: the checkpoint of
    ``load_epoch``, the ``--finetune-from`` one, or nothing (the initialiser)."""
    data_shape = mod.data_shapes[0].shape
    if load_epoch is not None:
        what = params_path(args.model_prefix, load_epoch)
        try:
            arg_params, aux_params = load_params(what)
        except CheckpointError as exc:
            raise ConfigError('cannot read %s' % exc)
        try:
            arg_params, aux_params, _ = _fitting(mod.symbol, arg_params, aux_params, data_shape,
                                                 '--load-epoch %d: %s' % (load_epoch, what), finetune=False)
        except ConfigError as exc:
            raise ConfigError('%s (same --network, --num-layers, --setting and --num-classes as the run that '
                           'wrote it? to fine-tune with other classes use --finetune-from)' % exc)
        logging.info('Resuming from %s at epoch %d', what, load_epoch)
        return arg_params, aux_params, False
    if args.finetune_from:
        import symbols
        what = '--finetune-from %s --finetune-epoch %d' % (args.finetune_from, args.finetune_epoch)
        if not os.path.exists(params_path(args.finetune_from, args.finetune_epoch)):
            raise ConfigError('%s: %s not found' % (what, params_path(args.finetune_from, args.finetune_epoch)))
        try:
            _, arg_params, aux_params = symbols.load_checkpoint(args.finetune_from, args.finetune_epoch, check=False)
        except CheckpointError as exc:
            raise ConfigError('%s: cannot load: %s' % (what, exc))
        arg_params, aux_params, replaced = _fitting(mod.symbol, arg_params, aux_params, data_shape, what,
                                                    finetune=True)
        logging.info('Fine-tuning from %s%s', what,
                     '; new %s (%d classes)' % (', '.join(replaced), args.num_classes) if replaced else '')
        return arg_params, aux_params, True
    return None, None, False


def init_optimizer(mod, args, run, sched, begin_epoch, epoch_batches, arg_params):
    """Optimizer with the paper's recipe where flags are unset; states of ``begin_epoch`` restored."""
    _, wd0 = paper_recipe(args.num_layers)
    opt_params = {'learning_rate': sched.lr(begin_epoch), 'wd': args.wd if args.wd is not None else wd0}
    if args.optimizer.lower() in ('nag', 'sgd', 'signum', 'lbsgd', 'dcasgd'):
        opt_params['momentum'] = args.mom
    if args.clip_gradient:
        opt_params['clip_gradient'] = args.clip_gradient
    if args.dtype == 'float16':
        opt_params['multi_precision'] = True
    if run.kv is not None and args.kv_store == 'dist_async':
        opt_params['lr_scheduler'] = schedule_mod.NumUpdateScheduler(
            sched, (epoch_batches or 1) * run.num_workers, begin_epoch)
    mod.init_optimizer(kvstore=run.kv, optimizer=args.optimizer.lower(), optimizer_params=opt_params)
    state.pull_initial_params(mod, run.kv)
    if state.optimizer_on_servers(mod):
        logging.warning('dist_async: optimizer states live on the servers and are not checkpointed')
    return opt_params['wd']


def restore_states(mod, args, sched, begin_epoch, load_epoch, arg_params, history):
    """Optimizer states and schedule of the checkpoint this run continues from, if any."""
    if load_epoch is None:
        return
    path = state.states_path(args.model_prefix, load_epoch)
    if not os.path.exists(path):
        logging.warning('%s missing: optimizer momentum restarts from zero', path)
        if sched.policy == 'plateau':
            for score in history.monitored_scores(begin_epoch):
                sched.end_epoch(score)
        return
    meta, states = state.read_states(path)
    if state.restore_optimizer(mod, meta, states, arg_params, args.dtype, path):
        logging.info('Restored optimizer states from %s', path)
    if meta.get('schedule'):
        sched.load_state_dict(meta['schedule'])


def _diverged(what, epoch, nbatch, prefix, last_saved):
    return TrainingDiverged('%s at epoch %d batch %d; last good checkpoint: %s' % (
        what, epoch, nbatch, params_path(prefix, last_saved) if (prefix and last_saved is not None) else 'none'))


def train_epoch(mod, train, epoch, sched, metric, progress, epoch_batches, seen, last_saved, prefix, feed=None):
    """One pass over ``train``; returns ``(batches, images, last learning rate)``."""
    metric.reset()
    progress.start_epoch()
    ce = report.cross_entropy_of(metric)
    nbatch = images = 0
    cur_lr = sched.lr(epoch)
    for batch in train:
        frac = nbatch / float(epoch_batches) if epoch_batches else 0.0
        cur_lr = sched.lr(epoch + min(frac, 1.0))
        state.set_learning_rate(mod, cur_lr)
        mod.forward_backward(feed.feed(batch, epoch, nbatch) if feed is not None else batch)  # recipe.Recipe
        mod.update_metric(metric, batch.label)
        if not math.isfinite(ce.sum_metric):
            raise _diverged('loss became %s' % ('nan' if ce.sum_metric != ce.sum_metric else 'inf'),
                            epoch, nbatch, prefix, last_saved)
        # after the metric, not before as BaseModule.fit does: with the update queued first, 5 of 6
        # identical CPU runs ended with other BatchNorm statistics (crunet.train.state.update)
        state.update(mod)
        if seen is not None:
            report.record_samples(seen, batch)
        nbatch += 1
        images += batch.data[0].shape[0] - (batch.pad or 0)
        progress.batch(epoch, nbatch, batch.data[0].shape[0], epoch_batches, metric, lr=cur_lr)
    return nbatch, images, cur_lr


def validate(mod, val_iter, metric, sums):
    """Validation metrics over ``val_iter`` (padding excluded); summed over the workers of a
    synchronous cluster (``sums``) so that every worker sees, and acts on, the same numbers."""
    metric.reset()
    val_iter.reset()
    for batch in val_iter:
        mod.forward(mx.io.DataBatch(batch.data, pad=batch.pad), is_train=False)   # labels may be bound (B, K)
        out = mod.get_outputs(merge_multi_context=True)[0]
        label = batch.label[0]
        n = label.shape[0] - (batch.pad or 0)
        if n <= 0:
            continue
        if n < label.shape[0]:
            out, label = out[:n], label[:n]
        metric.update([label], [out])
    if sums is not None:
        parts = metric.metrics
        local = {'m%d' % i: mx.nd.array([m.sum_metric, m.num_inst], dtype='float32') for i, m in enumerate(parts)}
        total = sums.sum(local)
        for i, m in enumerate(parts):
            s, n = total['m%d' % i].asnumpy()
            m.sum_metric, m.num_inst = float(s), int(round(n))
    return report.metric_values(metric)


def agreed_params(mod, run):
    """The weights (one device's copy) and the BatchNorm statistics averaged over the devices and
    the workers, given back to every device: what validation, the checkpoint and the next epoch use."""
    arg_p, _ = state.device_params(mod)
    aux_p = state.mean_aux(mod)
    if run.sums is not None:
        aux_p = run.sums.mean(aux_p)
    state.sync_aux(mod, aux_p)
    return arg_p, aux_p


def end_epoch(mod, args, run, loop, epoch, nbatch, images, cur_lr, elapsed, train_metric):
    """Validation, schedule, non-finite check, checkpoint and metrics row of ``epoch``."""
    train_pairs = report.metric_values(train_metric)
    for name, value in train_pairs:
        logging.info('Epoch[%d] Train-%s=%f', epoch, name, value)
    logging.info('Epoch[%d] Time cost=%.3f', epoch, elapsed)
    arg_p, aux_p = agreed_params(mod, run)
    if run.cluster:    # every worker's own line: equal on all of them in a synchronous cluster
        logging.info('Epoch[%d] Worker %d/%d parameter checksum %s', epoch, run.rank, run.num_workers,
                     report.param_checksum(arg_p, aux_p))
    bad = state.finite_params(arg_p, aux_p)
    if bad is not None:
        raise _diverged('%s became NaN/Inf' % bad, epoch, nbatch, args.model_prefix, loop['last_saved'])
    val_pairs = []
    if loop['val'] is not None:
        val_pairs = validate(mod, loop['val'], loop['val_metric'], run.sums)
        for name, value in val_pairs:
            logging.info('Epoch[%d] Validation-%s=%f', epoch, name, value)
    tr, va = report.summary(train_pairs), report.summary(val_pairs)
    if va.get('loss') is not None and not math.isfinite(va['loss']):    # finite but overflowing weights
        raise _diverged('validation loss became %s' % va['loss'], epoch, nbatch, args.model_prefix, loop['last_saved'])
    sched = loop['sched']
    if sched.end_epoch(va.get('top1', tr.get('top1'))):
        logging.info('Epoch[%d] no validation gain for %d epochs: learning rate x%g -> %g',
                     epoch, sched.patience, sched.factor, sched.lr(epoch + 1))
    prefix = args.model_prefix
    if prefix and run.writer and ((epoch + 1) % args.save_period == 0 or epoch + 1 == args.num_epochs):
        state.save_epoch(mod, prefix, epoch + 1, loop['saved_sym'], arg_p, aux_p, sched.state_dict(), args.dtype)
    if prefix and ((epoch + 1) % args.save_period == 0 or epoch + 1 == args.num_epochs):
        loop['last_saved'] = epoch + 1      # on every rank (rank 0 wrote it): what a divergence names
    ips = images / max(elapsed, 1e-9) * (run.num_workers if run.cluster else 1)
    loop['history'].append(dict(
        epoch=epoch, checkpoint=epoch + 1, lr=cur_lr, seconds=round(elapsed, 3), images_per_sec=round(ips, 2),
        global_batch=run.global_batch, train_top1=tr.get('top1'), train_top5=tr.get('top5'),
        train_loss=tr.get('loss'), val_top1=va.get('top1'), val_top5=va.get('top5'), val_loss=va.get('loss')))
    if loop.get('watch') is not None:   # TensorBoard, curves, --keep-last, PREFIX-best (crunet.train.report.Watch)
        loop['watch'].end_epoch(loop['history'].rows, nbatch, saved=loop['last_saved'] == epoch + 1)


def _log_samples(args, run, epoch, seen):
    path = args.log_samples.replace('{rank}', str(run.rank))
    with open(path, 'a') as f:
        f.write(json.dumps(dict(rank=run.rank, num_workers=run.num_workers, epoch=epoch, samples=len(seen['labels']),
                                labels=seen['labels'], ids=seen['ids'] or None)) + '\n')


def _log_plan(args, run, sched, wd, num_examples, epoch_batches):
    logging.info('Training %s%s on %s: --batch-size %d per machine = %d device(s) x %d images per device, '
                 '%d worker(s), global batch %d; kvstore %s',
                 args.network, '-%s' % args.num_layers if args.num_layers else '',
                 ','.join(str(c) for c in run.contexts), args.batch_size, len(run.contexts), run.batch_per_device,
                 run.num_workers, run.global_batch, args.kv_store if run.kv is not None else 'none (one device)')
    logging.info('Optimizer %s, momentum %g, wd %g; lr policy: %s', args.optimizer, args.mom, wd, sched.describe())
    if num_examples:
        logging.info('%d training images, %d batches per epoch per worker', num_examples, epoch_batches)


def fit(args, network, data_loader, save_network):
    """Train the Symbol ``network`` on the iterators of ``data_loader(args, kv) -> (train,
    val_or_None)`` (``args.batch_size`` is then the batch of this worker); ``save_network`` is the
    graph written as ``PREFIX-symbol.json`` (the plain float32 graph with the same parameters).
    Returns a dict with the final ``epoch``, ``arg_params``, ``aux_params``, the per-epoch
    ``history``, the ``module`` and the ``last_checkpoint``. ``args`` are the flags as
    :func:`crunet.train.flags.check_args` passed them (the command checks them first)."""
    run = Run(args)
    sched = make_schedule(args)
    begin_epoch, load_epoch = starting_point(args)
    if args.benchmark:
        num_examples = args.num_examples or run.batch_per_worker * 50
        epoch_batches = max(num_examples // run.batch_per_worker, 1)
        data = SyntheticData(args, run.batch_per_worker, epoch_batches)
    else:
        num_examples, epoch_batches = epoch_batches_of(args, run)
        if args.test_io:
            from ..data.iterators import test_io
            a = copy.copy(args)
            a.batch_size = run.batch_per_worker
            return dict(images_per_sec=test_io(a, run.kv, args.test_io_batches))
        data = EpochData(args, data_loader, run.kv, run.batch_per_worker, epoch_batches)
    feed = recipe.Recipe.from_args(args, len(run.contexts))
    mod = bind_module(network, run.contexts, feed.provide(data.provide))
    arg_params, aux_params, allow_missing = initial_params(mod, args, load_epoch)
    mod.init_params(recipe.make_initializer(args.initializer), arg_params=arg_params,
                    aux_params=aux_params, allow_missing=allow_missing, force_init=True)
    wd = init_optimizer(mod, args, run, sched, begin_epoch, epoch_batches, arg_params)
    _log_plan(args, run, sched, wd, num_examples, epoch_batches)
    metrics_file = args.metrics_file or (args.model_prefix + '-metrics.jsonl' if args.model_prefix else None)
    history = report.History(metrics_file, begin_epoch, run.writer)
    restore_states(mod, args, sched, begin_epoch, load_epoch, arg_params, history)
    # what the epochs share: the schedule, the metrics history, the newest checkpoint, validation
    loop = dict(sched=sched, history=history, last_saved=load_epoch, saved_sym=save_network, val=data.val,
                val_metric=report.make_metrics(args.num_classes, args.top_k))
    train_metric = report.make_metrics(args.num_classes, args.top_k)
    loop['watch'] = report.Watch(args, run.writer, begin_epoch, feed.describe())
    progress = report.Progress(args.num_epochs, begin_epoch, args.disp_batches, run.num_workers, time.time,
                               board=loop['watch'].board)
    if begin_epoch >= args.num_epochs:
        logging.info('Checkpoint epoch %d >= --num-epochs %d: nothing to train', begin_epoch, args.num_epochs)
    try:
        for epoch in range(begin_epoch, args.num_epochs):
            mx.random.seed(args.seed + epoch)
            seen = dict(labels=[], ids=[]) if args.log_samples else None
            tic = time.time()
            nbatch, images, cur_lr = train_epoch(mod, data.train(epoch), epoch, sched, train_metric, progress,
                                                 epoch_batches, seen, loop['last_saved'], args.model_prefix,
                                                 feed if feed.active else None)
            epoch_batches = epoch_batches or nbatch
            end_epoch(mod, args, run, loop, epoch, nbatch, images, cur_lr, time.time() - tic, train_metric)
            if seen is not None:
                _log_samples(args, run, epoch, seen)
    finally:
        loop['watch'].close(history.rows)
        if run.lock is not None:
            run.lock.release()            # the prefix is free for the next run (also in this process)
    arg_p, aux_p = state.device_params(mod)
    logging.info('Worker %d/%d final parameter checksum %s', run.rank, run.num_workers,
                 report.param_checksum(arg_p, aux_p))
    if args.model_prefix and run.writer and loop['last_saved'] is not None:
        logging.info('Final checkpoint: %s', params_path(args.model_prefix, loop['last_saved']))
    return dict(epoch=args.num_epochs, arg_params=arg_p, aux_params=aux_p, history=history.rows, module=mod,
                last_checkpoint=loop['last_saved'])
