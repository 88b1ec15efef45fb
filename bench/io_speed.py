"""Input pipeline benchmark: full training augmentation vs raw JPEG decoding, same records, same threads.

    python -m bench.io_speed                                  # synthetic 500x375 JPEGs
    python -m bench.io_speed --data-train train.rec --data-nthreads 8 --json io.json

One run measures, over the same records and with the same number of threads N (the threads
ImageRecordIter really uses: MXNet caps ``preprocess_threads`` at ``max(CPUs/2 - 1, 1)``, so
``--data-nthreads`` above that is lowered for both sides):

* raw decode, two ways: ``ImageRecordIter`` reading and decoding the records with nothing else
  to do (an 8x8 centre crop, the least output it can give: its own decoder, reader and
  threads), and OpenCV's ``cv2.imdecode`` of the records' bytes (already in memory) on a pool
  of N Python threads;
* full augmentation: ``ImageRecordIter`` exactly as ``crunet.data.iterators.get_rec_iter`` builds it for
  training (random-resized crop 8-100% area, aspect 3/4-4/3, mirror, HSL noise 20/40/50, bicubic
  resize to 224, mean/scale) with ``preprocess_threads=N``;
* with ``--breakdown 1`` (default) also: augmentation without the HSL noise, a plain centre 224
  crop + normalisation (no resize), and the validation pipeline (resize 256, centre crop), to
  show where the time goes;

* MXNet's own ``ImageRecordIter`` with the same augmentation, its parameters spelled out here
  (:func:`mxnet_train_kwargs`), the peer of the full augmentation;

and reports images/s, the ratio full augmentation / raw decode (the faster of the two decode
rates), the ratio to MXNet's own iterator (within each round), images/s per decoding thread and
the threads a GPU at 1,500 img/s would need. Each measurement is repeated ``--repeat`` times,
interleaved, and the median is reported; every round is in the record (``--record-dir``). Without ``--data-train`` it writes
``--num-images`` synthetic 500x375 JPEGs (quality 90, ~110 KB each like ImageNet's average
file) into a temporary RecordIO file.
"""
import argparse
import collections
import json
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import record  # noqa: E402

__all__ = ['synthetic_rec', 'measure_decode', 'measure_iter', 'run', 'main']


def synthetic_image(rng, width=500, height=375):
    """A natural-looking BGR test image: smooth colour field, texture at several scales, shapes, fine
    noise; at JPEG quality 90 a 500x375 one takes ~110 KB, ImageNet's average file size."""
    import cv2
    img = cv2.resize(rng.uniform(0, 255, (5, 7, 3)).astype(np.float32), (width, height),
                     interpolation=cv2.INTER_CUBIC)
    for div, amp in ((64, 30), (16, 25), (4, 30), (2, 30)):
        field = rng.normal(0, amp, (max(2, height // div), max(2, width // div), 3)).astype(np.float32)
        img += cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = int(rng.randint(0, width)), int(rng.randint(0, height))
        if rng.rand() < 0.5:
            cv2.circle(img, (x, y), int(rng.randint(5, 80)), color, -1, lineType=cv2.LINE_AA)
        else:
            cv2.rectangle(img, (x, y), (x + int(rng.randint(5, 150)), y + int(rng.randint(5, 150))), color, -1)
    img += rng.normal(0, 14, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_rec(prefix, num_images=512, width=500, height=375, quality=90, seed=0, num_classes=10):
    """Write ``num_images`` synthetic JPEG records to ``prefix.rec/.idx``; returns the .rec path."""
    import cv2
    from crunet.data.recordio import RecordWriter, pack_header
    rng = np.random.RandomState(seed)
    w = RecordWriter(prefix + '.rec', prefix + '.idx')
    for i in range(num_images):
        ok, buf = cv2.imencode('.jpg', synthetic_image(rng, width, height), [cv2.IMWRITE_JPEG_QUALITY, quality])
        w.write(i, pack_header(i % num_classes, i) + buf.tobytes())
    w.close()
    return prefix + '.rec'


def load_images(rec, limit):
    """The image bytes of the first ``limit`` records of ``rec``."""
    from crunet.data.recordio import iter_payloads, unpack_header
    return [unpack_header(p)[2] for _, p in iter_payloads(rec, limit=limit)]


def measure_decode(blobs, nthreads):
    """Images/s of cv2.imdecode (colour) over ``blobs`` with ``nthreads`` threads."""
    import cv2
    cv2.setNumThreads(1)

    def dec(b):
        img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
        return img.shape[0]
    with ThreadPoolExecutor(nthreads) as ex:
        list(ex.map(dec, blobs[:nthreads * 2]))            # warm up the threads
        t0 = time.perf_counter()
        list(ex.map(dec, blobs, chunksize=8))
        return len(blobs) / (time.perf_counter() - t0)


def _args(rec, nthreads, batch_size, image_shape, **over):
    from crunet.data import flags as dflags
    return dflags.data_args(data_train=rec, data_nthreads=nthreads, image_shape=image_shape, batch_size=batch_size,
                        seed=0, **over)


def _time_iter(make, num_batches):
    """Images/s of the iterator ``make()`` builds, over ``num_batches`` batches; building it (index
    read, threads started, first batch prefetched) is inside the timing, as a fresh iterator per
    epoch is what training does. A short warm-up iterator runs first (page cache, allocations)."""
    warm = make()
    warm.next()
    del warm
    t0 = time.perf_counter()
    it = make()
    n = 0
    for _ in range(num_batches):
        try:
            b = it.next()
        except StopIteration:
            break
        b.data[0].wait_to_read()
        n += b.data[0].shape[0] - b.pad
    speed = n / (time.perf_counter() - t0)
    del it
    return speed


def measure_iter(args, num_batches):
    """Images/s of the training iterator ``crunet.data.iterators`` builds from ``args``, over ``num_batches``."""
    from crunet.data import iterators as cd
    return _time_iter(lambda: cd._train_iter(args), num_batches)


def mxnet_train_kwargs(rec, nthreads, batch_size, image_shape):
    """MXNet's own ``ImageRecordIter`` with the paper's training augmentation, spelled out here
    rather than taken from this project (random-resized crop 8-100% of the area, aspect 3/4-4/3,
    mirror, HSL noise 20/40/50, bicubic resize, mean 124,117,104, scale 0.0167)."""
    shape = tuple(int(v) for v in image_shape.split(','))
    return dict(path_imgrec=rec, path_imgidx=os.path.splitext(rec)[0] + '.idx', data_shape=shape,
                batch_size=batch_size, shuffle=True, seed=0, round_batch=True, preprocess_threads=nthreads,
                label_width=1, random_resized_crop=True, min_random_area=0.08, max_random_area=1.0,
                min_aspect_ratio=0.75, max_aspect_ratio=4.0 / 3, rand_mirror=True, random_h=20, random_s=40,
                random_l=50, inter_method=2, mean_r=124.0, mean_g=117.0, mean_b=104.0, scale=0.0167)


def measure_mxnet_iter(rec, nthreads, batch_size, image_shape, num_batches):
    """Images/s of :func:`mxnet_train_kwargs`'s iterator: the peer of ``measure_iter``."""
    import mxnet as mx
    kw = mxnet_train_kwargs(rec, nthreads, batch_size, image_shape)
    return _time_iter(lambda: mx.io.ImageRecordIter(**kw), num_batches)


def measure_iter_decode(args, num_batches, crop=8):
    """Images/s of the same ImageRecordIter doing nothing but read + decode (+ a ``crop`` x ``crop``
    centre crop, the least output it can give): the raw decode rate of its own decoder and threads."""
    import mxnet as mx
    from crunet.data import iterators as cd
    kw, _ = cd._common(args, args.data_train, (3, crop, crop))
    kw.update(batch_size=args.batch_size, shuffle=True, seed=0, round_batch=True)
    return _time_iter(lambda: mx.io.ImageRecordIter(**kw), num_batches)


#: (name, iterator kind, flag overrides); 'decode' is the iterator with no augmentation
CASES = [
    ('decode: ImageRecordIter, 8x8 centre crop', 'decode', {}),
    ('full training augmentation', 'train', {}),
    ("MXNet's ImageRecordIter, same augmentation", 'mxnet', {}),
    ('  without HSL noise', 'train', dict(random_h=0, random_s=0, random_l=0)),
    ('  centre 224 crop + normalise only', 'decode224', {}),
    ('validation: resize 256 + centre 224', 'train', dict(aug_off=1)),
]


def run(rec=None, nthreads=2, num_images=512, batch_size=32, repeat=3, breakdown=True, image_shape='3,224,224',
        log=print):
    """Run the benchmark; returns a dict with images/s per pipeline and the ratio."""
    from crunet.data import checks as dchecks
    tmp = None
    try:
        if not rec:
            tmp = tempfile.mkdtemp(prefix='io_speed_')
            log('writing %d synthetic 500x375 JPEGs to %s ...' % (num_images, tmp))
            rec = synthetic_rec(os.path.join(tmp, 'synthetic'), num_images)
        total = dchecks.check_recordio(rec)
        iter_threads = dchecks.effective_threads(nthreads)
        if iter_threads < nthreads:
            log('ImageRecordIter uses %d decode thread(s) here, not %d (MXNet caps them at max(CPUs/2 - 1, 1)); '
                'the cv2 pool gets the same %d' % (iter_threads, nthreads, iter_threads))
        n = min(num_images, total)
        blobs = load_images(rec, n)
        crop = max(int(v) for v in image_shape.split(',')[1:])
        num_batches = max(1, n // batch_size)
        cases = CASES if breakdown else CASES[:3]
        rounds = []
        for r in range(repeat):
            log('round %d/%d ...' % (r + 1, repeat))
            got = collections.OrderedDict([('decode: cv2.imdecode', measure_decode(blobs, iter_threads))])
            for name, kind, over in cases:
                a = _args(rec, nthreads, batch_size, image_shape, **over)
                if kind == 'train':
                    got[name] = measure_iter(a, num_batches)
                elif kind == 'mxnet':
                    got[name] = measure_mxnet_iter(rec, nthreads, batch_size, image_shape, num_batches)
                else:
                    got[name] = measure_iter_decode(a, num_batches, 8 if kind == 'decode' else crop)
            rounds.append(got)
        med = collections.OrderedDict((name, float(np.median([g[name] for g in rounds]))) for name in rounds[0])
        dec_it, dec_cv, aug = med[CASES[0][0]], med['decode: cv2.imdecode'], med[CASES[1][0]]
        vs_mxnet = float(np.median([g[CASES[1][0]] / g[CASES[2][0]] for g in rounds]))   # within each round
        per_thread = aug / iter_threads
        return dict(
            records=n, threads=iter_threads, threads_requested=nthreads, batch_size=batch_size,
            image_shape=image_shape, repeat=repeat,
            mean_jpeg_kb=float(np.mean([len(b) for b in blobs]) / 1024.0),
            source='synthetic 500x375 JPEG q90' if tmp else os.path.abspath(rec), cpu_count=os.cpu_count(),
            img_s=dict(med), rounds=rounds, augment_img_s=aug, decode_img_s=max(dec_it, dec_cv),
            augment_img_s_per_thread=per_thread, augment_x_mxnet=vs_mxnet,
            threads_for=dict((str(rate), int(math.ceil(rate / per_thread))) for rate in GPU_RATES),
            ratio=aug / max(dec_it, dec_cv), ratio_vs_iter_decode=aug / dec_it, ratio_vs_cv2_decode=aug / dec_cv)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


#: images/s of a GPU whose decoding needs :func:`run` reports (``threads_for``)
GPU_RATES = (1500,)


def format_result(r):
    lines = ['records: %d (%s, %.0f KB on average), threads: %d (%d asked), batch %d, output %s, median of %d'
             % (r['records'], r['source'], r['mean_jpeg_kb'], r['threads'], r['threads_requested'], r['batch_size'],
                r['image_shape'], r['repeat']),
             '%-42s %8s' % ('pipeline', 'img/s')]
    for name, v in r['img_s'].items():
        lines.append('%-42s %8.1f' % (name, v))
    lines.append('ratio full augmentation / raw decode: %.2f (vs ImageRecordIter decode %.2f, vs cv2.imdecode %.2f)'
                 % (r['ratio'], r['ratio_vs_iter_decode'], r['ratio_vs_cv2_decode']))
    lines.append("full augmentation: %.1f img/s per decoding thread, %.3fx MXNet's own ImageRecordIter with the "
                 'same augmentation (median of the per-round ratios)' % (r['augment_img_s_per_thread'], r['augment_x_mxnet']))
    for rate, n in sorted(r['threads_for'].items()):
        lines.append('a GPU training at %s img/s needs %d such decoding threads' % (rate, n))
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench.io_speed', description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--data-train', default=None,
                   help='RecordIO file to read (.idx beside it); default: synthetic JPEGs in a temp folder')
    p.add_argument('--data-nthreads', type=int, default=min(4, os.cpu_count() or 1),
                   help='threads for both the decoder pool and the iterator')
    p.add_argument('--num-images', type=int, default=512, help='records used (and written when synthetic)')
    p.add_argument('--batch-size', type=int, default=32, help='iterator batch size')
    p.add_argument('--image-shape', default='3,224,224', help='iterator output shape')
    p.add_argument('--repeat', type=int, default=3, help='interleaved repetitions; the median of each is reported')
    p.add_argument('--breakdown', type=int, default=1, choices=[0, 1],
                   help='also time the iterator without HSL noise and the validation pipeline')
    p.add_argument('--json', default=None, help='also write the result as JSON to this file')
    p.add_argument('--record-dir', default=record.RECORD_DIR,
                   help="where the run's record goes: io-<UTC time>.json with every round, the machine and the "
                        "versions ('' writes none)")
    a = p.parse_args(argv)
    from crunet.data.checks import DataError
    try:
        r = run(a.data_train, a.data_nthreads, a.num_images, a.batch_size, a.repeat, bool(a.breakdown),
                a.image_shape, log=lambda m: sys.stderr.write(m + '\n'))
    except DataError as e:
        sys.stderr.write('io_speed: error: %s\n' % e)
        return 1
    record.stamp(r, ' '.join(['python -m bench.io_speed'] + list(sys.argv[1:] if argv is None else argv)))
    print('machine: %s' % r['machine']['name'])
    print(format_result(r))
    record.write(r, 'io', a.record_dir, also=a.json, log=lambda m: sys.stderr.write(m + '\n'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
