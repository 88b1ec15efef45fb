"""Log lines in MXNet's example format, and durations for progress lines."""
import logging

__all__ = ['LOG_FORMAT', 'setup_logging', 'format_seconds']

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
