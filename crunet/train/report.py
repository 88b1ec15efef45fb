"""What a run tells the person watching it: metrics, progress lines, ``PREFIX-metrics.jsonl``,
``PREFIX-curves.png`` (redrawn after every epoch), TensorBoard events (``--tensorboard DIR``),
the checkpoints kept (``--keep-last N``, ``PREFIX-best.params``), the run's log file, and the
parameter checksum of each worker."""
import hashlib
import json
import logging
import os
import shutil

import mxnet as mx
import numpy as np

from symbols.checkpoint import params_path

from ..errors import ConfigError
from ..files import atomic_save, atomic_write_text
from ..log import format_seconds, setup_logging
from .state import list_checkpoints, states_path

__all__ = ['make_metrics', 'metric_values', 'summary', 'Progress', 'History', 'plot_curves', 'param_checksum',
           'setup_run_logging', 'record_samples', 'cross_entropy_of', 'Board', 'Watch', 'best_path', 'monitored',
           'prune_checkpoints']


def make_metrics(num_classes, top_k):
    """Top-1, top-k (when ``top_k > 1`` and there are more classes) and cross-entropy."""
    ms = [mx.metric.Accuracy()]
    if top_k and top_k > 1 and num_classes > top_k:
        ms.append(mx.metric.TopKAccuracy(top_k=top_k))
    ms.append(mx.metric.CrossEntropy())
    return mx.metric.CompositeEvalMetric(ms)


def cross_entropy_of(metric):
    return [m for m in metric.metrics if isinstance(m, mx.metric.CrossEntropy)][0]


def metric_values(metric):
    names, values = metric.get()
    if not isinstance(names, list):
        names, values = [names], [values]
    return list(zip(names, values))


def summary(pairs):
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


def _bar(frac, width=20):
    n = int(round(max(0.0, min(1.0, frac)) * width))
    return '[' + '#' * n + '.' * (width - n) + ']'


class Progress(object):
    """The ``Epoch[E] Batch [B] Speed ...`` lines every ``disp_batches`` batches, with a bar and
    the epoch's and the run's remaining time once an epoch's length is known."""

    def __init__(self, num_epochs, begin_epoch, disp_batches, num_workers, clock, board=None):
        self.num_epochs, self.disp_batches, self.num_workers = num_epochs, disp_batches, num_workers
        self.board = board
        self.total_epochs = num_epochs - begin_epoch
        self.clock = clock
        self.run_start = clock()
        self.batches_done = 0

    def start_epoch(self):
        self.epoch_start = self.interval_start = self.clock()
        self.interval_images = 0

    def batch(self, epoch, nbatch, images, epoch_batches, metric, lr=None):
        """Count one batch of ``images``; log (and write to TensorBoard, with the learning rate
        ``lr``) when ``nbatch`` is a multiple of ``disp_batches``."""
        self.batches_done += 1
        self.interval_images += images
        if nbatch % self.disp_batches:
            return
        now = self.clock()
        speed = self.interval_images / max(now - self.interval_start, 1e-9)
        pairs = metric_values(metric)
        logging.info('Epoch[%d] Batch [%d]\tSpeed: %.2f samples/sec' + '\t%s=%f' * len(pairs),
                     epoch, nbatch, speed, *sum(pairs, ()))
        if self.board is not None:
            self.board.batch(epoch, nbatch, epoch_batches, pairs, lr, speed)
        workers = ' (x%d workers)' % self.num_workers if self.num_workers > 1 else ''
        if epoch_batches:
            frac = min(nbatch / float(epoch_batches), 1.0)
            eta_epoch = (now - self.epoch_start) / nbatch * max(epoch_batches - nbatch, 0)
            remaining = (self.num_epochs - epoch - 1) * epoch_batches + max(epoch_batches - nbatch, 0)
            eta_run = (now - self.run_start) / max(self.batches_done, 1) * remaining
            logging.info('Epoch[%d] %s %d/%d batches  %.1f img/s%s  epoch ETA %s  run ETA %s', epoch, _bar(frac),
                         nbatch, epoch_batches, speed, workers, format_seconds(eta_epoch), format_seconds(eta_run))
        else:
            logging.info('Epoch[%d] %d batches  %.1f img/s%s  (ETA after the first epoch)', epoch, nbatch, speed,
                         workers)
        self.interval_start, self.interval_images = now, 0


class History(object):
    """The per-epoch rows of ``PREFIX-metrics.jsonl``: those of earlier epochs are kept on resume,
    the file is rewritten atomically after every epoch (rank 0)."""

    def __init__(self, path, begin_epoch, writer):
        self.path, self.writer = path, writer
        self.rows = []
        if path and os.path.exists(path) and begin_epoch > 0:
            with open(path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict) and row.get('epoch', 1e9) < begin_epoch:
                        self.rows.append(row)

    def append(self, row):
        self.rows.append(row)
        if self.path and self.writer:
            atomic_write_text(self.path, ''.join(json.dumps(r) + '\n' for r in self.rows))

    def monitored_scores(self, before_epoch):
        """Validation top-1 (else training top-1) of the recorded epochs before ``before_epoch``."""
        rows = sorted((r for r in self.rows if r.get('epoch', 1e9) < before_epoch), key=lambda r: r['epoch'])
        return [monitored(r) for r in rows]


def plot_curves(history, path, title=None):
    """Draw accuracy (top-1, top-5), cross-entropy and learning rate per epoch, train and
    validation, into a PNG (matplotlib Agg), atomically."""
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


def param_checksum(arg_params, aux_params):
    """SHA-1 over the names and bytes of every parameter and auxiliary state."""
    h = hashlib.sha1()
    for kind, params in (('arg', arg_params), ('aux', aux_params)):
        for name in sorted(params):
            h.update(('%s:%s' % (kind, name)).encode())
            h.update(np.ascontiguousarray(params[name].asnumpy()).tobytes())
    return h.hexdigest()


def setup_run_logging(log_file, rank, num_workers):
    """MXNet's log format with ``Node[R]`` on clusters; rank 0 also copies the log to ``log_file``."""
    fmt = setup_logging('Node[%d] ' % rank if num_workers > 1 else '')
    if log_file and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        root = logging.getLogger()
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(log_file)
                   for h in root.handlers):
            fh = logging.FileHandler(log_file)
            fh.setFormatter(fmt)
            root.addHandler(fh)


def record_samples(seen, batch):
    """Append the labels (and record ids, when the iterator gives them) of ``batch`` to ``seen``."""
    n = batch.data[0].shape[0] - (batch.pad or 0)
    seen['labels'].extend(float(v) for v in batch.label[0].asnumpy()[:n].ravel())
    index = getattr(batch, 'index', None)
    if index is not None:
        index = [int(i) for i in np.asarray(index)[:n].ravel()]
        if any(index) or len(index) == 1:       # ImageRecordIter leaves it all zeros
            seen['ids'].extend(index)


# ----------------------------------------------------------------------------- TensorBoard
class Board(object):
    """TensorBoard scalars of a run through tensorboardX's ``SummaryWriter`` (rank 0). The step
    of every scalar is the number of training batches since epoch 0 (``epoch x batches per epoch
    + batch``), so a resumed run continues the same curves; validation is written at the step
    that ends its epoch.

    Tags: every ``--disp-batches`` batches ``train/loss`` (cross-entropy against the hard
    labels), ``train/top1``, ``train/top5`` (with ``--top-k 5``), ``train/lr``,
    ``train/images_per_sec``; every epoch ``val/top1``, ``val/top5``, ``val/loss`` (with
    validation data)."""

    def __init__(self, logdir):
        from tensorboardX import SummaryWriter
        try:
            os.makedirs(logdir, exist_ok=True)
            self.writer = SummaryWriter(logdir)
        except OSError as exc:
            raise ConfigError('--tensorboard %s: cannot write there: %s' % (logdir, exc.strerror or exc))
        self.epoch_batches = None

    def _step(self, epoch, nbatch, epoch_batches):
        if epoch_batches:
            self.epoch_batches = epoch_batches
        return epoch * (self.epoch_batches or nbatch) + nbatch

    def batch(self, epoch, nbatch, epoch_batches, pairs, lr, speed):
        step = self._step(epoch, nbatch, epoch_batches)
        for key, value in sorted(summary(pairs).items()):
            self.writer.add_scalar('train/%s' % key, value, step)
        if lr is not None:
            self.writer.add_scalar('train/lr', lr, step)
        self.writer.add_scalar('train/images_per_sec', speed, step)

    def epoch(self, row, nbatch):
        """The validation scalars of a metrics row (``PREFIX-metrics.jsonl``), at the epoch's last step."""
        step = (row['epoch'] + 1) * (self.epoch_batches or nbatch)
        for key in ('top1', 'top5', 'loss'):
            if row.get('val_' + key) is not None:
                self.writer.add_scalar('val/%s' % key, row['val_' + key], step)
        self.writer.flush()

    def close(self):
        self.writer.close()


# ----------------------------------------------------------------------------- checkpoints kept
def best_path(prefix, ext='params'):
    """``PREFIX-best.params`` / ``PREFIX-best.states``: the best saved epoch (:func:`monitored`)."""
    return '%s-best.%s' % (prefix, ext)


def monitored(row):
    """The score that ranks epochs: validation top-1, training top-1 when there is no validation."""
    return row.get('val_top1') if row.get('val_top1') is not None else row.get('train_top1')


def _best_epoch(prefix, rows):
    """The checkpoint epoch of the best-scoring metrics row whose ``.params`` is on disk (the
    earliest of equals), or None."""
    best = None
    for row in sorted(rows, key=lambda r: r.get('epoch', 0)):
        score, ckpt = monitored(row), row.get('checkpoint')
        if score is None or ckpt is None or not os.path.exists(params_path(prefix, ckpt)):
            continue
        if best is None or score > best[0]:
            best = (score, ckpt)
    return best


def prune_checkpoints(prefix, keep_last, keep=()):
    """Delete the ``.params`` (first: the epoch is then no longer complete) and ``.states`` of
    every epoch under ``prefix`` but the ``keep_last`` newest and those in ``keep``. Returns the
    epochs deleted."""
    epochs = list_checkpoints(prefix)            # newest first
    gone = []
    for epoch in epochs[max(int(keep_last), 1):]:
        if epoch in keep:
            continue
        for path in (params_path(prefix, epoch), states_path(prefix, epoch)):
            if os.path.exists(path):
                os.remove(path)
        gone.append(epoch)
    return sorted(gone)


class Watch(object):
    """After every epoch (rank 0): TensorBoard validation scalars, ``PREFIX-curves.png`` redrawn,
    ``PREFIX-best.params`` (+ ``.states``) replaced atomically when the epoch just saved is the
    best so far (:func:`monitored`), and with ``--keep-last N`` the older epochs' files deleted
    (never the newest, never the best). Resuming is unaffected: the newest epoch always stays."""

    def __init__(self, args, writer, begin_epoch, recipe_text=''):
        self.prefix = args.model_prefix if writer else None
        self.plot = bool(args.plot) and bool(self.prefix)
        self.drawn = None                         # the rows PREFIX-curves.png shows
        self.keep_last = int(args.keep_last or 0)
        self.board = Board(args.tensorboard) if (args.tensorboard and writer) else None
        if recipe_text and recipe_text != 'hard labels':
            logging.info('Training recipe: %s', recipe_text)
        if self.board is not None:
            logging.info('TensorBoard events in %s (tensorboard --logdir %s)', args.tensorboard, args.tensorboard)

    def end_epoch(self, rows, nbatch, saved):
        row = rows[-1]
        if self.board is not None:
            self.board.epoch(row, nbatch)
        if not self.prefix:
            return
        self.draw(rows)
        if not saved:
            return
        best = _best_epoch(self.prefix, rows)
        if best is not None and best[1] == row['checkpoint']:
            self._copy_best(best)
        if self.keep_last:
            gone = prune_checkpoints(self.prefix, self.keep_last, keep={best[1]} if best else ())
            if gone:
                logging.info('--keep-last %d: deleted the checkpoints of epoch(s) %s', self.keep_last,
                             ', '.join(map(str, gone)))

    def _copy_best(self, best):
        score, epoch = best
        states = states_path(self.prefix, epoch)
        if os.path.exists(states):
            atomic_save(best_path(self.prefix, 'states'), lambda tmp: shutil.copyfile(states, tmp))
        elif os.path.exists(best_path(self.prefix, 'states')):
            os.remove(best_path(self.prefix, 'states'))
        atomic_save(best_path(self.prefix), lambda tmp: shutil.copyfile(params_path(self.prefix, epoch), tmp))
        logging.info('Best so far: epoch %d (top-1 %.4f) -> %s', epoch, score, best_path(self.prefix))

    def draw(self, rows):
        """Redraw ``PREFIX-curves.png`` from the metrics ``rows`` (with ``--plot``, on rank 0)
        unless it shows them already."""
        if not (self.plot and rows) or self.drawn == rows:
            return
        try:
            plot_curves(rows, self.prefix + '-curves.png', title=os.path.basename(self.prefix))
            self.drawn = [dict(r) for r in rows]
        except Exception as exc:              # a plot must never fail the run
            logging.warning('could not draw %s-curves.png: %s', self.prefix, exc)

    def close(self, rows=()):
        """The end of the run: the curves of ``rows`` drawn (those of a resumed run that trained no
        epoch too), the TensorBoard writer closed."""
        self.draw(rows)
        if self.board is not None:
            self.board.close()
