"""Devices of a run: ``--gpus`` and ``--cpus`` parsed and checked, MXNet contexts."""
import re

from .errors import CLIError

__all__ = ['num_gpus', 'parse_devices', 'parse_gpus', 'get_contexts']


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
    """GPU ids of ``--gpus``, checked before anything is built: the MXNet build must be a CUDA
    one, its CUDA libraries and the NVIDIA driver present, the GPUs must exist, and the build must
    carry code for each GPU's compute capability (:func:`crunet.gpu.check_gpus`; the MXNet CUDA
    11 wheels stop at 8.x: no Hopper). ``available`` (a GPU count) replaces the build and driver
    checks with a plain range check. Raises :class:`CLIError` with a one-line message."""
    ids = parse_devices(spec, '--gpus')
    if not ids:
        return ids
    if available is None:
        from . import cudabuild, gpu
        build = cudabuild.mxnet_build()
        if not build.cuda:
            raise CLIError('--gpus %s: this MXNet build sees no GPU (%s %s is the CPU build: its '
                           'libmxnet.so holds no CUDA code); leave --gpus empty to run on the CPU, or '
                           'install a CUDA build (make install MXNET=cu117, or pip install -e .[cu117])'
                           % (spec, build.distribution, build.version))
        cudabuild.preload_cuda_libraries(build.library)   # a missing library or driver: one line
        gpu.check_gpus(ids, spec, build)
        return ids
    if available == 0:
        raise CLIError('--gpus %s: this MXNet build sees no GPU; leave --gpus empty to run on the CPU, '
                       'or install a CUDA build (make install MXNET=cu117)' % spec)
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
