"""The model zoo: CRU-Net, ShaResNet, and the ResNet/ResNeXt baselines, as MXNet Symbols.

>>> from symbols import get_symbol, count_params
>>> sym = get_symbol('crunet', num_layers=56)        # released CRU-Net-56 @x14 32x4d
>>> count_params(sym)
25609384

``import symbols`` does not import MXNet (the networks, :mod:`symbols.stats` and
:mod:`symbols.checkpoint` do, when first used): :mod:`symbols.files` and :mod:`symbols.errors`
serve code that runs before MXNet is loaded.
"""
import importlib
import inspect

from ._presets import ChoiceError

#: read off a Symbol by :mod:`symbols.stats` (imported on first use, with MXNet)
_STATS = ('count_aux', 'count_macs', 'count_params', 'model_size_mb')

__all__ = ['NETWORKS', 'ChoiceError', 'get_symbol', 'get_module', 'symbol_arguments', 'default_num_layers', 'count_params', 'count_aux',
           'count_macs', 'model_size_mb', 'load_checkpoint', 'gluon_model', 'zoo']

#: network name -> module under ``symbols`` exposing ``get_symbol(num_classes, num_layers, image_shape, ...)``
NETWORKS = ('crunet', 'resnext', 'resnet', 'sharesnet')


def __getattr__(name):
    if name in _STATS:
        from . import stats
        return getattr(stats, name)
    raise AttributeError('module %r has no attribute %r' % (__name__, name))


def default_num_layers(network):
    """The depth ``get_symbol(network)`` builds when ``num_layers`` is not given."""
    return inspect.signature(get_module(network).get_symbol).parameters['num_layers'].default


def get_module(network):
    """The module ``symbols.<network>``; unknown names raise :class:`ChoiceError` listing the valid ones."""
    if network not in NETWORKS:
        raise ChoiceError('unknown network %r; valid choices: %s' % (network, ', '.join(NETWORKS)))
    return importlib.import_module('.' + network, __name__)


def symbol_arguments(network):
    """The keyword arguments ``get_symbol(network, ...)`` takes, in signature order."""
    return list(inspect.signature(get_module(network).get_symbol).parameters)


def get_symbol(network, **kwargs):
    """Build ``network`` (``crunet``, ``resnext``, ``resnet``, ``sharesnet``): a Symbol whose input is
    ``data``, by default ending in ``SoftmaxOutput`` ``softmax``. The keyword arguments are those of
    the network's ``get_symbol`` (``num_classes``, ``num_layers``, ``image_shape``, ``setting`` or
    ``widen_factor``, ``shared``, ``dtype``, ``grouped_conv``, ``pooling``, ``output``); an unknown
    one raises :class:`ChoiceError` naming it and listing the valid ones. ``image_shape`` is
    MXNet example/image-classification's argument: it is checked ('C,H,W', positive sizes) and
    changes nothing, since every network ends in global pooling and one graph takes any size."""
    valid = symbol_arguments(network)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ChoiceError('%s: unknown argument%s %s; valid arguments: %s' % (
            network, 's' if len(unknown) > 1 else '', ', '.join(unknown), ', '.join(valid)))
    if kwargs.get('num_layers', 0) is None:
        del kwargs['num_layers']
    return get_module(network).get_symbol(**kwargs)


def load_checkpoint(prefix, epoch, **kwargs):
    """``(symbol, arg_params, aux_params)`` of ``PREFIX-symbol.json`` + ``PREFIX-%04d.params``,
    the project's checkpoints and the released CRU-Net files alike (their
    ``ChannelwiseConvolution`` becomes a depthwise ``Convolution``); params that do not fit the
    symbol raise ``ParamMismatchError``. See :func:`symbols.checkpoint.load_checkpoint`."""
    from .checkpoint import load_checkpoint as _load
    return _load(prefix, epoch, **kwargs)


def gluon_model(prefix, epoch, ctx=None, num_classes=None, **kwargs):
    """Hybridizable Gluon ``SymbolBlock`` of a checkpoint; see :func:`symbols.gluon.gluon_model`."""
    from .gluon import gluon_model as _gluon_model
    return _gluon_model(prefix, epoch, ctx=ctx, num_classes=num_classes, **kwargs)


#: Every model of the zoo: (label, network, ``get_symbol`` keyword arguments at its native input size)
ZOO = [
    ('CRU-Net-56 @x14 32x4d', 'crunet', dict(num_layers=56)),
    ('CRU-Net-56 @x14 32x4d unshared', 'crunet', dict(num_layers=56, shared=False)),
    ('CRU-Net-56 @x14 136x1d', 'crunet', dict(num_layers=56, setting='136x1d')),
    ('CRU-Net-56 tiny @x14 32x4d', 'crunet', dict(num_layers=56, setting='tiny')),
    ('CRU-Net-116 @x28x14 32x4d', 'crunet', dict(num_layers=116)),
    ('CRU-Net-116 @x28x14 32x4d unshared', 'crunet', dict(num_layers=116, shared=False)),
    ('CRU-Net-116 @x28x14 wider 64x4d', 'crunet', dict(num_layers=116, setting='wider')),
    ('CRU-Net-22 CIFAR (demo)', 'crunet', dict(num_layers=22, setting='cifar', image_shape='3,32,32', num_classes=10)),
    ('ResNeXt-50 32x4d', 'resnext', dict(num_layers=50)),
    ('ResNeXt-50 2x40d', 'resnext', dict(num_layers=50, setting='2x40d')),
    ('ResNeXt-50 Nx1d', 'resnext', dict(num_layers=50, setting='Nx1d')),
    ('ResNeXt-101 32x4d', 'resnext', dict(num_layers=101)),
    ('ResNeXt-101 64x4d', 'resnext', dict(num_layers=101, setting='64x4d')),
    ('ResNet-50 (pre-act)', 'resnet', dict(num_layers=50)),
    ('ResNet-101 (pre-act)', 'resnet', dict(num_layers=101)),
    ('ResNet-152 (pre-act)', 'resnet', dict(num_layers=152)),
    ('ResNet-200 (pre-act)', 'resnet', dict(num_layers=200)),
]
for _d in (34, 50, 101, 152):
    ZOO += [('ShaResNet-%d' % _d, 'sharesnet', dict(num_layers=_d)),
            ('ResNet-%d (ShaResNet unshared)' % _d, 'sharesnet', dict(num_layers=_d, shared=False))]
for _label, _kw in (('ResNet-164', dict(num_layers=164, num_classes=10)),
                    ('WRN-40-4', dict(num_layers=40, widen_factor=4, num_classes=10)),
                    ('WRN-28-10', dict(num_layers=28, widen_factor=10, num_classes=100))):
    for _shared in (True, False):
        ZOO.append(('%s%s CIFAR' % ('Sha' if _shared else '', _label), 'sharesnet',
                    dict(_kw, image_shape='3,32,32', shared=_shared)))


def zoo():
    """Yield ``(label, network, kwargs)`` for every model of the zoo at its native input size."""
    for label, network, kwargs in ZOO:
        kw = dict(kwargs)
        kw.setdefault('image_shape', '3,224,224')
        yield label, network, kw
