"""The block vocabulary every network of the zoo is written in.

Names follow the released CRU-Net graphs mechanically:

* ``bn_ac_conv(x, 'U_c1x1-a', ...)`` is BatchNorm ``U_c1x1-a__bn__bn`` -> ReLU
  ``U_c1x1-a__bn__relu`` -> Convolution ``U_c1x1-a__conv`` (weight ``U_c1x1-a__conv_weight``);
* ``conv_bn_ac`` is the post-activation order (Convolution -> BatchNorm ``name__bn`` -> ReLU)
  used by the ImageNet ShaResNets;
* a shared weight is one named ``mx.sym.Variable`` handed to several convolutions.

Networks are tables of numbers (see ``Stage``) driven through :func:`build_network` (the body
:func:`build_body` and the head :func:`classifier` separately when a graph needs another head).
"""
import functools
from collections import namedtuple

import mxnet as mx

BN_MOMENTUM = 0.9

#: How a grouped convolution (1 < num_group < input channels) is computed; every builder takes it
#: as its ``grouped_conv`` argument:
#: ``'plain'``  one ``mx.sym.Convolution`` with ``num_group`` (the released graphs; what
#:              checkpoints, ONNX export and ``count_macs`` use);
#: ``'blockdiag8'`` / ``'blockdiag16'``: when a group has fewer input or output channels than a
#:              multiple of 8 (16), merge ``k`` neighbouring groups into one whose weight is block
#:              diagonal (the original weight on the diagonal, exact zeros elsewhere), built inside the
#:              graph from the same weight Variable. Same parameters, outputs and gradients; ``k``
#:              times the multiply-adds, but oneDNN's blocked direct kernels (and BatchNorm's blocked
#:              kernels around them) instead of its per-group reference fallbacks. 8 is the f32
#:              vector width of AVX2, 16 of AVX-512; ``crunet.isa`` picks the one the machine wants
#:              (bench/FINDINGS.md). They are oneDNN (CPU) training graphs; ``blockdiag16`` also
#:              fuses every BatchNorm -> ReLU where that is exact (:func:`fuses_bn_relu`).
GROUPED_CONV_CHOICES = ('plain', 'blockdiag8', 'blockdiag16')
_MERGE_MULTIPLE = {'plain': None, 'blockdiag8': 8, 'blockdiag16': 16}


def check_grouped_conv(grouped_conv):
    """``grouped_conv`` itself, or ValueError listing the valid choices."""
    if grouped_conv not in _MERGE_MULTIPLE:
        raise ValueError('grouped_conv must be one of %s, not %r' % (', '.join(GROUPED_CONV_CHOICES), grouped_conv))
    return grouped_conv


#: One stage of a network: ``units`` blocks, bottleneck width ``width`` (D), output width ``out``,
#: ``groups`` of the grouped 3x3 (0 means depthwise: groups = width), ``share`` the number of
#: consecutive units that share one set of collective bases (0: plain residual units; 1: collective
#: units that each own their bases), ``share3x3_from`` the first unit (0-based) from which the units'
#: 3x3 convolution (the second 3x3 of a basic block) is one shared weight (ShaResNet; None: not shared).
Stage = namedtuple('Stage', 'units width out groups share share3x3_from')
Stage.__new__.__defaults__ = (32, 0, None)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def bn(data, name, fix_gamma=False):
    """BatchNorm named ``name``; ``fix_gamma=False``, momentum 0.9, MXNet's default eps."""
    return mx.sym.BatchNorm(data=data, fix_gamma=fix_gamma, momentum=BN_MOMENTUM, name=name)


def fuses_bn_relu(grouped_conv, dtype='float32', channels=None):
    """Whether a network of formulation ``grouped_conv`` in ``dtype`` whose BatchNorms see
    ``channels`` (every width of its table) computes each BatchNorm -> ReLU pair as one oneDNN
    ``BatchNormWithReLU``: only ``blockdiag16`` in float32 with every width a multiple of 16, where
    all of oneDNN's activations and gradients are in its 16-channel blocks. There the fused
    operator gives the same outputs, gradients and statistics bit for bit as the pair (checked for
    every preset and twin of the zoo and WRN-d-k with k = 1, 4 and WRN-28-10, in
    tests/test_speed_equivalence.py), and a CRU-Net-56 training
    step is ~10% faster on AVX-512 (bench/FINDINGS.md, section 6). Wherever layouts mix (8-channel
    blocks, widths such as 136, or an outside gradient in MXNet's plain layout) its input gradient is
    wrong in MXNet 1.9.1, so ``plain`` (checkpoints, exports, GPUs), ``blockdiag8`` and other dtypes
    never fuse."""
    check_grouped_conv(grouped_conv)
    return grouped_conv == 'blockdiag16' and dtype == 'float32' and channels is not None and \
        all(int(c) % 16 == 0 for c in channels)


def bn_ac(data, name, fuse=False):
    """BatchNorm ``name__bn`` followed by ReLU ``name__relu``; with ``fuse``, one
    ``BatchNormWithReLU`` named ``name__bn`` (the same parameters and auxiliary states)."""
    if fuse:
        return mx.sym.contrib.BatchNormWithReLU(data=data, fix_gamma=False, momentum=BN_MOMENTUM,
                                                name='%s__bn' % name)
    return mx.sym.Activation(data=bn(data, '%s__bn' % name), act_type='relu', name='%s__relu' % name)


def merge_factor(num_group, in_channels, num_filter, multiple):
    """Smallest ``k`` (dividing ``num_group``) such that ``k`` merged groups have a multiple of
    ``multiple`` input and output channels; 1 when no merge is needed or none helps."""
    cin, cout = in_channels // num_group, num_filter // num_group
    if num_group <= 1 or cin == 1 or (cin % multiple == 0 and cout % multiple == 0):
        return 1
    for k in range(2, num_group + 1):
        if num_group % k == 0 and (k * cin) % multiple == 0 and (k * cout) % multiple == 0:
            return k
    return 1


def block_diagonal_weight(weight, name, num_group, in_channels, num_filter, kernel, k):
    """Weight ``(num_filter, k * cin, kh, kw)`` of ``num_group / k`` merged groups, computed from
    the grouped ``weight`` ``(num_filter, cin, kh, kw)``: group ``g`` of the merged group ``g'``
    keeps its own filters on the diagonal block ``g mod k``, the other blocks are exact zeros
    (``zeros_like``, so any dtype). Only slices, concatenations and reshapes: the gradient of
    ``weight`` is the diagonal blocks of the merged weight's gradient, exactly."""
    cin, cout = in_channels // num_group, num_filter // num_group
    taps = cin * kernel[0] * kernel[1]
    w = mx.sym.reshape(weight, shape=(num_group // k, k, cout, 1, taps), name='%s_bd_split' % name)
    rows = []
    for s in range(k):
        ws = mx.sym.slice_axis(w, axis=1, begin=s, end=s + 1, name='%s_bd_slice%d' % (name, s))
        zero = mx.sym.zeros_like(ws, name='%s_bd_zero%d' % (name, s))
        rows.append(mx.sym.concat(*([zero] * s + [ws] + [zero] * (k - 1 - s)), dim=3,
                                  name='%s_bd_row%d' % (name, s)))
    w = mx.sym.concat(*rows, dim=1, name='%s_bd_rows' % name)
    return mx.sym.reshape(w, shape=(num_filter, k * cin) + tuple(kernel), name='%s_bd_weight' % name)


def conv(data, name, num_filter, kernel=1, stride=1, pad=None, num_group=1, weight=None,
         in_channels=None, grouped_conv='plain'):
    """Convolution ``name__conv`` without bias; ``weight`` (a Variable) shares a weight.

    A grouped convolution (``1 < num_group < in_channels``; ``in_channels`` defaults to
    ``num_filter``, as in every unit of the zoo) is computed as ``grouped_conv`` says (see
    :data:`GROUPED_CONV_CHOICES`); the parameters (names, shapes, order of ``list_arguments``) are
    the same either way.
    """
    kernel, stride = _pair(kernel), _pair(stride)
    pad = tuple(k // 2 for k in kernel) if pad is None else _pair(pad)
    multiple = _MERGE_MULTIPLE[check_grouped_conv(grouped_conv)]
    in_channels = num_filter if in_channels is None else in_channels
    k = merge_factor(num_group, in_channels, num_filter, multiple) if multiple else 1
    if k > 1:
        wshape = (num_filter, in_channels // num_group) + kernel
        if weight is None:
            weight = mx.sym.Variable('%s__conv_weight' % name, shape=wshape)
        elif weight.attr('__shape__') is None:
            weight._set_attr(__shape__=str(wshape))
        weight = block_diagonal_weight(weight, '%s__conv' % name, num_group, in_channels,
                                       num_filter, kernel, k)
        num_group //= k
    kwargs = dict(data=data, num_filter=num_filter, kernel=kernel, stride=stride, pad=pad,
                  num_group=num_group, no_bias=True, name='%s__conv' % name)
    if weight is not None:
        kwargs['weight'] = weight
    return mx.sym.Convolution(**kwargs)


def bn_ac_conv(data, name, num_filter, kernel=1, stride=1, pad=None, num_group=1, weight=None,
               grouped_conv='plain', fuse=False):
    """Pre-activation BN -> ReLU -> Conv; BatchNorm is named ``name__bn__bn``."""
    return conv(bn_ac(data, '%s__bn' % name, fuse), name, num_filter, kernel, stride, pad, num_group, weight,
                grouped_conv=grouped_conv)


def conv_bn_ac(data, name, num_filter, kernel=1, stride=1, pad=None, num_group=1, weight=None, act=True,
               grouped_conv='plain', fuse=False):
    """Post-activation Conv -> BN (``name__bn``) -> ReLU (omitted with ``act=False``)."""
    out = conv(data, name, num_filter, kernel, stride, pad, num_group, weight, grouped_conv=grouped_conv)
    if act and fuse:
        return mx.sym.contrib.BatchNormWithReLU(data=out, fix_gamma=False, momentum=BN_MOMENTUM, name='%s__bn' % name)
    out = bn(out, '%s__bn' % name)
    return mx.sym.Activation(out, act_type='relu', name='%s__relu' % name) if act else out


def shared_variable(cache, name, shape=None):
    """The Variable ``name``, created once per network and reused afterwards."""
    if name not in cache:
        cache[name] = mx.sym.Variable(name, shape=shape)
    return cache[name]


# ----------------------------------------------------------------------------- residual units
def residual_unit(data, name, width, out, groups, stride, proj, preact=True, basic=False, weight3=None,
                  grouped_conv='plain', fuse=False):
    """ResNeXt / ResNet residual unit (the authors' ``ResidualFactory``).

    Bottleneck ``c1x1-a`` -> ``c3x3-b`` (grouped, stride) -> ``c1x1-c``, or with ``basic`` two
    3x3 convolutions ``c3x3-a`` (stride) -> ``c3x3-b``; the projection shortcut ``c1x1-w(s/K)``
    uses the Variable ``U_c1x1-w_weight``. Pre-activation (BN-ReLU-Conv) by default;
    ``preact=False`` gives the post-activation form (Conv-BN-ReLU, ReLU ``U_relu`` after the sum).
    ``weight3`` shares the weight of ``c3x3-b`` (ShaResNet).
    """
    if preact:
        unit = last = functools.partial(bn_ac_conv, fuse=fuse)
    else:
        unit, last = functools.partial(conv_bn_ac, fuse=fuse), functools.partial(conv_bn_ac, act=False)
    short = data
    if proj:
        w = mx.sym.Variable('%s_c1x1-w_weight' % name)
        short = last(data, '%s_c1x1-w(s/%d)' % (name, stride), out, 1, stride, weight=w)
    if basic:
        body = unit(data, '%s_c3x3-a' % name, out, 3, stride)
        body = last(body, '%s_c3x3-b' % name, out, 3, weight=weight3)
    else:
        body = unit(data, '%s_c1x1-a' % name, width, 1)
        body = unit(body, '%s_c3x3-b' % name, width, 3, stride, num_group=groups, weight=weight3,
                    grouped_conv=grouped_conv)
        body = last(body, '%s_c1x1-c' % name, out, 1)
    body = mx.sym.ElementWiseSum(short, body, name='%s_ele-sum' % name)
    return body if preact else mx.sym.Activation(body, act_type='relu', name='%s_relu' % name)


def collective_unit(data, name, width, out, stride, proj, group, cache, fuse=False):
    """Collective residual unit (the authors' ``CRUFactory``), bases shared by ``group``.

    The shared 1x1 bases ``G_1x1_bases[dim3]_weight`` (width, out, 1, 1) and the shared
    depthwise 3x3 bases ``G_3x3_bases[dim21]_weight`` (width, 1, 3, 3) are Variables from
    ``cache``, so every unit of the group uses the same two arrays. (The depthwise 3x3 has one
    channel per group: no formulation choice applies to it.)
    """
    w1 = shared_variable(cache, '%s_1x1_bases[dim3]_weight' % group)
    w3 = shared_variable(cache, '%s_3x3_bases[dim21]_weight' % group)
    short = body_in = data
    if proj:
        w = mx.sym.Variable('%s_c1x1-w_weight' % name)
        body_in = short = bn_ac_conv(data, '%s_c1x1-w(s/1)' % name, out, 1, 1, weight=w, fuse=fuse)
        if stride > 1:
            short = bn_ac_conv(data, '%s_c1x1-w(s/key)' % name, out, 1, stride, weight=w, fuse=fuse)
    body = bn_ac_conv(body_in, '%s_c1x1-a' % name, width, 1, weight=w1, fuse=fuse)
    body = conv(body, '%s_c3x3-b(1)' % name, width, 3, stride, num_group=width, weight=w3)
    body = bn_ac_conv(body, '%s_c1x1-b(2)' % name, width, 1, fuse=fuse)
    body = bn_ac_conv(body, '%s_c1x1-c' % name, out, 1, fuse=fuse)
    return mx.sym.ElementWiseSum(short, body, name='%s_ele-sum' % name)


def share_group(stage, index, share, units):
    """Name of the share group of unit ``index`` (0-based): ``convS_x__x`` when one group spans the
    stage, else ``convS_x__(k)`` for the k-th run of ``share`` units."""
    tag = 'x' if share >= units else '(%d)' % (index // share + 1)
    return 'conv%d_x__%s' % (stage, tag)


# ----------------------------------------------------------------------------- stems and heads
STEMS = ('imagenet', 'cifar')
OUTPUTS = ('softmax', 'probabilities', 'logits', 'features')
POOLINGS = ('avg', 'mean-max')


def data_input(dtype='float32'):
    data = mx.sym.Variable('data')
    return mx.sym.Cast(data, dtype='float16') if dtype == 'float16' else data


def imagenet_stem(data, preact=True, filters=64, fuse=False):
    """7x7/2 convolution ``conv1_x_1``, BN + ReLU, 3x3/2 max pooling ``pool1``."""
    body = conv(data, 'conv1_x_1', filters, 7, 2, 3)
    if preact:
        body = bn_ac(body, 'conv1_x_1__relu-sp', fuse)
    elif fuse:
        body = mx.sym.contrib.BatchNormWithReLU(data=body, fix_gamma=False, momentum=BN_MOMENTUM, name='conv1_x_1__bn')
    else:
        body = mx.sym.Activation(bn(body, 'conv1_x_1__bn'), act_type='relu', name='conv1_x_1__relu')
    return mx.sym.Pooling(body, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type='max', name='pool1')


def cifar_stem(data, filters=16):
    """3x3/1 convolution ``conv1_x_1`` (pre-activation networks normalise in the first unit)."""
    return conv(data, 'conv1_x_1', filters, 3, 1, 1)


def global_pool(body, pooling='avg'):
    """``pool5``: global average pooling, or mean-max pooling ``0.5 * (average + max)`` (for
    inputs larger than the training crop; the same parameters)."""
    if pooling == 'avg':
        return mx.sym.Pooling(body, kernel=(7, 7), global_pool=True, pool_type='avg', name='pool5')
    if pooling != 'mean-max':
        raise ValueError('pooling must be one of %s, not %r' % (', '.join(POOLINGS), pooling))
    avg = mx.sym.Pooling(body, global_pool=True, kernel=(1, 1), pool_type='avg', name='pool5_avg')
    top = mx.sym.Pooling(body, global_pool=True, kernel=(1, 1), pool_type='max', name='pool5_max')
    return mx.sym._internal._mul_scalar(mx.sym.elemwise_add(avg, top, name='pool5_sum'), scalar=0.5, name='pool5')


def classifier(body, num_classes, preact=True, dtype='float32', pooling='avg', output='softmax', fuse=False):
    """The head: final BN + ReLU (pre-activation only), :func:`global_pool` ``pool5``, ``flatten``,
    ``fc6`` and the output: ``softmax`` (``SoftmaxOutput``, for training and checkpoints),
    ``probabilities`` (a softmax named ``softmax`` without label input, for deployment),
    ``logits`` (fc6), or ``features`` (the pooled, flattened features)."""
    if output not in OUTPUTS:
        raise ValueError('output must be one of %s, not %r' % (', '.join(OUTPUTS), output))
    if preact:
        body = bn_ac(body, 'conv5_x_x__relu-sp', fuse)
    body = mx.sym.Flatten(global_pool(body, pooling), name='flatten')
    if output == 'features':
        return body
    body = mx.sym.FullyConnected(body, num_hidden=num_classes, name='fc6')
    if dtype == 'float16':
        body = mx.sym.Cast(body, dtype='float32')
    if output == 'logits':
        return body
    if output == 'probabilities':
        return mx.sym.softmax(body, axis=-1, name='softmax')
    return mx.sym.SoftmaxOutput(body, name='softmax')


def _stage_unit(body, st, stage, i, in_width, preact, basic, cache, grouped_conv, fuse):
    """Unit ``i`` (0-based) of stage ``stage`` (table row ``st``)."""
    name = 'conv%d_x__%d' % (stage, i + 1)
    stride = 2 if (i == 0 and stage > 2) else 1
    proj = i == 0 and (stride > 1 or in_width != st.out)
    if st.share:
        return collective_unit(body, name, st.width, st.out, stride, proj,
                               share_group(stage, i, st.share, st.units), cache, fuse)
    tied = st.share3x3_from is not None and i >= st.share3x3_from
    w3 = shared_variable(cache, 'conv%d_x__x_3x3_shared_weight' % stage) if tied else None
    groups = st.width if st.groups == 0 else st.groups
    return residual_unit(body, name, st.width, st.out, groups, stride, proj, preact=preact, basic=basic,
                         weight3=w3, grouped_conv=grouped_conv, fuse=fuse)


def _widths(stages, stem):
    """Every channel count a BatchNorm of the network sees: the stem's and each stage's widths."""
    return [64 if stem == 'imagenet' else 16] + [w for st in stages for w in (st.width, st.out)]


def build_body(stages, stem='imagenet', preact=True, basic=False, dtype='float32', grouped_conv='plain',
               fuse_bn_relu=None):
    """The feature extractor of a table of :class:`Stage` rows: stem, then stage 2 (resolution kept),
    3, 4, ... (each halving it); the last feature map, before the head. ``fuse_bn_relu`` (default:
    :func:`fuses_bn_relu` of the formulation) computes each BatchNorm -> ReLU as one operator."""
    if stem not in STEMS:
        raise ValueError('stem must be one of %s, not %r' % (', '.join(STEMS), stem))
    fuse = fuses_bn_relu(grouped_conv, dtype, _widths(stages, stem)) if fuse_bn_relu is None else bool(fuse_bn_relu)
    data = data_input(dtype)
    body = imagenet_stem(data, preact=preact, fuse=fuse) if stem == 'imagenet' else cifar_stem(data)
    in_width = 64 if stem == 'imagenet' else 16
    cache = {}
    for s, st in enumerate(stages):
        for i in range(st.units):
            body = _stage_unit(body, st, 2 + s, i, in_width, preact, basic, cache, grouped_conv, fuse)
            in_width = st.out
    return body


def build_network(stages, num_classes, stem='imagenet', preact=True, basic=False, dtype='float32',
                  grouped_conv='plain', pooling='avg', output='softmax', fuse_bn_relu=None):
    """A network of the zoo from its table of :class:`Stage` rows: :func:`build_body` then
    :func:`classifier`. Pre-activation (CRU-Net, ResNeXt, ResNet, CIFAR ShaResNets) or
    post-activation (ImageNet ShaResNets); bottleneck or ``basic`` blocks; units of a stage with
    ``share > 0`` are collective units sharing their bases in runs of ``share`` units."""
    fuse = fuses_bn_relu(grouped_conv, dtype, _widths(stages, stem)) if fuse_bn_relu is None else bool(fuse_bn_relu)
    body = build_body(stages, stem, preact, basic, dtype, grouped_conv, fuse)
    return classifier(body, num_classes, preact=preact, dtype=dtype, pooling=pooling, output=output, fuse=fuse)


def parse_shape(image_shape):
    """'3,224,224' -> (3, 224, 224)."""
    if isinstance(image_shape, str):
        image_shape = [int(v) for v in image_shape.split(',')]
    shape = tuple(int(v) for v in image_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError("image_shape must be 'C,H,W' with positive sizes, got %r" % (image_shape,))
    return shape
