"""ResNeXt baselines (pre-activation, CRU-Net naming), as compared in the CRU-Net paper.

==========  =======  ==========================  ======
num_layers  setting  widths D (conv2..conv5)     groups
==========  =======  ==========================  ======
50          32x4d    128, 256, 512, 1024         32
50          2x40d    80, 160, 320, 640           2
50          Nx1d     136, 272, 544, 1088         depthwise
101         32x4d    128, 256, 512, 1024         32
101         64x4d    256, 512, 1024, 2048        64
==========  =======  ==========================  ======
"""
from .blocks import Stage, build_network, parse_shape
from ._presets import choose

_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_WIDTHS = {'32x4d': ((128, 256, 512, 1024), 32), '2x40d': ((80, 160, 320, 640), 2),
           'Nx1d': ((136, 272, 544, 1088), 0), '64x4d': ((256, 512, 1024, 2048), 64)}
_SETTINGS = {50: ('32x4d', '2x40d', 'Nx1d'), 101: ('32x4d', '64x4d')}

PRESETS = {(d, s): tuple(Stage(u, w, o, _WIDTHS[s][1]) for u, w, o in
                         zip(_UNITS[d], _WIDTHS[s][0], (256, 512, 1024, 2048)))
           for d, settings in _SETTINGS.items() for s in settings}


def get_symbol(num_classes=1000, num_layers=50, image_shape='3,224,224', setting=None,
               dtype='float32', grouped_conv='plain', pooling='avg', output='softmax'):
    """ResNeXt-50/101 (``setting`` 32x4d by default; 2x40d, Nx1d for 50; 64x4d for 101).

    ``dtype`` float16 casts the input and the logits (GPU training); ``grouped_conv`` is the
    formulation of grouped convolutions (``symbols.blocks.GROUPED_CONV_CHOICES``); ``pooling``
    (``avg``, ``mean-max``) and ``output`` (``softmax``, ``probabilities``, ``logits``,
    ``features``) choose the head (``symbols.blocks.classifier``)."""
    parse_shape(image_shape)   # checked only: global pooling makes the graph independent of the input size
    _, stages = choose('resnext', PRESETS, num_layers, setting)
    return build_network(stages, num_classes, dtype=dtype, grouped_conv=grouped_conv, pooling=pooling,
                         output=output)
