"""Files that are never seen half-written (:mod:`symbols.files`, the one atomic writer, used here
as well), the lock that keeps two runs off one model prefix, and output folders."""
import contextlib
import errno
import fcntl
import glob
import os
import re
import socket

from symbols.files import SaveError, atomic_save, atomic_write_text, host_tag, temp_path

from .errors import CLIError

__all__ = ['atomic_save', 'atomic_write_text', 'SaveError', 'PrefixLock', 'PrefixInUse', 'temp_path',
           'output_folder']

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
        mine = re.compile(r'\.%s-(?P<pid>\d+)-[0-9a-f]+\.tmp$' % re.escape(host_tag()))
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
