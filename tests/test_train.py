"""train_imagenet.py / crunet.train.fit: real training of a tiny CRU-Net on generated RecordIO files.

The loss goes down on one CPU context and on two with kvstore device; the log
forms, the metrics file and curves, fine-tuning, the NaN guard, --benchmark and --test-io, and
the learning-rate policies (pure functions, no training).
"""
import json
import math
import os
import re

import mxnet as mx
import pytest

from crunet.train.schedule import LRSchedule
from train_helpers import load_params, run_train, tiny_args, tiny_data


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp('train'))


def _metrics(prefix):
    with open(str(prefix) + '-metrics.jsonl') as f:
        return [json.loads(line) for line in f]


def test_one_cpu_loss_goes_down(data, tmp_path):
    prefix = tmp_path / 'm'
    proc = run_train(tiny_args(data, prefix, epochs=3, extra=['--plot', '1']), check=True)
    log = proc.stderr
    rows = _metrics(prefix)
    assert [r['epoch'] for r in rows] == [0, 1, 2]
    assert rows[-1]['train_loss'] < rows[0]['train_loss'] * 0.8, rows
    # MXNet's log forms, which log tooling parses
    assert re.search(r'Epoch\[0\] Batch \[2\]\tSpeed: [\d.]+ samples/sec\taccuracy=[\d.]+', log)
    assert re.search(r'Epoch\[2\] Train-accuracy=[\d.]+', log)
    assert re.search(r'Epoch\[2\] Validation-accuracy=[\d.]+', log)
    assert re.search(r'Epoch\[2\] Time cost=[\d.]+', log)
    assert 'global batch 8' in log and 'ETA' in log
    for key in ('train_top1', 'train_loss', 'val_top1', 'val_loss', 'lr', 'seconds', 'images_per_sec'):
        assert rows[-1][key] is not None, key
    # checkpoints of every epoch, loadable by stock MXNet
    for epoch in (1, 2, 3):
        sym, arg, aux = mx.model.load_checkpoint(str(prefix), epoch)
        assert 'fc6_weight' in arg and arg['fc6_weight'].shape == (4, 256)
        assert os.path.exists('%s-%04d.states' % (prefix, epoch))
    assert os.path.getsize(str(prefix) + '-curves.png') > 1000
    with open(str(prefix) + '-args.json') as f:
        assert json.load(f)['network'] == 'crunet'
    assert 'Validation-accuracy' in open(str(prefix) + '.log').read()


def test_two_cpu_contexts_device_kvstore(data, tmp_path):
    prefix = tmp_path / 'm'
    # --batch-size is per machine (MXNet's meaning): 8 split over 2 CPU contexts = 4 per device
    proc = run_train(tiny_args(data, prefix, epochs=3, batch=8, extra=['--cpus', '2', '--kv-store', 'device']),
                     check=True)
    assert 'cpu(0),cpu(1): --batch-size 8 per machine = 2 device(s) x 4 images per device' in proc.stderr
    assert 'global batch 8' in proc.stderr and 'kvstore device' in proc.stderr
    rows = _metrics(prefix)
    assert rows[-1]['train_loss'] < rows[0]['train_loss'] * 0.8, rows


def test_finetune_replaces_fc6_only(data, tmp_path):
    src = tmp_path / 'src'
    run_train(tiny_args(data, src, epochs=1), check=True)
    dst = tmp_path / 'dst'
    args = tiny_args(data, dst, epochs=1, extra=['--finetune-from', str(src), '--finetune-epoch', '1',
                                                 '--lr', '0'])
    args[args.index('--num-classes') + 1] = '6'
    proc = run_train(args, check=True)
    assert 'fc6_weight, fc6_bias (6 classes)' in proc.stderr
    a, b = load_params(src, 1), load_params(dst, 1)
    assert b['arg:fc6_weight'].shape == (6, 256) and a['arg:fc6_weight'].shape == (4, 256)
    # with lr 0 every other weight is the source's (BatchNorm statistics still move)
    for k in a:
        if k.startswith('arg:') and not k.startswith('arg:fc6'):
            assert abs(a[k] - b[k]).max() == 0, k


def test_nan_loss_stops_with_last_good_checkpoint(data, tmp_path):
    prefix = tmp_path / 'm'
    # epoch 0 trains normally, then the rate jumps to 1e30 and the loss becomes NaN
    args = tiny_args(data, prefix, epochs=3, extra=['--lr-policy', 'step', '--lr-step-epochs', '1',
                                                    '--lr-factor', '1e32'])
    proc = run_train(args)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r'error: loss became (nan|inf) at epoch 1 batch \d+; last good checkpoint: '
                        r'\S+m-0001\.params', last), last
    assert 'Traceback' not in proc.stderr
    assert os.path.exists('%s-0001.params' % prefix) and not os.path.exists('%s-0002.params' % prefix)
    mx.model.load_checkpoint(str(prefix), 1)


def test_benchmark_needs_no_files(tmp_path):
    proc = run_train(['--benchmark', '1', '--network', 'crunet', '--num-layers', '22', '--setting', 'cifar',
                      '--image-shape', '3,32,32', '--num-classes', '10', '--batch-size', '4',
                      '--num-examples', '16', '--num-epochs', '1', '--disp-batches', '2',
                      '--model-prefix', str(tmp_path / 'b'), '--plot', '0'], check=True)
    assert re.search(r'Epoch\[0\] Batch \[4\]\tSpeed: [\d.]+ samples/sec', proc.stderr)


def test_test_io_only_reads(data, tmp_path):
    proc = run_train(tiny_args(data, tmp_path / 'io', extra=['--test-io', '1']), check=True)
    assert re.search(r'Read 8 batches \(64 images\)', proc.stderr)
    assert not os.path.exists(str(tmp_path / 'io') + '-0001.params')


# ----------------------------------------------------------------------------- schedules
def test_step_policy_with_warmup():
    s = LRSchedule(0.1, 'step', [2, 4], 0.1, warmup_epochs=1, warmup_lr=0.0)
    assert s.lr(0) == 0 and math.isclose(s.lr(0.5), 0.05)
    assert math.isclose(s.lr(1.0), 0.1) and math.isclose(s.lr(2.0), 0.01) and math.isclose(s.lr(4.5), 0.001)


def test_cosine_policy():
    s = LRSchedule(0.2, 'cosine', num_epochs=10, min_lr=0.0)
    assert math.isclose(s.lr(0), 0.2) and math.isclose(s.lr(5), 0.1) and abs(s.lr(10)) < 1e-12


def test_plateau_policy_and_its_state():
    s = LRSchedule(0.1, 'plateau', factor=0.1, patience=2, min_delta=0.0)
    decays = [s.end_epoch(v) for v in (0.5, 0.6, 0.6, 0.59, 0.7, 0.7, 0.7)]
    assert decays == [False, False, False, True, False, False, True]
    assert math.isclose(s.lr(7), 0.001)
    t = LRSchedule(0.1, 'plateau', factor=0.1, patience=2)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert math.isclose(t.lr(7), s.lr(7)) and t.best == s.best and t.bad_epochs == s.bad_epochs


def test_paper_recipe_by_depth():
    from crunet.train.fit import paper_recipe
    assert paper_recipe(50) == (0.1, 5e-4) and paper_recipe(56) == (0.1, 5e-4)
    lr, wd = paper_recipe(116)
    assert math.isclose(lr, math.sqrt(0.1)) and wd == 2e-4
