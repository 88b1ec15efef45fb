"""Training-recipe options of MXNet's and GluonCV's ``train_imagenet.py`` on the Module trainer.

* :func:`make_initializer` -- ``--initializer`` (MXNet's example names: xavier, msra, normal, uniform);
* :func:`no_wd_names` / :func:`without_weight_decay` -- ``--no-wd``: no weight decay on the
  BatchNorm ``gamma``/``beta`` and on the biases, as ``__wd_mult__ = 0`` attributes on those
  Variables of the *training* graph only (the optimizer reads them from the graph it is given;
  the graph saved as ``PREFIX-symbol.json`` is built apart and never carries them). Without the
  flag MXNet's own rule applies: no decay on parameters whose names end in neither ``_weight``
  nor ``_gamma`` (biases, betas), decay on everything else, BatchNorm ``gamma`` included;
* :func:`smooth_targets` / :func:`mixup_targets` / :class:`Recipe` -- ``--label-smoothing EPS``
  and ``--mixup ALPHA`` / ``--mixup-off-epochs N`` with GluonCV's semantics: the target of an
  image of class y is ``1 - EPS + EPS/K`` on y and ``EPS/K`` on each of the K classes otherwise;
  mixup draws one ``lam ~ Beta(ALPHA, ALPHA)`` per batch, trains on ``lam * x + (1 - lam) *
  x[::-1]`` against ``lam * t(y) + (1 - lam) * t(y[::-1])``, where, as in GluonCV, each
  device's slice of the batch is mixed with itself reversed, and uses ``lam = 1`` during the
  last N epochs.

Soft targets reach the loss as a dense ``(batch, K)`` ``softmax_label``: MXNet's
``SoftmaxOutput`` takes a probability label when the label has the shape of its input, and its
gradient is then ``softmax - target``, the gradient of ``-sum(target * log softmax)``. The model
is bound with that label shape for training; validation forwards without labels. The training
metrics (accuracy, top-k, cross-entropy in the log, ``PREFIX-metrics.jsonl`` and TensorBoard)
still compare each prediction with the image's own hard label (under mixup: the image weighted
``lam``); :func:`soft_cross_entropy` is the loss the update actually follows.

The mixing coefficient of batch B of epoch E comes from a generator seeded with ``(seed, E, B)``,
so a resumed run mixes exactly as an uninterrupted one.
"""
import json

import mxnet as mx
import numpy as np

__all__ = ['INITIALIZERS', 'make_initializer', 'no_wd_names', 'without_weight_decay', 'smooth_targets',
           'mixup_targets', 'soft_cross_entropy', 'Recipe']

#: ``--initializer`` choices (the names of MXNet's example/image-classification)
INITIALIZERS = ('xavier', 'msra', 'normal', 'uniform')

#: operators whose inputs 1, 2 are (gamma, beta), and those whose input 2 is a bias
_NORM_OPS = ('BatchNorm', 'BatchNorm_v1', 'SyncBatchNorm', '_contrib_SyncBatchNorm', 'InstanceNorm', 'LayerNorm',
             'GroupNorm')
_BIAS_OPS = ('Convolution', 'Convolution_v1', 'FullyConnected', 'Deconvolution')
_PASS_OPS = ('Cast', 'amp_cast')


def make_initializer(name):
    """The initializer of ``--initializer``: ``xavier`` (gaussian, fan-in, magnitude 2: the
    trainer's, and MXNet's example's default for ResNets), ``msra`` (``MSRAPrelu``), ``normal``
    (sigma 0.01), ``uniform`` (scale 0.07), as MXNet's example builds them."""
    if name == 'xavier':
        return mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2)
    if name == 'msra':
        return mx.init.MSRAPrelu()
    if name == 'normal':
        return mx.init.Normal()
    if name == 'uniform':
        return mx.init.Uniform()
    raise ValueError('unknown initializer %r; valid: %s' % (name, ', '.join(INITIALIZERS)))


def _variable_behind(nodes, entry):
    """The index of the Variable node feeding ``entry`` (through Cast nodes), or None."""
    i = entry[0]
    while nodes[i]['op'] in _PASS_OPS:
        i = nodes[i]['inputs'][0][0]
    return i if nodes[i]['op'] == 'null' else None


def _no_wd_nodes(graph):
    nodes = graph['nodes']
    found = set()
    for node in nodes:
        inputs = node.get('inputs', [])
        if node['op'] in _NORM_OPS:
            picks = inputs[1:3]
        elif node['op'] in _BIAS_OPS and len(inputs) > 2:
            picks = inputs[2:3]
        else:
            continue
        for entry in picks:
            v = _variable_behind(nodes, entry)
            if v is not None:
                found.add(v)
    return found


def no_wd_names(sym):
    """Names of the parameters ``--no-wd`` exempts from weight decay: the gamma and beta of
    every normalisation layer and the bias of every convolution and fully connected layer
    (found by the operator they feed, whatever their names)."""
    graph = json.loads(sym.tojson())
    return sorted(graph['nodes'][i]['name'] for i in _no_wd_nodes(graph))


def without_weight_decay(sym):
    """A copy of ``sym`` whose BatchNorm gamma/beta and bias Variables carry ``__wd_mult__ = 0``
    (read by ``mx.optimizer.Optimizer`` from the graph ``Module.init_optimizer`` passes it).
    For the training graph only; ``sym`` itself is unchanged."""
    graph = json.loads(sym.tojson())
    for i in _no_wd_nodes(graph):
        node = graph['nodes'][i]
        attrs = dict(node.get('attrs') or {})
        attrs['__wd_mult__'] = '0'
        node['attrs'] = attrs
    return mx.sym.load_json(json.dumps(graph))


def _targets(labels, num_classes, eps):
    labels = np.asarray(labels).astype(np.int64).ravel()
    out = np.full((labels.size, num_classes), eps / num_classes, dtype=np.float32)
    out[np.arange(labels.size), labels] = 1.0 - eps + eps / num_classes
    return out


def smooth_targets(labels, num_classes, eps):
    """GluonCV's label smoothing of hard ``labels``: ``(batch, K)`` targets, ``1 - eps + eps/K``
    on the label's class, ``eps/K`` elsewhere (``eps = 0``: one-hot)."""
    return _targets(labels, num_classes, eps)


def _reversed(labels, num_devices):
    """``labels`` with each device's (contiguous, equal) slice reversed."""
    return labels.reshape(num_devices, -1)[:, ::-1].ravel()


def mixup_targets(labels, num_classes, lam, eps=0.0, num_devices=1):
    """GluonCV's mixup targets: ``lam * t(y) + (1 - lam) * t(y[::-1])`` with ``t`` the
    (``eps``-smoothed) one-hot targets and ``y[::-1]`` each device's slice of the labels reversed."""
    labels = np.asarray(labels).ravel()
    return (lam * _targets(labels, num_classes, eps) +
            (1.0 - lam) * _targets(_reversed(labels, num_devices), num_classes, eps)).astype(np.float32)


def soft_cross_entropy(probs, targets):
    """Mean over the batch of ``-sum_k targets[k] * log(probs[k])``: the loss whose gradient
    ``SoftmaxOutput`` gives with a dense label (numpy arrays ``(batch, K)``)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    return float(-(targets * np.log(np.maximum(probs, 1e-30))).sum(axis=1).mean())


class Recipe(object):
    """``--label-smoothing``/``--mixup``: what the module is bound with and what each training
    batch becomes. ``active`` is False for the paper's recipe (hard labels, no mixing), and then
    nothing changes: the trainer binds and feeds the iterator's batches as they are."""

    def __init__(self, num_classes, label_smoothing=0.0, mixup=0.0, mixup_off_epochs=0, num_epochs=1, seed=0,
                 num_devices=1):
        self.num_classes = int(num_classes)
        self.num_devices = int(num_devices)
        self.eps = float(label_smoothing or 0.0)
        self.alpha = float(mixup or 0.0)
        self.off_epochs = int(mixup_off_epochs or 0)
        self.num_epochs = int(num_epochs)
        self.seed = int(seed or 0)
        self.active = self.eps > 0 or self.alpha > 0

    @classmethod
    def from_args(cls, args, num_devices):
        return cls(args.num_classes, args.label_smoothing, args.mixup, args.mixup_off_epochs, args.num_epochs,
                   args.seed, num_devices)

    def describe(self):
        parts = []
        if self.eps > 0:
            parts.append('label smoothing %g (targets %g / %g)' % (
                self.eps, 1 - self.eps + self.eps / self.num_classes, self.eps / self.num_classes))
        if self.alpha > 0:
            parts.append('mixup alpha %g%s' % (self.alpha, ', off for the last %d epoch(s)' % self.off_epochs
                                               if self.off_epochs else ''))
        return '; '.join(parts) or 'hard labels'

    def provide(self, provide):
        """``(data descs, label descs)`` to bind the training module with: the label becomes
        ``(batch, K)`` when soft targets are used."""
        data, label = provide
        if not self.active:
            return data, label
        d = label[0]
        dtype = getattr(d, 'dtype', np.float32)
        return data, [mx.io.DataDesc(d.name, (d.shape[0], self.num_classes), dtype)] + list(label[1:])

    def lam(self, epoch, nbatch):
        """Mixup coefficient of batch ``nbatch`` (0-based) of ``epoch``: ``Beta(alpha, alpha)``
        from a generator seeded with (seed, epoch, batch); 1 without mixup and in the last
        ``--mixup-off-epochs`` epochs."""
        if self.alpha <= 0 or epoch >= self.num_epochs - self.off_epochs:
            return 1.0
        return float(np.random.RandomState([self.seed, int(epoch), int(nbatch)]).beta(self.alpha, self.alpha))

    def feed(self, batch, epoch, nbatch):
        """The batch the module trains on: ``batch`` itself for hard labels, else the mixed
        images and the ``(batch, K)`` soft targets."""
        if not self.active:
            return batch
        lam = self.lam(epoch, nbatch)
        label = batch.label[0]
        data = list(batch.data)
        if lam < 1.0:
            x = data[0]
            n = self.num_devices
            flipped = mx.nd.reverse(x.reshape((n, -1) + x.shape[1:]), axis=1).reshape(x.shape)
            data[0] = x * lam + flipped * (1.0 - lam)
            targets = mixup_targets(label.asnumpy(), self.num_classes, lam, self.eps, n)
        else:
            targets = smooth_targets(label.asnumpy(), self.num_classes, self.eps)
        soft = mx.nd.array(targets, ctx=label.context, dtype=label.dtype)
        return mx.io.DataBatch(data=data, label=[soft] + list(batch.label[1:]), pad=batch.pad, index=batch.index)
