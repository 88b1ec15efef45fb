"""The training flags (MXNet example/image-classification names; defaults follow the CRU-Net
paper's recipe) and their validation."""
import importlib.util
import math
import os

import mxnet as mx

from symbols.checkpoint import params_path

from ..args import add_model_args
from ..devices import parse_gpus
from ..errors import CLIError
from . import recipe, schedule as schedule_mod
from .horovod import check_horovod_args
from .state import list_checkpoints

__all__ = ['KV_STORES', 'DTYPES', 'LR_POLICIES', 'add_fit_args', 'paper_recipe', 'resolve_policy', 'check_args',
           'check_recipe_args']

KV_STORES = ('local', 'device', 'nccl', 'dist_sync', 'dist_device_sync', 'dist_async', 'horovod')
DTYPES = ('float32', 'float16')
LR_POLICIES = ('auto',) + schedule_mod.POLICIES


def _add_device_args(parser):
    g = parser.add_argument_group('Devices')
    g.add_argument('--gpus', type=str, default='',
                   help='GPUs to train on, e.g. 0,1,2,3; empty: train on the CPU')
    g.add_argument('--cpus', type=int, default=1,
                   help='without --gpus, train data-parallel over this many CPU contexts '
                        '(cpu(0)..cpu(N-1)); exercises the multi-device path without a GPU')
    g.add_argument('--kv-store', type=str, default='device',
                   help='gradient aggregation: %s' % ', '.join(KV_STORES))


def _add_optimisation_args(parser):
    g = parser.add_argument_group('Optimisation', 'defaults follow the CRU-Net paper')
    g.add_argument('--batch-size', type=int, default=32,
                   help='images per machine (worker) per step, as in MXNet\'s example: split evenly over '
                        'its devices (--gpus/--cpus; refused when it does not divide); the global batch is '
                        'this x workers (the paper: 32 per GPU, i.e. --batch-size 128 with --gpus 0,1,2,3)')
    g.add_argument('--num-epochs', type=int, default=100, help='epochs to train')
    g.add_argument('--optimizer', type=str, default='nag',
                   help='nag (Nesterov SGD, the paper\'s), sgd, or another mx.optimizer name')
    g.add_argument('--lr', type=float, default=None,
                   help='base learning rate; default by depth: 0.1 below 100 layers, sqrt(0.1) deeper')
    g.add_argument('--wd', type=float, default=None,
                   help='weight decay; default by depth: 5e-4 below 100 layers, 2e-4 deeper')
    g.add_argument('--mom', type=float, default=0.9, help='momentum')
    g.add_argument('--lr-policy', type=str, default='auto',
                   help='%s; auto = step when --lr-step-epochs is given, else plateau' % ', '.join(LR_POLICIES))
    g.add_argument('--lr-factor', type=float, default=0.1,
                   help='step and plateau policies multiply the rate by this')
    g.add_argument('--lr-step-epochs', type=str, default='',
                   help='epochs at which the step policy multiplies the rate by --lr-factor, e.g. 30,60,90')
    g.add_argument('--lr-patience', type=int, default=5,
                   help='plateau policy: epochs without validation top-1 gain before dividing the rate')
    g.add_argument('--lr-min-delta', type=float, default=1e-4,
                   help='plateau policy: the smallest top-1 gain that counts as an improvement')
    g.add_argument('--min-lr', type=float, default=0.0, help='floor of the cosine and plateau policies')
    g.add_argument('--warmup-epochs', type=float, default=0.0,
                   help='linear warmup over this many epochs (may be fractional)')
    g.add_argument('--warmup-lr', type=float, default=0.0, help='learning rate at the start of warmup')
    g.add_argument('--clip-gradient', type=float, default=None, help='clip gradients to +-this')
    g.add_argument('--dtype', type=str, default='float32',
                   help='float32, or float16 on GPUs (multi-precision updates)')
    g.add_argument('--seed', type=int, default=0,
                   help='seed of the initialisation and of the data order (epoch E uses seed + E)')
    g.add_argument('--top-k', type=int, default=5, help='also report top-k accuracy (0: off)')
    g.add_argument('--initializer', type=str, default='xavier', choices=recipe.INITIALIZERS,
                   help='weight initialisation (MXNet example names): xavier (gaussian, fan-in, magnitude 2), '
                        'msra (MSRAPrelu), normal (sigma 0.01), uniform (scale 0.07)')


def _add_recipe_args(parser):
    g = parser.add_argument_group(
        'Training recipe (GluonCV)', 'off by default (the paper\'s recipe); the training metrics still compare '
        'predictions with each image\'s own label')
    g.add_argument('--label-smoothing', type=float, default=0.0, metavar='EPS',
                   help='train on smoothed targets: 1-EPS+EPS/K on the class, EPS/K on each class '
                        '(GluonCV\'s --label-smoothing is EPS 0.1); 0: one-hot')
    g.add_argument('--mixup', type=float, default=0.0, metavar='ALPHA',
                   help='mixup: each device\'s slice of the batch is mixed with itself reversed, lam ~ Beta(ALPHA, '
                        'ALPHA) per batch, targets mixed alike (GluonCV: --mixup --mixup-alpha 0.2); 0: off')
    g.add_argument('--mixup-off-epochs', type=int, default=0, metavar='N',
                   help='no mixing during the last N epochs (GluonCV\'s --mixup-off-epoch)')
    g.add_argument('--no-wd', action='store_true',
                   help='no weight decay on BatchNorm gamma/beta and biases (GluonCV\'s --no-wd); without '
                        'it MXNet decays the gamma (and the weights) but not betas and biases')


def _add_checkpoint_args(parser):
    g = parser.add_argument_group('Checkpoints')
    g.add_argument('--model-prefix', type=str, default=None,
                   help='checkpoint prefix PREFIX: PREFIX-symbol.json, PREFIX-%%04d.params, '
                        'PREFIX-%%04d.states, PREFIX-metrics.jsonl, PREFIX-curves.png, PREFIX.log; '
                        'train_imagenet.py defaults to runs/NETWORK-LAYERS/NETWORK-LAYERS (demo: runs/demo/crunet)')
    g.add_argument('--save-period', type=int, default=1, help='save a checkpoint every N epochs')
    g.add_argument('--load-epoch', type=int, default=None,
                   help='resume from PREFIX-%%04d.params (+ .states) and continue at that epoch')
    g.add_argument('--resume', type=int, nargs='?', const=1, default=0,
                   help='resume from the latest complete checkpoint under --model-prefix (none: start fresh)')
    g.add_argument('--finetune-from', type=str, default=None,
                   help='initialise from the checkpoint PREFIX (ours or the released CRU-Net files); '
                        'fc6 is replaced when --num-classes differs')
    g.add_argument('--finetune-epoch', type=int, default=0, help='epoch of --finetune-from')
    g.add_argument('--keep-last', type=int, default=0, metavar='N',
                   help='after each save delete the .params/.states of all but the N newest epochs (never the '
                        'best one); 0: keep every checkpoint. PREFIX-best.params (+ .states) always holds the '
                        'best saved epoch: validation top-1, training top-1 without --data-val')


def _add_logging_args(parser):
    g = parser.add_argument_group('Logging and modes')
    g.add_argument('--disp-batches', type=int, default=20, help='log every N batches')
    g.add_argument('--metrics-file', type=str, default=None,
                   help='per-epoch metrics (JSON lines); default PREFIX-metrics.jsonl')
    g.add_argument('--plot', type=int, default=1, help='1: draw PREFIX-curves.png, redrawn after every epoch')
    g.add_argument('--tensorboard', type=str, default=None, metavar='DIR',
                   help='write TensorBoard events to DIR (needs tensorboardX: pip install -e .[tensorboard]): '
                        'train/loss, train/top1, train/top5, train/lr, train/images_per_sec every --disp-batches '
                        'batches, val/top1, val/top5, val/loss every epoch; step = training batches since epoch 0')
    g.add_argument('--log-file', type=str, default=None, help='copy of the log; default PREFIX.log')
    g.add_argument('--benchmark', type=int, default=0,
                   help='1: train on synthetic data (no files) to measure compute speed')
    g.add_argument('--test-io', type=int, default=0, help='1: only read the training data, report speed')
    g.add_argument('--test-io-batches', type=int, default=None, help='batches read by --test-io')
    g.add_argument('--log-samples', type=str, default=None,
                   help='debug: append, per epoch, the labels (and record ids when the iterator gives them) '
                        'this worker trained on to this JSON-lines file; {rank} in the name becomes the rank')


def add_fit_args(parser):
    """Declare the model, device, optimisation, checkpoint and logging flags on ``parser``."""
    add_model_args(parser, network_default='crunet', num_classes_default=1000)
    _add_device_args(parser)
    _add_optimisation_args(parser)
    _add_recipe_args(parser)
    _add_checkpoint_args(parser)
    _add_logging_args(parser)
    return parser


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


#: ranges of the numeric flags (None: not checked here); the flag may be unset (None) where its
#: default depends on the depth. Every float flag is also checked to be finite.
_RANGES = (
    ('lr', 'a learning rate >= 0', lambda v: v >= 0),
    ('wd', 'a weight decay >= 0', lambda v: v >= 0),
    ('mom', 'a momentum in [0, 1)', lambda v: 0 <= v < 1),
    ('lr_factor', 'a positive factor', lambda v: v > 0),
    ('lr_patience', 'a number of epochs >= 1', lambda v: v >= 1),
    ('lr_min_delta', 'a gain >= 0', lambda v: v >= 0),
    ('min_lr', 'a learning rate >= 0', lambda v: v >= 0),
    ('warmup_epochs', 'a number of epochs >= 0', lambda v: v >= 0),
    ('warmup_lr', 'a learning rate >= 0', lambda v: v >= 0),
    ('clip_gradient', 'a positive bound', lambda v: v > 0),
    ('seed', 'a seed in [0, 2**31) (epoch E uses seed + E)', lambda v: 0 <= v < 2 ** 31),
    ('top_k', 'a k >= 0 (0: off)', lambda v: v >= 0),
    ('finetune_epoch', 'an epoch >= 0', lambda v: v >= 0),
    ('test_io_batches', 'a positive number of batches', lambda v: v > 0),
    ('benchmark', '0 or 1', lambda v: v in (0, 1)),
    ('test_io', '0 or 1', lambda v: v in (0, 1)),
    ('plot', '0 or 1', lambda v: v in (0, 1)),
    ('resume', '0 or 1', lambda v: v in (0, 1)),
)


def check_numbers(args):
    """Every float flag finite (NaN/Inf are refused, never trained with), the numeric flags of
    :data:`_RANGES` in range, ``--model-prefix`` not empty; :class:`CLIError` naming the flag."""
    for name, value in sorted(vars(args).items()):
        if isinstance(value, float) and not math.isfinite(value):
            raise CLIError('--%s %s: must be a finite number' % (name.replace('_', '-'), value))
    for name, what, ok in _RANGES:
        value = getattr(args, name, None)
        if value is not None and not ok(value):
            raise CLIError('--%s %s: expected %s' % (name.replace('_', '-'), value, what))
    if getattr(args, 'model_prefix', None) is not None and not str(args.model_prefix).strip():
        raise CLIError("--model-prefix '%s': empty; give a path prefix such as runs/crunet56/crunet56 "
                       "(checkpoints are PREFIX-0001.params, ...)" % args.model_prefix)


def check_args(args):
    """Validate the flags; raise :class:`CLIError` with a one-line message naming the flag."""
    check_numbers(args)
    if args.batch_size is None or args.batch_size <= 0:
        raise CLIError('--batch-size must be a positive number of images per machine, got %s' % args.batch_size)
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
    devices = len(gpus) if gpus else args.cpus
    if args.batch_size % devices:
        raise CLIError('--batch-size %d does not split evenly over %d devices (%s): give a multiple of %d'
                       % (args.batch_size, devices, '--gpus %s' % args.gpus if gpus else '--cpus %d' % args.cpus,
                          devices))
    check_recipe_args(args)
    if args.kv_store == 'nccl' and not gpus:
        raise CLIError('--kv-store nccl needs GPUs (--gpus) and a CUDA build of MXNet; on the CPU use '
                       '--kv-store device')
    if args.dtype == 'float16' and not gpus:
        raise CLIError('--dtype float16 needs GPUs (--gpus): MXNet trains float16 only on GPUs; '
                       'use --dtype float32 on the CPU')
    if 'dist' in args.kv_store and 'DMLC_ROLE' not in os.environ:
        raise CLIError('--kv-store %s needs the ps-lite cluster environment (DMLC_ROLE, ...): start '
                       'the training through tools/launch.py -n WORKERS -s SERVERS' % args.kv_store)
    check_horovod_args(args, gpus)
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
    check_peak_rate(args)
    return gpus


#: the largest float32: MXNet's optimizers take the learning rate as float32 and fail mid-run
#: ("Out of range value for lr") on a larger one
FLOAT32_MAX = 3.4028234663852886e38


def check_peak_rate(args):
    """The largest learning rate of the schedule (the base rate, the warmup start, and under the
    step policy the base rate times every factor above 1) fits in float32. Without ``--lr``, the
    paper's rate for the depth (:func:`paper_recipe`) is the base."""
    base = args.lr if args.lr is not None else paper_recipe(args.num_layers)[0]
    peak, how = base, '--lr %g%s' % (base, '' if args.lr is not None else ' (the default for the depth)')
    if resolve_policy(args) == 'step' and args.lr_factor > 1:
        steps = [e for e in args.lr_step_epochs.split(',') if e.strip()]
        for _ in steps:
            peak *= args.lr_factor              # float overflow gives inf, never an exception
        if steps:
            how += ' x --lr-factor %g at epochs %s' % (args.lr_factor, args.lr_step_epochs)
    if (args.warmup_lr or 0.0) > peak:
        peak, how = args.warmup_lr, '--warmup-lr %g' % args.warmup_lr
    if not peak <= FLOAT32_MAX:
        raise CLIError('%s: the learning rate reaches %g, beyond float32 (largest %g), the type MXNet\'s '
                       'optimizers take it in' % (how, peak, FLOAT32_MAX))


def check_recipe_args(args):
    """Validate the recipe and watching flags (--initializer, --label-smoothing, --mixup,
    --mixup-off-epochs, --keep-last, --tensorboard)."""
    if args.initializer not in recipe.INITIALIZERS:
        raise CLIError('--initializer %r: valid choices: %s' % (args.initializer, ', '.join(recipe.INITIALIZERS)))
    if not (0.0 <= args.label_smoothing < 1.0):
        raise CLIError('--label-smoothing must be in [0, 1), got %g' % args.label_smoothing)
    if not (args.mixup >= 0.0 and math.isfinite(args.mixup)):
        raise CLIError('--mixup must be a Beta alpha > 0 (0: off), got %g' % args.mixup)
    if args.mixup_off_epochs < 0:
        raise CLIError('--mixup-off-epochs must be >= 0, got %d' % args.mixup_off_epochs)
    if args.mixup_off_epochs and not args.mixup:
        raise CLIError('--mixup-off-epochs %d given without --mixup ALPHA' % args.mixup_off_epochs)
    if args.keep_last < 0:
        raise CLIError('--keep-last must be >= 1 (0: keep every checkpoint), got %d' % args.keep_last)
    if args.keep_last and not args.model_prefix:
        raise CLIError('--keep-last needs --model-prefix')
    if args.tensorboard is not None:
        if not args.tensorboard.strip():
            raise CLIError('--tensorboard needs a directory')
        if os.path.exists(args.tensorboard) and not os.path.isdir(args.tensorboard):
            raise CLIError('--tensorboard %s: exists and is not a directory' % args.tensorboard)
        if importlib.util.find_spec('tensorboardX') is None:
            raise CLIError('--tensorboard needs the tensorboardX package: pip install -c constraints.txt -e '
                           '.[tensorboard]')
