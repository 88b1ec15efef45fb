"""Files that are never seen half-written, and the lock that keeps two runs off one model prefix."""
import contextlib
import os
import sys

__all__ = ['atomic_save', 'atomic_write_text']


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
