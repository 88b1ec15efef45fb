"""Gluon face of any checkpoint (the project's or a released CRU-Net file).

>>> from symbols.gluon import gluon_model
>>> net = gluon_model('CRU-Net-56-ATx14-32x4d', 0)            # doctest: +SKIP
>>> net.hybridize(); probs = mx.nd.softmax(net(x))             # doctest: +SKIP
>>> net = gluon_model(prefix, 0, num_classes=10)               # new fc6 for fine-tuning # doctest: +SKIP
>>> trainer = mx.gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.01})  # doctest: +SKIP

The block is a ``mx.gluon.SymbolBlock`` over the logits (the graph without its
``SoftmaxOutput``), input ``data``. A Variable shared by several units (the CRU bases
``conv4_x__x_1x1_bases[dim3]_weight``, ...) is one Parameter: every unit reads and updates
the same array.
"""
import warnings

import mxnet as mx

from .checkpoint import (check_params, expected_shapes, load_checkpoint, logits_symbol, mean_max_symbol,
                         save_checkpoint)

__all__ = ['gluon_model', 'block_from_symbol', 'save_gluon_checkpoint']


def _ctx_list(ctx):
    if ctx is None:
        return [mx.cpu()]
    return list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]


def block_from_symbol(sym, arg_params, aux_params, ctx=None, num_classes=None, mean_max=False,
                      image_shape=None, classifier='fc6', init=None):
    """SymbolBlock over the logits of ``sym`` with ``arg_params``/``aux_params`` loaded.

    With ``num_classes`` different from the params' class count the classifier
    (FullyConnected ``classifier``, default ``fc6``) is replaced by a new one of that size,
    initialised with ``init`` (default Xavier) -- the rest keeps the checkpoint's weights.
    ``mean_max`` swaps the final average pooling for mean-max pooling (larger inputs)."""
    ctx = _ctx_list(ctx)
    if mean_max:
        sym = mean_max_symbol(sym)
    logits = logits_symbol(sym)
    arg_params, aux_params = dict(arg_params), dict(aux_params)
    weight = '%s_weight' % classifier
    new_head = num_classes is not None and weight in arg_params and \
        int(arg_params[weight].shape[0]) != int(num_classes)
    if num_classes is not None and weight not in arg_params:
        raise ValueError('no classifier %r in the params to resize to %d classes' % (weight, num_classes))
    if new_head:
        internals = logits.get_internals()
        fc_in = internals['%s_output' % classifier].get_children()[0]
        logits = mx.sym.FullyConnected(fc_in, num_hidden=int(num_classes), name=classifier)
        for key in (weight, '%s_bias' % classifier):
            arg_params.pop(key, None)
    check_args = arg_params
    if new_head:  # the new classifier's weights are not expected from the checkpoint
        args, _ = expected_shapes(logits, image_shape)
        check_args = dict(arg_params)
        check_args.update({k: mx.nd.zeros(args[k]) for k in (weight, '%s_bias' % classifier) if k in args})
    check_params(logits, check_args, aux_params, image_shape)
    with warnings.catch_warnings():  # "Cannot decide type for ... data": it is the input
        warnings.simplefilter('ignore', UserWarning)
        net = mx.gluon.SymbolBlock(outputs=logits, inputs=mx.sym.var('data'))
    params = net.collect_params()
    for name, param in params.items():
        if name in arg_params:
            param._load_init(arg_params[name], ctx, cast_dtype=True, dtype_source='saved')
        elif name in aux_params:
            param._load_init(aux_params[name], ctx, cast_dtype=True, dtype_source='saved')
    new_shapes, _ = expected_shapes(logits, image_shape)
    for name, param in params.items():
        if name not in arg_params and name not in aux_params:
            param.shape = new_shapes[name]
            param.initialize(init=mx.init.Zero() if name.endswith('_bias') else init or mx.init.Xavier(),
                             ctx=ctx)
    return net


def gluon_model(prefix, epoch, ctx=None, num_classes=None, mean_max=False, image_shape=None,
                **load_kwargs):
    """Hybridizable Gluon ``SymbolBlock`` of the checkpoint ``PREFIX``/``epoch``.

    The output is the logits (apply ``mx.nd.softmax`` for probabilities). ``num_classes``
    different from the checkpoint's replaces ``fc6`` by a freshly initialised one for
    fine-tuning. ``load_kwargs`` go to :func:`symbols.checkpoint.load_checkpoint` (e.g.
    ``network='crunet', num_layers=56`` to use the project's symbol)."""
    sym, arg_params, aux_params = load_checkpoint(prefix, epoch, image_shape=image_shape, **load_kwargs)
    return block_from_symbol(sym, arg_params, aux_params, ctx=ctx, num_classes=num_classes,
                             mean_max=mean_max, image_shape=image_shape)


def save_gluon_checkpoint(net, prefix, epoch=0, softmax_output=True):
    """Write a Gluon block built here back as an MXNet checkpoint (``PREFIX-symbol.json`` with a
    ``SoftmaxOutput`` head, so that score.py and Module training take it, and
    ``PREFIX-%04d.params``); returns the two paths."""
    data = mx.sym.var('data')
    out = net(data)
    if softmax_output:
        out = mx.sym.SoftmaxOutput(out, name='softmax')
    aux_names = set(out.list_auxiliary_states())
    arg_params, aux_params = {}, {}
    for name, param in net.collect_params().items():
        value = param.data(param.list_ctx()[0]).copyto(mx.cpu())
        (aux_params if name in aux_names else arg_params)[name] = value
    return save_checkpoint(prefix, epoch, out, arg_params, aux_params)
