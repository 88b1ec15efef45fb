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
import sys

import numpy as np

from . import im2rec, recordio

__all__ = ['prepare_demo', 'main', 'NUM_CLASSES']

NUM_CLASSES = 10
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
            raise im2rec.PackError('cannot write %s' % os.path.join(d, '%04d.png' % i))
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
    """
    if image_size < 8:
        raise im2rec.PackError('image_size must be at least 8 (the digits are 8x8), not %d' % image_size)
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
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(meta_path):
        os.remove(meta_path)
    img_dir = result['images']
    if os.path.isdir(img_dir):
        import shutil
        shutil.rmtree(img_dir)
    n = _write_images(img_dir, int(image_size))
    log('wrote %d digit images (%dx%d) under %s' % (n, image_size, image_size, img_dir))
    lists = im2rec.make_lists(prefix, img_dir, train_ratio=train_ratio, seed=seed, log=log)
    counts = {}
    for lst, part in zip(lists, ('train', 'val')):
        st = im2rec.pack(lst, img_dir, num_thread=num_thread, progress=False, log=log)
        counts['num_' + part] = st['records']
    meta.update(counts)
    with open(meta_path + '.part', 'w') as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    os.replace(meta_path + '.part', meta_path)
    result.update(counts)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m crunet.data.demo',
                                description='Write the bundled handwritten-digits demo set as train/val RecordIO.',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', default='runs/demo/data', help='output folder')
    p.add_argument('--image-size', type=int, default=32, help='side of the (square) images written')
    p.add_argument('--train-ratio', type=float, default=0.8, help='fraction of each class in the training set')
    p.add_argument('--seed', type=int, default=0, help='seed of the split and of the record order')
    p.add_argument('--force', action='store_true', help='rewrite even if valid files are there')
    args = p.parse_args(argv)
    say = lambda msg: sys.stderr.write('[demo] %s\n' % msg)
    try:
        r = prepare_demo(args.out, args.image_size, args.train_ratio, args.seed, args.force, log=say)
    except im2rec.PackError as e:
        sys.stderr.write('demo: error: %s\n' % e)
        return 1
    print('train: %s (%d images)\nval:   %s (%d images)\nclasses: %d, images %dx%d'
          % (r['train'], r['num_train'], r['val'], r['num_val'], r['num_classes'], r['image_size'], r['image_size']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
