"""MXNet's error messages cut to one line (they carry a C++ stack trace). Standard library only."""
import re

__all__ = ['error_line']

_LOC = re.compile(r'^\[[\d:]+\]\s*\S+:\d+:\s*')


def error_line(exc, limit=300):
    """The useful line of an exception message: MXNetError messages carry a C++ stack trace,
    and the line that says what happened is the ``Check failed`` / ``MXNetError:`` one."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    for ln in reversed(lines):
        if ln.startswith('MXNetError:') or 'Check failed' in ln or 'not registered' in ln:
            return _LOC.sub('', re.sub(r'^MXNetError:\s*', '', ln))[:limit]
    return _LOC.sub('', lines[0])[:limit]
