"""The command lines: argument parsing shared by every command, and the commands themselves
(:mod:`crunet.cli.train`, :mod:`crunet.cli.score`)."""
import argparse

from ..errors import die

__all__ = ['ArgParser', 'add_model_args', 'parse_image_shape']


class ArgParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (``error: ...``), exit status 2."""

    def error(self, message):
        die('%s (see %s --help)' % (message, self.prog))


def add_model_args(parser, required=False, network_default=None, num_classes_default=None, title='Model'):
    """Declare ``--network``, ``--num-layers``, ``--setting``, ``--num-classes`` (the zoo's
    ``symbols.get_symbol`` arguments) on ``parser``; returns the argument group."""
    from symbols import NETWORKS
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
