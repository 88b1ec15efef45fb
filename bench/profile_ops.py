"""Per-operator time of a training step (or scoring pass) of a zoo model, on a CPU build.

    python -m bench.profile_ops                                   # CRU-Net-56, batch 8, 224x224, train
    python -m bench.profile_ops --network resnext --num-layers 50 --grouped-conv plain --top 40
    python -m bench.profile_ops --method ops --mode score --json ops.json

``--grouped-conv`` (default ``auto``: this machine's choice, ``crunet.isa``) is the formulation of
the grouped convolutions; every report names the machine (CPU model, cores, oneDNN's ISA).

The pip MXNet 1.9.1 has its profiler compiled out (``mx.runtime.Features()``: PROFILER off), so:

* ``--method dnnl`` (default) re-runs the model in a subprocess with ``DNNL_VERBOSE=1``: oneDNN
  prints every primitive it executes with its time. The primitives of the measured steps (after
  ``--warmup``) are summed by category (1x1 / dense / grouped / depthwise convolution, batch norm,
  ReLU, sum, reorder, ...), by primitive and by shape, and every convolution shape is mapped back
  to the graph's layer names. The step's wall time minus the oneDNN total is the time spent
  outside oneDNN (MXNet's own kernels, the optimizer update, engine overhead). The verbose
  printing itself costs a little; compare categories, not the absolute step time.
* ``--method ops`` times every operator of the graph alone (its own executor, random inputs of
  the shapes it sees in the network, forward and, for ``--mode train``, backward with a unit
  head gradient), which also covers operators oneDNN does not run. Isolated timing includes the
  layout reorders at the operator's boundaries that the whole graph avoids.
"""
import argparse
import collections
import ctypes
import json
import os
import re
import subprocess
import sys
import time

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from crunet import isa, perf  # noqa: E402

__all__ = ['dnnl_shape_key', 'conv_layers', 'parse_verbose', 'profile_dnnl', 'profile_ops', 'main']

MARK = 'PROFILE_OPS_MARK'


# ============================================================================ the model
def build(args):
    from symbols import get_symbol
    image_shape = '3,%d,%d' % (args.image_size, args.image_size)
    return get_symbol(args.network, num_layers=args.num_layers, image_shape=image_shape,
                      grouped_conv=args.grouped_conv)


def dnnl_shape_key(n, cin, h, w, cout, oh, ow, kernel, stride, pad, groups):
    """oneDNN's verbose problem descriptor of a 2-D convolution (``mb8_ic64oc256_ih56oh56kh1...``)."""
    return '%smb%d_ic%doc%d_ih%doh%dkh%dsh%ddh0ph%d_iw%dow%dkw%dsw%ddw0pw%d' % (
        'g%d' % groups if groups > 1 else '', n, cin, cout, h, oh, kernel[0], stride[0], pad[0],
        w, ow, kernel[1], stride[1], pad[1])


def _tuple(s, default):
    if s is None:
        return default
    return tuple(int(v) for v in re.findall(r'\d+', s))


def conv_layers(sym, data_shape):
    """``{oneDNN descriptor: [layer names]}`` for every Convolution of ``sym``, and
    ``{layer name: kind}`` with kind one of 1x1, dense KxK, grouped (c ch/group), depthwise."""
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(data=data_shape)
    shapes = dict(zip(internals.list_outputs(), out_shapes))
    nodes = json.loads(sym.tojson())['nodes']
    by_key, kinds = collections.defaultdict(list), {}
    for node in nodes:
        if node['op'] != 'Convolution':
            continue
        attrs = node.get('attrs', node.get('attr', {}))
        src = nodes[node['inputs'][0][0]]
        src_name = src['name'] + ('_output' if src['op'] != 'null' else '')
        if src['op'] != 'null' and src_name not in shapes:
            src_name = '%s_output%d' % (src['name'], node['inputs'][0][1])
        n, cin, h, w = shapes[src_name]
        _, cout, oh, ow = shapes[node['name'] + '_output']
        kernel = _tuple(attrs.get('kernel'), (1, 1))
        stride = _tuple(attrs.get('stride'), (1, 1))
        pad = _tuple(attrs.get('pad'), (0, 0))
        groups = int(attrs.get('num_group', 1))
        by_key[dnnl_shape_key(n, cin, h, w, cout, oh, ow, kernel, stride, pad, groups)].append(node['name'])
        if groups == 1:
            kind = '1x1' if kernel == (1, 1) else 'dense %dx%d' % kernel
        elif groups == cin:
            kind = 'depthwise %dx%d' % kernel
        else:
            kind = 'grouped %dx%d (%d ch/group)' % (kernel + (cin // groups,))
        kinds[node['name']] = kind
    return dict(by_key), kinds


# ============================================================================ --method dnnl
def _mark(text):
    """A marker line on stdout, ordered after everything oneDNN has printed so far."""
    sys.stdout.flush()
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # pragma: no cover
        pass
    os.write(1, ('%s %s\n' % (MARK, text)).encode())


def _child(args):
    """Run the model; print markers around the measured steps (their wall times in the markers)."""
    import mxnet as mx
    import numpy as np
    sym = build(args)
    bs, size = args.batch_size, args.image_size
    rng = np.random.RandomState(0)
    batch = mx.io.DataBatch([mx.nd.array(rng.uniform(-1, 1, (bs, 3, size, size)))],
                            [mx.nd.array(rng.randint(0, 1000, bs))])
    mod = mx.mod.Module(sym, context=mx.cpu())
    train = args.mode == 'train'
    mod.bind(data_shapes=[('data', (bs, 3, size, size))], label_shapes=[('softmax_label', (bs,))],
             for_training=train)
    mod.init_params(mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2))
    if train:
        mod.init_optimizer(optimizer='sgd', optimizer_params=dict(learning_rate=1e-3, momentum=0.9))

    def step():
        mod.forward(batch, is_train=train)
        if train:
            mod.backward()
            mod.update()
        mx.nd.waitall()

    for _ in range(args.warmup):
        step()
    for i in range(args.iters):
        _mark('begin %d' % i)
        t = time.perf_counter()
        step()
        _mark('end %d %.6f' % (i, time.perf_counter() - t))


def parse_verbose(lines):
    """``(steps, records)``: wall seconds of each measured step and, for every oneDNN ``exec``
    line inside one, ``(primitive, implementation, propagation, formats, problem, ms)``."""
    steps, records, inside = [], [], False
    for line in lines:
        if line.startswith(MARK):
            parts = line.split()
            inside = parts[1] == 'begin'
            if parts[1] == 'end':
                steps.append(float(parts[3]))
            continue
        if not inside or not (line.startswith('dnnl_verbose,exec') or line.startswith('mkldnn_verbose,exec')):
            continue
        p = line.rstrip('\n').split(',')
        try:
            ms = float(p[-1])
        except ValueError:
            continue
        records.append((p[3], p[4], p[5], p[6], p[-2], ms))
    return steps, records


def layout(formats):
    """The first tensor's layout in a verbose line's memory descriptors: ``'src_f32::blocked:aBcd16b:f0
    ...'`` -> ``'aBcd16b'`` (nChw16c), ``'data_f32::blocked:abcd:f0'`` -> ``'abcd'`` (nchw)."""
    m = re.search(r'::\w+:(\w+):', formats)
    return m.group(1) if m else '?'


def categorize(prim, problem, kinds_by_key):
    if prim == 'convolution':
        names = kinds_by_key.get(problem)
        if names:
            return 'conv ' + names
        m = re.match(r'(g(\d+))?mb\d+_ic(\d+)oc(\d+)_ih\d+oh\d+kh(\d+)', problem)
        if m:
            g, cin, kh = int(m.group(2) or 1), int(m.group(3)), int(m.group(5))
            if g == 1:
                return 'conv 1x1' if kh == 1 else 'conv dense %dx%d' % (kh, kh)
            return 'conv depthwise' if g == cin else 'conv grouped (%d ch/group)' % (cin // g)
        return 'conv'
    return {'eltwise': 'ReLU (eltwise)', 'batch_normalization': 'BatchNorm', 'sum': 'sum (ElementWiseSum, grad add)',
            'reorder': 'reorder (layout)', 'pooling_v2': 'pooling', 'pooling': 'pooling',
            'inner_product': 'FullyConnected', 'softmax': 'softmax'}.get(prim, prim)


def profile_dnnl(args):
    """Run the child under DNNL_VERBOSE and aggregate; returns the report dict."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, DNNL_VERBOSE='1', MKLDNN_VERBOSE='1')
    cmd = [sys.executable, '-m', 'bench.profile_ops', '--child', '--network', args.network,
           '--num-layers', str(args.num_layers), '--batch-size', str(args.batch_size),
           '--image-size', str(args.image_size), '--mode', args.mode, '--warmup', str(args.warmup),
           '--iters', str(args.iters), '--grouped-conv', args.grouped_conv]
    proc = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    if proc.returncode:
        raise SystemExit('profiling child failed:\n' + proc.stderr[-3000:])
    steps, records = parse_verbose(proc.stdout.splitlines())
    if not steps:
        raise SystemExit('no measured step found in the verbose output (is this a oneDNN build?)')
    sym = build(args)
    by_key, kinds = conv_layers(sym, (args.batch_size, 3, args.image_size, args.image_size))
    kind_of_key = {k: kinds[v[0]] for k, v in by_key.items()}
    n = float(len(steps))
    step_ms = 1e3 * sum(steps) / n
    cat, prim, shape, count = (collections.Counter() for _ in range(4))
    for p, impl, prop, fmt, problem, ms in records:
        c = categorize(p, problem, kind_of_key)
        cat[c] += ms / n
        prim[(p, impl, prop)] += ms / n
        shape[(c, impl, prop, problem, layout(fmt))] += ms / n
        count[(c, impl, prop, problem, layout(fmt))] += 1
    dnnl_ms = sum(cat.values())
    return dict(
        network=args.network, num_layers=args.num_layers, mode=args.mode, batch_size=args.batch_size,
        image_size=args.image_size, grouped_conv=args.grouped_conv, steps_s=steps, step_ms=step_ms,
        dnnl_ms=dnnl_ms, outside_dnnl_ms=step_ms - dnnl_ms, environment=perf.describe(),
        machine=args.machine, machine_name=isa.describe(args.machine),
        categories=[dict(category=k, ms=v, share=v / step_ms) for k, v in cat.most_common()],
        primitives=[dict(primitive=k[0], impl=k[1], prop=k[2], ms=v) for k, v in prim.most_common()],
        shapes=[dict(category=k[0], impl=k[1], prop=k[2], problem=k[3], layout=k[4], ms=v, calls=count[k] / n,
                     layers=by_key.get(k[3], [])) for k, v in shape.most_common()])


def format_dnnl(rep, top):
    out = ['%s-%d %s step, batch %d, %dx%d, grouped conv %s: %.0f ms/step (%d measured), '
           'oneDNN %.0f ms, outside oneDNN %.0f ms'
           % (rep['network'], rep['num_layers'], rep['mode'], rep['batch_size'], rep['image_size'],
              rep['image_size'], rep['grouped_conv'], rep['step_ms'], len(rep['steps_s']), rep['dnnl_ms'],
              rep['outside_dnnl_ms']), 'machine: %s' % rep['machine_name'], '',
           '| category | ms/step | share of step |', '|---|---|---|']
    for c in rep['categories']:
        out.append('| %s | %.1f | %.1f%% |' % (c['category'], c['ms'], 100 * c['share']))
    out.append('| outside oneDNN (MXNet kernels, update, engine) | %.1f | %.1f%% |'
               % (rep['outside_dnnl_ms'], 100 * rep['outside_dnnl_ms'] / rep['step_ms']))
    out += ['', '| ms/step | calls | category | implementation | direction | problem | layout | layers |',
            '|---|---|---|---|---|---|---|---|']
    for s in rep['shapes'][:top]:
        layers = s['layers']
        names = ', '.join(layers[:3]) + (' +%d' % (len(layers) - 3) if len(layers) > 3 else '')
        out.append('| %.1f | %g | %s | %s | %s | %s | %s | %s |' % (
            s['ms'], s['calls'], s['category'], s['impl'], s['prop'], s['problem'], s.get('layout', '?'), names))
    return '\n'.join(out)


# ============================================================================ --method ops
def _node_inputs(nodes, node, shapes, arg_shapes, aux_shapes):
    out = []
    for src_id, idx, *_ in node['inputs']:
        src = nodes[src_id]
        if src['op'] == 'null':
            name = src['name']
            out.append(arg_shapes.get(name) or aux_shapes.get(name))
        else:
            key = src['name'] + '_output'
            if key not in shapes:
                key = '%s_output%d' % (src['name'], idx)
            out.append(shapes[key])
    return out


def profile_ops(args):
    """Time every operator of the graph alone; returns the report dict."""
    import mxnet as mx
    import numpy as np
    sym = build(args)
    data_shape = (args.batch_size, 3, args.image_size, args.image_size)
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(data=data_shape)
    shapes = dict(zip(internals.list_outputs(), out_shapes))
    arg_s, _, aux_s = sym.infer_shape(data=data_shape)
    arg_shapes = dict(zip(sym.list_arguments(), arg_s))
    aux_shapes = dict(zip(sym.list_auxiliary_states(), aux_s))
    nodes = json.loads(sym.tojson())['nodes']
    train = args.mode == 'train'
    rng = np.random.RandomState(0)
    rows, cache = [], {}
    for node in nodes:
        op = node['op']
        if op == 'null':
            continue
        attrs = dict(node.get('attrs', node.get('attr', {})))
        in_shapes = _node_inputs(nodes, node, shapes, arg_shapes, aux_shapes)
        key = (op, json.dumps(attrs, sort_keys=True), tuple(map(tuple, in_shapes)))
        if key in cache:
            rows.append(dict(cache[key], name=node['name']))
            continue
        names = ['in%d' % i for i in range(len(in_shapes))]
        fn = getattr(mx.sym, op)
        one = fn(*[mx.sym.var(n) for n in names], name='op', **attrs)
        feed = {n: s for n, s in zip(names, in_shapes)}
        args_ = set(one.list_arguments())
        diff = train and op not in ('SoftmaxOutput',)
        grad_req = {n: ('write' if diff and n in args_ else 'null') for n in one.list_arguments()}
        ex = one.simple_bind(mx.cpu(), grad_req=grad_req, **{n: s for n, s in feed.items() if n in args_})
        for n, arr in list(ex.arg_dict.items()) + list(ex.aux_dict.items()):
            if op == 'SoftmaxOutput' and n == names[-1]:
                arr[:] = rng.randint(0, arr.shape[-1] if arr.ndim > 1 else 10, arr.shape)
            elif 'var' in n or n in ex.aux_dict:
                arr[:] = rng.uniform(0.5, 1.5, arr.shape)
            else:
                arr[:] = rng.uniform(-1, 1, arr.shape)
        heads = [mx.nd.ones(o.shape) for o in ex.outputs]

        def run():
            ex.forward(is_train=train)
            if diff:
                ex.backward(heads[:1] if len(heads) == 1 else heads)
            mx.nd.waitall()

        for _ in range(args.warmup):
            run()
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        row = dict(op=op, ms=1e3 * float(np.median(times)), shapes=[list(s) for s in in_shapes],
                   attrs={k: v for k, v in attrs.items() if k in ('kernel', 'stride', 'num_group', 'num_filter')})
        cache[key] = row
        rows.append(dict(row, name=node['name']))
        del ex
    by_op = collections.Counter()
    for r in rows:
        by_op[r['op']] += r['ms']
    total = sum(by_op.values())
    return dict(network=args.network, num_layers=args.num_layers, mode=args.mode, batch_size=args.batch_size,
                image_size=args.image_size, grouped_conv=args.grouped_conv, total_ms=total,
                by_op=[dict(op=k, ms=v, share=v / total) for k, v in by_op.most_common()],
                nodes=sorted(rows, key=lambda r: -r['ms']), environment=perf.describe(),
                machine=args.machine, machine_name=isa.describe(args.machine))


def format_ops(rep, top):
    out = ['%s-%d, every operator alone (%s: forward%s), batch %d, %dx%d, grouped conv %s: sum %.0f ms'
           % (rep['network'], rep['num_layers'], rep['mode'], ' + backward' if rep['mode'] == 'train' else '',
              rep['batch_size'], rep['image_size'], rep['image_size'], rep['grouped_conv'], rep['total_ms']),
           'machine: %s' % rep['machine_name'], '', '| operator | ms | share |', '|---|---|---|']
    out += ['| %s | %.1f | %.1f%% |' % (r['op'], r['ms'], 100 * r['share']) for r in rep['by_op']]
    out += ['', '| ms | layer | operator | input shapes | attributes |', '|---|---|---|---|---|']
    for r in rep['nodes'][:top]:
        out.append('| %.1f | %s | %s | %s | %s |' % (r['ms'], r['name'], r['op'],
                                                     ' '.join('x'.join(map(str, s)) for s in r['shapes']),
                                                     ' '.join('%s=%s' % kv for kv in sorted(r['attrs'].items()))))
    return '\n'.join(out)


# ============================================================================ command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--network', default='crunet')
    p.add_argument('--num-layers', type=int, default=56)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--image-size', type=int, default=224)
    p.add_argument('--mode', default='train', choices=['train', 'score'])
    p.add_argument('--method', default='dnnl', choices=['dnnl', 'ops'])
    p.add_argument('--grouped-conv', default='auto', choices=isa.GROUPED_CONV_FLAG_CHOICES,
                   help="formulation of the grouped convolutions (symbols.blocks.GROUPED_CONV_CHOICES); "
                        "auto: this machine's choice (crunet.isa), autotune: its measured fastest")
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--iters', type=int, default=2)
    p.add_argument('--top', type=int, default=25, help='rows of the per-shape / per-layer table')
    p.add_argument('--json', help='write the full report here')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    perf.configure()
    if args.child:
        _child(args)
        return 0
    args.machine = isa.detect()
    args.grouped_conv = isa.grouped_conv_for(args.grouped_conv)
    if args.method == 'dnnl':
        rep = profile_dnnl(args)
        print(format_dnnl(rep, args.top))
    else:
        rep = profile_ops(args)
        print(format_ops(rep, args.top))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rep, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
