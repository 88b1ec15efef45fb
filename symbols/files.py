"""Files that are never seen half-written: :func:`atomic_save` writes a temporary beside the
file and renames it over the file, so a reader finds the old contents or the new, never a torn
file. Standard library only (MXNet savers come in as the ``writer`` callable)."""
import contextlib
import errno
import os
import re
import secrets
import socket
import sys

from .errors import error_line

__all__ = ['atomic_save', 'atomic_write_text', 'SaveError', 'temp_path', 'host_tag']


def host_tag():
    """This host's name as it appears in temporary file names."""
    return re.sub(r'[^A-Za-z0-9.-]', '_', socket.gethostname()) or 'localhost'


def temp_path(path):
    """The temporary file :func:`atomic_save` fills for ``path``: ``PATH.HOST-PID-RANDOM.tmp``, unique
    per process and per call, so two writers of one path never share (or rename away) a temporary."""
    return '%s.%s-%d-%s.tmp' % (path, host_tag(), os.getpid(), secrets.token_hex(4))


class SaveError(OSError):
    """Writing a file failed (a full disk, a quota, a file size limit): the message names the
    file and the cause. An ``OSError``, so commands exit 1 (an environment failure)."""

    def __init__(self, path, cause, code=None):
        super(SaveError, self).__init__(code, cause, path)
        self.cause = cause
        self.message = 'cannot write %s: %s' % (path, cause)

    def part_of(self, whole):
        """The same failure told as one of ``whole``'s files (a checkpoint's ``.states`` or symbol
        file): ``cannot write WHOLE (its PATH): CAUSE``."""
        err = SaveError(whole, self.cause, self.errno)
        err.message = 'cannot write %s (its %s): %s' % (whole, self.filename, self.cause)
        return err

    def __str__(self):
        return self.message


def _cause(exc, directory):
    """``(errno, words)`` of a failed write: OSError's own, or for an MXNet writer (whose message
    only says ``fwrite`` failed) the state of the file system the file was going to."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno, os.strerror(exc.errno).lower()
    try:
        st = os.statvfs(directory)
        if st.f_bavail * st.f_frsize < 1 << 20:
            return errno.ENOSPC, 'no space left on device (%s has %d KiB free)' % (
                directory, st.f_bavail * st.f_frsize // 1024)
    except OSError:
        pass
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return errno.EFBIG, 'file size limit exceeded (RLIMIT_FSIZE %d bytes)' % soft
    return None, error_line(exc)


def atomic_save(path, writer):
    """Write ``path`` atomically: ``writer(tmp_path)`` fills a temporary file of the same
    directory (:func:`temp_path`, unique per process and call), which is flushed to disk and
    renamed over ``path`` with ``os.replace``. A crash at any point leaves either the old
    ``path`` or the new one, never a torn file; a failed write removes the temporary and raises
    :class:`SaveError` naming ``path`` and the cause (no space left on device, ...). ``writer``
    receives the temporary *path* (so MXNet savers such as ``mx.nd.save``/``Symbol.save`` can
    fill it); bytes or a str are written as they are. Returns ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = temp_path(path)
    try:
        try:
            if isinstance(writer, (bytes, bytearray)):
                with open(tmp, 'wb') as f:
                    f.write(writer)
            elif isinstance(writer, str):
                with open(tmp, 'w') as f:
                    f.write(writer)
            else:
                writer(tmp)
        except Exception as exc:
            if not isinstance(exc, OSError) and type(exc).__name__ != 'MXNetError':
                raise
            code, cause = _cause(exc, directory)
            raise SaveError(path, cause, code) from None
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
