"""Command line of the model zoo.

    python -m symbols summary [--json FILE]       table of every model: params, multiply-adds, MB
    python -m symbols export --network crunet --num-layers 56 --prefix out/crunet56 [--draw pdf]
                                                  PREFIX-symbol.json (+ a drawing with graphviz)
"""
import argparse
import json
import os
import shutil
import sys

from . import ChoiceError, count_macs, count_params, get_symbol, model_size_mb, zoo


def summary_rows():
    """One dict per zoo model: label, network, kwargs, params, GMACs at its native input, MB."""
    rows = []
    for label, network, kwargs in zoo():
        sym = get_symbol(network, **kwargs)
        shape = kwargs['image_shape']
        rows.append(dict(model=label, network=network, input=shape,
                         kwargs={k: v for k, v in kwargs.items() if k != 'image_shape'},
                         params=count_params(sym, shape), gmacs=count_macs(sym, shape) / 1e9,
                         size_mb=model_size_mb(sym, shape)))
    return rows


def format_table(rows):
    lines = ['| model | `get_symbol` arguments | input | params | multiply-adds | size (MB) |',
             '|---|---|---|---:|---:|---:|']
    for r in rows:
        args = ', '.join(["'%s'" % r['network']] + ['%s=%r' % kv for kv in r['kwargs'].items()])
        lines.append('| %s | `%s` | %s | %s | %.2f G | %.1f |' % (
            r['model'], args, r['input'].replace(',', 'x'), format(r['params'], ','), r['gmacs'], r['size_mb']))
    return '\n'.join(lines)


def add_model_args(parser):
    parser.add_argument('--network', required=True, help='crunet, resnext, resnet or sharesnet')
    parser.add_argument('--num-layers', type=int, required=True, help='depth, e.g. 56 or 116 for crunet')
    parser.add_argument('--setting', default=None, help="variant, e.g. '136x1d', 'tiny', 'wider', '64x4d'")
    parser.add_argument('--widen-factor', type=int, default=None, help='sharesnet: wide ResNet k')
    parser.add_argument('--no-share', action='store_true', help='sharesnet: the unshared counterpart')
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument('--image-shape', default='3,224,224')


def model_kwargs(args):
    kw = dict(num_layers=args.num_layers, num_classes=args.num_classes, image_shape=args.image_shape)
    for key, value in (('setting', args.setting), ('widen_factor', args.widen_factor)):
        if value is not None:
            kw[key] = value
    if args.no_share:
        kw['shared'] = False
    return kw


def export(args):
    sym = get_symbol(args.network, **model_kwargs(args))
    os.makedirs(os.path.dirname(os.path.abspath(args.prefix)), exist_ok=True)
    path = '%s-symbol.json' % args.prefix
    sym.save(path)
    print('wrote %s (%s parameters)' % (path, format(count_params(sym, args.image_shape), ',')))
    if args.draw:
        if shutil.which('dot') is None:
            sys.exit("error: graphviz's 'dot' program was not found; install it with `make graphviz` "
                     "or `apt-get install graphviz` to draw %s.%s" % (args.prefix, args.draw))
        import mxnet as mx
        shape = (1,) + tuple(int(v) for v in args.image_shape.split(','))
        graph = mx.viz.plot_network(sym, title=os.path.basename(args.prefix), shape={'data': shape},
                                    save_format=args.draw, hide_weights=True)
        out = graph.render(args.prefix, cleanup=True)
        print('wrote %s' % out)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m symbols', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('summary', help='params, multiply-adds and size of every model')
    p.add_argument('--json', help='also write the rows as JSON to this file')
    p = sub.add_parser('export', help='write PREFIX-symbol.json, optionally a drawing')
    add_model_args(p)
    p.add_argument('--prefix', required=True, help='output prefix: PREFIX-symbol.json')
    p.add_argument('--draw', choices=('pdf', 'png', 'svg'), help='also draw the graph with graphviz')
    args = parser.parse_args(argv)
    try:
        if args.command == 'summary':
            rows = summary_rows()
            print(format_table(rows))
            if args.json:
                with open(args.json, 'w') as f:
                    json.dump(rows, f, indent=1)
        else:
            export(args)
    except (ChoiceError, ValueError) as err:
        sys.exit('error: %s' % err)


if __name__ == '__main__':
    main()
