"""Settings for speed: the environment applied before MXNet is imported.

    from crunet import perf
    perf.configure()          # first thing, before ``import mxnet``
    import mxnet as mx

Why (measured in ``bench/FINDINGS.md``): without ``OMP_NUM_THREADS`` MXNet 1.9 gives its
operators (and oneDNN) half of the processors the OS reports, assuming two hyper-threads per
core (``src/engine/openmp.cc``). On a VM whose vCPUs are whole cores (this 2-core machine) that
is one thread of two, and every model trains and scores ~1.8x slower. :func:`configure` sets
``OMP_NUM_THREADS`` to the physical cores (hyper-thread siblings counted once, so hyper-threaded
hosts keep MXNet's choice). Thread pinning (``OMP_PROC_BIND``) and busy waiting
(``OMP_WAIT_POLICY=ACTIVE``) were measured too and are left unset: on a shared machine they
make a run 2-3x slower as soon as another process wants a core.

:func:`configure` only fills in variables the user has not set, so any of them can still be
overridden from the shell. It does not import MXNet (variables read at MXNet's import or engine
start-up would otherwise be too late); called after the import it warns and changes nothing
that MXNet has already read.
"""
import os
import sys
import warnings

__all__ = ['defaults', 'APPLIED', 'physical_cores', 'configure', 'describe']


def physical_cores():
    """Physical cores available to this process (hyper-threads count once)."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        try:
            with open('/sys/devices/system/cpu/cpu%d/topology/thread_siblings_list' % cpu) as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def defaults():
    """The settings :func:`configure` applies, as ``{variable: value}`` (computed for this machine)."""
    cores = physical_cores()
    return {
        # one OpenMP thread per physical core for oneDNN and MXNet's CPU kernels (MXNet's own
        # default is half the logical processors: 1 of 2 on this VM)
        'OMP_NUM_THREADS': str(cores),
        # one engine worker (MXNet's default, made explicit): operators run one after another,
        # each using all cores
        'MXNET_CPU_WORKER_NTHREADS': '1',
    }


#: variables :func:`describe` reports (set by us or by the user)
REPORTED = ('OMP_NUM_THREADS', 'MXNET_CPU_WORKER_NTHREADS', 'OMP_WAIT_POLICY', 'OMP_PROC_BIND',
            'GOMP_SPINCOUNT', 'KMP_AFFINITY', 'KMP_BLOCKTIME', 'MXNET_MKLDNN_ENABLED',
            'MXNET_SUBGRAPH_BACKEND', 'MXNET_EXEC_BULK_EXEC_TRAIN', 'MXNET_EXEC_ENABLE_INPLACE',
            'MXNET_ENGINE_TYPE', 'MXNET_OMP_MAX_THREADS', 'DNNL_MAX_CPU_ISA', 'CRUNET_PERF_DEFAULTS')


#: what :func:`configure` set in ``os.environ`` (as opposed to what the user set)
APPLIED = {}


def configure(environ=None, **overrides):
    """Set the :func:`defaults` (and ``overrides``) in ``environ`` (``os.environ``) where unset.

    Returns ``{variable: value}`` of what it set. ``CRUNET_PERF_DEFAULTS=0`` in ``environ`` turns
    it off (MXNet's stock behaviour, for comparisons)."""
    environ = os.environ if environ is None else environ
    if environ is os.environ:
        from . import cudabuild
        cudabuild.prepare_mxnet_import()  # CUDA wheels: load their nvidia-* libraries (no-op on the CPU build)
    if environ.get('CRUNET_PERF_DEFAULTS', '1') == '0':
        return {}
    if environ is os.environ and 'mxnet' in sys.modules:
        warnings.warn('crunet.perf.configure() called after `import mxnet`: settings MXNet has '
                      'already read keep their old values', RuntimeWarning, stacklevel=2)
    wanted = defaults()
    wanted.update({k: str(v) for k, v in overrides.items()})
    applied = {}
    for name, value in wanted.items():
        if name not in environ:
            environ[name] = value
            applied[name] = value
    if environ is os.environ:
        APPLIED.update(applied)
    return applied


def describe(environ=None):
    """The speed-relevant variables as they are now (``'(unset)'`` for those not set)."""
    environ = os.environ if environ is None else environ
    return {name: environ.get(name, '(unset)') for name in REPORTED}
