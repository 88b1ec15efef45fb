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
from .blocks import (Stage, classifier, cifar_stem, data_input, imagenet_stem, parse_shape,
                     residual_unit, shared_variable)
from ._registry import choose

_W = (64, 128, 256, 512)
PRESETS = {
    (34, 'imagenet'): dict(basic=True, share_from=0, stages=[Stage(u, w, w, 1) for u, w in zip((3, 4, 6, 3), _W)]),
    (50, 'imagenet'): dict(units=(3, 4, 6, 3)),
    (101, 'imagenet'): dict(units=(3, 4, 23, 3)),
    (152, 'imagenet'): dict(units=(3, 8, 36, 3)),
    (164, 'cifar'): dict(preact=True, stem='cifar',
                         stages=[Stage(18, w, 4 * w, 1) for w in (16, 32, 64)]),
}
for _p in PRESETS.values():
    _p.setdefault('stages', [Stage(u, w, 4 * w, 1) for u, w in zip(_p.get('units', ()), _W)])
WRN_DEPTHS = (16, 22, 28, 40)
PRESETS.update({(d, 'wrn'): dict(basic=True, preact=True, stem='cifar', stages=None) for d in WRN_DEPTHS})


def get_symbol(num_classes=1000, num_layers=50, image_shape='3,224,224', widen_factor=None,
               shared=True, dtype='float32', **kwargs):
    """ShaResNet-34/50/101/152 (ImageNet), ShaResNet-164 (CIFAR), or with ``widen_factor`` a
    shared wide ResNet WRN-``num_layers``-``widen_factor``. ``shared=False`` is the same network
    without sharing (the original ResNet / WRN)."""
    parse_shape(image_shape)
    family = 'wrn' if widen_factor else None
    presets = {k: v for k, v in PRESETS.items() if (k[1] == 'wrn') == bool(widen_factor)}
    _, preset = choose('sharesnet' + ('(widen_factor)' if widen_factor else ''), presets, num_layers, family)
    stages = preset['stages']
    if family == 'wrn':
        k = int(widen_factor)
        stages = [Stage((int(num_layers) - 4) // 6, w * k, w * k, 1) for w in (16, 32, 64)]
    preact, basic = preset.get('preact', False), preset.get('basic', False)
    share_from = preset.get('share_from', 1)

    data = data_input(dtype)
    body = imagenet_stem(data, preact=False) if preset.get('stem') != 'cifar' else cifar_stem(data)
    cache, in_width = {}, 16 if preset.get('stem') == 'cifar' else 64
    for s, st in enumerate(stages):
        stage = 2 + s
        for i in range(st.units):
            stride = 2 if (i == 0 and s > 0) else 1
            proj = i == 0 and (stride > 1 or in_width != st.out)
            tied = shared and i >= share_from
            w3 = shared_variable(cache, 'conv%d_x__x_3x3_shared_weight' % stage) if tied else None
            body = residual_unit(body, 'conv%d_x__%d' % (stage, i + 1), st.width, st.out, st.groups,
                                 stride, proj, preact=preact, basic=basic, weight3=w3)
            in_width = st.out
    return classifier(body, num_classes, preact=preact, dtype=dtype)
