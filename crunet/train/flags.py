"""The training flags (MXNet example/image-classification names; defaults follow the CRU-Net
paper's recipe) and their validation."""
import math
import os

import mxnet as mx

from symbols.checkpoint import params_path

from ..cli import add_model_args
from ..devices import parse_gpus
from ..errors import CLIError
from . import schedule as schedule_mod
from .state import list_checkpoints

__all__ = ['KV_STORES', 'DTYPES', 'LR_POLICIES', 'add_fit_args', 'paper_recipe', 'resolve_policy', 'check_args']

KV_STORES = ('local', 'device', 'nccl', 'dist_sync', 'dist_device_sync', 'dist_async')
DTYPES = ('float32', 'float16')
LR_POLICIES = ('auto',) + schedule_mod.POLICIES


def add_fit_args(parser):
    """Declare the model, device, optimisation, checkpoint and logging flags on ``parser``."""
    add_model_args(parser, network_default='crunet', num_classes_default=1000)

    g = parser.add_argument_group('Devices')
    g.add_argument('--gpus', type=str, default='',
                   help='GPUs to train on, e.g. 0,1,2,3; empty: train on the CPU')
    g.add_argument('--cpus', type=int, default=1,
                   help='without --gpus, train data-parallel over this many CPU contexts '
                        '(cpu(0)..cpu(N-1)); exercises the multi-device path without a GPU')
    g.add_argument('--kv-store', type=str, default='device',
                   help='gradient aggregation: %s' % ', '.join(KV_STORES))

    g = parser.add_argument_group('Optimisation', 'defaults follow the CRU-Net paper')
    g.add_argument('--batch-size', type=int, default=32,
                   help='images per device (the paper: 32 per GPU); the global batch is '
                        'this x devices x workers')
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

    g = parser.add_argument_group('Logging and modes')
    g.add_argument('--disp-batches', type=int, default=20, help='log every N batches')
    g.add_argument('--metrics-file', type=str, default=None,
                   help='per-epoch metrics (JSON lines); default PREFIX-metrics.jsonl')
    g.add_argument('--plot', type=int, default=1, help='draw PREFIX-curves.png at the end')
    g.add_argument('--log-file', type=str, default=None, help='copy of the log; default PREFIX.log')
    g.add_argument('--benchmark', type=int, default=0,
                   help='1: train on synthetic data (no files) to measure compute speed')
    g.add_argument('--test-io', type=int, default=0, help='1: only read the training data, report speed')
    g.add_argument('--test-io-batches', type=int, default=None, help='batches read by --test-io')
    g.add_argument('--log-samples', type=str, default=None,
                   help='debug: append, per epoch, the labels (and record ids when the iterator gives them) '
                        'this worker trained on to this JSON-lines file; {rank} in the name becomes the rank')
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
