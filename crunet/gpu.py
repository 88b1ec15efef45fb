"""CUDA builds of MXNet: the CUDA libraries they load, the GPU architectures they carry code for,
and the GPUs of this machine they can drive.

The ``mxnet-cu112``/``mxnet-cu117`` wheels ship none of the CUDA 11 libraries ``libmxnet.so``
links (cudart, cuBLAS, cuDNN, NCCL, cuFFT, cuRAND, cuSOLVER, cuSPARSE, NVRTC, NVTX); the
``nvidia-*-cu11`` pip packages do, in ``site-packages/nvidia/<name>/lib``, a folder the dynamic
loader does not search. :func:`preload_cuda_libraries` loads them there by absolute path with
``RTLD_GLOBAL`` before MXNet is imported (as PyTorch does with the same packages), so that
``libmxnet.so``'s dependencies are already in the process when it loads; a CUDA 11 found by the
dynamic loader (``LD_LIBRARY_PATH``, ``ldconfig``) serves the libraries no package provides.
:func:`crunet.perf.configure` calls it, so every command gets it.

The wheels carry machine code (cubin) for compute capabilities 5.0, 6.0, 7.0, 8.0 and 8.6 and
no PTX: Maxwell to Ada GPUs run them, Hopper (9.0) and newer cannot ("no kernel image is
available for execution on the device" at the first kernel). :func:`cuda_archs` reads that list
from ``libmxnet.so``'s fatbinary, :func:`driver_gpus` asks the driver for the GPUs and their
compute capabilities, :func:`can_run` applies CUDA's rules, and :func:`check_gpus` turns a GPU
the build cannot drive into one ``error:`` line before anything is built.

``python -m crunet.gpu`` prints the build, its architectures and the GPUs with the verdict;
``python -m crunet.gpu install-check`` loads the libraries and runs ``ldd`` on ``libmxnet.so``.

This module imports neither numpy nor MXNet.
"""
import collections
import ctypes
import glob
import json
import mmap
import os
import re
import shutil
import struct
import subprocess
import sys

from .errors import CLIError

__all__ = ['CUDA_LIBRARIES', 'CudaSetupError', 'MXNetBuild', 'GPU', 'mxnet_build', 'is_cuda_distribution',
           'nvidia_library', 'preload_cuda_libraries', 'elf_needed', 'fatbin_archs', 'cuda_archs',
           'driver_gpus', 'can_run', 'describe_archs', 'check_gpus']

#: the CUDA libraries the MXNet 1.9.1 CUDA 11 wheels link, in load order (a library after the ones
#: it needs), with the pip package (and the version ``constraints.txt`` pins) and its folder under
#: ``site-packages/nvidia/``
CUDA_LIBRARIES = collections.OrderedDict([
    ('libcudart.so.11.0', ('nvidia-cuda-runtime-cu11', '11.8.89', 'cuda_runtime')),
    ('libcublasLt.so.11', ('nvidia-cublas-cu11', '11.11.3.6', 'cublas')),
    ('libcublas.so.11', ('nvidia-cublas-cu11', '11.11.3.6', 'cublas')),
    ('libcufft.so.10', ('nvidia-cufft-cu11', '10.9.0.58', 'cufft')),
    ('libcurand.so.10', ('nvidia-curand-cu11', '10.3.0.86', 'curand')),
    ('libcusparse.so.11', ('nvidia-cusparse-cu11', '11.7.5.86', 'cusparse')),
    ('libcusolver.so.11', ('nvidia-cusolver-cu11', '11.4.1.48', 'cusolver')),
    ('libnvrtc.so.11.2', ('nvidia-cuda-nvrtc-cu11', '11.8.89', 'cuda_nvrtc')),
    ('libnvToolsExt.so.1', ('nvidia-nvtx-cu11', '11.8.86', 'nvtx')),
    ('libnccl.so.2', ('nvidia-nccl-cu11', '2.21.5', 'nccl')),
    ('libcudnn.so.8', ('nvidia-cudnn-cu11', '8.9.6.50', 'cudnn')),
])

# cuDNN 8 and NVRTC open their companions (libcudnn_*_infer.so.8, libnvrtc-builtins.so.11.8) with
# dlopen by name; the packages' RUNPATH ($ORIGIN) finds them beside the library loaded here.

DRIVER_LIBRARY = 'libcuda.so.1'

#: the newest compute capability minor of each major that GPUs have shipped with (for messages)
_LAST_MINOR = {3: 7, 5: 3, 6: 2, 7: 5, 8: 9, 9: 0, 10: 3, 11: 0, 12: 1}

#: cubin sm_90 needs CUDA 11.8 or newer to compile: the source-build route for Hopper
SOURCE_BUILD = ('build MXNet 1.9.1 from source with CUDA 11.8+ for architecture %s '
                '(cmake -DUSE_CUDA=ON -DUSE_CUDNN=ON -DMXNET_CUDA_ARCH=%s)')

#: test hook: ``CRUNET_TEST_FAKE_GPUS="NVIDIA H100 80GB HBM3:9.0,NVIDIA A100:8.0"`` stands in for
#: the driver's answer in :func:`driver_gpus` (empty: the driver reports no GPU)
TEST_FAKE_GPUS = 'CRUNET_TEST_FAKE_GPUS'

GPU = collections.namedtuple('GPU', 'index name compute_capability source')
MXNetBuild = collections.namedtuple('MXNetBuild', 'distribution version library cuda cubin ptx')


class CudaSetupError(CLIError):
    """A CUDA library or the NVIDIA driver that the CUDA build of MXNet needs is missing."""


# ============================================================================ the MXNet install
def _mxnet_package_dir():
    """The installed ``mxnet`` package's folder, found without importing it (None: not installed)."""
    import importlib.util
    mod = sys.modules.get('mxnet')
    if mod is not None and getattr(mod, '__file__', None):
        return os.path.dirname(mod.__file__)
    try:
        spec = importlib.util.find_spec('mxnet')
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _distribution(package_dir):
    """``(name, version)`` of the distribution that installed the mxnet package in
    ``package_dir`` (``mxnet``, ``mxnet-cu117``, ...), read from the ``*.dist-info`` or
    ``*.egg-info`` folder beside it; ``('mxnet', '?')`` when there is none (a source tree)."""
    if package_dir is None:
        return None, None
    site = os.path.dirname(package_dir)
    for info in sorted(glob.glob(os.path.join(site, 'mxnet*.dist-info')) +
                       glob.glob(os.path.join(site, 'mxnet*.egg-info'))):
        m = re.fullmatch(r'(mxnet(?:[-_][A-Za-z0-9]+)?)-([^-]+?)(?:-py[\d.]+)?\.(?:dist|egg)-info',
                         os.path.basename(info))
        if m:
            return m.group(1).replace('_', '-').lower(), m.group(2)
    return 'mxnet', '?'


def is_cuda_distribution():
    """True when the installed MXNet is a CUDA wheel (``mxnet-cu112``, ``mxnet-cu117``, ...);
    cheap (no import, no file read beyond a directory listing): :func:`crunet.perf.configure`
    uses it to leave the CPU build alone."""
    name, _ = _distribution(_mxnet_package_dir())
    return bool(name and re.fullmatch(r'mxnet-cu\d+\w*', name))


def _libmxnet(package_dir):
    if package_dir is None:
        return None
    path = os.path.join(package_dir, 'libmxnet.so')
    return path if os.path.exists(path) else None


# ============================================================================ ELF and fatbinary
def _elf_sections(f):
    """``{name: (type, offset, size, link)}`` of an open 64-bit little-endian ELF file."""
    f.seek(0)
    head = f.read(64)
    if len(head) < 64 or head[:4] != b'\x7fELF' or head[4] != 2 or head[5] != 1:
        raise ValueError('not a 64-bit little-endian ELF file')
    shoff, = struct.unpack_from('<Q', head, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', head, 0x3A)
    f.seek(shoff)
    raw = f.read(shentsize * shnum)
    if len(raw) < shentsize * shnum or shstrndx >= shnum:
        raise ValueError('truncated ELF section table')
    table = [struct.unpack_from('<IIQQQQIIQQ', raw, i * shentsize) for i in range(shnum)]
    f.seek(table[shstrndx][4])
    names = f.read(table[shstrndx][5])
    out = {}
    for name_off, sh_type, _flags, _addr, offset, size, link, _info, _align, _entsize in table:
        end = names.find(b'\0', name_off)
        out[names[name_off:end].decode('ascii', 'replace')] = (sh_type, offset, size, link, len(out))
    return out, table


def elf_needed(path):
    """``(needed, runpath)`` of a shared library: the sonames of its ``DT_NEEDED`` entries and its
    ``DT_RUNPATH``/``DT_RPATH`` folders (as written, ``$ORIGIN`` unexpanded)."""
    with open(path, 'rb') as f:
        sections, table = _elf_sections(f)
        dyn = [s for s in sections.values() if s[0] == 6]          # SHT_DYNAMIC
        if not dyn:
            return [], []
        _, offset, size, link, _ = dyn[0]
        f.seek(offset)
        raw = f.read(size)
        f.seek(table[link][4])
        strings = f.read(table[link][5])
    needed, runpath = [], []
    for i in range(0, len(raw) - 15, 16):
        tag, val = struct.unpack_from('<qQ', raw, i)
        if tag == 0:
            break
        if tag in (1, 15, 29):                                      # DT_NEEDED, DT_RPATH, DT_RUNPATH
            text = strings[val:strings.find(b'\0', val)].decode('utf-8', 'replace')
            if tag == 1:
                needed.append(text)
            else:
                runpath.extend(p for p in text.split(':') if p)
    return needed, runpath


FATBIN_MAGIC = 0xBA55ED50
_KIND_PTX, _KIND_CUBIN = 1, 2


def fatbin_archs(path):
    """``(cubin, ptx)``: sorted SM architectures (``86`` for compute capability 8.6) for which the
    CUDA fatbinary in ``path``'s ``.nv_fatbin`` section holds machine code and PTX. ``([], [])``
    for a library without CUDA device code. Reads only the entry headers."""
    cubin, ptx = set(), set()
    with open(path, 'rb') as f:
        sections, _ = _elf_sections(f)
        if '.nv_fatbin' not in sections:
            return [], []
        _, start, size, _, _ = sections['.nv_fatbin']
        if size == 0:
            return [], []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            end = start + size
            if end > len(m):
                raise ValueError('truncated .nv_fatbin section')
            q = start
            while q + 16 <= end:
                magic, _version, header, blob = struct.unpack_from('<IHHQ', m, q)
                if magic != FATBIN_MAGIC:
                    q += 8                                          # padding between fatbinaries
                    continue
                p, stop = q + header, q + header + blob
                if stop > end:
                    raise ValueError('fatbinary at offset %d runs past its section' % q)
                while p + 32 <= stop:
                    kind, _v, entry_header, payload = struct.unpack_from('<HHIQ', m, p)
                    if entry_header < 32 or p + entry_header + payload > stop:
                        raise ValueError('damaged fatbinary entry at offset %d' % p)
                    arch, = struct.unpack_from('<I', m, p + 28)
                    if kind == _KIND_CUBIN:
                        cubin.add(arch)
                    elif kind == _KIND_PTX:
                        ptx.add(arch)
                    p += entry_header + payload
                q = (stop + 7) // 8 * 8
    return sorted(cubin), sorted(ptx)


def _cache_file():
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'crunet', 'cuda-archs.json')


def cuda_archs(path):
    """:func:`fatbin_archs` of ``path``, remembered per file (real path, size, modification time)
    in ``~/.cache/crunet/cuda-archs.json`` (``$XDG_CACHE_HOME`` when set): reading the headers of
    the ~400 MB fatbinary of ``mxnet-cu117`` takes a moment, the cache makes it free."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = '%s:%d:%d' % (real, st.st_size, st.st_mtime_ns)
    cache_path = _cache_file()
    try:
        with open(cache_path) as f:
            cache = json.load(f)
        hit = cache.get(key) if isinstance(cache, dict) else None
        if hit and isinstance(hit.get('cubin'), list) and isinstance(hit.get('ptx'), list):
            return list(hit['cubin']), list(hit['ptx'])
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    cubin, ptx = fatbin_archs(real)
    cache = {k: v for k, v in cache.items() if not k.startswith(real + ':')}   # older versions of it
    cache[key] = {'cubin': cubin, 'ptx': ptx}
    try:
        from .files import atomic_write_text
        atomic_write_text(cache_path, json.dumps(cache, indent=1, sort_keys=True) + '\n')
    except OSError:
        pass                                                        # a read-only home: no cache
    return cubin, ptx


def mxnet_build():
    """The installed MXNet as :data:`MXNetBuild`: distribution name and version, ``libmxnet.so``,
    whether it is a CUDA build (it links ``libcudart``), and its cubin and PTX architectures."""
    package_dir = _mxnet_package_dir()
    name, version = _distribution(package_dir)
    lib = _libmxnet(package_dir)
    if lib is None:
        return MXNetBuild(name, version, None, False, [], [])
    needed, _ = elf_needed(lib)
    cuda = any(n.startswith('libcudart.so') for n in needed)
    if not cuda:
        return MXNetBuild(name, version, lib, False, [], [])
    try:
        cubin, ptx = cuda_archs(lib)
    except ValueError as exc:
        raise CLIError('%s: cannot read its GPU architectures (%s); reinstall %s' % (lib, exc, name))
    return MXNetBuild(name, version, lib, True, cubin, ptx)


# ============================================================================ loading the libraries
def _site_dirs():
    return [p for p in sys.path if p and os.path.isdir(os.path.join(p, 'nvidia'))]


def nvidia_library(soname):
    """Absolute path of ``soname`` in an installed ``nvidia-*`` package (``site-packages/nvidia/
    <folder>/lib``), or None."""
    entry = CUDA_LIBRARIES.get(soname)
    folder = entry[2] if entry else None
    for site in _site_dirs():
        candidates = [os.path.join(site, 'nvidia', folder, 'lib', soname)] if folder else \
            glob.glob(os.path.join(site, 'nvidia', '*', 'lib', soname))
        for path in candidates:
            if os.path.isfile(path):
                return path
    return None


def _package_hint(soname):
    package, version, _ = CUDA_LIBRARIES[soname]
    return 'pip install %s==%s' % (package, version)


def _build_name():
    name, version = _distribution(_mxnet_package_dir())
    return '%s %s' % (name, version) if name else 'MXNet'


#: what :func:`preload_cuda_libraries` loaded: ``{soname: path or 'dynamic loader'}``
LOADED = collections.OrderedDict()


def _load(soname, path):
    ctypes.CDLL(path or soname, mode=ctypes.RTLD_GLOBAL)
    LOADED[soname] = path or 'dynamic loader'


def preload_cuda_libraries(library=None):
    """Load the CUDA libraries ``libmxnet.so`` (``library``; the installed one when None) links,
    from the ``nvidia-*`` packages by absolute path, else through the dynamic loader (a system
    CUDA 11), with ``RTLD_GLOBAL`` and in dependency order, then the driver's ``libcuda.so.1``.
    Call before ``import mxnet``. Nothing to do for the CPU build. Returns ``{soname: where}``.
    Raises :class:`CudaSetupError` (one line: the library and the package that provides it)."""
    lib = library or _libmxnet(_mxnet_package_dir())
    if lib is None:
        return {}
    needed, _ = elf_needed(lib)
    if not any(n.startswith('libcudart.so') for n in needed):
        return {}
    wanted = [s for s in CUDA_LIBRARIES if s in needed or s == 'libcublasLt.so.11' and 'libcublas.so.11' in needed]
    loaded = collections.OrderedDict()
    for soname in wanted:
        if soname in LOADED:
            loaded[soname] = LOADED[soname]
            continue
        path = nvidia_library(soname)
        try:
            _load(soname, path)
        except OSError as exc:
            where = ('%s exists but does not load (%s)' % (path, str(exc).split(': ')[-1])) if path else \
                'not in an nvidia-* package nor found by the dynamic loader'
            raise CudaSetupError('%s needs %s: %s; %s (make install MXNET=cu117 installs all of them)'
                                 % (_build_name(), soname, where, _package_hint(soname)))
        loaded[soname] = LOADED[soname]
    if DRIVER_LIBRARY in needed:
        try:
            _load(DRIVER_LIBRARY, None)
        except OSError:
            raise CudaSetupError(
                '%s needs %s, the NVIDIA driver\'s CUDA library, and the dynamic loader does not find '
                'it: install the NVIDIA driver (no pip package provides it), or on a machine without '
                'a GPU install the CPU build (make install MXNET=cpu)' % (_build_name(), DRIVER_LIBRARY))
        loaded[DRIVER_LIBRARY] = LOADED[DRIVER_LIBRARY]
    return dict(loaded)


def prepare_mxnet_import():
    """:func:`preload_cuda_libraries` for a CUDA wheel of MXNet (a cheap no-op for the CPU build),
    a missing library reported as one ``error:`` line (exit 2) instead of the traceback ``import
    mxnet`` would end in. Called by :func:`crunet.perf.configure`."""
    if 'mxnet' in sys.modules or not is_cuda_distribution():
        return {}
    try:
        return preload_cuda_libraries()
    except CudaSetupError as exc:
        from .errors import die
        die(exc)
    except (OSError, ValueError):
        return {}                           # an unreadable libmxnet.so: let MXNet's import say so


# ============================================================================ the driver's GPUs
def _parse_cc(text):
    m = re.fullmatch(r'\s*(\d+)\.(\d+)\s*', str(text))
    if not m:
        raise ValueError('compute capability %r: expected MAJOR.MINOR such as 8.6' % (text,))
    return int(m.group(1)), int(m.group(2))


def _fake_gpus(spec):
    gpus = []
    for i, item in enumerate(x for x in spec.split(',') if x.strip()):
        name, _, cc = item.rpartition(':')
        gpus.append(GPU(i, name.strip(), _parse_cc(cc), 'test hook %s' % TEST_FAKE_GPUS))
    return gpus


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
    fake = os.environ.get(TEST_FAKE_GPUS)
    if fake is not None:
        return _fake_gpus(fake)
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
    lib = _libmxnet(_mxnet_package_dir())
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
