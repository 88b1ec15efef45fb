"""The record each benchmark run leaves: ``bench/records/KIND-<UTC time>.json`` with the command,
the machine (CPU model, cores, the ISA oneDNN runs), the package versions, the commit and every
round, so a figure quoted in README names the run it comes from."""
import os
import subprocess
import sys
import time

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from crunet.files import atomic_write_text  # noqa: E402

__all__ = ['RECORD_DIR', 'record_path', 'package_versions', 'git_commit', 'machine', 'stamp', 'write']

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: where the records go (each benchmark's ``--record-dir``)
RECORD_DIR = os.path.join(ROOT, 'bench', 'records')


def record_path(directory, kind, ended):
    """``DIR/KIND-<UTC time ended>.json``; None without a directory."""
    if not directory:
        return None
    return os.path.join(directory, '%s-%s.json' % (kind, time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(ended))))


def package_versions():
    """Versions of the packages the figures depend on (None: not installed)."""
    from importlib import metadata
    out = {}
    for name in ('mxnet', 'numpy', 'gluoncv', 'gluoncv2', 'opencv-python', 'horovod'):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit():
    """The checkout's commit, '(modified)' when tracked files differ from it; None outside git."""
    try:
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True, timeout=10)
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() + (' (modified)' if dirty.stdout.strip() else '')) or None


def machine():
    """CPU model, cores and oneDNN's ISA (``crunet.isa``), and the line naming them."""
    from crunet import isa
    info = isa.detect()
    return dict(cpu=info['cpu'], cores=info['cores'], isa=info['isa'], onednn=info.get('onednn'),
                name=isa.describe(info))


def stamp(report, command):
    """Add what every record carries to ``report`` (in place): command, versions, commit, end time."""
    report.update(command=command, versions=package_versions(), commit=git_commit(), ended=time.time())
    report.setdefault('machine', machine())
    return report


def write(report, kind, record_dir, also=None, log=None):
    """Write ``report`` (stamped) as the run's record under ``record_dir`` and to ``also``; returns the paths."""
    import json
    paths = [p for p in (record_path(record_dir, kind, report['ended']), also) if p]
    for path in paths:
        atomic_write_text(path, json.dumps(report, indent=1, sort_keys=True) + '\n')
        if log:
            log('wrote %s' % path)
    return paths
