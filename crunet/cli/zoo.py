"""Command line of the model zoo.

    python -m symbols summary [--json FILE]       table of every model: params, multiply-adds, MB
    python -m symbols export --network crunet --num-layers 56 --prefix out/crunet56 [--draw pdf]
                                                  PREFIX-symbol.json (+ a drawing with graphviz)

Errors are one line ``error: ...``: exit status 2 for a bad flag or output path, 1 when graphviz
fails; no file is left half-written.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from symbols import ChoiceError, count_macs, count_params, get_symbol, model_size_mb, zoo
from symbols.blocks import parse_shape

from ..args import ArgParser, add_model_args
from ..errors import CLIError, EXIT_INTERNAL, cli_main, die
from ..files import atomic_save, output_folder


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


def add_network_args(parser):
    """The model flags (``crunet.args.add_model_args``) and the zoo's own: widen factor, sharing, input."""
    add_model_args(parser, required=True, num_classes_default=1000)
    parser.add_argument('--widen-factor', type=int, default=None, help='sharesnet: wide ResNet k')
    parser.add_argument('--no-share', action='store_true', help='crunet, sharesnet: the unshared counterpart')
    parser.add_argument('--image-shape', default='3,224,224')


def model_kwargs(args):
    kw = dict(num_layers=args.num_layers, num_classes=args.num_classes, image_shape=args.image_shape)
    for key, value in (('setting', args.setting), ('widen_factor', args.widen_factor)):
        if value is not None:
            kw[key] = value
    if args.no_share:
        kw['shared'] = False
    return kw


def _write(path, writer, flag):
    try:
        return atomic_save(path, writer)
    except OSError as err:
        raise CLIError('%s: cannot write %s (%s)' % (flag, path, err.strerror or err))


def _need_dot(prefix, fmt):
    if shutil.which('dot') is None:
        raise CLIError("graphviz's 'dot' program was not found; install it with `make graphviz` "
                       "or `apt-get install graphviz` to draw %s.%s" % (prefix, fmt))


def draw(sym, prefix, fmt, image_shape):
    """``PREFIX.FMT``: the graph drawn by graphviz, written atomically; returns its path."""
    _need_dot(prefix, fmt)
    import mxnet as mx
    shape = (1,) + tuple(int(v) for v in image_shape.split(','))
    graph = mx.viz.plot_network(sym, title=os.path.basename(prefix), shape={'data': shape},
                                save_format=fmt, hide_weights=True)
    out = '%s.%s' % (prefix, fmt)
    output_folder(out, '--draw')
    with tempfile.TemporaryDirectory(prefix='crunet-draw-') as tmp:     # dot's own files stay out of the way
        source, rendered = os.path.join(tmp, 'graph.gv'), os.path.join(tmp, 'graph.' + fmt)
        with open(source, 'w') as f:
            f.write(graph.source)
        try:
            res = subprocess.run(['dot', '-T' + fmt, source, '-o', rendered], capture_output=True, text=True,
                                 timeout=600)
        except (OSError, subprocess.SubprocessError) as err:
            res = subprocess.CompletedProcess([], -1, '', str(err))
        if res.returncode != 0 or not os.path.isfile(rendered):
            why = ' '.join(res.stderr.split())[:300] or 'exit status %d' % res.returncode
            die("--draw %s: graphviz's dot failed: %s" % (fmt, why), EXIT_INTERNAL)
        with open(rendered, 'rb') as f:
            data = f.read()
    return _write(out, data, '--draw')


def export(args):
    try:
        parse_shape(args.image_shape)
    except ValueError:
        raise CLIError('--image-shape must be C,H,W with positive sizes, e.g. 3,224,224, not %r' % args.image_shape)
    if args.draw:
        _need_dot(args.prefix, args.draw)
    output_folder(args.prefix, '--prefix')
    sym = get_symbol(args.network, **model_kwargs(args))
    path = _write('%s-symbol.json' % args.prefix, sym.tojson(), '--prefix')
    print('wrote %s (%s parameters)' % (path, format(count_params(sym, args.image_shape), ',')))
    if args.draw:
        print('wrote %s' % draw(sym, args.prefix, args.draw, args.image_shape))


def _main(argv=None):
    parser = ArgParser(prog='python -m symbols', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('summary', help='params, multiply-adds and size of every model')
    p.add_argument('--json', help='also write the rows as JSON to this file')
    p = sub.add_parser('export', help='write PREFIX-symbol.json, optionally a drawing')
    add_network_args(p)
    p.add_argument('--prefix', required=True, help='output prefix: PREFIX-symbol.json')
    p.add_argument('--draw', choices=('pdf', 'png', 'svg'), help='also draw the graph with graphviz')
    args = parser.parse_args(argv)
    if args.command == 'summary':
        if args.json:
            output_folder(args.json, '--json')
        rows = summary_rows()
        print(format_table(rows))
        if args.json:
            _write(args.json, json.dumps(rows, indent=1), '--json')
    else:
        export(args)
    return 0


def main(argv=None):
    """The command line; one-line errors with the exit codes of :mod:`crunet.errors`."""
    return cli_main(_main, argv, user_errors=(ChoiceError, ValueError))


if __name__ == '__main__':
    sys.exit(main())
