"""The training-recipe flags (label smoothing, mixup, --no-wd, --initializer), MXNet's meaning of
--batch-size, and what a run shows the person watching it (TensorBoard events, curves after
every epoch, --keep-last, PREFIX-best.params), with exact resume after pruning."""
import json
import os
import struct
import subprocess

import mxnet as mx
import numpy as np
import pytest

from crunet.train import recipe
from crunet.train.state import list_checkpoints
from train_helpers import PYTHON, ROOT, TRAIN, env, load_params, max_param_diff, run_train, tiny_args, tiny_data

K = 5


def _softmax_module(batch, rec):
    """``data`` (logits) -> SoftmaxOutput, bound the way the trainer binds it for ``rec``."""
    sym = mx.sym.SoftmaxOutput(mx.sym.Variable('data'), name='softmax')
    provide = ([mx.io.DataDesc('data', (batch, K))], [mx.io.DataDesc('softmax_label', (batch,))])
    mod = mx.mod.Module(sym, data_names=['data'], label_names=['softmax_label'], context=mx.cpu())
    mod.bind(*rec.provide(provide), inputs_need_grad=True)
    mod.init_params()
    return mod


def _logit_grad(mod, fed):
    mod.forward_backward(fed)
    return mod.get_outputs()[0].asnumpy(), mod.get_input_grads()[0].asnumpy()


def test_label_smoothing_targets_are_gluoncvs():
    t = recipe.smooth_targets([0, 3], K, 0.1)
    assert t.shape == (2, K)
    np.testing.assert_allclose(t[0], [1 - 0.1 + 0.1 / K] + [0.1 / K] * 4, rtol=1e-6)
    np.testing.assert_allclose(t[1, 3], 0.92, rtol=1e-6)
    np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(recipe.smooth_targets([2], K, 0.0)[0], np.eye(K)[2])


def test_label_smoothing_changes_the_loss_and_its_gradient_by_the_expected_amount():
    rng = np.random.RandomState(0)
    logits = rng.randn(4, K).astype(np.float32)
    labels = np.array([0, 1, 4, 2], dtype=np.float32)
    batch = mx.io.DataBatch([mx.nd.array(logits)], [mx.nd.array(labels)], pad=0)
    eps = 0.2
    hard_rec = recipe.Recipe(K)
    smooth_rec = recipe.Recipe(K, label_smoothing=eps)
    assert not hard_rec.active and hard_rec.feed(batch, 0, 0) is batch
    probs, g_hard = _logit_grad(_softmax_module(4, hard_rec), batch)
    probs_s, g_smooth = _logit_grad(_softmax_module(4, smooth_rec), smooth_rec.feed(batch, 0, 0))
    np.testing.assert_allclose(probs, probs_s, rtol=1e-6)
    onehot = np.eye(K)[labels.astype(int)]
    # the graph follows -sum(q log p): gradient p - q, i.e. the hard one moved by eps * (onehot - 1/K)
    np.testing.assert_allclose(g_hard, probs - onehot, atol=1e-6)
    np.testing.assert_allclose(g_smooth - g_hard, eps * (onehot - 1.0 / K), atol=1e-6)
    # and the loss moves by eps * (mean over classes of -log p - (-log p_label))
    logp = np.log(probs.astype(np.float64))
    hard_loss = recipe.soft_cross_entropy(probs, onehot)
    smooth_loss = recipe.soft_cross_entropy(probs, recipe.smooth_targets(labels, K, eps))
    expected = eps * float((-logp.mean(axis=1) + logp[np.arange(4), labels.astype(int)]).mean())
    assert abs((smooth_loss - hard_loss) - expected) < 1e-5
    assert smooth_loss > hard_loss        # these logits are far from uniform


def test_mixup_mixes_images_and_labels_with_the_reversed_batch():
    rng = np.random.RandomState(1)
    x = rng.rand(6, 3, 4, 4).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 0], dtype=np.float32)
    batch = mx.io.DataBatch([mx.nd.array(x)], [mx.nd.array(y)], pad=0)
    rec = recipe.Recipe(K, mixup=0.4, mixup_off_epochs=1, num_epochs=3, seed=7)
    lam = rec.lam(1, 2)
    assert 0.0 < lam < 1.0 and lam == rec.lam(1, 2)            # drawn from (seed, epoch, batch): resumable
    assert rec.lam(1, 3) != lam and recipe.Recipe(K, mixup=0.4, seed=8).lam(1, 2) != lam
    fed = rec.feed(batch, 1, 2)
    np.testing.assert_allclose(fed.data[0].asnumpy(), lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
    eye = np.eye(K)
    want = lam * eye[y.astype(int)] + (1 - lam) * eye[y[::-1].astype(int)]
    np.testing.assert_allclose(fed.label[0].asnumpy(), want, rtol=1e-5, atol=1e-6)
    # with label smoothing the mixed targets are mixtures of the smoothed ones
    both = recipe.Recipe(K, label_smoothing=0.1, mixup=0.4, num_epochs=3, seed=7)
    s = recipe.smooth_targets(y, K, 0.1)
    np.testing.assert_allclose(both.feed(batch, 1, 2).label[0].asnumpy(), lam * s + (1 - lam) * s[::-1],
                               rtol=1e-5, atol=1e-6)
    # over 2 devices each device's half is mixed with itself reversed, as GluonCV does
    two = recipe.Recipe(K, mixup=0.4, num_epochs=3, seed=7, num_devices=2)
    flip = np.concatenate([x[2::-1], x[:2:-1]])
    yflip = np.concatenate([y[2::-1], y[:2:-1]]).astype(int)
    fed2 = two.feed(batch, 1, 2)
    np.testing.assert_allclose(fed2.data[0].asnumpy(), lam * x + (1 - lam) * flip, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fed2.label[0].asnumpy(), lam * eye[y.astype(int)] + (1 - lam) * eye[yflip],
                               rtol=1e-5, atol=1e-6)
    # the last --mixup-off-epochs epochs: no mixing, one-hot targets
    assert rec.lam(2, 2) == 1.0
    off = rec.feed(batch, 2, 2)
    np.testing.assert_array_equal(off.data[0].asnumpy(), x)
    np.testing.assert_array_equal(off.label[0].asnumpy(), eye[y.astype(int)])


def _decay_net():
    data = mx.sym.Variable('data')
    net = mx.sym.Convolution(data, num_filter=2, kernel=(1, 1), name='conv')          # weight + bias
    net = mx.sym.BatchNorm(net, fix_gamma=False, name='bn')                            # gamma + beta
    net = mx.sym.FullyConnected(mx.sym.flatten(net), num_hidden=3, name='fc')         # weight + bias
    return mx.sym.MakeLoss(0 * mx.sym.sum(net), name='zero')          # every gradient is exactly zero


def _decayed(sym, steps=3, lr=0.5, wd=0.2):
    """Parameters (all ones at the start) after ``steps`` SGD steps with zero gradients."""
    mod = mx.mod.Module(sym, data_names=['data'], label_names=None, context=mx.cpu())
    mod.bind([('data', (2, 1, 2, 2))])
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(2, 1, 2, 2))
    names = [n for n in sym.list_arguments() if n != 'data']
    shapes = dict(zip(sym.list_arguments(), arg_shapes))
    mod.init_params(arg_params={n: mx.nd.ones(shapes[n]) for n in names}, allow_missing=True)
    mod.init_optimizer(optimizer='sgd', optimizer_params={'learning_rate': lr, 'wd': wd, 'momentum': 0.0})
    batch = mx.io.DataBatch([mx.nd.ones((2, 1, 2, 2))], None)
    for _ in range(steps):
        mod.forward_backward(batch)
        mod.update()
    return {k: float(v.asnumpy().mean()) for k, v in mod.get_params()[0].items()}


def test_no_wd_leaves_batchnorm_and_biases_undecayed_and_the_weights_decayed():
    plain = _decay_net()
    no_wd = recipe.without_weight_decay(plain)
    assert recipe.no_wd_names(plain) == ['bn_beta', 'bn_gamma', 'conv_bias', 'fc_bias']
    assert all('__wd_mult__' not in a for a in plain.attr_dict().values())   # the original graph is untouched
    shrink = (1 - 0.5 * 0.2) ** 3
    with_wd, without = _decayed(plain), _decayed(no_wd)
    for name in ('conv_weight', 'fc_weight'):
        assert abs(with_wd[name] - shrink) < 1e-6 and abs(without[name] - shrink) < 1e-6
    assert abs(with_wd['bn_gamma'] - shrink) < 1e-6          # MXNet decays gamma unless told otherwise
    for name in ('bn_gamma', 'bn_beta', 'conv_bias', 'fc_bias'):
        assert without[name] == 1.0, name


def test_no_wd_finds_every_batchnorm_and_the_classifier_bias_of_crunet():
    import symbols
    sym = symbols.get_symbol('crunet', num_layers=22, setting='cifar', num_classes=4, image_shape='3,32,32')
    names = recipe.no_wd_names(sym)
    params = [n for n in sym.list_arguments() if n not in ('data', 'softmax_label')]
    assert 'fc6_bias' in names and not any(n.endswith('_weight') for n in names)
    assert sorted(n for n in params if n.endswith(('_gamma', '_beta', '_bias'))) == names


def test_initializer_names_follow_mxnets_example():
    x = recipe.make_initializer('xavier')
    assert isinstance(x, mx.init.Xavier) and (x.rnd_type, x.factor_type, x.magnitude) == ('gaussian', 'in', 2)
    assert isinstance(recipe.make_initializer('msra'), mx.init.MSRAPrelu)
    assert isinstance(recipe.make_initializer('normal'), mx.init.Normal)
    assert isinstance(recipe.make_initializer('uniform'), mx.init.Uniform)


def test_keep_last_keeps_the_newest_epochs_and_the_best_one(tmp_path):
    """A watched run's files after each epoch: the best (epoch 1 here) outlives --keep-last 2."""
    import argparse
    from crunet.train import report
    prefix = str(tmp_path / 'm')
    watch = report.Watch(argparse.Namespace(model_prefix=prefix, plot=0, keep_last=2, tensorboard=None), True, 0)
    rows = []
    for epoch, top1 in enumerate([0.9, 0.5, 0.6, 0.7, 0.95]):
        mx.nd.save('%s-%04d.params' % (prefix, epoch + 1), {'arg:w': mx.nd.full((2,), epoch + 1)})
        with open('%s-%04d.states' % (prefix, epoch + 1), 'w') as f:
            f.write('states of %d' % (epoch + 1))
        rows.append(dict(epoch=epoch, checkpoint=epoch + 1, val_top1=top1, train_top1=0.0))
        watch.end_epoch(rows, 4, saved=True)
        if epoch == 3:
            assert sorted(list_checkpoints(prefix)) == [1, 3, 4]            # two newest + the best (1)
            assert open(prefix + '-best.states').read() == 'states of 1'
    assert sorted(list_checkpoints(prefix)) == [4, 5]                       # the best is now the newest
    assert not os.path.exists('%s-0003.states' % prefix) and not os.path.exists('%s-0001.states' % prefix)
    assert mx.nd.load(prefix + '-best.params')['arg:w'].asnumpy().tolist() == [5.0, 5.0]
    assert open(prefix + '-best.states').read() == 'states of 5'
    # without validation the training top-1 ranks the epochs
    assert report.monitored(dict(val_top1=None, train_top1=0.3)) == 0.3


def test_index_flags_point_the_iterators_at_an_idx_elsewhere(tmp_path):
    from crunet.data import checks as dchecks, flags as dflags, iterators as cd
    from crunet.train.fit import count_records
    from train_helpers import make_rec
    rec = make_rec(str(tmp_path / 'd'), 'train', 12, num_classes=3)
    moved = str(tmp_path / 'elsewhere.idx')
    os.rename(rec[:-4] + '.idx', moved)
    assert count_records(rec) is None and count_records(rec, moved) == 12
    a = dflags.data_args(data_train=rec, data_train_idx=moved, data_val=rec, data_val_idx=moved, batch_size=4,
                     image_shape='3,32,32', resize_val=32, data_nthreads=1, seed=0, num_classes=3, aug_off=1)
    train, val = cd.get_rec_iter(a)
    assert sum(b.data[0].shape[0] - b.pad for b in val) == 12
    assert len(list(train)) == 3
    with pytest.raises(dchecks.DataError, match='idx'):
        cd.get_rec_iter(dflags.data_args(data_train=rec, batch_size=4, image_shape='3,32,32', data_nthreads=1))


# ----------------------------------------------------------------------------- end to end
def read_events(logdir):
    """{tag: [(step, value)]} from the TensorBoard event files in ``logdir`` (TFRecord framing:
    uint64 length, uint32 crc, Event protobuf, uint32 crc)."""
    from tensorboardX.proto import event_pb2
    out = {}
    for name in sorted(os.listdir(logdir)):
        if 'tfevents' not in name:
            continue
        with open(os.path.join(logdir, name), 'rb') as f:
            blob = f.read()
        pos = 0
        while pos < len(blob):
            (length,) = struct.unpack('<Q', blob[pos:pos + 8])
            event = event_pb2.Event.FromString(blob[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp('recipe'), num_train=64, num_val=16)


def _flags(data, prefix, epochs, extra):
    args = tiny_args(data, prefix, epochs=epochs, batch=16,
                     extra=['--cpus', '2', '--label-smoothing', '0.1', '--mixup', '0.4', '--no-wd'] + extra)
    args[args.index('--plot') + 1] = '1'
    return args


def test_batch_size_that_does_not_split_over_the_devices_is_refused(data, tmp_path):
    proc = run_train(tiny_args(data, tmp_path / 'm', batch=15, extra=['--cpus', '2']))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        'error: --batch-size 15 does not split evenly over 2 devices (--cpus 2): give a multiple of 2']


def test_watched_run_keeps_two_epochs_and_the_best_and_resumes_exactly(data, tmp_path):
    straight, resumed, board = tmp_path / 'straight', tmp_path / 'resumed', tmp_path / 'tb'
    proc = run_train(_flags(data, straight, 3, ['--keep-last', '2', '--tensorboard', str(board)]), check=True)
    # --batch-size 16 over 2 CPU contexts: 8 per device, global batch 16
    assert 'cpu(0),cpu(1): --batch-size 16 per machine = 2 device(s) x 8 images per device, 1 worker(s), ' \
           'global batch 16' in proc.stderr
    assert 'Training recipe: label smoothing 0.1' in proc.stderr and '--no-wd: no weight decay on' in proc.stderr
    # TensorBoard: 4 batches per epoch, --disp-batches 2, 3 epochs; no top-5 with 4 classes
    events = read_events(str(board))
    batch_steps = [2, 4, 6, 8, 10, 12]
    assert sorted(events) == ['train/images_per_sec', 'train/loss', 'train/lr', 'train/top1', 'val/loss',
                              'val/top1']
    for tag in ('train/images_per_sec', 'train/loss', 'train/lr', 'train/top1'):
        assert [s for s, _ in events[tag]] == batch_steps, tag
    assert [v for _, v in events['train/lr']] == pytest.approx([0.05] * 6)
    rows = [json.loads(line) for line in open(str(straight) + '-metrics.jsonl')]
    assert events['val/top1'] == [(4 * (r['epoch'] + 1), pytest.approx(r['val_top1'])) for r in rows]
    # --keep-last 2: epochs 3 and 2, plus the best one; PREFIX-best.* are its copies
    scores = [r['val_top1'] for r in rows]
    best = scores.index(max(scores)) + 1
    assert sorted(list_checkpoints(str(straight))) == sorted({2, 3, best})
    assert open(str(straight) + '-best.params', 'rb').read() == open('%s-%04d.params' % (straight, best), 'rb').read()
    assert open(str(straight) + '-best.states', 'rb').read() == open('%s-%04d.states' % (straight, best), 'rb').read()
    assert '__wd_mult__' not in open(str(straight) + '-symbol.json').read()   # --no-wd: training graph only

    # the same run in two parts, with --keep-last 1 deleting epoch 1 in between; the curves are
    # on disk as soon as epoch 0 ends
    first = subprocess.Popen([PYTHON, TRAIN] + _flags(data, resumed, 3, ['--keep-last', '1', '--num-epochs', '2']),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
    curves_after_epoch_0 = None
    for line in first.stderr:
        if curves_after_epoch_0 is None and 'Epoch[1] Batch' in line:
            curves_after_epoch_0 = os.path.exists(str(resumed) + '-curves.png')
    assert first.wait(timeout=240) == 0
    assert curves_after_epoch_0 is True
    rows = [json.loads(line) for line in open(str(resumed) + '-metrics.jsonl')]
    kept = {2} | ({1} if rows[0]['val_top1'] >= rows[1]['val_top1'] else set())
    assert sorted(list_checkpoints(str(resumed))) == sorted(kept)
    proc = run_train(_flags(data, resumed, 3, ['--keep-last', '1', '--resume']), check=True)
    assert 'latest complete checkpoint is %s-0002.params' % resumed in proc.stderr
    assert max_param_diff(load_params(straight, 3), load_params(resumed, 3)) == 0.0      # bit for bit
