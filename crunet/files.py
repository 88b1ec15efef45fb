"""Files that are never seen half-written, and the lock that keeps two runs off one model prefix."""
import contextlib
import errno
import fcntl
import glob
import os
import re
import secrets
import socket
import sys

from .errors import CLIError

__all__ = ['atomic_save', 'atomic_write_text', 'SaveError', 'PrefixLock', 'PrefixInUse', 'temp_path',
           'output_folder']

def _host():
    return re.sub(r'[^A-Za-z0-9.-]', '_', socket.gethostname()) or 'localhost'


def temp_path(path):
    """The temporary file :func:`atomic_save` fills for ``path``: ``PATH.HOST-PID-RANDOM.tmp``, unique
    per process and per call, so two writers of one path never share (or rename away) a temporary."""
    return '%s.%s-%d-%s.tmp' % (path, _host(), os.getpid(), secrets.token_hex(4))


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
    from .errors import error_line
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


# ----------------------------------------------------------------------------- the prefix lock
class PrefixInUse(CLIError):
    """Another live process holds the lock of a model prefix (the message names both): exit 2."""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PrefixLock(object):
    """``PREFIX.lock``: one training at a time per model prefix.

    Taken with ``fcntl.flock`` (exclusive, non-blocking) on ``PREFIX.lock``, which then holds
    ``pid host``. The kernel drops the lock when its process dies, however it dies, so a lock
    left by a dead process never blocks; a second live process gets :class:`PrefixInUse` at once,
    naming the prefix and the holder. Taking the lock also removes the temporary files
    (:func:`temp_path`) that dead processes of this host left under the prefix (a SIGKILL in the
    middle of a save). :meth:`release` (or the end of the process) frees it.
    """

    def __init__(self, prefix):
        self.prefix = os.fspath(prefix)
        self.path = self.prefix + '.lock'
        self._fd = None
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise PrefixInUse('--model-prefix %s is in use by %s (lock %s); wait for it to finish or '
                                  'choose another --model-prefix' % (self.prefix, holder, self.path))
            # the file may have been removed (released) between open and flock: lock the new one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, ('%d %s\n' % (os.getpid(), socket.gethostname())).encode())
        os.fsync(fd)
        self._fd = fd
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self):
        mine = re.compile(r'\.%s-(?P<pid>\d+)-[0-9a-f]+\.tmp$' % re.escape(_host()))
        for path in glob.glob(glob.escape(self.prefix) + '[-.]*.tmp'):
            m = mine.search(path)
            if m and not _alive(int(m.group('pid'))):
                with contextlib.suppress(OSError):
                    os.remove(path)

    def release(self):
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.release()


def _read_holder(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        words = os.read(fd, 200).decode(errors='replace').split()
    except OSError:
        words = []
    if len(words) >= 2 and words[0].isdigit():
        return 'process %s on %s' % (words[0], words[1])
    return 'another process'


def output_folder(path, flag):
    """Create the folder of output ``path`` (:class:`CLIError` naming ``flag`` when it cannot be:
    a regular file on the way, no permission)."""
    folder = os.path.dirname(os.path.abspath(path))
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise CLIError('%s %s: %s is a file, not a folder' % (flag, path, probe))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise CLIError('%s %s: cannot create the folder %s (%s)' % (flag, path, folder, err.strerror or err))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError('%s %s: the folder %s is not writable' % (flag, path, folder))
    return folder
