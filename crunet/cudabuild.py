"""The installed MXNet build: which distribution it is, the CUDA libraries its ``libmxnet.so``
links and the GPU architectures its fatbinary carries, and the loading of those libraries.

The ``mxnet-cu112``/``mxnet-cu117`` wheels ship none of the CUDA 11 libraries ``libmxnet.so``
links (cudart, cuBLAS, cuDNN, NCCL, cuFFT, cuRAND, cuSOLVER, cuSPARSE, NVRTC, NVTX); the
``nvidia-*-cu11`` pip packages do, in ``site-packages/nvidia/<name>/lib``, a folder the dynamic
loader does not search. :func:`preload_cuda_libraries` loads them there by absolute path with
``RTLD_GLOBAL`` before MXNet is imported (as PyTorch does with the same packages), so that
``libmxnet.so``'s dependencies are already in the process when it loads; a CUDA 11 found by the
dynamic loader (``LD_LIBRARY_PATH``, ``ldconfig``) serves the libraries no package provides.
:func:`crunet.perf.configure` calls :func:`prepare_mxnet_import`, so every command gets it.
:func:`cuda_archs` reads the compute capabilities ``libmxnet.so`` holds code for (``crunet.gpu``
decides with them). This module imports neither numpy nor MXNet.
"""
import collections
import ctypes
import glob
import json
import mmap
import os
import re
import struct
import sys

from .errors import CLIError

__all__ = ['CUDA_LIBRARIES', 'DRIVER_LIBRARY', 'CudaSetupError', 'MXNetBuild', 'mxnet_build', 'mxnet_package_dir',
           'libmxnet_path', 'is_cuda_distribution', 'nvidia_library', 'preload_cuda_libraries', 'elf_needed',
           'fatbin_archs', 'cuda_archs', 'prepare_mxnet_import', 'LOADED']

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

MXNetBuild = collections.namedtuple('MXNetBuild', 'distribution version library cuda cubin ptx')


class CudaSetupError(CLIError):
    """A CUDA library or the NVIDIA driver that the CUDA build of MXNet needs is missing."""


# ============================================================================ the MXNet install
def mxnet_package_dir():
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
    name, _ = _distribution(mxnet_package_dir())
    return bool(name and re.fullmatch(r'mxnet-cu\d+\w*', name))


def libmxnet_path(package_dir):
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
    in ``~/.cache/crunet/cuda-archs.json`` (``$XDG_CACHE_HOME`` when set). Only the headers of
    the fatbinary are read (``mxnet-cu117``: 985 entries in a 522 MB section, a few milliseconds
    once the file is in the page cache); the cache spares even that on a cold disk."""
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
    package_dir = mxnet_package_dir()
    name, version = _distribution(package_dir)
    lib = libmxnet_path(package_dir)
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
    name, version = _distribution(mxnet_package_dir())
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
    lib = library or libmxnet_path(mxnet_package_dir())
    if lib is None:
        return {}
    needed, _ = elf_needed(lib)
    if not any(n.startswith('libcudart.so') for n in needed):
        return {}
    # libcublas.so.11 needs libcublasLt.so.11: load it first, from the same package
    wanted = [s for s in CUDA_LIBRARIES
              if s in needed or (s == 'libcublasLt.so.11' and 'libcublas.so.11' in needed)]
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
