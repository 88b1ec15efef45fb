"""Argument parsing shared by every command: one-line usage errors, the model flags."""
import argparse

from symbols import NETWORKS

from .errors import CLIError, die

__all__ = ['ArgParser', 'add_model_args', 'network_kwargs', 'MODEL_FLAGS']

#: the flags of :func:`add_model_args` that only mean something with ``--network``
MODEL_FLAGS = ('num_layers', 'setting', 'num_classes')


class ArgParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (``error: ...``), exit status 2."""

    def error(self, message):
        die('%s (see %s --help)' % (message, self.prog))


def add_model_args(parser, required=False, network_default=None, num_classes_default=None, title='Model'):
    """Declare ``--network``, ``--num-layers``, ``--setting``, ``--num-classes`` (the zoo's
    ``symbols.get_symbol`` arguments) on ``parser``; returns the argument group."""
    g = parser.add_argument_group(title, 'network of the zoo (symbols.get_symbol)')
    g.add_argument('--network', type=str, default=network_default if not required else argparse.SUPPRESS,
                   required=required, help=', '.join(NETWORKS))
    g.add_argument('--num-layers', type=int, default=None,
                   help="depth (crunet 56/116/22, resnext 50/101, resnet 50/101/152/200, sharesnet ...); "
                        "default: the network's own default")
    g.add_argument('--setting', type=str, default=None,
                   help='preset of the network, e.g. cifar (crunet-22), tiny, 136x1d, wider, 64x4d')
    g.add_argument('--num-classes', type=int, default=num_classes_default, help='number of classes')
    return g


def network_kwargs(args):
    """The ``symbols.get_symbol`` keyword arguments of the parsed model flags (``{}`` without
    ``--network``: the checkpoint's own symbol); :class:`CLIError` naming a model flag given
    without ``--network``."""
    given = {k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k) is not None}
    if args.network is None:
        if given:
            raise CLIError('--%s needs --network' % next(iter(given)).replace('_', '-'))
        return {}
    return dict(given, network=args.network)
