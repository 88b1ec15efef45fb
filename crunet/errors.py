"""Errors the command lines report, the exit-code convention, and MXNet's error messages cut to one line.

Exit codes of every command (``crunet-train``, ``crunet-score``, ``crunet-im2rec``,
``crunet-export``, ``crunet-launch`` and the root scripts):

====  =====================================================================================
0     success
1     internal or environment failure (an MXNet error that is not the user's input, a full disk)
2     bad input: a flag, a file, a record, a process the user named (``error: ...`` names it)
3     training diverged (the loss or the weights became NaN/Inf)
130   interrupted (SIGINT), 143 terminated (SIGTERM)
====  =====================================================================================
"""
import sys

from symbols.errors import error_line

__all__ = ['UserError', 'CLIError', 'ConfigError', 'DataError', 'TrainingDiverged', 'EXIT_OK', 'EXIT_INTERNAL',
           'EXIT_USER', 'EXIT_DIVERGED', 'EXIT_INTERRUPTED', 'EXIT_TERMINATED', 'die', 'error_line', 'cli_main']

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class UserError(Exception):
    """Bad input the user can fix (a flag, a file, a record, a process): one line ``error: ...``,
    exit 2. The libraries raise its subclasses (the domain errors below, and the zoo's own
    ``ValueError`` types, ``symbols.checkpoint.CheckpointError``, ``symbols.ChoiceError``, ...);
    :func:`cli_main` alone turns them into the line and the exit code."""


class CLIError(UserError):
    """A flag, or a combination of flags, of the command line."""


class ConfigError(CLIError):
    """A setting that does not fit what a library finds (the run's files, the folder it names);
    the message names the flag."""


class DataError(CLIError):
    """Unusable input data (a RecordIO file, an image list, an image file); the message is one
    line naming the file (and record). A :class:`CLIError` as well: the data comes in through a
    flag (``--data-train``, ``--data-val``, ``--image``, ...), and code catching CLIError sees it."""


class TrainingDiverged(UserError):
    """The loss, the weights or the BatchNorm statistics became NaN or infinite: exit 3."""


def die(msg, code=EXIT_USER):
    """Print ``error: msg`` (one line, on stderr) and exit with ``code`` (non-zero)."""
    msg = ' '.join(str(msg).split())         # exactly one line, whatever the message held
    sys.stderr.write('error: %s\n' % msg)
    sys.stderr.flush()
    raise SystemExit(code)


def cli_main(main, argv=None, user_errors=()):
    """Run ``main(argv)`` under the exit-code convention: :class:`UserError` and ``user_errors``
    exit 2 (``TrainingDiverged`` 3), MXNet errors and ``OSError``/``MemoryError`` exit 1, SIGINT
    130; each prints one line ``error: ...`` and no traceback. Returns ``main``'s value (an int
    becomes the exit status when the caller passes it to ``sys.exit``)."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        die('interrupted', EXIT_INTERRUPTED)
    except TrainingDiverged as exc:
        die(exc, EXIT_DIVERGED)
    except (UserError,) + tuple(user_errors) as exc:
        die(error_line(exc, limit=2000))
    except (OSError, MemoryError) as exc:
        die(exc, EXIT_INTERNAL)
    except Exception as exc:                 # MXNetError and the like: one line, never a trace
        if type(exc).__name__ == 'MXNetError':
            die('MXNet: %s' % error_line(exc), EXIT_INTERNAL)
        raise
