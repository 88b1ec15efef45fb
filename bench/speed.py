"""Training-step and scoring throughput of the zoo against its peers, side by side, in one run.

    python -m bench.speed                                   # batch 8, 224x224, CPU, default models
    python -m bench.speed --batch-size 32 --gpus 0 --json speed.json
    python -m bench.speed --models crunet56 gluoncv2:crunet56 gluoncv:resnet50_v1 --repeat 3

Models (``--models``; default: all of them):

* this project, trained and scored with ``mx.mod.Module`` as ``crunet.train.fit`` / ``score.py`` do:
  ``crunet56``, ``crunet116``, ``resnet50`` (pre-activation), ``resnext50`` (32x4d), ``sharesnet50``;
* peers, hybridized Gluon (``static_alloc``/``static_shape``), imported only when asked for:
  ``gluoncv:resnet50_v1``, ``gluoncv:resnext50_32x4d`` (package ``gluoncv``) and the community
  port ``gluoncv2:crunet56`` (package ``gluoncv2``; ``pip install -e .[bench]``);
* ``KEY@stock``: KEY with MXNet's out-of-the-box settings instead of ``crunet.perf``'s (the
  default list adds ``gluoncv2:crunet56@stock``: the port as its users run it. Stock MXNet
  halves the core count for OpenMP, assuming hyper-threads: one thread on this 2-core VM).

Every model runs in its own subprocess (isolation, and its peak resident memory read back from
``getrusage``): first scoring (a ``for_training=False`` bind; forward only) then the training
step (forward, backward, SGD-momentum update, synchronised with ``waitall``), each ``--warmup``
untimed iterations then ``--iters`` timed ones; the fastest iteration gives images/s (``--stat
median`` for the median one: other processes only ever slow an iteration down, so the fastest is
the most reproducible on a shared machine). Inputs are random tensors already in memory (no data
pipeline: ``bench/io_speed.py`` measures that). ``--repeat N`` (default 3) runs all models N
times, interleaved (round 1 of every model, then round 2 in reverse order, ...); every ratio is
computed within a round, then the median over rounds is reported. The share of the CPU other processes took during each
measurement is recorded (``others' CPU``); a measurement above ``--max-others`` (15%) is taken
again (``--retries``, after ``--retry-wait`` seconds) and, when a clean round exists, left out of
the medians: on a shared machine one busy neighbour halves a 2-core result.

Reported per model: images/s (train, score), multiply-adds per image (convolutions and
classifier, from the plain graph: what the model costs, not what a reformulation executes),
achieved G multiply-adds/s (train counts forward + backward as 3x the forward), peak RSS of the
process after scoring and after training (CPU; on a GPU the device memory in use), and the ratios
of train and score images/s to each peer. Environment settings come from ``crunet.perf`` and are
the same for every model except ``@stock`` ones (they are printed and written to the JSON).

This project's models are built with the grouped-convolution formulation ``--grouped-conv``
(default ``auto``: the one ``crunet.isa`` chooses for this machine's oneDNN ISA, as ``crunet-train``
does; ``plain``, ``blockdiag8``, ``blockdiag16``; same parameters, outputs and gradients as the
plain graph, see ``bench/FINDINGS.md``).

Every table and JSON names the machine: CPU model, cores and the ISA oneDNN runs (``crunet.isa``).
"""
import argparse
import collections
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time

# The settings must be in the environment before MXNet is imported (here, and in every child).
if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from crunet import isa, perf  # noqa: E402  (neither imports mxnet)
from crunet.devices import parse_gpus  # noqa: E402  (does not import mxnet)
from crunet.errors import CLIError, die  # noqa: E402
from bench import record  # noqa: E402

__all__ = ['MODELS', 'PEERS', 'measure', 'run', 'format_table', 'main']

Spec = collections.namedtuple('Spec', 'label kind name kwargs')

#: key -> how to build it. ``kind`` 'zoo': ``symbols.get_symbol(name, **kwargs)``; 'gluoncv' /
#: 'gluoncv2': the package's ``get_model(name)``.
MODELS = collections.OrderedDict([
    ('crunet56', Spec('CRU-Net-56 @x14 32x4d (this project)', 'zoo', 'crunet', dict(num_layers=56))),
    ('crunet116', Spec('CRU-Net-116 @x28x14 32x4d (this project)', 'zoo', 'crunet', dict(num_layers=116))),
    ('resnet50', Spec('ResNet-50 pre-act (this project)', 'zoo', 'resnet', dict(num_layers=50))),
    ('resnext50', Spec('ResNeXt-50 32x4d (this project)', 'zoo', 'resnext', dict(num_layers=50))),
    ('sharesnet50', Spec('ShaResNet-50 (this project)', 'zoo', 'sharesnet', dict(num_layers=50))),
    ('gluoncv:resnet50_v1', Spec('GluonCV resnet50_v1 (peer)', 'gluoncv', 'resnet50_v1', {})),
    ('gluoncv:resnext50_32x4d', Spec('GluonCV resnext50_32x4d (peer)', 'gluoncv', 'resnext50_32x4d', {})),
    ('gluoncv2:crunet56', Spec('gluoncv2 crunet56, community port (peer)', 'gluoncv2', 'crunet56', {})),
])
#: ``KEY@stock`` runs KEY with MXNet's out-of-the-box settings (``crunet.perf`` not applied:
#: ``CRUNET_PERF_DEFAULTS=0``), what a user of the peer gets without this project's settings.
STOCK = '@stock'
DEFAULT_MODELS = list(MODELS) + ['gluoncv2:crunet56' + STOCK]
#: peers every model is compared with (ratio columns), when they are part of the run
PEERS = ('gluoncv2:crunet56', 'gluoncv:resnet50_v1', 'gluoncv:resnext50_32x4d', 'gluoncv2:crunet56' + STOCK)
PEER_SHORT = {'gluoncv2:crunet56': 'port-CRU56', 'gluoncv:resnet50_v1': 'gcv-R50',
              'gluoncv:resnext50_32x4d': 'gcv-RX50', 'gluoncv2:crunet56' + STOCK: 'port-CRU56 stock'}


def _spec(key):
    return MODELS[key.split('@')[0]]


def _label(key):
    return _spec(key).label + (', MXNet stock settings' if key.endswith(STOCK) else '')
RESULT_TAG = 'BENCH_SPEED_RESULT '


# ============================================================================ child: one model
def _peak_rss_mb():
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024.0 if sys.platform != 'darwin' else kb / 2.0 ** 20


def _device_mem_mb(mx, ctx):
    """GPU memory in use on the device (total - free): device-wide, so MXNet's pool, cuDNN
    workspaces and other processes count too; None on the CPU (peak RSS is reported there)."""
    if ctx.device_type != 'gpu':
        return None
    free, total = mx.context.gpu_memory_info(ctx.device_id)
    return (total - free) / 2.0 ** 20


def _cpu_jiffies():
    """(busy jiffies of the whole machine, jiffies used by this process and the children it has
    waited for), or None off Linux."""
    try:
        with open('/proc/stat') as f:
            v = [int(x) for x in f.readline().split()[1:]]
        with open('/proc/self/stat') as f:
            own = f.read().rsplit(')', 1)[1].split()
        return sum(v) - v[3] - (v[4] if len(v) > 4 else 0), sum(int(x) for x in own[11:15])
    except (OSError, ValueError, IndexError):  # pragma: no cover
        return None


def _timed(fn, warmup, iters):
    """Per-iteration wall times, and the share of the machine's CPU that *other* processes used
    meanwhile (0: the machine was ours; 0.5 on 2 cores: another process held a whole core)."""
    for _ in range(warmup):
        fn()
    times = []
    j0, t0 = _cpu_jiffies(), time.perf_counter()
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    j1, wall = _cpu_jiffies(), time.perf_counter() - t0
    others = None
    if j0 and j1:
        hz = os.sysconf('SC_CLK_TCK')
        others = max(0.0, ((j1[0] - j0[0]) - (j1[1] - j0[1])) / float(hz) / (wall * (os.cpu_count() or 1)))
    return times, others


def _ips(bs, times, stat):
    import numpy as np
    return bs / float(min(times) if stat == 'best' else np.median(times))


def _macs(sym, image_size):
    from symbols import count_macs
    try:
        return count_macs(sym, '3,%d,%d' % (image_size, image_size))
    except Exception:  # pragma: no cover - a peer graph count_macs cannot read
        return None


def _zoo_runners(mx, spec, args, ctx, data, label):
    from symbols import get_symbol
    image_shape = '3,%d,%d' % (args.image_size, args.image_size)
    plain = get_symbol(spec.name, image_shape=image_shape, **spec.kwargs)
    sym = get_symbol(spec.name, image_shape=image_shape, grouped_conv=args.grouped_conv, **spec.kwargs)
    assert sym.list_arguments() == plain.list_arguments()
    shapes = dict(data_shapes=[('data', data.shape)], label_shapes=[('softmax_label', label.shape)])
    init = mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2)
    batch = mx.io.DataBatch([data], [label])
    state = {}

    def setup_score():
        mod = mx.mod.Module(sym, context=ctx)
        mod.bind(for_training=False, **shapes)
        mod.init_params(init)
        state['score'] = mod

    def score():
        mod = state['score']
        mod.forward(batch, is_train=False)
        mod.get_outputs()[0].wait_to_read()

    def setup_train():
        state.pop('score', None)
        mod = mx.mod.Module(sym, context=ctx)
        mod.bind(for_training=True, **shapes)
        mod.init_params(init)
        mod.init_optimizer(optimizer='nag', optimizer_params=dict(   # crunet-train's defaults
            learning_rate=1e-3, momentum=0.9, wd=5e-4, rescale_grad=1.0 / data.shape[0]))
        state['train'] = mod

    def train():
        mod = state['train']
        mod.forward(batch, is_train=True)
        mod.backward()
        mod.update()
        mx.nd.waitall()

    return plain, setup_score, score, setup_train, train


def _gluon_runners(mx, spec, args, ctx, data, label):
    from mxnet import autograd, gluon
    if spec.kind == 'gluoncv':
        from gluoncv.model_zoo import get_model
    else:
        from gluoncv2.model_provider import get_model
    net = get_model(spec.name, pretrained=False)
    net.initialize(mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2), ctx=ctx)
    plain = net(mx.sym.var('data'))
    net.hybridize(static_alloc=True, static_shape=True)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    state = {}

    def setup_score():
        pass

    def score():
        net(data).wait_to_read()

    def setup_train():
        state['trainer'] = gluon.Trainer(net.collect_params(), 'sgd', dict(
            learning_rate=1e-3, momentum=0.9, wd=1e-4))

    def train():
        with autograd.record():
            loss = loss_fn(net(data), label)
        loss.backward()
        state['trainer'].step(data.shape[0])
        mx.nd.waitall()

    return plain, setup_score, score, setup_train, train


def cli_command(spec, args):
    """The ``train_imagenet.py`` command :func:`train_cli` times: ``--benchmark 1`` (one random
    batch in memory, as the bare loop uses), one line per batch (``--disp-batches 1``), the
    formulation of the bare loop, nothing written to disk."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(root, 'train_imagenet.py'), '--network', spec.name, '--benchmark', '1',
           '--batch-size', str(args.batch_size), '--num-examples', str(args.batch_size * (args.warmup + args.iters)),
           '--disp-batches', '1', '--image-shape', '3,%d,%d' % (args.image_size, args.image_size),
           '--num-epochs', '1', '--grouped-conv', args.grouped_conv, '--plot', '0',
           '--gpus', ','.join(str(g) for g in args.gpus)]
    for flag in ('num_layers', 'setting'):
        if spec.kwargs.get(flag) is not None:
            cmd += ['--' + flag.replace('_', '-'), str(spec.kwargs[flag])]
    return cmd


_SPEED_LINE = re.compile(r'Epoch\[0\] Batch \[(\d+)\]\tSpeed: ([\d.]+) samples/sec')


def train_cli(spec, args):
    """Per-batch wall times of the training command users run (:func:`cli_command`), read from its
    ``Speed:`` lines (each covers one batch, Python between batches included), the first
    ``--warmup`` left out; and the share of the CPU other processes took meanwhile."""
    j0, t0 = _cpu_jiffies(), time.perf_counter()
    proc = subprocess.run(cli_command(spec, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=args.timeout)
    j1, wall = _cpu_jiffies(), time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError('train_imagenet.py failed (exit %d): %s' % (proc.returncode, proc.stderr[-2000:]))
    speeds = [(int(b), float(v)) for b, v in _SPEED_LINE.findall(proc.stderr)]
    times = [args.batch_size / v for b, v in speeds if b > args.warmup]
    if len(times) != args.iters:
        raise RuntimeError('expected %d timed Speed lines from train_imagenet.py, read %d' % (args.iters, len(times)))
    others = None
    if j0 and j1:
        hz = os.sysconf('SC_CLK_TCK')
        others = max(0.0, ((j1[0] - j0[0]) - (j1[1] - j0[1])) / float(hz) / (wall * (os.cpu_count() or 1)))
    return times, others


def measure(key, args):
    """Measure one model in this process; returns a dict (see the module docstring)."""
    import warnings
    warnings.filterwarnings('ignore')
    import mxnet as mx
    import numpy as np

    spec = _spec(key)
    ctx = mx.gpu(args.gpus[0]) if args.gpus else mx.cpu()
    bs, size = args.batch_size, args.image_size
    rng = np.random.RandomState(0)
    data = mx.nd.array(rng.uniform(-1, 1, (bs, 3, size, size)), ctx=ctx)
    label = mx.nd.array(rng.randint(0, 1000, bs), ctx=ctx)
    make = _zoo_runners if spec.kind == 'zoo' else _gluon_runners
    t0 = time.perf_counter()
    plain, setup_score, score, setup_train, train = make(mx, spec, args, ctx, data, label)
    out = dict(model=key, label=_label(key), batch_size=bs, image_size=size,
               macs=_macs(plain, size), device=str(ctx))
    if 'score' in args.modes:
        setup_score()
        times, others = _timed(score, args.warmup, args.iters)
        out.update(score_times=times, score_ips=_ips(bs, times, args.stat), score_others_cpu=others,
                   score_peak_mb=_device_mem_mb(mx, ctx) or _peak_rss_mb())
    if 'train' in args.modes:
        setup_train()
        times, others = _timed(train, args.warmup, args.iters)
        out.update(train_times=times, train_ips=_ips(bs, times, args.stat), train_others_cpu=others,
                   train_peak_mb=_device_mem_mb(mx, ctx) or _peak_rss_mb())
    if 'train-cli' in args.modes and spec.kind == 'zoo':
        times, others = train_cli(spec, args)
        out.update(train_cli_times=times, train_cli_ips=_ips(bs, times, args.stat), train_cli_others_cpu=others)
    out['seconds'] = time.perf_counter() - t0
    return out


# ============================================================================ parent: all models
def _child_cmd(key, args):
    cmd = [sys.executable, '-m', 'bench.speed', '--child', key, '--batch-size', str(args.batch_size),
           '--image-size', str(args.image_size), '--warmup', str(args.warmup), '--iters', str(args.iters),
           '--grouped-conv', args.grouped_conv, '--stat', args.stat, '--modes'] + list(args.modes)
    if args.gpus:
        cmd += ['--gpus', ','.join(str(g) for g in args.gpus)]
    return cmd


def _run_child(key, args, log):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    load = os.getloadavg()[0]
    env = dict(os.environ)
    if key.endswith(STOCK):
        env['CRUNET_PERF_DEFAULTS'] = '0'
        for name in perf.defaults():
            if os.environ.get(name) == perf.APPLIED.get(name):
                env.pop(name, None)  # set by configure() in this process, not by the user
    proc = subprocess.run(_child_cmd(key, args), cwd=root, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG):])
            res['load_before'] = load
            res['load_after'] = os.getloadavg()[0]
            return res
    tail = '\n'.join((proc.stdout + proc.stderr).splitlines()[-15:])
    log('  %s failed (exit %d):\n%s' % (key, proc.returncode, tail))
    return dict(model=key, label=_label(key), error=tail, returncode=proc.returncode)


def _median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


#: the measured modes, as keys of a result (``train-cli``: ``train_cli_ips``, ...)
MODES = ('train', 'train-cli', 'score')


def _key(mode):
    return mode.replace('-', '_')


def _others(res):
    return max(res.get(_key(m) + '_others_cpu') or 0 for m in MODES)


def summarize(rounds, models, peers, max_others=1.0):
    """Per model: median over rounds of images/s, ratios to each peer (computed within each round),
    G multiply-adds/s and peak memory; plus the per-round ratios (for reproducibility checks).
    Measurements during which other processes took more than ``max_others`` of the CPU are left
    out of the medians when a clean one of the same model (pair, for ratios) exists."""
    rows = collections.OrderedDict()

    def clean(results):
        ok = [r for r in results if _others(r) <= max_others]
        return ok or results

    for key in models:
        runs = clean([r[key] for r in rounds if key in r and 'error' not in r[key]])
        if not runs:
            rows[key] = dict(model=key, label=_label(key), error=[r[key].get('error') for r in rounds if key in r][:1])
            continue
        row = dict(model=key, label=_label(key), macs=runs[0].get('macs'))
        row['others_cpu_max'] = max([r.get(_key(m) + '_others_cpu') or 0 for r in runs for m in MODES])
        for mode in map(_key, MODES):
            ips = [r.get(mode + '_ips') for r in runs]
            row[mode + '_ips'] = _median(ips)
            row[mode + '_ips_rounds'] = ips
            row[mode + '_peak_mb'] = max([r.get(mode + '_peak_mb') or 0 for r in runs]) or None
            factor = 1.0 if mode == 'score' else 3.0
            if row['macs'] and row[mode + '_ips']:
                row[mode + '_gmacs'] = factor * row['macs'] * row[mode + '_ips'] / 1e9
            for peer in peers:
                per_round, clean_rounds = [], []
                for r in rounds:
                    # the peers have no command of their own: their training loop is what they offer
                    a, b = r.get(key, {}).get(mode + '_ips'), r.get(peer, {}).get(mode + '_ips')
                    if mode == 'train_cli' and b is None:
                        b = r.get(peer, {}).get('train_ips')
                    per_round.append(a / b if a and b else None)
                    if a and b and max(_others(r[key]), _others(r[peer])) <= max_others:
                        clean_rounds.append(a / b)
                row['%s_x_%s' % (mode, peer)] = _median(clean_rounds or per_round)
                row['%s_x_%s_rounds' % (mode, peer)] = per_round
        # the command against the bare loop of the same graph, within each round
        per_round = [r[key]['train_cli_ips'] / r[key]['train_ips'] if r.get(key, {}).get('train_cli_ips')
                     and r[key].get('train_ips') else None for r in rounds]
        clean_rounds = [v for v, r in zip(per_round, rounds) if v is not None and _others(r[key]) <= max_others]
        row['train_cli_x_train'] = _median(clean_rounds or per_round)
        row['train_cli_x_train_rounds'] = per_round
        rows[key] = row
    return rows


def _fmt(v, spec='%.2f'):
    return '-' if v is None else spec % v


def format_table(rows, peers, machine=None):
    """Markdown table of :func:`summarize`'s rows; ``machine`` (:func:`machine_fields`) adds a first
    line naming the machine, and a CPU/ISA column, so a pasted table says where it was measured."""
    head = ['model', 'machine'] if machine else ['model']
    head += ['G MACs', 'train img/s', 'train-cli img/s', 'train-cli x train', 'score img/s', 'train GMAC/s',
             'score GMAC/s']
    head += ['train x %s' % PEER_SHORT.get(p, p) for p in peers]
    head += ['train-cli x %s' % PEER_SHORT.get(p, p) for p in peers]
    head += ['score x %s' % PEER_SHORT.get(p, p) for p in peers]
    if machine and machine['device'].startswith('GPU'):
        # gpu_memory_info is device-wide (total - free): MXNet's pool, cuDNN workspaces, other processes
        head += ['GPU memory in use train MB (device-wide)', 'GPU memory in use score MB (device-wide)']
    else:
        head += ['peak RSS train MB', 'peak RSS score MB']
    head += ['others\' CPU']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    if machine:
        lines.insert(0, 'Machine: %s; %s; this project\'s grouped convolutions: %s\n'
                     % (machine['name'], machine['device'], machine['grouped_conv']))
    where = ['%s, %d cores, %s' % (machine['cpu'], machine['cores'], machine['isa'])] if machine else []
    for key, row in rows.items():
        if 'error' in row:
            lines.append('| %s | failed: %s |' % (key, (row['error'] or ['?'])[0].splitlines()[-1][:80]
                                                  if row['error'] and row['error'][0] else 'failed'))
            continue
        cells = [key] + where + [_fmt(row['macs'] and row['macs'] / 1e9), _fmt(row.get('train_ips')),
                 _fmt(row.get('train_cli_ips')), _fmt(row.get('train_cli_x_train'), '%.3fx'), _fmt(row.get('score_ips')),
                 _fmt(row.get('train_gmacs'), '%.1f'), _fmt(row.get('score_gmacs'), '%.1f')]
        cells += [_fmt(row.get('train_x_%s' % p), '%.2fx') for p in peers]
        cells += [_fmt(row.get('train_cli_x_%s' % p), '%.2fx') for p in peers]
        cells += [_fmt(row.get('score_x_%s' % p), '%.2fx') for p in peers]
        cells += [_fmt(row.get('train_peak_mb'), '%.0f'), _fmt(row.get('score_peak_mb'), '%.0f'),
                  _fmt(row.get('others_cpu_max') and 100 * row['others_cpu_max'], '%.0f%%')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def resolve_machine(args):
    """Name the machine (``args.machine``: :func:`crunet.isa.detect`) and turn ``--grouped-conv
    auto|autotune`` into the formulation chosen for it (the flag's value kept in
    ``args.grouped_conv_flag``). Idempotent."""
    if getattr(args, 'machine', None) is None:
        args.machine = isa.detect()
    if getattr(args, 'grouped_conv_flag', None) is None:
        args.grouped_conv_flag = args.grouped_conv
        args.grouped_conv = isa.grouped_conv_for(args.grouped_conv, gpus=bool(args.gpus))
    return args


def run(args, log=print):
    """Run every model ``args.repeat`` times (interleaved) in subprocesses; returns the report dict."""
    resolve_machine(args)
    models = list(args.models)
    peers = [p for p in PEERS if p in models]
    rounds = []
    t0 = time.time()
    for r in range(args.repeat):
        results = {}
        # odd rounds run the list backwards, so a slow drift of the machine's speed (other virtual
        # machines on the host, clocks) cancels in the median of the ratios
        for key in (models if r % 2 == 0 else models[::-1]):
            log('[round %d/%d] %s (load %.2f)' % (r + 1, args.repeat, key, os.getloadavg()[0]))
            res = _run_child(key, args, log)
            for attempt in range(args.retries):
                if 'error' in res or _others(res) <= args.max_others:
                    break
                log('  other processes took %.0f%% of the CPU meanwhile: measuring again in %ds'
                    % (100 * _others(res), args.retry_wait))
                time.sleep(args.retry_wait)
                again = _run_child(key, args, log)
                if 'error' not in again and _others(again) < _others(res):
                    res = again
            results[key] = res
            if 'error' not in res:
                log('  train %s img/s, score %s img/s, peak RSS %s MB' % (
                    _fmt(res.get('train_ips')), _fmt(res.get('score_ips')), _fmt(res.get('train_peak_mb'), '%.0f')))
        rounds.append(results)
    rows = summarize(rounds, models, peers, args.max_others)
    import mxnet as mx
    machine = args.machine
    report = dict(
        command=' '.join(['python -m bench.speed'] + sys.argv[1:]),
        machine=machine_fields(machine, args),
        settings=dict(batch_size=args.batch_size, image_size=args.image_size, gpus=args.gpus, stat=args.stat,
                      max_others=args.max_others, retries=args.retries,
                      warmup=args.warmup, iters=args.iters, repeat=args.repeat,
                      grouped_conv=args.grouped_conv, grouped_conv_flag=args.grouped_conv_flag),
        environment=dict(perf.describe(), mxnet=mx.__version__, python=platform.python_version(),
                         machine=platform.machine(), cpu=machine['cpu'], cores=machine['cores'],
                         logical_cpus=os.cpu_count(), isa=machine['isa'], isa_text=machine.get('isa_text'),
                         onednn=machine.get('onednn'), load_end=os.getloadavg()),
        seconds=time.time() - t0, peers=peers, rows=list(rows.values()), rounds=rounds)
    report['table'] = format_table(rows, peers, report['machine'])
    return report


def machine_fields(machine, args):
    """What names the machine in every table and JSON: CPU model, cores, oneDNN's ISA (and how it
    was read), and the grouped-convolution formulation this project's models ran with."""
    return dict(cpu=machine['cpu'], cores=machine['cores'], isa=machine['isa'], isa_text=machine.get('isa_text'),
                isa_source=machine.get('source'), onednn=machine.get('onednn'),
                name=isa.describe(machine), grouped_conv=args.grouped_conv,
                device='GPU %s' % args.gpus[0] if args.gpus else 'CPU')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--image-size', type=int, default=224)
    p.add_argument('--gpus', default='', help='GPU ids, e.g. 0 (one GPU is used); CPU when empty')
    p.add_argument('--models', nargs='+', default=DEFAULT_MODELS, metavar='MODEL',
                   help='any of: %s; KEY%s runs KEY with MXNet\'s stock settings (default: %s)'
                   % (', '.join(MODELS), STOCK, ' '.join(DEFAULT_MODELS)))
    p.add_argument('--modes', nargs='+', default=['score', 'train', 'train-cli'], choices=MODES,
                   help='score: forward only; train: forward, backward and update in a bare loop; train-cli: '
                        'the same model through train_imagenet.py --benchmark 1, timed from its Speed lines '
                        '(this project\'s models only; default: all three)')
    p.add_argument('--warmup', type=int, default=2, help='untimed iterations per measurement')
    p.add_argument('--iters', type=int, default=3, help='timed iterations per measurement')
    p.add_argument('--stat', default='median', choices=['median', 'best'],
                   help='images/s from the median timed iteration (default) or from the fastest one')
    p.add_argument('--repeat', type=int, default=3,
                   help='rounds over all models, interleaved, every other one in reverse order; ratios are '
                        'the median over rounds (default 3: ~10 minutes for the default list on 2 idle '
                        'cores; one process of a model can run ~10%% faster or slower than the next, so '
                        'one round is a quick look, not a reproducible ratio)')
    p.add_argument('--grouped-conv', default='auto', choices=isa.GROUPED_CONV_FLAG_CHOICES,
                   help="this project's grouped-convolution formulation (symbols.blocks.GROUPED_CONV_CHOICES); "
                        "auto (default): this machine's choice from oneDNN's ISA (crunet.isa), as crunet-train "
                        "makes it; autotune: this machine's measured fastest")
    p.add_argument('--max-others', type=float, default=0.15,
                   help='a measurement during which other processes took more than this share of the CPU '
                        'is repeated (--retries times, the cleanest kept) and left out of the medians when '
                        'a clean round exists (default 0.15)')
    p.add_argument('--retries', type=int, default=2)
    p.add_argument('--retry-wait', type=int, default=20, help='seconds to wait before measuring again')
    p.add_argument('--timeout', type=float, default=1800, help='seconds allowed to one model')
    p.add_argument('--json', help='also write the report (all rounds, all iterations) here')
    p.add_argument('--record-dir', default=record.RECORD_DIR,
                   help='where the record of the run goes: speed-<UTC time>.json, the report with every round '
                        'and iteration, the machine, the versions and the command (default bench/records; '
                        "'' writes none)")
    p.add_argument('--child', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = [m for m in args.models if m.split('@')[0] not in MODELS or m.count('@') > 1
           or ('@' in m and not m.endswith(STOCK))]
    if bad:
        p.error('unknown model(s) %s; choose from %s (optionally with %s)' % (', '.join(bad), ', '.join(MODELS), STOCK))
    try:   # CUDA build, its libraries, the driver and the GPUs' architecture: one line if not
        args.gpus = parse_gpus(str(args.gpus))
    except CLIError as exc:
        die(exc)
    if args.batch_size < 1 or args.image_size < 32 or args.iters < 1 or args.warmup < 0 or args.repeat < 1:
        p.error('need --batch-size >= 1, --image-size >= 32, --iters >= 1, --warmup >= 0, --repeat >= 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    perf.configure()
    if args.child:
        res = measure(args.child, args)
        sys.stdout.write(RESULT_TAG + json.dumps(res) + '\n')
        return 0
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    resolve_machine(args)
    log('machine: %s' % isa.describe(args.machine))
    log('grouped convolutions of this project\'s models: %s (--grouped-conv %s)'
        % (args.grouped_conv, args.grouped_conv_flag))
    log('settings: %s' % ' '.join('%s=%s' % kv for kv in sorted(perf.describe().items())))
    report = run(args, log)
    print('\n%s, batch %d, %dx%d, %s; %s of %d timed iterations after %d warm-up, %d round(s)\n'
          % (report['machine']['name'], args.batch_size, args.image_size, args.image_size,
             'GPU %s' % args.gpus[0] if args.gpus else 'CPU',
             'fastest' if args.stat == 'best' else 'median', args.iters, args.warmup, args.repeat))
    print(report['table'])
    print('\nGMAC/s: multiply-adds per image x images/s (train: x3, forward + backward). '
          'x PEER: images/s ratio to the peer, same round (median over rounds). Peak RSS in MB of the '
          'model\'s process. others\' CPU: the largest share of the machine other processes used '
          'during a measurement (measurements above --max-others are retried and left out when a clean round exists).')
    record.stamp(report, report['command'])
    record.write(report, 'speed', args.record_dir, also=args.json, log=log)
    return 0 if all('error' not in row for row in report['rows']) else 1


if __name__ == '__main__':
    sys.exit(main())
