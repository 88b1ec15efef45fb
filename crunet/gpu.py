"""The GPUs of this machine and whether the installed MXNet build can drive them.

The MXNet 1.9.1 CUDA wheels carry machine code (cubin) for compute capabilities 5.0, 6.0, 7.0,
8.0 and 8.6 and no PTX: Maxwell to Ada GPUs run them, Hopper (9.0) and newer cannot ("no kernel
image is available for execution on the device" at the first kernel). :func:`driver_gpus` asks
the driver for the GPUs and their compute capabilities, :func:`can_run` applies CUDA's rules to
the architectures ``crunet.cudabuild`` read from ``libmxnet.so``, and :func:`check_gpus` turns a
GPU the build cannot drive into one ``error:`` line before anything is built.

``python -m crunet.gpu`` prints the build, its architectures and the GPUs with the verdict;
``python -m crunet.gpu install-check`` loads the libraries and runs ``ldd`` on ``libmxnet.so``.

This module imports neither numpy nor MXNet.
"""
import collections
import ctypes
import os
import re
import shutil
import subprocess
import sys

from .cudabuild import (DRIVER_LIBRARY, LOADED, CudaSetupError, elf_needed, libmxnet_path, mxnet_build,
                        mxnet_package_dir, preload_cuda_libraries)
from .errors import CLIError

__all__ = ['GPU', 'driver_gpus', 'can_run', 'describe_archs', 'runnable_range', 'check_gpus', 'main']

#: the newest compute capability minor of each major that GPUs have shipped with (for messages)
_LAST_MINOR = {3: 7, 5: 3, 6: 2, 7: 5, 8: 9, 9: 0, 10: 3, 11: 0, 12: 1}

#: cubin sm_90 needs CUDA 11.8 or newer to compile: the source-build route for Hopper
SOURCE_BUILD = ('build MXNet 1.9.1 from source with CUDA 11.8+ for architecture %s '
                '(cmake -DUSE_CUDA=ON -DUSE_CUDNN=ON -DMXNET_CUDA_ARCH=%s)')

GPU = collections.namedtuple('GPU', 'index name compute_capability source')


# ============================================================================ the driver's GPUs
def _parse_cc(text):
    m = re.fullmatch(r'\s*(\d+)\.(\d+)\s*', str(text))
    if not m:
        raise ValueError('compute capability %r: expected MAJOR.MINOR such as 8.6' % (text,))
    return int(m.group(1)), int(m.group(2))


def _driver_api_gpus():
    cuda = ctypes.CDLL(DRIVER_LIBRARY)
    rc = cuda.cuInit(0)
    if rc == 100:                                                   # CUDA_ERROR_NO_DEVICE
        return []
    if rc != 0:
        raise OSError('cuInit failed with CUDA error %d' % rc)
    count = ctypes.c_int()
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        raise OSError('cuDeviceGetCount failed')
    gpus = []
    for i in range(count.value):
        dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        if (cuda.cuDeviceGet(ctypes.byref(dev), i) or cuda.cuDeviceGetName(name, 256, dev)
                or cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)      # COMPUTE_CAPABILITY_MAJOR
                or cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)):    # COMPUTE_CAPABILITY_MINOR
            raise OSError('the CUDA driver API failed on device %d' % i)
        gpus.append(GPU(i, name.value.decode('utf-8', 'replace'), (major.value, minor.value), 'driver'))
    return gpus


def _nvidia_smi_gpus():
    exe = shutil.which('nvidia-smi')
    if exe is None:
        raise OSError('nvidia-smi not found')
    out = subprocess.run([exe, '--query-gpu=index,uuid,name,compute_cap', '--format=csv,noheader'],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
                         timeout=30, check=True).stdout
    rows = [[c.strip() for c in line.split(',')] for line in out.splitlines() if line.strip()]
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible is not None:                  # nvidia-smi ignores it; the CUDA runtime does not
        chosen = []
        for item in (v.strip() for v in visible.split(',')):
            match = [r for r in rows if item and (r[0] == item or r[1].startswith(item))]
            if not match:
                break                        # CUDA stops at the first id it does not know
            chosen.append(match[0])
        rows = chosen
    return [GPU(i, r[2], _parse_cc(r[3]), 'nvidia-smi') for i, r in enumerate(rows)]


def driver_gpus():
    """The GPUs the NVIDIA driver shows this process (``CUDA_VISIBLE_DEVICES`` applied), as
    :data:`GPU` ``(index, name, (major, minor), source)``: from the CUDA driver API
    (``libcuda.so.1``) through ctypes, else from ``nvidia-smi``. Raises :class:`CudaSetupError`
    when neither answers (no driver)."""
    try:
        return _driver_api_gpus()
    except (OSError, AttributeError) as first:
        try:
            return _nvidia_smi_gpus()
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            raise CudaSetupError('no NVIDIA driver answers (%s; nvidia-smi neither): install the '
                                 'NVIDIA driver, which provides %s' % (first, DRIVER_LIBRARY))


# ============================================================================ the decision
def _cc_tuple(cc):
    if isinstance(cc, str):
        return _parse_cc(cc)
    if isinstance(cc, (tuple, list)):
        return int(cc[0]), int(cc[1])
    if isinstance(cc, int):                                          # 86
        return cc // 10, cc % 10
    raise TypeError('compute capability %r: expected (major, minor), "8.6" or 86' % (cc,))


def can_run(compute_capability, cubin_archs, ptx_archs):
    """Whether a GPU of ``compute_capability`` (``(8, 6)``, ``'8.6'`` or ``86``) runs code built
    as cubin for ``cubin_archs`` and PTX for ``ptx_archs`` (SM numbers such as ``86``), by CUDA's
    rules: cubin ``sm_XY`` runs on compute capability X.Z for Z >= Y (same major), PTX
    ``compute_XY`` is compiled by the driver for any compute capability >= X.Y."""
    major, minor = _cc_tuple(compute_capability)
    for arch in cubin_archs:
        if arch // 10 == major and arch % 10 <= minor:
            return True
    return any((major, minor) >= (arch // 10, arch % 10) for arch in ptx_archs)


def _cc_text(arch):
    return '%d.%d' % (arch // 10, arch % 10)


def describe_archs(cubin, ptx):
    """``'machine code for 5.0, 6.0, 7.0, 8.0, 8.6 and no PTX'``."""
    code = ('machine code for %s' % ', '.join(map(_cc_text, cubin))) if cubin else 'no machine code'
    return '%s and %s' % (code, ('PTX for %s' % ', '.join(map(_cc_text, ptx))) if ptx else 'no PTX')


def runnable_range(cubin, ptx):
    """The compute capabilities a build runs on, in words: ``'5.0 to 8.9'``."""
    if ptx:
        return '%s or newer' % _cc_text(min(min(ptx), min(cubin) if cubin else 10 ** 6))
    if not cubin:
        return 'none'
    top = max(cubin) // 10
    return '%s to %d.%s' % (_cc_text(min(cubin)), top, _LAST_MINOR.get(top, 'x'))


def check_gpus(ids, spec=None, build=None, gpus=None):
    """Check that the GPUs ``ids`` exist and that the CUDA build of MXNet (``build``, the
    installed one when None) carries code their compute capability runs; ``gpus`` (the driver's
    answer, :func:`driver_gpus` when None). Returns the :data:`GPU` list of ``ids``; raises
    :class:`CLIError` with one line naming the GPU, its compute capability, the build's
    architectures and the ways out."""
    spec = ','.join(map(str, ids)) if spec is None else spec
    build = mxnet_build() if build is None else build
    gpus = driver_gpus() if gpus is None else gpus
    if not gpus:
        raise CLIError('--gpus %s: the NVIDIA driver reports no GPU (CUDA_VISIBLE_DEVICES=%s); leave --gpus '
                       'empty to run on the CPU' % (spec, os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')))
    bad = [i for i in ids if i >= len(gpus)]
    if bad:
        raise CLIError('--gpus %s: GPU %d does not exist (this machine has %d: 0..%d)'
                       % (spec, bad[0], len(gpus), len(gpus) - 1))
    chosen = [gpus[i] for i in ids]
    for g in chosen:
        if not can_run(g.compute_capability, build.cubin, build.ptx):
            cc = '%d.%d' % g.compute_capability
            raise CLIError(
                '--gpus %s: GPU %d (%s, compute capability %s) cannot run %s %s: its libmxnet.so holds %s, '
                'so every kernel would fail with "no kernel image is available"; use a GPU of compute '
                'capability %s, or %s' % (spec, g.index, g.name, cc, build.distribution, build.version,
                                          describe_archs(build.cubin, build.ptx),
                                          runnable_range(build.cubin, build.ptx), SOURCE_BUILD % (cc, cc)))
    return chosen


# ============================================================================ python -m crunet.gpu
def _report():
    build = mxnet_build()
    print('MXNet: %s %s (%s)' % (build.distribution, build.version, build.library))
    if not build.cuda:
        print('CPU build: libmxnet.so holds no CUDA code (install a CUDA build: make install MXNET=cu117)')
        return 0
    print('GPU code: %s (runs on compute capability %s)' % (describe_archs(build.cubin, build.ptx),
                                                          runnable_range(build.cubin, build.ptx)))
    try:
        gpus = driver_gpus()
    except CudaSetupError as exc:
        print('GPUs: %s' % exc)
        return 1
    for g in gpus:
        ok = can_run(g.compute_capability, build.cubin, build.ptx)
        print('GPU %d: %s, compute capability %d.%d (%s): %s' % (
            g.index, g.name, g.compute_capability[0], g.compute_capability[1], g.source,
            'runs' if ok else 'CANNOT run this build'))
    if not gpus:
        print('GPUs: the driver reports none')
    return 0


def _install_check():
    """Load the libraries as the commands do, then ``ldd libmxnet.so`` with the loader's folders:
    every library must resolve but the driver's libcuda.so.1 (present only with a driver)."""
    lib = libmxnet_path(mxnet_package_dir())
    if lib is None:
        print('mxnet is not installed')
        return 1
    print('libmxnet.so: %s' % lib)
    problem = None
    try:
        loaded = preload_cuda_libraries(lib)
    except CudaSetupError as exc:
        problem = str(exc)
        loaded = dict(LOADED)
    for soname, where in loaded.items():
        print('loaded %-26s %s' % (soname, where))
    if problem:
        print('loader: %s' % problem)
    folders = []
    for where in LOADED.values():
        d = os.path.dirname(where) if os.path.isabs(where) else None
        if d and d not in folders:
            folders.append(d)
    env = dict(os.environ, LD_LIBRARY_PATH=':'.join(folders))
    print('ldd %s  (LD_LIBRARY_PATH = the %d folders the loader used)' % (lib, len(folders)))
    out = subprocess.run(['ldd', lib], env=env, stdout=subprocess.PIPE, universal_newlines=True).stdout
    print(out.rstrip())
    missing = [ln.split()[0] for ln in out.splitlines() if 'not found' in ln]
    found = [ln.split()[0] for ln in out.splitlines() if '=>' in ln and 'not found' not in ln]
    needed, _ = elf_needed(lib)
    print('libmxnet.so needs %d libraries directly; ldd resolves %d (with their dependencies), not found: %s'
          % (len(needed), len(found), ', '.join(missing) or 'none'))
    return 0 if set(missing) <= {DRIVER_LIBRARY} and (not problem or DRIVER_LIBRARY in problem) else 1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ['install-check']:
        return _install_check()
    if argv:
        print('usage: python -m crunet.gpu [install-check]', file=sys.stderr)
        return 2
    return _report()


if __name__ == '__main__':
    sys.exit(main())
