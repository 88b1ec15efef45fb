"""The bundled demo set: scikit-learn's handwritten digits as train/val RecordIO.

``sklearn.datasets.load_digits`` ships 1797 real 8x8 grayscale scans of handwritten digits
(10 classes) inside the scikit-learn package, so nothing is downloaded. :func:`prepare_demo`
writes them as 3-channel PNG files in a folder per class (upscaled to ``image_size``, dark
ink on white), then lists and packs them with the same code as ``crunet-im2rec make``:
a stratified 80/20 split by seed, every record keeping its PNG bytes. The same options give
the same bytes on every run.

    python -m crunet.data.demo --out runs/demo/data
    # -> runs/demo/data/digits_train.rec/.idx (1438 images), digits_val.rec/.idx (359 images)
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from ..args import ArgParser
from ..errors import cli_main
from ..files import atomic_save
from . import im2rec, lists, packing, recordio

__all__ = ['prepare_demo', 'main', 'run', 'NUM_CLASSES', 'MAX_IMAGE_SIZE']

NUM_CLASSES = 10
#: the largest --image-size (1797 images of 1024x1024 PNG are already about 1 GB)
MAX_IMAGE_SIZE = 1024
_FORMAT = 1                 # bump when the files written here change


def _write_images(img_dir, image_size):
    import cv2
    from sklearn.datasets import load_digits
    digits = load_digits()
    for i, (pix, label) in enumerate(zip(digits.images, digits.target)):
        gray = 255.0 - np.asarray(pix, np.float64) * (255.0 / 16.0)        # 0..16 ink -> dark on white
        gray = np.clip(np.round(gray), 0, 255).astype(np.uint8)
        if image_size != gray.shape[0]:
            gray = cv2.resize(gray, (image_size, image_size), interpolation=cv2.INTER_CUBIC)
        d = os.path.join(img_dir, str(int(label)))
        os.makedirs(d, exist_ok=True)
        ok = cv2.imwrite(os.path.join(d, '%04d.png' % i), cv2.merge([gray, gray, gray]))
        if not ok:
            raise lists.PackError('cannot write %s' % os.path.join(d, '%04d.png' % i))
    return len(digits.target)


def _valid(paths, meta_path, meta):
    try:
        with open(meta_path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return False
    if {k: old.get(k) for k in meta} != meta:
        return False
    try:
        return (recordio.scan_recordio(paths['train']).num_records == old.get('num_train')
                and recordio.scan_recordio(paths['val']).num_records == old.get('num_val'))
    except recordio.RecordError:
        return False


def prepare_demo(out_dir, image_size=32, train_ratio=0.8, seed=0, force=False, num_thread=1, log=None):
    """Write (unless already there and valid) the digits demo set under ``out_dir``.

    Returns ``{'train': .rec, 'val': .rec, 'num_train', 'num_val', 'num_classes': 10,
    'image_size', 'synset', 'images'}``; files: ``images/<digit>/NNNN.png``,
    ``digits_{train,val}.{lst,rec,idx}``, ``digits_synset.txt``, ``digits_meta.json``.
    Everything is built in a temporary folder inside ``out_dir`` and moved into place at the
    end, so a failure (bad option, full disk) leaves the previous files as they were.
    """
    if not 8 <= image_size <= MAX_IMAGE_SIZE:
        raise lists.PackError('--image-size must be in 8..%d (the digits are 8x8), not %d'
                               % (MAX_IMAGE_SIZE, image_size))
    if not 0.0 < train_ratio < 1.0:
        raise lists.PackError('--train-ratio must be between 0 and 1 (exclusive): the demo needs both a training '
                               'and a validation set, not %s' % train_ratio)
    log = log or (lambda msg: None)
    out_dir = os.path.abspath(out_dir)
    prefix = os.path.join(out_dir, 'digits')
    paths = dict(train=prefix + '_train.rec', val=prefix + '_val.rec')
    meta_path = prefix + '_meta.json'
    meta = dict(format=_FORMAT, image_size=int(image_size), train_ratio=float(train_ratio), seed=int(seed))
    result = dict(paths, num_classes=NUM_CLASSES, image_size=int(image_size), synset=prefix + '_synset.txt',
                  images=os.path.join(out_dir, 'images'))
    if not force and _valid(paths, meta_path, meta):
        with open(meta_path) as f:
            old = json.load(f)
        log('demo set already in %s' % out_dir)
        result.update(num_train=old['num_train'], num_val=old['num_val'])
        return result
    lists.ensure_dir(out_dir, '--out %s' % out_dir)
    stage = tempfile.mkdtemp(prefix='.digits-build-', dir=out_dir)
    try:
        img_dir = os.path.join(stage, 'images')
        n = _write_images(img_dir, int(image_size))
        log('wrote %d digit images (%dx%d)' % (n, image_size, image_size))
        made = lists.make_lists(os.path.join(stage, 'digits'), img_dir, train_ratio=train_ratio, seed=seed, log=log)
        counts = {}
        for lst, part in zip(made, ('train', 'val')):
            st = packing.pack(lst, img_dir, num_thread=num_thread, progress=False)
            counts['num_' + part] = st['records']
        meta.update(counts)
        atomic_save(os.path.join(stage, 'digits_meta.json'), json.dumps(meta, indent=1, sort_keys=True))
        # move into place; the meta file goes last, so an interrupted move is rebuilt next time
        if os.path.exists(meta_path):
            os.remove(meta_path)
        for name in sorted(os.listdir(stage)):
            if name.startswith('digits_') and name != 'digits_meta.json':
                os.replace(os.path.join(stage, name), os.path.join(out_dir, name))
        if os.path.isdir(result['images']):
            os.rename(result['images'], os.path.join(stage, 'old-images'))
        os.rename(img_dir, result['images'])
        os.replace(os.path.join(stage, 'digits_meta.json'), meta_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log('wrote %s (%d images) and %s (%d images)' % (paths['train'], counts['num_train'], paths['val'],
                                                       counts['num_val']))
    result.update(counts)
    return result


def build_parser():
    p = ArgParser(prog='python -m crunet.data.demo',
                  description='Write the bundled handwritten-digits demo set as train/val RecordIO.',
                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', default='runs/demo/data', help='output folder')
    p.add_argument('--image-size', type=int, default=32, help='side of the (square) images written (8..%d)'
                   % MAX_IMAGE_SIZE)
    p.add_argument('--train-ratio', type=float, default=0.8,
                   help='fraction of each class in the training set (the rest: validation), strictly between 0 and 1')
    p.add_argument('--seed', type=int, default=0, help='seed of the split and of the record order')
    p.add_argument('--force', action='store_true', help='rewrite even if valid files are there')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    say = lambda msg: sys.stderr.write('[demo] %s\n' % msg)
    r = prepare_demo(args.out, args.image_size, args.train_ratio, args.seed, args.force, log=say)
    print('train: %s (%d images)\nval:   %s (%d images)\nclasses: %d, images %dx%d'
          % (r['train'], r['num_train'], r['val'], r['num_val'], r['num_classes'], r['image_size'], r['image_size']))
    return 0


def run(argv=None):
    """``python -m crunet.data.demo`` under the exit-code convention of :mod:`crunet.errors`
    (bad input: one ``error:`` line, exit 2; a full disk: exit 1; SIGTERM: 143, nothing half-written)."""
    im2rec.exit_cleanly_on_sigterm()
    return cli_main(main, argv)


if __name__ == '__main__':
    sys.exit(run())
