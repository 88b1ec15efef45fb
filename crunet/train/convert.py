"""``crunet-train convert-states FILE --trust-pickle``: rewrite an optimizer-states file of the
earlier pickle format as the data-only format of :mod:`crunet.train.state`.

A pickle can run any code when it is read, so the trainer never reads one. This command is the
one place in the project that unpickles, and only when the user says, with ``--trust-pickle``,
that the file comes from a source they trust (their own run). The old file is kept as
``FILE.pickle`` beside the converted one.
"""
import argparse
import os
import pickle

import mxnet as mx
import numpy as np

from ..args import ArgParser
from ..errors import CLIError, cli_main
from .state import is_pickle, write_states

__all__ = ['OLD_FORMAT', 'convert_states', 'main', 'run']

OLD_FORMAT = 'crunet-mxnet/optimizer-states/1'


def _to_ndarray(value, path):
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return mx.nd.array(value, dtype=value.dtype)
    if isinstance(value, (tuple, list)):
        return tuple(_to_ndarray(v, path) for v in value)
    raise CLIError('%s: an optimizer state of type %s is not an array' % (path, type(value).__name__))


def convert_states(path, dtype='float32'):
    """Convert the pickle-format ``path`` in place (the original kept as ``path + '.pickle'``);
    returns the number of parameters converted. Call only on files you trust."""
    with open(path, 'rb') as f:
        head = f.read(8)
        if not is_pickle(head):
            raise CLIError('%s is not a pickle-format states file (nothing to convert)' % path)
        f.seek(0)
        blob = pickle.load(f)  # trusted-pickle: the user vouched for this file with --trust-pickle
    if not isinstance(blob, dict) or blob.get('format') != OLD_FORMAT:
        raise CLIError('%s: not a states file of this trainer (format %r)'
                       % (path, blob.get('format') if isinstance(blob, dict) else type(blob).__name__))
    states = {name: _to_ndarray(st, path) for name, st in (blob.get('optimizer_states') or {}).items()}
    meta = dict(epoch=blob.get('epoch'), optimizer=blob.get('optimizer'), dtype=dtype,
                update_counts={k: int(v) for k, v in (blob.get('update_counts') or {}).items()},
                schedule=blob.get('schedule'))
    backup = path + '.pickle'
    os.replace(path, backup)
    try:
        write_states(path, meta, states)
    except BaseException:
        os.replace(backup, path)
        raise
    return len(states)


def build_parser():
    p = ArgParser(prog='crunet-train convert-states',
                  description='Rewrite optimizer-states files of the earlier pickle format as data-only files. '
                              'Reading a pickle runs whatever code it holds: convert only files you trust.',
                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('files', nargs='+', help='PREFIX-NNNN.states files in the pickle format')
    p.add_argument('--trust-pickle', action='store_true',
                   help='required: you trust these files (e.g. your own runs); without it nothing is read')
    p.add_argument('--dtype', default='float32', choices=('float32', 'float16'),
                   help='--dtype of the run that wrote them (the old format did not record it)')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.trust_pickle:
        raise CLIError('convert-states reads pickles, which can run code: pass --trust-pickle if you trust %s'
                       % ', '.join(args.files))
    for path in args.files:
        if not os.path.isfile(path):
            raise CLIError('%s: no such file' % path)
        n = convert_states(path, args.dtype)
        print('converted %s (%d parameters; the original kept as %s.pickle)' % (path, n, path))
    return 0


def run(argv=None):
    return cli_main(main, argv)
