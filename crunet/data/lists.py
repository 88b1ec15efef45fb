"""Image lists for packing: a folder-per-class tree or a label list (Places365 / caffe "path label",
MXNet ``.lst``, ImageNet ``LOC_val_solution.csv``) to ``.lst`` files, split and shuffled with a seed.

A one-label list must hold whole class numbers (0..2^24); every problem is a :class:`PackError`
naming the file and line.
"""
import collections
import os
import random

import numpy as np

from ..files import atomic_save
from .recordio import RecordError

__all__ = ['PackError', 'IMAGE_EXTS', 'MAX_LABEL', 'ensure_dir', 'check_class_labels', 'walk_tree',
           'list_from_folders', 'load_synset', 'read_list_file', 'split_items', 'write_lst', 'read_lst',
           'make_lists']

#: file extensions taken as images when walking a folder tree (compared lower-case)
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.gif', '.ppm', '.pgm')


class PackError(RecordError):
    """Bad input for listing or packing images; the message is one line naming the file."""


#: the largest class label a float32 record header holds exactly (2^24)
MAX_LABEL = 1 << 24


def ensure_dir(path, what):
    """Create folder ``path`` (and its parents) for ``what`` (e.g. ``'output prefix runs/x'``), or
    raise PackError naming the part of the path that is a file, or the permission that is missing."""
    path = os.path.abspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        probe = path
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(probe)
        raise PackError('%s: %s is a file, not a folder' % (what, probe or path)) from None
    except PermissionError as e:
        raise PackError('%s: cannot create folder %s: %s' % (what, path, e.strerror)) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PackError('%s: folder %s is not writable' % (what, path))
    return path


def check_class_labels(labels, where):
    """Labels of one list line: all finite; a single label must be a class number (a whole number
    in 0..2^24, what a float32 header holds exactly) -- ``3.5`` would be packed, checked and
    trained as class 3. ``where`` names the file and line."""
    for x in labels:
        if not np.isfinite(x):
            raise PackError('%s: label %r is not a finite number' % (where, x))
    if len(labels) == 1:
        x = labels[0]
        if not float(x).is_integer() or x < 0:
            raise PackError('%s: label %s is not a class number (0, 1, 2, ...); a one-label list holds class '
                            'labels' % (where, _fmt_label(x)))
        if x > MAX_LABEL:
            raise PackError('%s: label %s is larger than %d, the largest class a RecordIO header holds exactly'
                            % (where, _fmt_label(x), MAX_LABEL))


# ---------------------------------------------------------------------------------------------
# Lists
# ---------------------------------------------------------------------------------------------
def walk_tree(root):
    """``os.walk(root, followlinks=True)`` (top-down: the caller may sort the folder lists), refusing a
    symbolic link back to a folder it is in: the walk would list the same images again and again
    (about 40 times, until the system refuses to resolve the path) in silence."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = os.path.realpath(dirpath)
        for d in dirnames:
            link = os.path.join(dirpath, d)
            real = os.path.realpath(link)
            if here == real or here.startswith(real.rstrip(os.sep) + os.sep):
                raise PackError('%s links back to %s, a folder it is in: the image tree loops' % (link, real))
        yield dirpath, dirnames, filenames


def _is_image(name, exts):
    return os.path.splitext(name)[1].lower() in exts


def list_from_folders(root, exts=IMAGE_EXTS):
    """Items ``(relpath, label)`` of a folder-per-class tree and the class names (label order).

    Classes are the sorted names of ``root``'s sub-folders; a class's images are found in its
    folder and below (sorted). Files directly in ``root`` are ignored. An empty class folder is
    an error: it would silently shift every later label.
    """
    if not os.path.isdir(root):
        raise PackError('image folder not found: %s' % root)
    exts = tuple(e.lower() for e in exts)
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise PackError('no class folders in %s (expected ROOT/<class>/<image>)' % root)
    items = []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in walk_tree(os.path.join(root, cls)):
            dirnames.sort()
            for fn in sorted(filenames):
                if _is_image(fn, exts):
                    found.append(os.path.relpath(os.path.join(dirpath, fn), root))
        if not found:
            raise PackError('empty class folder: %s (no %s files)' % (os.path.join(root, cls), '/'.join(exts)))
        items.extend((p.replace(os.sep, '/'), label) for p in found)
    return items, classes


def load_synset(path):
    """Class name -> label from a synset file or a folder of class folders.

    File: one class per line, the first word is the name (``synset.txt``:
    ``n01440764``; ``LOC_synset_mapping.txt``: ``n01440764 tench, Tinca tinca``; Places365
    ``categories_places365.txt``: ``/a/airfield 0``), label = line number. Folder: its sorted
    sub-folder names (the ImageNet ``train/`` folder gives the usual 0..999 order).
    """
    if os.path.isdir(path):
        names = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    elif os.path.isfile(path):
        with open(path) as f:
            names = [line.split()[0] for line in f if line.strip()]
    else:
        raise PackError('synset file or folder not found: %s' % path)
    if not names:
        raise PackError('no class names in %s' % path)
    return {name: i for i, name in enumerate(names)}


def _parse_label(tok, synset, where):
    try:
        return float(tok)
    except ValueError:
        pass
    if synset is None:
        raise PackError('%s: label %r is not a number; give --synset to map class names to labels' % (where, tok))
    if tok not in synset:
        raise PackError('%s: class %r is not in the synset' % (where, tok))
    return float(synset[tok])


def read_list_file(path, synset=None, ext=''):
    """Items ``(relpath, labels)`` from a label list. Formats, detected per file:

    - MXNet ``.lst``: ``index<TAB>label[<TAB>label...]<TAB>path``;
    - ``path label`` lines (Places365 ``places365_train_standard.txt`` / ``places365_val.txt``,
      caffe ``val.txt``; a leading ``/`` is dropped), the label a number or a synset name;
    - CSV with header ``ImageId,PredictionString`` (ImageNet ``LOC_val_solution.csv``): the
      label is the first synset of PredictionString (needs ``synset``), the path
      ``ImageId + ext`` (give ``ext='.JPEG'``).
    """
    if not os.path.isfile(path):
        raise PackError('list file not found: %s' % path)
    with open(path, 'r', encoding='utf-8', errors='replace') as f:
        lines = f.read().splitlines()
    items = []
    first = next((l for l in lines if l.strip()), '')
    if first.replace(' ', '').lower().startswith('imageid,predictionstring'):
        for lineno, line in enumerate(lines, 1):
            if not line.strip() or lineno == 1:
                continue
            where = '%s line %d' % (path, lineno)
            cells = line.split(',', 1)
            if len(cells) != 2 or not cells[1].split():
                raise PackError('%s: expected "ImageId,PredictionString", got %r' % (where, line[:60]))
            items.append((cells[0].strip() + ext, [_parse_label(cells[1].split()[0], synset, where)]))
    else:
        for lineno, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith('#'):
                continue
            where = '%s line %d' % (path, lineno)
            if '\t' in line and len(line.split('\t')) >= 3:
                cells = line.split('\t')
                labels = [_parse_label(c.strip(), synset, where) for c in cells[1:-1]]
                rel = cells[-1].strip()
            else:
                cells = line.split()
                if len(cells) < 2:
                    raise PackError('%s: expected "path label", got %r' % (where, line[:60]))
                rel = cells[0]
                labels = [_parse_label(c, synset, where) for c in cells[1:]]
            check_class_labels(labels, where)
            items.append((rel.lstrip('/') + (ext if not os.path.splitext(rel)[1] else ''), labels))
    if not items:
        raise PackError('list file %s lists no images' % path)
    return items


def split_items(items, train_ratio, seed=0):
    """Deterministic stratified split: per first label, shuffled by ``seed``, ``round(ratio*n)`` to train."""
    if not 0.0 < train_ratio <= 1.0:
        raise PackError('--train-ratio must be in (0, 1], not %s' % train_ratio)
    if train_ratio >= 1.0:
        return list(items), []
    groups = collections.OrderedDict()
    for it in items:
        groups.setdefault(_labels(it)[0], []).append(it)
    train, val = [], []
    for label in sorted(groups):
        g = list(groups[label])
        random.Random('%s/%s' % (seed, label)).shuffle(g)
        k = int(round(train_ratio * len(g)))
        if len(g) > 1:
            k = min(max(k, 1), len(g) - 1)     # every class in both parts when it can be
        train.extend(g[:k])
        val.extend(g[k:])
    return train, val


def _labels(item):
    lab = item[1]
    return list(lab) if isinstance(lab, (list, tuple, np.ndarray)) else [lab]


def _fmt_label(x):
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def write_lst(path, items):
    """Write MXNet ``.lst`` lines ``index<TAB>label(s)<TAB>relpath`` (index = line number),
    atomically (a failure leaves the previous file, or none)."""
    ensure_dir(os.path.dirname(os.path.abspath(path)), 'list %s' % path)
    if os.path.isdir(path):
        raise PackError('list %s is a folder' % path)
    atomic_save(path, ''.join('%d\t%s\t%s\n' % (i, '\t'.join(_fmt_label(l) for l in _labels(it)), it[0])
                              for i, it in enumerate(items)))


def read_lst(path):
    """Items ``(index, labels, relpath)`` of an MXNet ``.lst`` (cells stripped, as MXNet's tool
    does). Refused with PackError naming the line: a malformed line, an index that is negative,
    too large or repeated (it is the record's key), a label that is not finite, and in a one-label
    line a label that is not a class number (see :func:`check_class_labels`)."""
    if not os.path.isfile(path):
        raise PackError('list file not found: %s' % path)
    out = []
    seen = {}
    with open(path, 'r', encoding='utf-8', errors='replace') as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip('\r\n')
            if not line.strip():
                continue
            cells = [c.strip() for c in line.strip().split('\t')]
            where = '%s line %d' % (path, lineno)
            try:
                if len(cells) < 3 or not cells[-1]:
                    raise ValueError
                index, labels = int(cells[0]), [float(c) for c in cells[1:-1]]
            except ValueError:
                raise PackError('%s is not "index<TAB>label<TAB>path": %r' % (where, line[:60])) from None
            if not 0 <= index < 1 << 63:
                raise PackError('%s: index %d is not in 0..2^63-1' % (where, index))
            if index in seen:
                raise PackError('%s: index %d is already used on line %d (the index is the record key)'
                                % (where, index, seen[index]))
            seen[index] = lineno
            check_class_labels(labels, where)
            out.append((index, labels, cells[-1]))
    if not out:
        raise PackError('list file %s lists no images' % path)
    return out


def make_lists(prefix, root, list_file=None, synset=None, ext='', train_ratio=1.0, seed=0, shuffle=True,
               exts=IMAGE_EXTS, log=None):
    """Write ``PREFIX.lst`` (or ``PREFIX_train.lst`` + ``PREFIX_val.lst`` when ``train_ratio < 1``).

    Items come from ``list_file`` (see :func:`read_list_file`; paths relative to ``root``) or,
    without one, from the class folders of ``root`` (then ``PREFIX_synset.txt`` lists the class
    names in label order). Lists are shuffled with ``seed`` unless ``shuffle`` is false: a shuffled
    file lets each distributed worker's contiguous part hold every class. Returns the list paths.
    """
    log = log or (lambda msg: None)
    if not 0.0 < train_ratio <= 1.0:
        raise PackError('--train-ratio must be in (0, 1], not %s' % train_ratio)
    if list_file:
        items = read_list_file(list_file, load_synset(synset) if synset else None, ext)
    else:
        items, classes = list_from_folders(root, exts)
    ensure_dir(os.path.dirname(os.path.abspath(prefix)), 'output prefix %s' % prefix)
    if not list_file:
        atomic_save(prefix + '_synset.txt', ''.join(c + '\n' for c in classes))
        log('%d classes in %s (names in %s_synset.txt)' % (len(classes), root, prefix))
    if train_ratio >= 1.0:
        parts = [('', items)]
    else:
        parts = list(zip(('_train', '_val'), split_items(items, train_ratio, seed)))
    paths = []
    for suffix, part in parts:
        part = list(part)
        if shuffle:
            random.Random(seed).shuffle(part)
        path = prefix + suffix + '.lst'
        write_lst(path, part)
        log('wrote %s: %d images' % (path, len(part)))
        paths.append(path)
    return paths
