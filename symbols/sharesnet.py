"""ShaResNet (Boulch): residual networks whose spatial 3x3 convolutions share one weight per stage.

Within a stage (between two spatial reductions) the 3x3 of a bottleneck, or the second 3x3 of a
basic block, is one Variable ``convS_x__x_3x3_shared_weight``. Bottleneck and wide networks
share among the units after the first of each stage (the first changes resolution or width and
keeps its own weight); ResNet-34 shares the second 3x3 among all units of a stage. ImageNet
ShaResNets are post-activation (Conv-BN-ReLU), the CIFAR ones pre-activation.

==========================  =========  =============  ==================  ===========
network                     family     units          widths              shared from
==========================  =========  =============  ==================  ===========
34                          basic      3, 4, 6, 3     64, 128, 256, 512   unit 1
50 / 101 / 152              bottleneck 3,4,{6,23,36}  D 64..512, out x4   unit 2
164 (CIFAR)                 bottleneck 18, 18, 18     D 16, 32, 64        unit 2
WRN-d-k (``widen_factor``)  basic      (d-4)/6 each   16k, 32k, 64k       unit 2
==========================  =========  =============  ==================  ===========
"""
from .blocks import Stage, build_network, parse_shape
from ._presets import ChoiceError, choose

_W = (64, 128, 256, 512)


def _bottleneck(units, share_from=1):
    return tuple(Stage(u, w, 4 * w, 1, 0, share_from) for u, w in zip(units, _W))


#: (num_layers, family) -> the network: post-activation on ImageNet, pre-activation on CIFAR
PRESETS = {
    (34, 'imagenet'): dict(basic=True, preact=False,
                           stages=tuple(Stage(u, w, w, 1, 0, 0) for u, w in zip((3, 4, 6, 3), _W))),
    (50, 'imagenet'): dict(preact=False, stages=_bottleneck((3, 4, 6, 3))),
    (101, 'imagenet'): dict(preact=False, stages=_bottleneck((3, 4, 23, 3))),
    (152, 'imagenet'): dict(preact=False, stages=_bottleneck((3, 8, 36, 3))),
    (164, 'cifar'): dict(preact=True, stem='cifar',
                         stages=tuple(Stage(18, w, 4 * w, 1, 0, 1) for w in (16, 32, 64))),
}
WRN_DEPTHS = (16, 22, 28, 40)


def wrn_stages(num_layers, widen_factor):
    """Wide ResNet WRN-d-k: three stages of (d - 4) / 6 basic blocks, widths 16k, 32k, 64k, the
    second 3x3 shared from the second unit of each stage."""
    if num_layers not in WRN_DEPTHS:
        raise ChoiceError('sharesnet(widen_factor): unknown num_layers %r; valid choices: %s'
                          % (num_layers, ', '.join(map(str, WRN_DEPTHS))))
    if int(widen_factor) < 1:
        raise ChoiceError('sharesnet: widen_factor must be a positive integer, not %r' % (widen_factor,))
    k = int(widen_factor)
    return tuple(Stage((num_layers - 4) // 6, w * k, w * k, 1, 0, 1) for w in (16, 32, 64))


def _unshared(stages):
    return tuple(st._replace(share3x3_from=None) for st in stages)


def get_symbol(num_classes=1000, num_layers=50, image_shape='3,224,224', setting=None, widen_factor=None,
               shared=True, dtype='float32', grouped_conv='plain', pooling='avg', output='softmax'):
    """ShaResNet-34/50/101/152 (ImageNet), ShaResNet-164 (CIFAR), or with ``widen_factor`` a
    shared wide ResNet WRN-``num_layers``-``widen_factor``. ``setting`` is the family of the
    preset (``imagenet`` for 34/50/101/152, ``cifar`` for 164, ``wrn`` with ``widen_factor``;
    default: the depth's own). ``shared=False`` is the same network without sharing (the
    original ResNet / WRN).

    ``dtype``, ``grouped_conv``, ``pooling`` and ``output`` as for every network of the zoo
    (``symbols.blocks.build_network``)."""
    parse_shape(image_shape)   # checked only: global pooling makes the graph independent of the input size
    if widen_factor:
        if setting not in (None, 'wrn'):
            raise ChoiceError('sharesnet-%s with widen_factor: unknown setting %r; valid choices: wrn'
                              % (num_layers, setting))
        preset = dict(basic=True, preact=True, stem='cifar', stages=wrn_stages(num_layers, widen_factor))
    else:
        _, preset = choose('sharesnet', PRESETS, num_layers, setting)
    stages = preset['stages'] if shared else _unshared(preset['stages'])
    return build_network(stages, num_classes, stem=preset.get('stem', 'imagenet'), preact=preset['preact'],
                         basic=preset.get('basic', False), dtype=dtype, grouped_conv=grouped_conv,
                         pooling=pooling, output=output)
