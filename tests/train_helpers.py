"""Helpers of the training tests: tiny generated RecordIO sets and a runner for train_imagenet.py.

The images are 32x32 PNGs (PIL; OpenCV is not needed) of ``num_classes`` easy classes: class k
has a bright horizontal band at height k (plus noise), so a tiny CRU-Net learns them in a few
batches. Records carry id ``i`` and label ``k``.
"""
import io
import os
import subprocess
import sys

import mxnet as mx
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'train_imagenet.py')
PYTHON = sys.executable


def make_image(label, num_classes, size, rng):
    img = rng.randint(0, 60, size=(size, size, 3)).astype(np.uint8)
    band = size // num_classes
    img[label * band:(label + 1) * band, :, :] = 200 + rng.randint(0, 55, size=(band, size, 3))
    return img


def make_rec(directory, name, num, num_classes=4, size=32, seed=0, ids_as_labels=False):
    """Write ``directory/name.rec`` + ``.idx`` with ``num`` images; returns the .rec path.
    With ``ids_as_labels`` record i has label i (so the labels a worker saw name its records)."""
    from PIL import Image
    os.makedirs(directory, exist_ok=True)
    rec = os.path.join(directory, name + '.rec')
    idx = os.path.join(directory, name + '.idx')
    rng = np.random.RandomState(seed)
    writer = mx.recordio.MXIndexedRecordIO(idx, rec, 'w')
    for i in range(num):
        label = i % num_classes
        buf = io.BytesIO()
        Image.fromarray(make_image(label, num_classes, size, rng)).save(buf, format='PNG')
        header = mx.recordio.IRHeader(0, float(i if ids_as_labels else label), i, 0)
        writer.write_idx(i, mx.recordio.pack(header, buf.getvalue()))
    writer.close()
    return rec


def tiny_data(tmp_path, num_train=64, num_val=32, num_classes=4):
    d = str(tmp_path / 'data') if hasattr(tmp_path, '__truediv__') else os.path.join(tmp_path, 'data')
    return dict(train=make_rec(d, 'train', num_train, num_classes, seed=1),
                val=make_rec(d, 'val', num_val, num_classes, seed=2),
                num_train=num_train, num_val=num_val, num_classes=num_classes)


def tiny_args(data, prefix, epochs=2, batch=8, extra=()):
    """Flags of a tiny CRU-Net-22 (cifar preset) run at 32x32 on ``data``; ``batch`` is
    ``--batch-size``, the images of one step on this machine, split over ``--cpus N``."""
    return ['--network', 'crunet', '--num-layers', '22', '--setting', 'cifar',
            '--num-classes', str(data['num_classes']), '--image-shape', '3,32,32',
            '--data-train', data['train'], '--data-val', data['val'],
            '--num-examples', str(data['num_train']), '--batch-size', str(batch),
            '--num-epochs', str(epochs), '--lr', '0.05', '--lr-policy', 'constant',
            '--model-prefix', str(prefix), '--data-nthreads', '1', '--disp-batches', '2',
            '--aug-off', '1', '--plot', '0'] + list(extra)


def env(**extra):
    e = dict(os.environ)
    e['PYTHONPATH'] = ROOT + os.pathsep + e.get('PYTHONPATH', '')
    e.setdefault('OMP_NUM_THREADS', '1')
    e.update({k: str(v) for k, v in extra.items()})
    return e


def run_train(args, timeout=240, check=False, extra_env=None, cwd=None):
    """Run train_imagenet.py; returns CompletedProcess with .stdout/.stderr (text)."""
    proc = subprocess.run([PYTHON, TRAIN] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, env=env(**(extra_env or {})), cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError('train_imagenet.py failed (%d):\n%s\n%s' % (proc.returncode, proc.stdout, proc.stderr[-6000:]))
    return proc


def load_params(prefix, epoch):
    blob = mx.nd.load('%s-%04d.params' % (prefix, epoch))
    return {k: v.asnumpy() for k, v in blob.items()}


def max_param_diff(a, b):
    assert sorted(a) == sorted(b)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def job_pids(port):
    """{pid: role} of the live processes started with DMLC_PS_ROOT_PORT=port."""
    out = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/environ' % pid, 'rb') as f:
                items = dict(kv.split(b'=', 1) for kv in f.read().split(b'\0') if b'=' in kv)
            with open('/proc/%s/stat' % pid) as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    continue                                   # exited, not yet reaped
        except (OSError, IndexError):
            continue
        if items.get(b'DMLC_PS_ROOT_PORT') == str(port).encode():
            rank = items.get(b'DMLC_WORKER_ID', items.get(b'DMLC_SERVER_ID', b''))
            out[int(pid)] = ('%s %s' % (items.get(b'DMLC_ROLE', b'?').decode(), rank.decode())).strip()
    return out
