"""Training throughput of Horovod ranks on this machine: ``crunet-launch --engine horovod -n R``
for each R of ``--ranks`` (default 1 and 2), the same network, the same per-rank batch, the
machine's cores split evenly over the ranks (``OMP_NUM_THREADS``), synthetic data
(``--benchmark 1``) so that the input pipeline does not count.

    python -m bench.horovod_speed                        # CRU-Net-22 (cifar preset) at 32x32
    python -m bench.horovod_speed --network crunet --num-layers 56 --image-size 224 --json hvd.json

``--ranks 1,2,1,2`` interleaves repeats (the first entry is the ratios' base). Reports images/s
of the whole job (all ranks) per epoch after the first (warm-up) one, their median, and the
ratio to the first entry; writes a record (``bench/records/horovod-<UTC time>.json``, ``--record-dir``;
``--json`` for another copy) naming the machine, the versions and the commit. A figure, not a test: on a machine whose
cores one rank already keeps busy, more ranks add allreduce time and no compute; on a machine
other work loads, OpenMP threads that spin-wait make the one-rank-many-threads figure the one
that suffers (the load average after each job is recorded).
"""
import argparse
import json
import os
import platform
import subprocess
import statistics
import sys
import tempfile
import time

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import record  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_ranks(ranks, args, workdir):
    """Images/s of each epoch of one ``--engine horovod -n ranks`` job (the whole job's rate)."""
    prefix = os.path.join(workdir, 'r%d' % ranks, 'm')
    threads = max(1, (os.cpu_count() or 1) // ranks)
    train = [sys.executable, os.path.join(ROOT, 'train_imagenet.py'), '--benchmark', '1', '--kv-store', 'horovod',
             '--network', args.network, '--num-layers', str(args.num_layers), '--num-classes', '10',
             '--image-shape', '3,%d,%d' % (args.image_size, args.image_size), '--batch-size', str(args.batch_size),
             '--num-examples', str(args.batch_size * args.batches * ranks), '--num-epochs', str(args.epochs),
             '--lr', '0.01', '--lr-policy', 'constant', '--model-prefix', prefix, '--save-period', '1000',
             '--plot', '0', '--disp-batches', '1000']
    if args.setting:
        train += ['--setting', args.setting]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    t0 = time.time()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'launch.py'), '--engine', 'horovod',
                           '-n', str(ranks)] + train, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit('error: %d rank(s) failed (exit %d): %s' % (ranks, proc.returncode,
                                                                    proc.stdout.strip().splitlines()[-1:]))
    with open(prefix + '-metrics.jsonl') as f:
        rows = [json.loads(line) for line in f]
    return dict(ranks=ranks, omp_threads_per_rank=threads, seconds=round(time.time() - t0, 1),
                load_average_after=os.getloadavg(),
                epoch_images_per_sec=[r['images_per_sec'] for r in rows], global_batch=rows[0]['global_batch'])


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench.horovod_speed', description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--ranks', default='1,2', help='comma-separated rank counts')
    p.add_argument('--network', default='crunet')
    p.add_argument('--num-layers', type=int, default=22)
    p.add_argument('--setting', default='cifar', help='symbols setting ("" for the network\'s default)')
    p.add_argument('--image-size', type=int, default=32)
    p.add_argument('--batch-size', type=int, default=16, help='per rank')
    p.add_argument('--batches', type=int, default=20, help='batches per epoch per rank')
    p.add_argument('--epochs', type=int, default=3, help='epochs; the first one is warm-up')
    p.add_argument('--json', default=None, help='also write the record here')
    p.add_argument('--record-dir', default=record.RECORD_DIR,
                   help="where the run's record goes: horovod-<UTC time>.json ('' writes none)")
    a = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix='hvd-bench-') as workdir:
        for ranks in [int(r) for r in a.ranks.split(',') if r.strip()]:
            res = run_ranks(ranks, a, workdir)
            timed = res['epoch_images_per_sec'][1:] or res['epoch_images_per_sec']
            res['median_images_per_sec'] = statistics.median(timed)
            results.append(res)
            print('%d rank(s) x %d thread(s): %.1f img/s, median of the epochs after the first (epochs: %s)' % (
                ranks, res['omp_threads_per_rank'], res['median_images_per_sec'],
                ', '.join('%.1f' % v for v in res['epoch_images_per_sec'])), flush=True)
    base = results[0]['median_images_per_sec']
    for res in results:
        res['speedup_vs_first'] = round(res['median_images_per_sec'] / base, 3) if base else None
    report = dict(cores=os.cpu_count(), python=platform.python_version(),
                  settings=dict(network=a.network, num_layers=a.num_layers, setting=a.setting,
                                image_size=a.image_size, batch_size_per_rank=a.batch_size, batches=a.batches,
                                epochs=a.epochs),
                  load_end=os.getloadavg(), results=results)
    record.stamp(report, ' '.join(['python -m bench.horovod_speed'] + list(sys.argv[1:] if argv is None else argv)))
    record.write(report, 'horovod', a.record_dir, also=a.json, log=print)
    return 0


if __name__ == '__main__':
    sys.exit(main())
