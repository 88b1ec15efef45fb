"""CRU-Net: pre-activation ResNeXt with Collective Residual Units in the stages marked ``share``.

Presets (units per stage, bottleneck widths D, output widths, groups, CRU share run):

=============  ===========  ====================  ==========================  =====================
num_layers     setting      units                 widths D (conv2..conv5)     CRU (shared units)
=============  ===========  ====================  ==========================  =====================
56             32x4d        3, 4, 6, 3            128, 256, 640, 1024         conv4 (6)
56             136x1d       3, 4, 6, 3            136, 272, 640, 1088 (dw)    conv4 (6)
56             tiny         3, 4, 6, 3            64, 128, 320, 512 (16 g)    conv4 (6)
116            32x4d        3, 6, 18, 3           128, 352, 704, 1024         conv3 (6), conv4 (3x6)
116            wider        3, 6, 18, 3           256, 704, 1120, 2048 (64g)  conv3 (6), conv4 (3x6)
22             cifar        2, 2, 2 (3 stages)    32, 64, 128 (8 groups)      conv3 (2)
=============  ===========  ====================  ==========================  =====================

``32x4d`` rows are the released checkpoints (the paper's table prints 624 for conv4 of
CRU-Net-56; the released file has 640). The widths of ``136x1d``, ``tiny`` and ``wider`` were never
published; they are chosen so that the float32 model size lands within 2% of the paper's
98 MB, 48 MB and 318 MB (``python -m symbols summary`` prints them). ``136x1d`` follows
ResNeXt-50 Nx1d (depthwise 3x3 in conv2, conv3, conv5: widths 136, 272, 1088) and keeps the
640-wide CRU conv4 (97.4 MB); ``tiny`` halves the bottleneck widths (16 groups of 4d) and takes
7/8 of the output widths, 224..1792 (48.4 MB); ``wider`` doubles conv2, conv3 and conv5
(64 groups of 4d) and widens the CRU conv4 to 1120 (315.1 MB).
The ``cifar`` preset is a CIFAR-size CRU-Net (3x3 stem, three stages) used by the demo.
"""
from .blocks import Stage, build_network, parse_shape
from ._presets import choose

_OUT = (256, 512, 1024, 2048)


def _stages(units, widths, groups, share, out=_OUT):
    return tuple(Stage(u, w, o, g, s) for u, w, o, g, s in zip(units, widths, out, groups, share))


PRESETS = {
    (56, '32x4d'): dict(stages=_stages((3, 4, 6, 3), (128, 256, 640, 1024), (32,) * 4, (0, 0, 6, 0))),
    (56, '136x1d'): dict(stages=_stages((3, 4, 6, 3), (136, 272, 640, 1088), (0,) * 4, (0, 0, 6, 0))),
    (56, 'tiny'): dict(stages=_stages((3, 4, 6, 3), (64, 128, 320, 512), (16,) * 4, (0, 0, 6, 0),
                                      out=(224, 448, 896, 1792))),
    (116, '32x4d'): dict(stages=_stages((3, 6, 18, 3), (128, 352, 704, 1024), (32,) * 4, (0, 6, 6, 0))),
    (116, 'wider'): dict(stages=_stages((3, 6, 18, 3), (256, 704, 1120, 2048), (64,) * 4, (0, 6, 6, 0))),
    (22, 'cifar'): dict(stages=_stages((2, 2, 2), (32, 64, 128), (8,) * 3, (0, 2, 0), out=(64, 128, 256)),
                        stem='cifar'),
}


def _unshared(stages):
    """The same stages with every collective unit owning its bases (share runs of one unit)."""
    return tuple(st._replace(share=1) if st.share else st for st in stages)


def get_symbol(num_classes=1000, num_layers=56, image_shape='3,224,224', setting=None, shared=True,
               dtype='float32', grouped_conv='plain', pooling='avg', output='softmax'):
    """CRU-Net symbol whose parameter names match the released checkpoints.

    ``get_symbol(num_layers=56)`` is CRU-Net-56 @x14 32x4d, ``num_layers=116`` CRU-Net-116
    @x28x14 32x4d; ``setting`` picks ``136x1d``/``tiny`` (56), ``wider`` (116), ``cifar`` (22).
    ``shared=False`` is the unshared twin: the same architecture with every collective unit owning
    its 1x1 and 3x3 bases (``convS_x__(k)_1x1_bases[dim3]_weight`` for unit k), the ablation of
    the sharing (CRU-Net-56: 28,914,984 parameters instead of 25,609,384).
    ``dtype`` float16 casts the input and the logits (GPU training); ``grouped_conv`` is the
    formulation of grouped convolutions (``symbols.blocks.GROUPED_CONV_CHOICES``); ``pooling``
    (``avg``, ``mean-max``) and ``output`` (``softmax``, ``probabilities``, ``logits``,
    ``features``) choose the head (``symbols.blocks.classifier``)."""
    parse_shape(image_shape)   # checked only: global pooling makes the graph independent of the input size
    _, preset = choose('crunet', PRESETS, num_layers, setting)
    stages = preset['stages'] if shared else _unshared(preset['stages'])
    return build_network(stages, num_classes, stem=preset.get('stem', 'imagenet'), dtype=dtype,
                         grouped_conv=grouped_conv, pooling=pooling, output=output)
