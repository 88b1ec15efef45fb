"""Scoring speed of an int8 CRU-Net (symbols/quantize.py) against fp32, in one process.

    python -m bench.int8_speed                                  # CRU-Net-56, batch 8, 224x224
    python -m bench.int8_speed --model PREFIX --epoch N         # a checkpoint's own weights
    python -m bench.int8_speed --network resnext --num-layers 50 --json out.json

Three graphs of the same weights, timed in turns (``--rounds`` rounds of ``--iters`` batches
after ``--warmup``; the median round reported, and the best; the int8 speedup is the median of the
per-round ratios), with the same OpenMP threads
(``crunet.perf``): ``fp32`` the checkpoint's graph as ``crunet-score`` runs it (plain grouped
convolutions), ``fp32-<formulation>`` the grouped-convolution formulation ``crunet.isa`` picks
for this machine when it differs (the fastest fp32 the project has; zoo networks only, not
``--model``), and ``int8`` the graph of
:func:`symbols.quantize.quantize_symbol` (grouped convolutions with 1 < num_group < channels and
the classifier in fp32). Without ``--model`` the weights are random (MXNet's Xavier) and the
calibration is one batch of random images: the speed does not depend on the values. The first
line names the machine (CPU, cores, oneDNN's ISA: VNNI is what int8 needs), as bench/speed.py
does.
"""
import sys
import time

from crunet import isa, perf

perf.configure()  # OpenMP threads = physical cores, before MXNet reads them

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

from crunet.args import ArgParser  # noqa: E402
from crunet.errors import CLIError, cli_main  # noqa: E402
from bench import record  # noqa: E402
from symbols import get_symbol  # noqa: E402
from symbols.checkpoint import CheckpointError, inference_symbol, load_checkpoint, num_classes_of  # noqa: E402
from symbols.quantize import quantize_symbol, quantized_layers  # noqa: E402


def random_params(sym, shape, seed=0):
    """Xavier-initialised ``(arg_params, aux_params)`` of the training symbol ``sym``."""
    mx.random.seed(seed)
    mod = mx.mod.Module(sym, data_names=['data'], label_names=['softmax_label'], context=mx.cpu())
    mod.bind(data_shapes=[('data', shape)], label_shapes=[('softmax_label', shape[:1])], for_training=False)
    mod.init_params(mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2))
    return mod.get_params()


def _predictor(sym, arg_params, aux_params, shape):
    mod = mx.mod.Module(inference_symbol(sym), data_names=['data'], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[('data', shape)], for_training=False)
    mod.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)
    return mod


def _round(mod, batch, iters):
    start = time.perf_counter()
    for _ in range(iters):
        mod.forward(batch, is_train=False)
        mod.get_outputs()[0].wait_to_read()
    return time.perf_counter() - start


def measure(args, log=print):
    """``{'machine', 'threads', 'results': {graph: {'best_ips', 'median_ips'}}, 'int8_speedup', ...}``."""
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    kw = dict(num_layers=args.num_layers) if args.num_layers else {}
    if args.model:
        sym, arg_params, aux_params = load_checkpoint(args.model, args.epoch)
        num_classes = num_classes_of(arg_params)
    else:
        num_classes = 1000
        sym = get_symbol(args.network, num_classes=num_classes, **kw)
        arg_params, aux_params = random_params(sym, shape)
    rs = np.random.RandomState(0)
    data = mx.nd.array(rs.normal(0, 1, shape).astype(np.float32))
    calib = mx.io.NDArrayIter(data.asnumpy(), np.zeros(shape[0], np.float32), batch_size=shape[0],
                              label_name='softmax_label')
    qsym, qargs, qaux = quantize_symbol(sym, arg_params, aux_params, calib, 'naive')
    layers = quantized_layers(qsym)
    graphs = [('fp32', sym, arg_params, aux_params)]
    best = isa.grouped_conv_for('auto')
    if best != 'plain' and not args.model:
        graphs.append(('fp32-%s' % best, get_symbol(args.network, num_classes=num_classes, grouped_conv=best, **kw),
                       arg_params, aux_params))
    graphs.append(('int8', qsym, qargs, qaux))
    mods = [(name, _predictor(s, a, x, shape)) for name, s, a, x in graphs]
    batch = mx.io.DataBatch([data])
    for name, mod in mods:
        _round(mod, batch, args.warmup)
    times = {name: [] for name, _ in mods}
    for r in range(args.rounds):
        for name, mod in mods:
            times[name].append(_round(mod, batch, args.iters))
        log('round %d: %s' % (r + 1, ', '.join('%s %.2f img/s' % (n, args.iters * shape[0] / times[n][-1])
                                                for n, _ in mods)))
    results = {n: dict(best_ips=args.iters * shape[0] / min(t), median_ips=args.iters * shape[0] / float(np.median(t)))
               for n, t in times.items()}
    fast32 = max((n for n in results if n.startswith('fp32')), key=lambda n: results[n]['median_ips'])
    per_round = [times['fp32'][r] / times['int8'][r] for r in range(args.rounds)]          # same round
    per_round_fast = [times[fast32][r] / times['int8'][r] for r in range(args.rounds)]
    return dict(machine=isa.describe(), threads=perf.describe(), model=args.model or args.network,
                num_layers=args.num_layers, batch_size=args.batch_size, image_size=args.image_size,
                iters=args.iters, rounds=args.rounds, results=results,
                int8_layers=sum(layers.values()), fp32_layers=sorted(n for n, q in layers.items() if not q),
                round_seconds=times, int8_speedup=float(np.median(per_round)), int8_speedup_rounds=per_round,
                int8_speedup_vs_best_fp32=float(np.median(per_round_fast)), fastest_fp32=fast32)


def parse_args(argv=None):
    p = ArgParser(prog='python -m bench.int8_speed', description=__doc__.split('\n\n')[0])
    p.add_argument('--network', default='crunet', help='zoo network (default crunet)')
    p.add_argument('--num-layers', type=int, default=56, help='depth (default 56)')
    p.add_argument('--model', default=None, help='checkpoint prefix instead of random weights')
    p.add_argument('--epoch', type=int, default=0, help='with --model: its epoch')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--image-size', type=int, default=224)
    p.add_argument('--warmup', type=int, default=2, help='batches per graph before timing')
    p.add_argument('--iters', type=int, default=5, help='batches per round')
    p.add_argument('--rounds', type=int, default=3, help='rounds (graphs timed in turns)')
    p.add_argument('--json', default=None, help='also write the result as JSON')
    p.add_argument('--record-dir', default=record.RECORD_DIR,
                   help="where the run's record goes: int8-<UTC time>.json ('' writes none)")
    args = p.parse_args(argv)
    for flag in ('batch_size', 'image_size', 'iters', 'rounds'):
        if getattr(args, flag) < 1:
            raise CLIError('--%s must be at least 1' % flag.replace('_', '-'))
    if args.warmup < 0:
        raise CLIError('--warmup must be 0 or more')
    return args


def main(argv=None):
    args = parse_args(argv)
    print('machine: %s' % isa.describe(), flush=True)
    print('threads: %s' % ', '.join('%s=%s' % kv for kv in perf.describe().items() if kv[1] != '(unset)'), flush=True)
    res = measure(args, log=lambda msg: print(msg, flush=True))
    print('%s, batch %d, %dx%d, median of %d rounds of %d batches (best in brackets):'
          % (res['model'] if args.model else '%s-%d' % (args.network, args.num_layers), args.batch_size,
             args.image_size, args.image_size, args.rounds, args.iters))
    for name, r in res['results'].items():
        print('  %-18s %7.2f img/s  (%.2f)' % (name, r['median_ips'], r['best_ips']))
    print('int8 / fp32: %.2fx (vs the fastest fp32, %s: %.2fx; medians of the per-round ratios); fp32 layers in '
          'the int8 graph: %s' % (res['int8_speedup'], res['fastest_fp32'], res['int8_speedup_vs_best_fp32'],
                                  ', '.join(res['fp32_layers'])))
    res['machine'] = record.machine()
    record.stamp(res, ' '.join(['python -m bench.int8_speed'] + list(sys.argv[1:] if argv is None else argv)))
    record.write(res, 'int8', args.record_dir, also=args.json, log=print)
    return 0


if __name__ == '__main__':
    sys.exit(cli_main(main, user_errors=(CheckpointError, ValueError)))
