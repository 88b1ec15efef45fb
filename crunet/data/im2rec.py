"""Make image lists and pack them into RecordIO (``.rec`` + ``.idx``) for ``mx.io.ImageRecordIter``.

The project's packer (MXNet 1.9.1's wheel ships its own ``mxnet/tools/im2rec.py``; this one is
deterministic, converts every image to 3-channel colour and stops on bad input). It needs no
MXNet (the RecordIO framing is written here, byte-compatible with dmlc-core's writer), only
numpy, OpenCV and Pillow.

Subcommands (``python -m crunet.data.im2rec CMD -h`` for every option)::

    # 1. lists: from a folder-per-class tree (labels = sorted folder names) ...
    python -m crunet.data.im2rec list runs/data/mine /data/mine --train-ratio 0.9 --seed 0
    # ... or from a label list (Places365 / caffe "path label", MXNet .lst, ImageNet LOC_val_solution.csv)
    python -m crunet.data.im2rec list runs/data/places_val /data/places365/val_large \\
        --list-file /data/places365/places365_val.txt
    # 2. pack every list into PREFIX.rec + PREFIX.idx with 8 processes, shorter side <= 480
    python -m crunet.data.im2rec pack runs/data/mine_train.lst --root /data/mine --resize 480 --num-thread 8
    # 1+2 in one go
    python -m crunet.data.im2rec make runs/data/mine /data/mine --train-ratio 0.9 --resize 480
    # validate a .rec/.idx pair (the checks the training iterators run first)
    python -m crunet.data.im2rec check runs/data/mine_train.rec

MXNet's own form is accepted too, with MXNet's list algorithm and record encoding (see
:func:`mxnet_main` and ``data/README.md`` for the few deliberate differences)::

    crunet-im2rec runs/data/mine /data/mine --list --recursive --train-ratio 0.9
    crunet-im2rec runs/data/mine /data/mine          # packs every runs/data/mine*.lst

Every image becomes a 3-channel colour record: grayscale, palette, RGBA / LA (alpha dropped),
16-bit, CMYK JPEGs and formats ImageRecordIter cannot decode (WebP, GIF, ...) are decoded and
re-encoded (``--encoding``, ``--quality``). A colour 8-bit JPEG or PNG that needs no resize keeps
its own bytes (``--pass-through 1``, the default). The output depends only on the inputs and the
options: the same inputs give the same bytes, whatever ``--num-thread``. Outputs appear whole or
not at all: lists and records are written to temporary files renamed into place, removed when
anything fails (a full disk included).

Bad input ends the command with one line on stderr (``error: ...`` naming the file, line or
flag) and exit status 2 (a full disk or another system failure: 1), following
:mod:`crunet.errors` -- or, with ``--skip-bad``, a warning per skipped image.
"""
import argparse
import os
import random
import signal
import sys
import threading

from ..args import ArgParser
from ..errors import EXIT_TERMINATED, cli_main, die
from ..files import atomic_save
from .lists import IMAGE_EXTS, PackError, ensure_dir, make_lists, walk_tree
from .packing import pack
from .recordio import scan_recordio

__all__ = ['MXNET_EXTS', 'build_parser', 'mxnet_list_images', 'mxnet_make_lists', 'mxnet_main', 'main', 'run']


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _add_list_args(p):
    p.add_argument('--list-file', default=None,
                   help='label list to read instead of walking class folders: "path label" lines '
                        '(Places365 places365_train_standard.txt / places365_val.txt, caffe val.txt), '
                        'an MXNet .lst, or ImageNet LOC_val_solution.csv; paths are relative to ROOT')
    p.add_argument('--synset', default=None,
                   help='class names -> labels for lists that name classes: a file, one class per line '
                        '(synset.txt, LOC_synset_mapping.txt), or a folder whose sorted sub-folders are the '
                        'classes (e.g. ImageNet train/)')
    p.add_argument('--ext', default='',
                   help='extension appended to list paths that have none (LOC_val_solution.csv: .JPEG)')
    p.add_argument('--train-ratio', type=float, default=1.0,
                   help='fraction of each class for PREFIX_train.lst, the rest to PREFIX_val.lst; '
                        '1 (default) writes PREFIX.lst only')
    p.add_argument('--seed', type=int, default=0, help='seed of the split and of the list order (default 0)')
    p.add_argument('--no-shuffle', action='store_true',
                   help='keep the lists in folder/list-file order instead of shuffling them')
    p.add_argument('--exts', default=','.join(IMAGE_EXTS),
                   help='comma-separated image extensions for folder walking (case-insensitive)')


def _add_pack_args(p):
    p.add_argument('--resize', type=int, default=0,
                   help='reduce the shorter side to this many pixels when it is longer (e.g. 480 for train, '
                        '256 for val); 0 (default) keeps the size')
    p.add_argument('--quality', type=int, default=95, help='JPEG quality of re-encoded images (default 95)')
    p.add_argument('--encoding', default='.jpg', choices=['.jpg', '.png'],
                   help='format of re-encoded images (default .jpg)')
    p.add_argument('--pass-through', type=int, default=1, choices=[0, 1],
                   help='1 (default): an 8-bit colour JPEG/PNG that needs no resize keeps its own bytes; '
                        '0: re-encode every image')
    p.add_argument('--num-thread', type=int, default=max(1, (os.cpu_count() or 1)),
                   help='worker processes (default: the number of CPUs)')
    p.add_argument('--skip-bad', action='store_true',
                   help='skip unreadable images with a warning instead of stopping with an error')
    p.add_argument('--quiet', action='store_true', help='no progress or summary lines (warnings and errors only)')


def build_parser():
    parser = ArgParser(
        prog='crunet-im2rec',
        description='Make image lists and pack them into RecordIO (.rec + .idx) for mx.io.ImageRecordIter.',
        epilog="MXNet's form is accepted too: crunet-im2rec PREFIX ROOT --list [--recursive] ..., then "
               "crunet-im2rec PREFIX ROOT (crunet-im2rec PREFIX ROOT -h for its options).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest='cmd', metavar='CMD')
    sub.required = True
    p = sub.add_parser('list', help='write .lst files from class folders or a label list')
    p.add_argument('prefix', help='output prefix: PREFIX.lst, or PREFIX_train.lst + PREFIX_val.lst')
    p.add_argument('root', help='image folder (class folders, or the root the list paths are relative to)')
    _add_list_args(p)
    p = sub.add_parser('pack', help='pack .lst files into .rec + .idx')
    p.add_argument('lst', nargs='+', help='.lst files; each gives LST-without-.lst .rec and .idx')
    p.add_argument('--root', required=True, help='folder the list paths are relative to')
    _add_pack_args(p)
    p = sub.add_parser('make', help='list, then pack every list written')
    p.add_argument('prefix', help='output prefix')
    p.add_argument('root', help='image folder')
    _add_list_args(p)
    _add_pack_args(p)
    p = sub.add_parser('check', help='validate .rec/.idx pairs and print their record counts')
    p.add_argument('rec', nargs='+', help='.rec files (the .idx beside each)')
    p.add_argument('--mode', default='sample', choices=['sample', 'full'],
                   help='sample: every header, images sampled above 1000 records; full: decode every image')
    return parser


def _say(msg):
    sys.stderr.write('[im2rec] %s\n' % msg)
    sys.stderr.flush()


def _check_pack_flags(args, png_quality=False):
    if args.num_thread < 1:
        raise PackError('--num-thread must be at least 1, not %d' % args.num_thread)
    if png_quality:
        pass                 # MXNet's form: the PNG compression, clamped to 0..9 by OpenCV as in MXNet's tool
    elif not 1 <= args.quality <= 100:
        raise PackError('--quality must be in 1..100, not %d' % args.quality)
    if args.resize < 0:
        raise PackError('--resize must be 0 (keep the size) or a positive size, not %d' % args.resize)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith('-') and argv[0] not in SUBCOMMANDS:
        return mxnet_main(argv)
    args = build_parser().parse_args(argv)
    say = (lambda msg: None) if getattr(args, 'quiet', False) else _say
    if args.cmd in ('pack', 'make'):
        _check_pack_flags(args)              # before any list is written
    if args.cmd in ('list', 'make'):
        exts = tuple(e if e.startswith('.') else '.' + e for e in args.exts.split(',') if e)
        lists = make_lists(args.prefix, args.root, args.list_file, args.synset, args.ext, args.train_ratio,
                           args.seed, not args.no_shuffle, exts, log=say)
    if args.cmd in ('pack', 'make'):
        for lst in (args.lst if args.cmd == 'pack' else lists):
            pack(lst, args.root, resize=args.resize, quality=args.quality, encoding=args.encoding,
                 pass_through=args.pass_through, num_thread=args.num_thread, skip_bad=args.skip_bad,
                 progress=not args.quiet, log=say)
    if args.cmd == 'check':
        for rec in args.rec:
            info = scan_recordio(rec, mode=args.mode)
            print('%s: %d records, labels %g..%g, %d images decoded' % (
                rec, info.num_records, info.label_min, info.label_max, info.checked_images))
    return 0


# ---------------------------------------------------------------------------------------------
# MXNet's form: tools/im2rec.py PREFIX ROOT --list [--recursive] ... / tools/im2rec.py PREFIX ROOT
# ---------------------------------------------------------------------------------------------
SUBCOMMANDS = ('list', 'pack', 'make', 'check')
#: MXNet's tools/im2rec.py default --exts
MXNET_EXTS = ('.jpeg', '.jpg', '.png')


def mxnet_list_images(root, recursive, exts=MXNET_EXTS):
    """``([(index, relpath, label)], [(folder, label)])`` exactly as MXNet's ``list_image``: walk
    ``root`` (folders and files sorted, links followed); with ``recursive`` every folder holding an
    image is a class, numbered in the order the walk first meets it (``root`` itself included),
    without it only the files directly in ``root``, label 0. ``exts`` are compared with the
    lower-cased extension, as given."""
    items, cat = [], {}
    if recursive:
        for path, dirs, files in walk_tree(root):
            dirs.sort()
            files.sort()
            for fname in files:
                fpath = os.path.join(path, fname)
                if os.path.isfile(fpath) and os.path.splitext(fname)[1].lower() in exts:
                    if path not in cat:
                        cat[path] = len(cat)
                    items.append((len(items), os.path.relpath(fpath, root), cat[path]))
    else:
        for fname in sorted(os.listdir(root)):
            fpath = os.path.join(root, fname)
            if os.path.isfile(fpath) and os.path.splitext(fname)[1].lower() in exts:
                items.append((len(items), os.path.relpath(fpath, root), 0))
    folders = [(os.path.relpath(k, root), v) for k, v in sorted(cat.items(), key=lambda kv: kv[1])]
    return items, folders


def _write_mxnet_lst(path, items):
    if os.path.isdir(path):
        raise PackError('list %s is a folder' % path)
    atomic_save(path, ''.join('%d\t%s%s\n' % (it[0], ''.join('%f\t' % x for x in it[2:]), it[1]) for it in items))


def mxnet_make_lists(prefix, root, recursive=False, exts=MXNET_EXTS, chunks=1, train_ratio=1.0, test_ratio=0.0,
                     shuffle=True, log=None):
    """MXNet's ``make_list``: the same ``.lst`` files, byte for byte (shuffled by ``random.seed(100)``,
    split by position: ``int(chunk * train_ratio)`` lines to ``_train``, the rest to ``_val``, after
    ``int(chunk * test_ratio)`` to ``_test``; labels written ``%f``). Written atomically; returns
    the paths and prints MXNet's ``folder label`` lines (``recursive``) on stdout."""
    log = log or (lambda msg: None)
    if not 0.0 < train_ratio <= 1.0:
        raise PackError('--train-ratio must be in (0, 1], not %s' % train_ratio)
    if not 0.0 <= test_ratio < 1.0 or train_ratio + test_ratio > 1.0:
        raise PackError('--test-ratio must be in [0, 1) with --train-ratio + --test-ratio <= 1, not %s + %s'
                        % (train_ratio, test_ratio))
    if chunks < 1:
        raise PackError('--chunks must be at least 1, not %d' % chunks)
    if not os.path.isdir(root):
        raise PackError('image folder not found: %s' % root)
    items, folders = mxnet_list_images(root, recursive, exts)
    if not items:
        raise PackError('no %s files %s %s' % ('/'.join(exts), 'under' if recursive else 'directly in (add --recursive '
                                                'for class folders)', root))
    ensure_dir(os.path.dirname(prefix) if not os.path.isdir(prefix) else prefix, 'output prefix %s' % prefix)
    for folder, label in folders:
        print(folder, label)
    if shuffle:
        random.Random(100).shuffle(items)
    n = len(items)
    size = (n + chunks - 1) // chunks
    paths = []

    def out(path, part):
        _write_mxnet_lst(path, part)
        log('wrote %s: %d images' % (path, len(part)))
        paths.append(path)
    for c in range(chunks):
        chunk = items[c * size:(c + 1) * size]
        tag = '_%d' % c if chunks > 1 else ''
        sep, sep_test = int(size * train_ratio), int(size * test_ratio)
        if train_ratio == 1.0:
            out(prefix + tag + '.lst', chunk)
        else:
            if test_ratio:
                out(prefix + tag + '_test.lst', chunk[:sep_test])
            if train_ratio + test_ratio < 1.0:
                out(prefix + tag + '_val.lst', chunk[sep_test + sep:])
            out(prefix + tag + '_train.lst', chunk[sep_test:sep_test + sep])
    return paths


def mxnet_lists_of(prefix):
    """The ``.lst`` files MXNet's tool packs for ``PREFIX``: the files of PREFIX's folder (PREFIX
    itself when it is a folder) whose path starts with PREFIX and ends ``.lst``, sorted."""
    folder = prefix if os.path.isdir(prefix) else os.path.dirname(prefix)
    if not os.path.isdir(folder):
        return []
    try:
        names = os.listdir(folder)
    except OSError as e:
        raise PackError('cannot list %s for PREFIX %s: %s' % (folder, prefix, e.strerror or e)) from None
    paths = sorted(os.path.join(folder, n) for n in names)
    return [p for p in paths if os.path.isfile(p) and p.startswith(prefix) and p.endswith('.lst')]


def build_mxnet_parser():
    parser = ArgParser(
        prog='crunet-im2rec PREFIX ROOT',
        description="MXNet's tools/im2rec.py form: with --list, write PREFIX*.lst from the images under ROOT; "
                    "without, pack every PREFIX*.lst into .rec + .idx. Same lists and records as MXNet's tool; "
                    "bad input stops with one error line instead of being skipped (see data/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('prefix', help='prefix of the .lst, .rec and .idx files')
    parser.add_argument('root', help='folder holding the images')
    g = parser.add_argument_group('Options for creating image lists')
    g.add_argument('--list', action='store_true', help='write the lists instead of packing them')
    g.add_argument('--exts', nargs='+', default=list(MXNET_EXTS), help='image extensions (lower case)')
    g.add_argument('--chunks', type=int, default=1, help='number of chunks')
    g.add_argument('--train-ratio', type=float, default=1.0, help='fraction of the images for _train.lst')
    g.add_argument('--test-ratio', type=float, default=0.0, help='fraction of the images for _test.lst')
    g.add_argument('--recursive', action='store_true',
                   help='walk the sub-folders; every folder holding images is one class')
    g.add_argument('--no-shuffle', dest='shuffle', action='store_false', help='keep the walk order')
    g = parser.add_argument_group('Options for creating the database')
    g.add_argument('--pass-through', action='store_true',
                   help='keep the bytes of colour 8-bit JPEG/PNG files (others are still converted)')
    g.add_argument('--resize', type=int, default=0, help='resize the shorter side to this (0: keep)')
    g.add_argument('--center-crop', action='store_true', help='not supported (refused)')
    g.add_argument('--quality', type=int, default=95, help='JPEG quality 1-100, or PNG compression 0-9')
    g.add_argument('--num-thread', type=int, default=max(1, (os.cpu_count() or 1)),
                   help='worker processes (the output is the same for any number)')
    g.add_argument('--color', type=int, default=1, choices=[-1, 0, 1],
                   help='only 1 (colour) is supported: every record is 3-channel colour')
    g.add_argument('--encoding', default='.jpg', choices=['.jpg', '.png'], help='encoding of the records')
    g.add_argument('--pack-label', action='store_true', help='pack every label of a line, not only the first')
    g.add_argument('--skip-bad', action='store_true',
                   help='skip unreadable images with a warning (MXNet skips them in silence)')
    g.add_argument('--quiet', action='store_true', help='no progress or summary lines')
    return parser


def mxnet_main(argv):
    """``crunet-im2rec PREFIX ROOT [--list [--recursive] ...]``: MXNet's ``tools/im2rec.py`` command
    line, with its list algorithm and its record encoding (``cv2.imread`` colour, JPEG quality 95,
    its resize); what differs on purpose is written in ``data/README.md``."""
    args = build_mxnet_parser().parse_args(argv)
    if args.center_crop:
        raise PackError('--center-crop is not supported: the iterators crop (--image-shape)')
    if args.color != 1:
        raise PackError('--color %d is not supported: every record is 3-channel colour (the iterators make '
                        'grayscale with --image-shape 1,H,W)' % args.color)
    prefix, root = os.path.abspath(args.prefix), os.path.abspath(args.root)
    say = (lambda msg: None) if args.quiet else _say
    if args.list:
        mxnet_make_lists(prefix, root, args.recursive, tuple(args.exts), args.chunks, args.train_ratio,
                         args.test_ratio, args.shuffle, log=say)
        return 0
    _check_pack_flags(args, png_quality=args.encoding == '.png')
    lists = mxnet_lists_of(prefix)
    if not lists:
        raise PackError('no list file starts with %s (write them first: crunet-im2rec %s %s --list --recursive)'
                        % (prefix, args.prefix, args.root))
    if not os.path.isdir(root):
        raise PackError('image root folder not found: %s' % root)
    for lst in lists:
        pack(lst, root, resize=args.resize, quality=args.quality if args.encoding == '.jpg' else 95,
             encoding=args.encoding, pass_through=args.pass_through, num_thread=args.num_thread,
             skip_bad=args.skip_bad, progress=not args.quiet, png_level=min(max(args.quality, 0), 9), log=say,
             mxnet=True,
             pack_label=args.pack_label)
    return 0


def exit_cleanly_on_sigterm():
    """Make SIGTERM end the process like SIGINT does: one ``error:`` line, exit 143, after the
    ``finally`` / ``except`` blocks ran (so no ``.part`` / ``.tmp`` file is left behind)."""
    def terminated(signum, frame):
        die('terminated (SIGTERM)', EXIT_TERMINATED)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminated)


def run(argv=None):
    """The ``crunet-im2rec`` command: :func:`main` under the exit-code convention of
    :mod:`crunet.errors` (bad input: one ``error:`` line, exit 2; a system failure such as a full
    disk: 1; SIGINT 130, SIGTERM 143)."""
    exit_cleanly_on_sigterm()
    return cli_main(main, argv)


if __name__ == '__main__':
    sys.exit(run())
