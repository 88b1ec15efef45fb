"""Checkpoints of the project and the authors' released CRU-Net files, on stock MXNet.

The released ``-symbol.json`` files were saved by MXNet 0.9.x from the authors' fork and name
the shared depthwise 3x3 convolutions ``ChannelwiseConvolution``, an operator stock MXNet does
not have. It is a plain depthwise ``Convolution`` (``num_group == num_filter``), so the JSON is
rewritten before MXNet parses it; MXNet then upgrades the 0.9 layout (``"attr"``/``"param"``
keys, missing ``node_row_ptr``, two-element heads) itself.

>>> from symbols.checkpoint import load_checkpoint, check_params, convert_symbol_json
>>> sym, arg_params, aux_params = load_checkpoint('CRU-Net-56-ATx14-32x4d', 0)   # doctest: +SKIP
>>> convert_symbol_json('CRU-Net-56-ATx14-32x4d-symbol.json', 'stock-symbol.json')  # doctest: +SKIP

Parameters that do not fit a symbol raise :class:`ParamMismatchError` naming the first
missing, unexpected or wrongly shaped parameter, e.g. ``parameter
conv4_x__x_1x1_bases[dim3]_weight: expected shape (640, 1024, 1, 1), found (704, 1024, 1, 1)``.

The module also holds the graph surgery shared by scoring, Gluon and export:
:func:`logits_symbol` (the graph without its softmax head), :func:`inference_symbol` (softmax
without a label input) and :func:`mean_max_symbol` (0.5 x (global average + global max)
pooling in place of ``pool5``).
"""
# size-exempt: the reading, checking and graph surgery of checkpoint files, released and own, kept
# together so that every reader (scoring, fine-tuning, exports, Gluon) gets the same checks.
import ast
import json
import os
import re
import warnings

import mxnet as mx

from .blocks import parse_shape
from .errors import error_line
from .files import atomic_save

__all__ = ['CheckpointError', 'ParamMismatchError', 'RELEASED_OPS', 'check_graph', 'upgrade_json', 'load_symbol',
           'load_params', 'save_params', 'load_checkpoint', 'save_checkpoint', 'convert_symbol_json', 'check_params',
           'expected_shapes', 'num_classes_of', 'data_shape_of', 'head_op', 'logits_symbol', 'inference_symbol',
           'mean_max_symbol', 'deploy_symbol', 'symbol_path', 'params_path', 'synset_path', 'load_synset',
           'class_names']


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing file, unreadable JSON or params."""


class ParamMismatchError(CheckpointError):
    """Parameters that do not fit a symbol; the message names the first offending parameter."""


#: Keys MXNet's legacy upgrade turns into hidden ``__key__`` attributes (src/nnvm/legacy_json_util.cc)
_HIDDEN_KEYS = ('ctx_group', 'lr_mult', 'wd_mult', 'force_mirroring', 'mirror_stage', 'profiler_scope')
_ATTR_KEYS = ('attrs', 'attr', 'param')
_CONV_PARAMS = None


def _conv_params():
    global _CONV_PARAMS
    if _CONV_PARAMS is None:
        names = mx.operator.get_operator_arguments('Convolution').names
        _CONV_PARAMS = frozenset(n for n in names if n not in ('data', 'weight', 'bias'))
    return _CONV_PARAMS


def _channelwise_to_conv(node):
    """``ChannelwiseConvolution`` -> ``Convolution`` with ``num_group = num_filter``.

    Attributes Convolution does not know are dropped with a warning (hidden ``__key__`` and
    the keys MXNet's upgrade hides are kept)."""
    node['op'] = 'Convolution'
    known = _conv_params()
    found = False
    for key in _ATTR_KEYS:
        attrs = node.get(key)
        if not isinstance(attrs, dict):
            continue
        for name in list(attrs):
            hidden = name.startswith('__') and name.endswith('__')
            if name not in known and not hidden and name not in _HIDDEN_KEYS:
                warnings.warn('%s: dropping attribute %s=%r that Convolution does not know'
                              % (node.get('name'), name, attrs[name]))
                del attrs[name]
        if 'num_filter' in attrs:
            attrs['num_group'] = attrs['num_filter']
            found = True
    if not found:
        raise CheckpointError('%s: ChannelwiseConvolution without num_filter' % node.get('name'))


#: Operators of the authors' MXNet fork and how each becomes stock MXNet (node dict edited in place)
RELEASED_OPS = {'ChannelwiseConvolution': _channelwise_to_conv}


def _entry(item, where, limit, nodes):
    """``(node_id, output_index)`` of a graph entry ``[node_id, index(, version)]`` that must name
    one of the first ``limit`` nodes; ``CheckpointError`` naming ``where`` otherwise."""
    ok = isinstance(item, list) and len(item) in (2, 3) and \
        all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item)
    if not ok:
        raise CheckpointError('%s: %r is not an entry [node_id, output_index, version]' % (where, item))
    node_id, index = item[0], item[1]
    if node_id >= limit:
        what = 'an earlier node (0..%d)' % (limit - 1) if limit < len(nodes) else \
            'one of the %d nodes' % len(nodes)
        raise CheckpointError('%s: refers to node %d, not %s' % (where, node_id, what))
    return node_id, index


def _num_outputs(node, version):
    """How many outputs the operator node ``node`` has (visible or not, as its inputs and the
    graph heads count them): MXNet's own count for a one-node graph of it (``node_row_ptr``)."""
    k = len(node.get('inputs', ()))
    mini = {'nodes': [{'op': 'null', 'name': '__input%d__' % i, 'inputs': []} for i in range(k)]
            + [dict(node, inputs=[[i, 0, 0] for i in range(k)])],
            'arg_nodes': list(range(k)), 'heads': [[k, 0, 0]]}
    if version is not None:                           # MXNet upgrades the node as it does the graph
        mini['attrs'] = {'mxnet_version': version}
    try:
        saved = json.loads(mx.sym.load_json(json.dumps(mini)).tojson())
        return saved['node_row_ptr'][k + 1] - saved['node_row_ptr'][k]
    except (mx.base.MXNetError, KeyError, IndexError, ValueError) as err:
        why = re.sub(r'\[[\d:]+\]\s*\S+:\d+:\s*', '', error_line(err))     # MXNet's time and source line
        raise CheckpointError('node %r (%s): MXNet cannot build it: %s' % (node.get('name'), node.get('op'), why))


def check_graph(graph, count_outputs=True):
    """Check the structure of a parsed symbol JSON before MXNet reads it: MXNet trusts the node
    and output indices of a graph and reads out of bounds (a crash, not an error) on a head or
    input that names a node or an output that does not exist.

    ``nodes`` must be a list of dicts with a string ``op`` and ``name`` and a list of ``inputs``
    naming earlier nodes; ``arg_nodes`` and ``heads`` must name existing nodes; every output
    index must exist (a variable has one output, an operator the outputs MXNet gives it; with
    ``count_outputs=False`` only the variables' are checked, for operators MXNet does not know yet)."""
    if not isinstance(graph, dict) or not isinstance(graph.get('nodes'), list):
        raise CheckpointError('not an MXNet symbol JSON (no "nodes" list)')
    nodes = graph['nodes']
    if not nodes:
        raise CheckpointError('the symbol JSON has no nodes')
    used = {}                                     # node id -> largest output index referred to
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise CheckpointError('node %d is %r, not an object with "op", "name", "inputs"' % (i, node))
        for key in ('op', 'name'):
            if not isinstance(node.get(key), str):
                raise CheckpointError('node %d: "%s" must be a string, found %r' % (i, key, node.get(key)))
        inputs = node.get('inputs', [])
        if not isinstance(inputs, list):
            raise CheckpointError('node %d (%s): "inputs" must be a list, found %r' % (i, node['name'], inputs))
        if node['op'] == 'null' and inputs:
            raise CheckpointError('node %d (%s): a variable ("op": "null") has no inputs' % (i, node['name']))
        for item in inputs:
            nid, index = _entry(item, 'node %d (%s) input' % (i, node['name']), i, nodes)
            used[nid] = max(used.get(nid, 0), index)
        for item in node.get('control_deps', []) or []:
            if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item < len(nodes):
                raise CheckpointError('node %d (%s): control dependency %r is not a node' % (i, node['name'], item))
    args = graph.get('arg_nodes', [])
    if not isinstance(args, list) or not all(isinstance(a, int) and not isinstance(a, bool)
                                             and 0 <= a < len(nodes) for a in args):
        raise CheckpointError('"arg_nodes" must list node ids 0..%d, found %r' % (len(nodes) - 1, args))
    heads = graph.get('heads')
    if not isinstance(heads, list) or not heads:
        raise CheckpointError('the symbol JSON has no "heads" (its outputs)')
    for item in heads:
        nid, index = _entry(item, 'head %r' % (item,), len(nodes), nodes)
        used[nid] = max(used.get(nid, 0), index)
    for nid, index in sorted(used.items()):
        node = nodes[nid]
        if node['op'] != 'null' and (index == 0 or not count_outputs):
            continue
        attrs = graph.get('attrs')
        version = attrs.get('mxnet_version') if isinstance(attrs, dict) else None
        count = 1 if node['op'] == 'null' else _num_outputs(node, version)
        if index >= count:
            raise CheckpointError('output %d of node %d (%s, op %s) is used, but the node has %d output%s'
                                  % (index, nid, node['name'], node['op'], count, '' if count == 1 else 's'))
    return graph


def upgrade_json(text):
    """Rewrite the operators of the authors' fork in a symbol JSON (text or parsed dict).

    Returns ``(json_text, converted)``: the JSON stock MXNet parses, and the names of the
    nodes whose operator was replaced (empty for the project's own files). The graph is
    checked first (:func:`check_graph`): a :class:`CheckpointError` names what is wrong."""
    graph = json.loads(text) if isinstance(text, (str, bytes)) else text
    check_graph(graph, count_outputs=False)
    converted = []
    for node in graph['nodes']:
        fix = RELEASED_OPS.get(node.get('op'))
        if fix is not None:
            fix(node)
            converted.append(node.get('name'))
    check_graph(graph)                            # the stock operators' outputs
    return json.dumps(graph), converted


def symbol_path(prefix):
    return '%s-symbol.json' % prefix


def params_path(prefix, epoch):
    return '%s-%04d.params' % (prefix, int(epoch))


def synset_path(prefix):
    """``synset.txt`` beside the checkpoint (or export) ``prefix``: its class names."""
    return os.path.join(os.path.dirname(os.path.abspath(prefix)), 'synset.txt')


def load_synset(path, num_classes=None):
    """Class names of a synset file, one per line in class order (ImageNet's ``synset.txt``:
    ``n01440764 tench, Tinca tinca``); blank lines are not allowed in between. With
    ``num_classes`` the count must match. :class:`CheckpointError` names the file otherwise."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError('synset file %s: cannot read it (%s)' % (path, getattr(err, 'strerror', None) or err))
    while lines and not lines[-1].strip():
        lines.pop()
    names = [ln.strip() for ln in lines]
    if not names:
        raise CheckpointError('synset file %s lists no class names' % path)
    if '' in names:
        raise CheckpointError('synset file %s: line %d is blank (one class name per line)' % (path, names.index('') + 1))
    if num_classes is not None and len(names) != int(num_classes):
        raise CheckpointError('synset file %s lists %d class names, the model has %d classes'
                              % (path, len(names), num_classes))
    return names


def class_names(prefix, num_classes, synset=None):
    """The class names of checkpoint ``prefix``: ``synset`` (a file), else ``synset.txt`` beside
    the checkpoint, else ``None``; a file whose count differs from ``num_classes`` is an error."""
    if synset is not None:
        return load_synset(synset, num_classes)
    beside = synset_path(prefix)
    return load_synset(beside, num_classes) if os.path.isfile(beside) else None


def load_symbol(path):
    """Symbol of a ``-symbol.json`` file, the project's or a released (MXNet 0.9, fork) one."""
    if not os.path.isfile(path):
        raise CheckpointError('symbol file not found: %s' % path)
    try:
        with open(path) as f:
            text = f.read()
        fixed, _ = upgrade_json(text)
    except (ValueError, UnicodeDecodeError) as err:
        if isinstance(err, CheckpointError):
            raise CheckpointError('%s: %s' % (path, err))
        raise CheckpointError('%s: not a symbol JSON file (%s)' % (path, error_line(err)))
    try:
        return mx.sym.load_json(fixed)
    except mx.base.MXNetError as err:
        raise CheckpointError('%s: MXNet cannot load the symbol: %s' % (path, error_line(err)))


def load_params(path):
    """``(arg_params, aux_params)`` of a ``.params`` file (``arg:``/``aux:`` keys; files
    without prefixes, as Gluon's ``save_parameters`` writes, are split by name)."""
    if not os.path.isfile(path):
        raise CheckpointError('params file not found: %s' % path)
    try:
        saved = mx.nd.load(path)
    except mx.base.MXNetError as err:
        raise CheckpointError('%s: not an MXNet params file (%s)' % (path, error_line(err)))
    if not isinstance(saved, dict):
        raise CheckpointError('%s: holds a list of arrays, not named parameters' % path)
    arg_params, aux_params = {}, {}
    for key, value in saved.items():
        kind, sep, name = key.partition(':')
        if sep and kind == 'arg':
            arg_params[name] = value
        elif sep and kind == 'aux':
            aux_params[name] = value
        elif not sep:
            aux = key.endswith(('moving_mean', 'moving_var', 'running_mean', 'running_var'))
            (aux_params if aux else arg_params)[key] = value
        else:
            raise CheckpointError('%s: unknown key %r (expected arg:NAME or aux:NAME)' % (path, key))
    return arg_params, aux_params


def save_params(path, arg_params, aux_params):
    """Write ``arg_params``/``aux_params`` as ``mx.model.save_checkpoint`` lays them out
    (``arg:NAME``/``aux:NAME``, arrays copied to the CPU), atomically; returns ``path``."""
    blob = {'arg:%s' % k: v.as_in_context(mx.cpu()) for k, v in arg_params.items()}
    blob.update({'aux:%s' % k: v.as_in_context(mx.cpu()) for k, v in aux_params.items()})
    return atomic_save(path, lambda tmp: mx.nd.save(tmp, blob))


def save_checkpoint(prefix, epoch, sym, arg_params, aux_params):
    """``mx.model.save_checkpoint``, atomic, creating the folder; returns (symbol file, params file)."""
    spath, ppath = symbol_path(prefix), params_path(prefix, epoch)
    atomic_save(spath, lambda tmp: sym.save(tmp))
    save_params(ppath, arg_params, aux_params)
    return spath, ppath


def convert_symbol_json(src, dst):
    """Write the stock-MXNet form of the symbol JSON ``src`` (e.g. a released
    ``-symbol.json``) to ``dst``; returns the names of the converted nodes.

    The written file is read back with plain ``mx.sym.load`` and must give the same
    arguments and auxiliary states, or :class:`CheckpointError` is raised."""
    sym = load_symbol(src)
    with open(src) as f:
        _, converted = upgrade_json(f.read())
    atomic_save(dst, lambda tmp: sym.save(tmp))
    back = mx.sym.load(dst)
    if back.list_arguments() != sym.list_arguments() or \
            back.list_auxiliary_states() != sym.list_auxiliary_states():
        raise CheckpointError('%s: the converted symbol does not read back identically' % dst)
    return converted


# ----------------------------------------------------------------------------- parameter checks
def _is_input(name, data_names=('data',)):
    return name in data_names or name.endswith('_label')


def data_shape_of(sym, default='3,224,224'):
    """(C, H, W) recorded on the ``data`` Variable (``__shape__``), else ``default``."""
    try:
        shape = ast.literal_eval(sym.attr_dict().get('data', {}).get('__shape__', 'None'))
    except (ValueError, SyntaxError):
        shape = None
    if shape and len(shape) == 4 and all(v > 0 for v in shape[1:]):
        return tuple(shape[1:])
    return parse_shape(default)


def _full_shape(data_shape, sym=None):
    if data_shape is None:
        data_shape = data_shape_of(sym) if sym is not None else (3, 224, 224)
    if isinstance(data_shape, str):
        data_shape = parse_shape(data_shape)
    data_shape = tuple(int(v) for v in data_shape)
    return (1,) + data_shape if len(data_shape) == 3 else data_shape


def expected_shapes(sym, data_shape=None, data_names=('data',)):
    """``(arg_shapes, aux_shapes)``: the parameter shapes ``sym`` needs for input ``data_shape``
    ((C, H, W), (N, C, H, W) or 'C,H,W'), inputs (data, labels) left out."""
    shape = _full_shape(data_shape, sym)
    try:
        arg_shapes, _, aux_shapes = sym.infer_shape(**{data_names[0]: shape})
    except mx.base.MXNetError as err:
        raise CheckpointError('cannot infer the parameter shapes of the symbol for input %s: %s'
                              % (shape, error_line(err)))
    if arg_shapes is None:
        raise CheckpointError('cannot infer the parameter shapes of the symbol for input %s' % (shape,))
    args = {n: tuple(s) for n, s in zip(sym.list_arguments(), arg_shapes) if not _is_input(n, data_names)}
    aux = {n: tuple(s) for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    return args, aux


def check_params(sym, arg_params, aux_params, data_shape=None, allow_extra=False, data_names=('data',)):
    """Raise :class:`ParamMismatchError` unless ``arg_params``/``aux_params`` fit ``sym`` exactly.

    The message names the first offending parameter in graph order (arguments, then
    auxiliary states, then unexpected names in sorted order), as ``missing parameter X
    (expected shape S)``, ``parameter X: expected shape S, found T`` or ``unexpected
    parameter Y ...``, followed by how many other problems there are."""
    args, aux = expected_shapes(sym, data_shape, data_names)
    problems = []
    for kind, want, have in (('parameter', args, arg_params), ('auxiliary state', aux, aux_params)):
        for name, shape in want.items():
            if name not in have:
                other = arg_params if have is aux_params else aux_params
                where = ' (present as %s)' % ('an argument' if have is aux_params else 'an auxiliary state') \
                    if name in other else ''
                problems.append('missing %s %s (expected shape %s)%s' % (kind, name, shape, where))
            elif tuple(have[name].shape) != shape:
                problems.append('%s %s: expected shape %s, found %s' % (kind, name, shape, tuple(have[name].shape)))
    if not allow_extra:
        for kind, want, have in (('parameter', args, arg_params), ('auxiliary state', aux, aux_params)):
            for name in sorted(set(have) - set(want)):
                if _is_input(name, data_names) or (name in args or name in aux):
                    continue
                problems.append('unexpected %s %s (shape %s): the symbol does not use it'
                                % (kind, name, tuple(have[name].shape)))
    if problems:
        n = len(problems) - 1
        more = ' (and %d more mismatched parameter%s)' % (n, 's' if n > 1 else '') if n else ''
        raise ParamMismatchError(problems[0] + more)


def num_classes_of(arg_params, default=None):
    """Class count read off the classifier weights ``fc6_weight`` (or the last 2-D weight)."""
    if 'fc6_weight' in arg_params:
        return int(arg_params['fc6_weight'].shape[0])
    fcs = [v for k, v in arg_params.items() if k.endswith('_weight') and len(v.shape) == 2]
    return int(fcs[-1].shape[0]) if fcs else default


def load_checkpoint(prefix, epoch, network=None, image_shape=None, check=True, allow_extra=False,
                    **symbol_kwargs):
    """``(symbol, arg_params, aux_params)`` of ``PREFIX-symbol.json`` + ``PREFIX-%04d.params``.

    Works like ``mx.model.load_checkpoint`` for the project's checkpoints and for the released
    CRU-Net files (``ChannelwiseConvolution`` becomes a depthwise ``Convolution``). With
    ``network`` (and e.g. ``num_layers=56``) the params are bound to
    ``symbols.get_symbol(network, ...)`` instead of the file's symbol (whose file then need
    not exist); ``num_classes`` defaults to the one of the params. With ``check`` the params
    must fit the symbol for input ``image_shape`` (default: the data shape recorded in the
    symbol, else 3,224,224), else :class:`ParamMismatchError` names the first bad parameter.
    """
    arg_params, aux_params = load_params(params_path(prefix, epoch))
    if network is not None:
        from . import get_symbol
        kwargs = dict(symbol_kwargs)
        if kwargs.get('num_classes') is None:
            kwargs['num_classes'] = num_classes_of(arg_params, 1000)
        if image_shape is not None:
            kwargs.setdefault('image_shape', image_shape if isinstance(image_shape, str)
                              else ','.join(map(str, image_shape)))
        sym = get_symbol(network, **kwargs)
    else:
        if symbol_kwargs:
            raise TypeError('symbol arguments %s need network=...' % ', '.join(sorted(symbol_kwargs)))
        sym = load_symbol(symbol_path(prefix))
    if check:
        check_params(sym, arg_params, aux_params, image_shape, allow_extra=allow_extra)
    return sym, arg_params, aux_params


# ----------------------------------------------------------------------------- graph surgery
def _graph(sym):
    return json.loads(sym.tojson())


def head_op(sym):
    """Operator name of the (single) output node of ``sym``."""
    g = _graph(sym)
    return g['nodes'][g['heads'][0][0]]['op']


def logits_symbol(sym):
    """The class scores: ``sym`` without its ``SoftmaxOutput``/``softmax`` head (unchanged
    when the head is something else)."""
    if len(sym.list_outputs()) != 1:
        raise CheckpointError('expected a single-output symbol, got outputs %s' % sym.list_outputs())
    if head_op(sym) in ('SoftmaxOutput', 'softmax', 'SoftmaxActivation', 'Softmax'):
        return sym.get_children()[0]
    return sym


def inference_symbol(sym, softmax=True):
    """Graph for deployment: ``softmax(logits)`` named ``softmax`` (no label input), or the
    logits with ``softmax=False``."""
    logits = logits_symbol(sym)
    return mx.sym.softmax(logits, axis=-1, name='softmax') if softmax else logits


def deploy_symbol(sym, output='softmax', pooling='avg'):
    """The inference graph of a training or checkpoint symbol: no label input, output ``softmax``
    (a softmax named ``softmax``) or ``logits`` (fc6); ``pooling`` ``'mean-max'`` swaps the final
    average pooling for mean-max pooling (inputs larger than the training crop). Scoring,
    classification and every export use it."""
    if output not in ('softmax', 'logits'):
        raise ValueError("output must be 'softmax' or 'logits', got %r" % (output,))
    if pooling not in ('avg', 'mean-max'):
        raise ValueError("pooling must be 'avg' or 'mean-max', got %r" % (pooling,))
    if pooling == 'mean-max':
        sym = mean_max_symbol(sym)
    return inference_symbol(sym, softmax=output == 'softmax')


def _last_avg_pool(graph, pool_name):
    names = [n['name'] for n in graph['nodes']]
    if pool_name in names:
        return names.index(pool_name)
    pools = [i for i, n in enumerate(graph['nodes']) if n['op'] == 'Pooling' and
             n.get('attrs', {}).get('pool_type', 'max') == 'avg']
    if not pools:
        raise CheckpointError('no average pooling %r in the symbol to turn into mean-max pooling' % pool_name)
    return pools[-1]


def mean_max_symbol(sym, pool_name='pool5'):
    """``sym`` with its final average pooling replaced by mean-max pooling:
    ``0.5 * (global average + global max)`` of the last feature map, followed by the same
    layers (flatten, fc6, ...) with the same weights. For inputs larger than the training crop."""
    graph = _graph(sym)
    idx = _last_avg_pool(graph, pool_name)
    pool = graph['nodes'][idx]
    name = pool['name']
    feature = sym.get_internals()['%s_output' % name].get_children()[0]
    avg = mx.sym.Pooling(feature, global_pool=True, kernel=(1, 1), pool_type='avg', name='%s_avg' % name)
    top = mx.sym.Pooling(feature, global_pool=True, kernel=(1, 1), pool_type='max', name='%s_max' % name)
    mean_max = mx.sym._internal._mul_scalar(mx.sym.elemwise_add(avg, top, name='%s_sum' % name),
                                           scalar=0.5, name=name)
    # the pooling node becomes a Variable of the same name; composing substitutes mean_max for it
    placeholder = '__%s_input__' % name
    graph['nodes'][idx] = {'op': 'null', 'name': placeholder, 'inputs': []}
    graph['arg_nodes'] = sorted(set(graph['arg_nodes']) | {idx})
    graph.pop('node_row_ptr', None)
    head = mx.sym.load_json(json.dumps(graph))
    head._compose(**{placeholder: mean_max})
    return head

