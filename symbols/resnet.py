"""Pre-activation ResNet (bottleneck) baselines in the CRU-Net naming scheme: 50, 101, 152, 200."""
from .blocks import Stage, build_network, parse_shape
from ._presets import choose

_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
PRESETS = {(d, 'preact'): tuple(Stage(u, w, 4 * w, 1) for u, w in zip(units, (64, 128, 256, 512)))
           for d, units in _UNITS.items()}


def get_symbol(num_classes=1000, num_layers=50, image_shape='3,224,224', setting=None,
               dtype='float32', grouped_conv='plain', pooling='avg', output='softmax'):
    """Pre-activation bottleneck ResNet-50/101/152/200 (groups 1, widths 64..512).

    ``dtype`` float16 casts the input and the logits (GPU training); ``grouped_conv`` is the
    formulation of grouped convolutions (``symbols.blocks.GROUPED_CONV_CHOICES``); ``pooling``
    (``avg``, ``mean-max``) and ``output`` (``softmax``, ``probabilities``, ``logits``,
    ``features``) choose the head (``symbols.blocks.classifier``)."""
    parse_shape(image_shape)   # checked only: global pooling makes the graph independent of the input size
    _, stages = choose('resnet', PRESETS, num_layers, setting)
    return build_network(stages, num_classes, dtype=dtype, grouped_conv=grouped_conv, pooling=pooling,
                         output=output)
