"""Wrong inputs to train_imagenet.py: one line ``error: ...`` naming the flag or file, non-zero
exit, no traceback."""
import os
import shutil

import pytest

from crunet.cli import train as train_imagenet
from train_helpers import run_train, tiny_args, tiny_data


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp('bad'), num_train=16, num_val=8)


@pytest.fixture(scope='module')
def checkpoint(data, tmp_path_factory):
    """A one-epoch checkpoint of the tiny CRU-Net (4 classes)."""
    prefix = tmp_path_factory.mktemp('ckpt') / 'm'
    run_train(tiny_args(data, prefix, epochs=1), check=True)
    return prefix


def _one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        train_imagenet.run(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code not in (0, None)
    assert len(err) >= 1 and err[-1].startswith('error: '), err
    assert not any('Traceback' in line for line in err), err
    return err[-1]


def _with(args, **changes):
    args = list(args)
    for flag, value in changes.items():
        flag = '--' + flag.replace('_', '-')
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


CASES = [
    ('missing train file', dict(data_train='/nonexistent/train.rec'), '--data-train /nonexistent/train.rec'),
    ('missing val file', dict(data_val='/nonexistent/val.rec'), '--data-val /nonexistent/val.rec'),
    ('unknown network', dict(network='vgg'), "unknown network 'vgg'"),
    ('unknown depth', dict(num_layers='23'), 'unknown num_layers 23'),
    ('unknown setting', dict(setting='huge'), "unknown setting 'huge'"),
    ('bad gpus string', dict(gpus='0,x'), "--gpus '0,x'"),
    ('gpus on a cpu build', dict(gpus='0'), '--gpus 0: this MXNet build sees no GPU'),
    ('unknown kvstore', dict(kv_store='magic'), "--kv-store 'magic': unknown kvstore"),
    ('nccl on the cpu', dict(kv_store='nccl'), '--kv-store nccl needs GPUs'),
    ('dist without launcher', dict(kv_store='dist_sync'), 'tools/launch.py'),
    ('batch size 0', dict(batch_size='0'), '--batch-size must be a positive'),
    ('float16 on the cpu', dict(dtype='float16'), '--dtype float16 needs GPUs'),
    ('no cpu contexts', dict(cpus='0'), '--cpus must be a positive'),
    ('bad step epochs', dict(lr_step_epochs='30,sixty'), '--lr-step-epochs'),
    ('non-integer flag', dict(num_epochs='two'), "argument --num-epochs: invalid int value: 'two'"),
    ('missing checkpoint', dict(load_epoch='7'), '--load-epoch 7'),
]


@pytest.mark.parametrize('name,changes,expect', CASES, ids=[c[0] for c in CASES])
def test_bad_flag(capsys, data, tmp_path, name, changes, expect):
    if name == 'gpus on a cpu build':
        import mxnet as mx
        if mx.context.num_gpus() > 0:
            pytest.skip('this build sees GPUs')
    msg = _one_line_error(capsys, _with(tiny_args(data, tmp_path / 'm', epochs=1), **changes))
    assert expect in msg, msg


def test_unknown_flag(capsys, data, tmp_path):
    msg = _one_line_error(capsys, tiny_args(data, tmp_path / 'm') + ['--learning-rate', '1'])
    assert 'unrecognized arguments: --learning-rate 1' in msg


def test_damaged_data_file(capsys, data, tmp_path):
    bad = tmp_path / 'broken.rec'
    with open(data['train'], 'rb') as f:
        bad.write_bytes(f.read()[:300])                            # truncated
    shutil.copy(os.path.splitext(data['train'])[0] + '.idx', str(tmp_path / 'broken.idx'))
    msg = _one_line_error(capsys, _with(tiny_args(data, tmp_path / 'm'), data_train=str(bad)))
    assert 'broken.rec' in msg


def test_load_epoch_other_classes_is_refused(data, checkpoint):
    args = _with(tiny_args(data, checkpoint, epochs=2), load_epoch='1', num_classes='5')
    proc = run_train(args)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: --load-epoch 1: ') and 'fc6_weight' in last and 'found (4, 256)' in last, last
    assert '--finetune-from' in last


def test_load_epoch_other_network_is_refused(data, checkpoint):
    args = _with(tiny_args(data, checkpoint, epochs=2), load_epoch='1', network='sharesnet', num_layers='164',
                 setting='cifar')
    proc = run_train(args)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: --load-epoch 1: ') and 'does not match the network' in last, last


def test_load_epoch_damaged_params(data, checkpoint, tmp_path):
    prefix = tmp_path / 'copy'
    shutil.copy('%s-symbol.json' % checkpoint, '%s-symbol.json' % prefix)
    with open('%s-0001.params' % checkpoint, 'rb') as f:
        open('%s-0001.params' % prefix, 'wb').write(f.read()[:1000])
    proc = run_train(_with(tiny_args(data, prefix, epochs=2), load_epoch='1'))
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: cannot read ') and 'copy-0001.params' in last, last


def test_cli_exit_is_one_line_without_traceback(data, tmp_path):
    proc = run_train(_with(tiny_args(data, tmp_path / 'm'), network='alexnet'))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --network/--num-layers/--setting: unknown network 'alexnet'; "
        "valid choices: crunet, resnext, resnet, sharesnet"]
