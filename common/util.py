"""Small helpers shared by the command-line tools: one-line CLI errors, device parsing, atomic writes.

Nothing here imports the model zoo or the data pipeline, so any script may use it.
"""
import argparse
import contextlib
import logging
import os
import re
import sys

__all__ = ['CLIError', 'die', 'ArgParser', 'setup_logging', 'atomic_save', 'atomic_write_text', 'parse_devices',
           'parse_gpus', 'get_contexts', 'num_gpus', 'cli_main', 'format_seconds']


class CLIError(Exception):
    """A user error (bad flag, missing file): printed as one line ``error: ...`` by :func:`cli_main`."""


def die(msg, code=2):
    """Print ``error: msg`` (one line, on stderr) and exit with ``code`` (non-zero)."""
    msg = ' '.join(str(msg).split())         # exactly one line, whatever the message held
    sys.stderr.write('error: %s\n' % msg)
    sys.stderr.flush()
    raise SystemExit(code)


class ArgParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (``error: ...``), exit status 2."""

    def error(self, message):
        die('%s (see %s --help)' % (message, self.prog))


def cli_main(main, argv=None, expected=()):
    """Run ``main(argv)``; :class:`CLIError` and the exception types in ``expected`` become a
    one-line ``error: ...`` and exit status 2 instead of a traceback. Returns main's value."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        die('interrupted', 130)
    except (CLIError,) + tuple(expected) as exc:
        die(_first_line(exc))


def _first_line(exc):
    """The useful line of an exception message (MXNetError messages carry a C++ stack trace)."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    for ln in reversed(lines):              # "MXNetError: Check failed: ..." after the trace
        if ln.startswith('MXNetError:') or 'Check failed' in ln:
            ln = re.sub(r'^MXNetError:\s*', '', ln)
            return re.sub(r'^\[[\d:]+\]\s*\S+:\d+:\s*', '', ln)
    return re.sub(r'^\[[\d:]+\]\s*\S+:\d+:\s*', '', lines[0])


LOG_FORMAT = '%(asctime)-15s %(message)s'


def setup_logging(tag='', level=logging.INFO):
    """Log to stderr in MXNet's example format (``time message``, ``time Node[R] message`` with
    ``tag='Node[R] '``). Calling it again only changes the tag of the handler it installed;
    handlers installed by others (an embedding program, pytest) are left alone."""
    root = logging.getLogger()
    fmt = logging.Formatter(LOG_FORMAT.replace('%(message)s', tag + '%(message)s'))
    mine = [h for h in root.handlers if getattr(h, '_crunet_owned', False)]
    if mine:
        for h in mine:
            h.setFormatter(fmt)
    elif not root.handlers:
        h = logging.StreamHandler()
        h._crunet_owned = True
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level)
    return fmt


def format_seconds(sec):
    """``3725.2`` -> ``'1:02:05'``; ``None`` -> ``'?'``."""
    if sec is None or sec != sec or sec < 0:
        return '?'
    sec = int(round(sec))
    return '%d:%02d:%02d' % (sec // 3600, sec // 60 % 60, sec % 60)


# ----------------------------------------------------------------------------- atomic files
def atomic_save(path, writer):
    """Write ``path`` atomically: ``writer(tmp_path)`` fills ``path + '.tmp'`` (same directory),
    which is flushed to disk and renamed over ``path`` with ``os.replace``. A crash at any point
    leaves either the old ``path`` or the new one, never a torn file. ``writer`` receives the
    temporary *path* (so MXNet savers such as ``mx.nd.save``/``Symbol.save`` can fill it); bytes
    or a str are written as they are. Returns ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + '.tmp'
    try:
        if isinstance(writer, (bytes, bytearray)):
            with open(tmp, 'wb') as f:
                f.write(writer)
        elif isinstance(writer, str):
            with open(tmp, 'w') as f:
                f.write(writer)
        else:
            writer(tmp)
        _fsync(tmp)
        _before_replace_hook(path)
        os.replace(tmp, path)
        _fsync(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path, text):
    """Atomically replace ``path`` with the string ``text``."""
    return atomic_save(path, text)


def _fsync(path):
    """Flush a file's (or a directory's entries') data to disk; best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _before_replace_hook(path):
    """Test hook: with ``CRUNET_TEST_SAVE_PAUSE=SECONDS[:SUBSTRING]`` set, pause between writing
    the temporary file and renaming it (for files whose name contains SUBSTRING), announcing the
    pause on stderr, so a test can SIGKILL a process in the middle of a checkpoint."""
    spec = os.environ.get('CRUNET_TEST_SAVE_PAUSE')
    if not spec:
        return
    seconds, _, pattern = spec.partition(':')
    if pattern and pattern not in os.path.basename(path):
        return
    import time
    sys.stderr.write('CRUNET_TEST_SAVE_PAUSE: writing %s\n' % path)
    sys.stderr.flush()
    time.sleep(float(seconds))


# ----------------------------------------------------------------------------- devices
def num_gpus():
    """GPUs visible to this MXNet build (0 on a CPU-only build or without a driver)."""
    import mxnet as mx
    try:
        return mx.context.num_gpus()
    except Exception:                       # CPU builds may raise instead of answering 0
        return 0


def parse_devices(spec, flag='--gpus'):
    """``'0,1,3'`` -> ``[0, 1, 3]``; ``''``/``None`` -> ``[]``. Also accepts ranges ``'0-3'``.
    Raises :class:`CLIError` naming ``flag`` for anything else or for duplicates."""
    if spec is None:
        return []
    spec = str(spec).strip()
    if not spec:
        return []
    ids = []
    for part in spec.split(','):
        part = part.strip()
        m = re.fullmatch(r'(\d+)(?:-(\d+))?', part)
        if not m:
            raise CLIError("%s %r: expected comma-separated device ids such as 0,1,2" % (flag, spec))
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise CLIError('%s %r: empty range %s' % (flag, spec, part))
        ids.extend(range(lo, hi + 1))
    if len(set(ids)) != len(ids):
        raise CLIError('%s %r: a device is listed twice' % (flag, spec))
    return ids


def parse_gpus(spec, available=None):
    """GPU ids of ``--gpus``, checked against the GPUs this build sees (``available``; asked from
    MXNet when None). Raises :class:`CLIError` with a one-line message."""
    ids = parse_devices(spec, '--gpus')
    if not ids:
        return ids
    if available is None:
        available = num_gpus()
    if available == 0:
        raise CLIError('--gpus %s: this MXNet build sees no GPU (mx.context.num_gpus() == 0); '
                       'leave --gpus empty to train on the CPU, or install mxnet-cu112 '
                       '(make install MXNET=gpu)' % spec)
    bad = [i for i in ids if i >= available]
    if bad:
        raise CLIError('--gpus %s: GPU %d does not exist (this machine has %d: 0..%d)'
                       % (spec, bad[0], available, available - 1))
    return ids


def get_contexts(gpus='', cpus=1):
    """MXNet contexts for ``--gpus`` (ids string) or, when empty, ``cpus`` CPU contexts
    ``[cpu(0), ..., cpu(cpus-1)]`` (several CPU contexts run data parallel like GPUs do)."""
    import mxnet as mx
    ids = parse_gpus(gpus)
    if ids:
        return [mx.gpu(i) for i in ids]
    try:
        cpus = int(cpus)
    except (TypeError, ValueError):
        raise CLIError('--cpus %r: expected a positive integer' % (cpus,))
    if cpus < 1:
        raise CLIError('--cpus %d: expected a positive integer' % cpus)
    return [mx.cpu(i) for i in range(cpus)]
