"""Which GPUs an MXNet build can drive, and the CUDA libraries it loads (crunet.gpu), on real files.

* The architecture reader on real fatbinaries: the CPU ``libmxnet.so`` of this venv (no CUDA
  code), the ``mxnet-cu117`` one of the scratch install ``make gpu-install-check`` makes
  (``/tmp/cu117-venv``, or ``$CRUNET_TEST_CU117_VENV``; skipped when absent) and a tiny library
  compiled here with ``nvcc`` (skipped without nvcc).
* CUDA's rules (cubin: same major, minor >= the cubin's; PTX: any newer GPU) over the compute
  capabilities of Pascal to Blackwell against the cu117 architecture list.
* Every error path through the real command lines (``train_imagenet.py``, ``score.py``,
  ``bench.speed``): one ``error:`` line, exit status 2. The cu117 ones run this venv's Python
  with the scratch install's ``mxnet`` and ``nvidia`` packages first on ``PYTHONPATH`` (a folder
  of links, so that one package can be left out), and a driver stand-in ``libcuda.so.1`` built
  with gcc where ``libmxnet.so`` must load without a GPU; the GPUs that stand-in's driver API
  reports are the GPUs :func:`crunet.gpu.driver_gpus` sees (the product has no switch that makes
  up GPUs). The decision itself is never faked: it reads the real ``libmxnet.so``.
"""
import ctypes
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from crunet import cudabuild, gpu
from crunet.errors import CLIError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU117_VENV = os.environ.get('CRUNET_TEST_CU117_VENV', '/tmp/cu117-venv')
CU117_ARCHS = ([50, 60, 70, 80, 86], [])
INSTALLED = cudabuild.mxnet_build()


def _cu117_site():
    for site in glob.glob(os.path.join(CU117_VENV, 'lib', 'python3*', 'site-packages')):
        if glob.glob(os.path.join(site, 'mxnet_cu117-*.dist-info')) and \
                os.path.isfile(os.path.join(site, 'mxnet', 'libmxnet.so')):
            return site
    return None


CU117_SITE = _cu117_site()
needs_cu117 = pytest.mark.skipif(CU117_SITE is None, reason='no scratch mxnet-cu117 install at %s '
                                 '(make gpu-install-check makes it)' % CU117_VENV)
needs_cpu_build = pytest.mark.skipif(INSTALLED.cuda, reason='the installed MXNet is a CUDA build')


def _driver_present():
    try:
        ctypes.CDLL('libcuda.so.1')
        return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Architecture caches go to the test's folder, never to the user's ~/.cache."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))


# ============================================================================ reading fatbinaries
@needs_cpu_build
def test_cpu_build_has_no_cuda_code_and_loads_nothing():
    assert INSTALLED.distribution == 'mxnet' and not INSTALLED.cuda
    needed, _ = cudabuild.elf_needed(INSTALLED.library)
    assert 'libc.so.6' in needed and not [n for n in needed if 'cuda' in n or 'cudnn' in n]
    assert cudabuild.fatbin_archs(INSTALLED.library) == ([], [])
    assert cudabuild.preload_cuda_libraries() == {}
    assert not cudabuild.is_cuda_distribution()
    out = subprocess.run([sys.executable, '-m', 'crunet.gpu'], cwd=ROOT, stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout
    assert 'CPU build: libmxnet.so holds no CUDA code' in out


@needs_cu117
def test_cu117_wheel_holds_sm50_to_sm86_machine_code_and_no_ptx(tmp_path):
    lib = os.path.join(CU117_SITE, 'mxnet', 'libmxnet.so')
    assert cudabuild.fatbin_archs(lib) == CU117_ARCHS
    assert cudabuild.cuda_archs(lib) == CU117_ARCHS
    with open(tmp_path / 'cache' / 'crunet' / 'cuda-archs.json') as f:
        cache = json.load(f)
    st = os.stat(os.path.realpath(lib))
    assert cache == {'%s:%d:%d' % (os.path.realpath(lib), st.st_size, st.st_mtime_ns):
                     {'cubin': CU117_ARCHS[0], 'ptx': []}}
    needed, _ = cudabuild.elf_needed(lib)
    assert set(cudabuild.CUDA_LIBRARIES) - {'libcublasLt.so.11'} <= set(needed)
    assert cudabuild.DRIVER_LIBRARY in needed


def _nvcc_library(directory, gencode):
    nvcc = shutil.which('nvcc')
    if nvcc is None:
        pytest.skip('nvcc not installed')
    src = os.path.join(str(directory), 'k.cu')
    with open(src, 'w') as f:
        f.write('__global__ void add(float *x) { x[threadIdx.x] += 1.0f; }\n'
                'extern "C" void launch(float *x) { add<<<1, 32>>>(x); }\n')
    out = os.path.join(str(directory), 'libk.so')
    flags = []
    for virtual, real in gencode:
        flags += ['-gencode', 'arch=compute_%d,code=%s' % (virtual, real)]
    subprocess.run([nvcc, '-shared', '-Xcompiler', '-fPIC', '-o', out, src] + flags, check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    return out


def test_nvcc_fatbinary_cubins_and_ptx_and_what_runs_them(tmp_path):
    """cubin sm_75, cubin sm_86 (from compute_80) and PTX compute_90, as nvcc writes them."""
    lib = _nvcc_library(tmp_path, [(75, 'sm_75'), (80, 'sm_86'), (90, 'compute_90')])
    cubin, ptx = cudabuild.fatbin_archs(lib)
    assert (cubin, ptx) == ([75, 86], [90])
    runs = {cc: gpu.can_run(cc, cubin, ptx) for cc in ('7.0', '7.5', '8.0', '8.6', '8.9', '9.0', '12.0')}
    assert runs == {'7.0': False, '7.5': True, '8.0': False, '8.6': True, '8.9': True,
                    '9.0': True, '12.0': True}


def test_architecture_cache_is_read_and_follows_the_file(tmp_path):
    lib = str(tmp_path / 'lib.so')
    shutil.copy(sys.executable, lib)                       # a real ELF file without CUDA code
    assert cudabuild.cuda_archs(lib) == ([], [])
    cache_file = tmp_path / 'cache' / 'crunet' / 'cuda-archs.json'
    cache = json.loads(cache_file.read_text())
    (key,) = cache
    cache[key] = {'cubin': [61], 'ptx': [70]}
    cache_file.write_text(json.dumps(cache))
    assert cudabuild.cuda_archs(lib) == ([61], [70])             # the cached answer, not a new read
    with open(lib, 'ab') as f:
        f.write(b'\0' * 64)                                 # another file now: read again
    assert cudabuild.cuda_archs(lib) == ([], [])
    assert len(json.loads(cache_file.read_text())) == 1    # the stale entry is gone


def test_a_damaged_elf_file_is_refused(tmp_path):
    bad = tmp_path / 'libbad.so'
    bad.write_bytes(b'\x7fELF' + b'\0' * 20)
    with pytest.raises(ValueError):
        cudabuild.fatbin_archs(str(bad))


# ============================================================================ the decision
@pytest.mark.parametrize('cc,runs', [
    ('3.7', False),   # Kepler: older than the oldest cubin
    ('5.2', True),    # Maxwell
    ('6.1', True),    # Pascal (GTX 10x0, P40)
    ('7.0', True),    # Volta (V100)
    ('7.5', True),    # Turing (T4): sm_70 cubin
    ('8.0', True),    # A100
    ('8.6', True),    # RTX 30x0, A10
    ('8.9', True),    # Ada (L4, RTX 40x0): sm_86 cubin
    ('9.0', False),   # Hopper (H100, H200): no sm_90 cubin, no PTX
    ('10.0', False),  # Blackwell (B200)
    ('12.0', False),  # Blackwell (RTX 50x0)
])
def test_cu117_architectures_against_each_gpu_generation(cc, runs):
    assert gpu.can_run(cc, *CU117_ARCHS) is runs
    major, minor = map(int, cc.split('.'))
    assert gpu.can_run((major, minor), *CU117_ARCHS) is runs
    assert gpu.can_run(major * 10 + minor, *CU117_ARCHS) is runs


def test_ptx_runs_on_every_newer_gpu_and_cubin_only_within_its_major():
    assert gpu.can_run('9.0', [], [80]) and gpu.can_run('12.0', [], [80])
    assert not gpu.can_run('7.5', [], [80])
    assert not gpu.can_run('9.0', [86], []) and not gpu.can_run('8.0', [86], [])
    assert gpu.runnable_range(*CU117_ARCHS) == '5.0 to 8.9'
    assert gpu.runnable_range([75], [90]) == '7.5 or newer'
    assert gpu.describe_archs(*CU117_ARCHS) == 'machine code for 5.0, 6.0, 7.0, 8.0, 8.6 and no PTX'


CU117_BUILD = cudabuild.MXNetBuild('mxnet-cu117', '1.9.1', '/x/libmxnet.so', True, *CU117_ARCHS)


def test_check_gpus_names_the_gpu_the_build_cannot_drive():
    gpus = [gpu.GPU(0, 'NVIDIA A100-SXM4-80GB', (8, 0), 'driver'),
            gpu.GPU(1, 'NVIDIA H100 80GB HBM3', (9, 0), 'driver')]
    assert gpu.check_gpus([0], '0', CU117_BUILD, gpus) == gpus[:1]
    with pytest.raises(CLIError) as err:
        gpu.check_gpus([0, 1], '0,1', CU117_BUILD, gpus)
    msg = str(err.value)
    assert '\n' not in msg
    assert msg.startswith('--gpus 0,1: GPU 1 (NVIDIA H100 80GB HBM3, compute capability 9.0) cannot run '
                          'mxnet-cu117 1.9.1')
    for part in ('machine code for 5.0, 6.0, 7.0, 8.0, 8.6 and no PTX', 'no kernel image is available',
                 'compute capability 5.0 to 8.9', 'CUDA 11.8+', '-DMXNET_CUDA_ARCH=9.0'):
        assert part in msg, msg
    with pytest.raises(CLIError, match=r'GPU 2 does not exist \(this machine has 2: 0..1\)'):
        gpu.check_gpus([2], '2', CU117_BUILD, gpus)
    with pytest.raises(CLIError, match='the NVIDIA driver reports no GPU'):
        gpu.check_gpus([0], '0', CU117_BUILD, [])


_DRIVER_API = r'''
#include <string.h>
static const char *names[] = {%(names)s};
static const int majors[] = {%(majors)s}, minors[] = {%(minors)s};
int cuInit(unsigned int flags) { return %(init)d; }
int cuDeviceGetCount(int *count) { *count = %(count)d; return 0; }
int cuDeviceGet(int *device, int ordinal) { *device = ordinal; return 0; }
int cuDeviceGetName(char *name, int len, int device) { strncpy(name, names[device], len); return 0; }
int cuDeviceGetAttribute(int *value, int attribute, int device) {
    *value = attribute == 75 ? majors[device] : attribute == 76 ? minors[device] : 0; return 0; }
'''


def _fake_driver(tmp_path, gpus, other_functions=()):
    """A ``libcuda.so.1`` in its own folder whose driver API reports ``gpus`` ((name, major,
    minor), ...; none: ``cuInit`` answers CUDA_ERROR_NO_DEVICE), and exports ``other_functions``
    answering CUDA_ERROR_NO_DEVICE. On ``LD_LIBRARY_PATH`` it stands in for the NVIDIA driver."""
    gcc = shutil.which('gcc')
    if gcc is None:
        pytest.skip('gcc is needed to build the driver stand-in')
    d = tmp_path / 'driver'
    d.mkdir()
    api = ('cuInit', 'cuDeviceGetCount', 'cuDeviceGet', 'cuDeviceGetName', 'cuDeviceGetAttribute')
    source = _DRIVER_API % dict(names=', '.join('"%s"' % g[0] for g in gpus) or '""',
                                majors=', '.join(str(g[1]) for g in gpus) or '0',
                                minors=', '.join(str(g[2]) for g in gpus) or '0',
                                init=0 if gpus else 100, count=len(gpus))
    source += ''.join('int %s(void) { return 100; }\n' % n for n in other_functions if n not in api)
    (d / 'stub.c').write_text(source)
    subprocess.run([gcc, '-shared', '-fPIC', '-Wl,-soname,libcuda.so.1', '-o', str(d / 'libcuda.so.1'),
                    str(d / 'stub.c')], check=True)
    return str(d)


_READ_GPUS = 'from crunet import gpu; print([(g.index, g.name, g.compute_capability, g.source) for g in gpu.driver_gpus()])'


@pytest.mark.parametrize('gpus', [[('NVIDIA H100 80GB HBM3', 9, 0), ('Tesla V100-SXM2-16GB', 7, 0)], []],
                         ids=['two', 'none'])
def test_driver_gpus_are_read_through_the_driver_api(tmp_path, gpus):
    """``driver_gpus`` asks ``libcuda.so.1`` (here one built by the test that answers like a
    driver): names and compute capabilities in the driver's order; no device is an empty list."""
    driver = _fake_driver(tmp_path, gpus)
    proc = _run(['-c', _READ_GPUS], tmp_path, env_extra={'LD_LIBRARY_PATH': driver})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == repr([(i, name, (major, minor), 'driver')
                                        for i, (name, major, minor) in enumerate(gpus)])


def test_no_environment_variable_makes_up_gpus(tmp_path):
    """Nothing but the driver says which GPUs there are: an environment variable naming GPUs
    (``CRUNET_TEST_FAKE_GPUS`` here) changes nothing."""
    driver = _fake_driver(tmp_path, [])
    proc = _run(['-c', _READ_GPUS], tmp_path,
                env_extra={'LD_LIBRARY_PATH': driver, 'CRUNET_TEST_FAKE_GPUS': 'NVIDIA H100 80GB HBM3:9.0'})
    assert proc.returncode == 0 and proc.stdout.strip() == '[]', proc.stderr[-3000:]


@pytest.mark.skipif(_driver_present() or shutil.which('nvidia-smi') is not None,
                    reason='this machine has an NVIDIA driver')
def test_no_driver_is_one_line_naming_libcuda():
    with pytest.raises(cudabuild.CudaSetupError) as err:
        gpu.driver_gpus()
    assert 'libcuda.so.1' in str(err.value) and 'install the NVIDIA driver' in str(err.value)


def test_package_pins_match_constraints_and_setup():
    with open(os.path.join(ROOT, 'constraints.txt')) as f:
        pins = dict(line.strip().split('==') for line in f if '==' in line and not line.startswith('#'))
    for package, version, _ in cudabuild.CUDA_LIBRARIES.values():
        assert pins[package] == version, package
    with open(os.path.join(ROOT, 'setup.py')) as f:
        setup = f.read()
    for package, _, _ in cudabuild.CUDA_LIBRARIES.values():
        assert "'%s>=" % package in setup, package
    assert pins['mxnet-cu117'] == pins['mxnet-cu112'] == '1.9.1'


# ============================================================================ the command lines
def _one_error(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
    return lines[0]


def _run(cmd, tmp_path, env_extra=None, pythonpath=()):
    env = {k: v for k, v in os.environ.items()
           if k not in ('LD_LIBRARY_PATH', 'PYTHONPATH')}
    env.update(XDG_CACHE_HOME=str(tmp_path / 'cache'), OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(list(pythonpath) + [ROOT]))
    env.update(env_extra or {})
    return subprocess.run([sys.executable] + cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=180)


def _commands(tmp_path, gpus='0'):
    train = [os.path.join(ROOT, 'train_imagenet.py'), '--gpus', gpus]
    score = [os.path.join(ROOT, 'score.py'), '--model', str(tmp_path / 'm'), '--epoch', '1',
             '--data-val', str(tmp_path / 'val.rec'), '--gpus', gpus]
    bench = ['-m', 'bench.speed', '--gpus', gpus, '--models', 'crunet56', '--modes', 'score',
             '--batch-size', '1', '--image-size', '32', '--iters', '1', '--warmup', '0', '--repeat', '1']
    return {'train': train, 'score': score, 'bench': bench}


@needs_cpu_build
@pytest.mark.parametrize('command', ['train', 'score', 'bench'])
def test_cpu_build_with_gpus_is_one_line(tmp_path, command):
    proc = _run(_commands(tmp_path)[command], tmp_path, pythonpath=[ROOT] if command == 'bench' else ())
    line = _one_error(proc)
    assert line.startswith('error: --gpus 0: this MXNet build sees no GPU (mxnet 1.9.1 is the CPU build'), line
    assert 'make install MXNET=cu117' in line


def _cu117_overlay(tmp_path, leave_out=()):
    """A folder with the scratch install's mxnet (and its dist-info) and nvidia packages as links,
    minus the nvidia packages in ``leave_out``: put first on PYTHONPATH, it makes this venv's
    Python import mxnet-cu117."""
    site = tmp_path / 'site'
    (site / 'nvidia').mkdir(parents=True)
    os.symlink(os.path.join(CU117_SITE, 'mxnet'), str(site / 'mxnet'))
    info = glob.glob(os.path.join(CU117_SITE, 'mxnet_cu117-*.dist-info'))[0]
    os.symlink(info, str(site / os.path.basename(info)))
    if leave_out is not None:
        for pkg in glob.glob(os.path.join(CU117_SITE, 'nvidia', '*', 'lib')):
            name = os.path.basename(os.path.dirname(pkg))
            if name not in leave_out:
                os.symlink(os.path.dirname(pkg), str(site / 'nvidia' / name))
    return str(site)


def _driver_stand_in(tmp_path, gpus=()):
    """``libcuda.so.1`` exporting the driver functions libmxnet.so links (each answering
    CUDA_ERROR_NO_DEVICE) and a driver API reporting ``gpus``: lets the real libmxnet.so load on
    a machine without a GPU."""
    nm = shutil.which('nm')
    if nm is None:
        pytest.skip('nm is needed to build the driver stand-in')
    lib = os.path.join(CU117_SITE, 'mxnet', 'libmxnet.so')
    out = subprocess.run([nm, '-D', '--undefined-only', lib], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout
    names = sorted({ln.split()[-1] for ln in out.splitlines() if ln.split()[-1][:2] == 'cu'
                    and ln.split()[-1][2:3].isupper()})
    assert 'cuLaunchKernel' in names
    return _fake_driver(tmp_path, list(gpus), names)


@needs_cu117
@pytest.mark.parametrize('command', ['train', 'score', 'bench'])
def test_hopper_gpu_is_refused_before_anything_is_built(tmp_path, command):
    site = _cu117_overlay(tmp_path)
    driver = _driver_stand_in(tmp_path, [('NVIDIA H100 80GB HBM3', 9, 0)])
    proc = _run(_commands(tmp_path)[command], tmp_path, pythonpath=[site], env_extra={'LD_LIBRARY_PATH': driver})
    line = _one_error(proc)
    assert line.startswith('error: --gpus 0: GPU 0 (NVIDIA H100 80GB HBM3, compute capability 9.0) cannot '
                           'run mxnet-cu117 1.9.1: its libmxnet.so holds machine code for 5.0, 6.0, 7.0, '
                           '8.0, 8.6 and no PTX'), line
    assert 'use a GPU of compute capability 5.0 to 8.9' in line and '-DMXNET_CUDA_ARCH=9.0' in line


@needs_cu117
def test_missing_cuda_library_names_it_and_its_package(tmp_path):
    site = _cu117_overlay(tmp_path, leave_out=('cudnn',))
    driver = _driver_stand_in(tmp_path)
    proc = _run(_commands(tmp_path)['train'], tmp_path, pythonpath=[site], env_extra={'LD_LIBRARY_PATH': driver})
    line = _one_error(proc)
    assert line.startswith('error: mxnet-cu117 1.9.1 needs libcudnn.so.8: not in an nvidia-* package nor '
                           'found by the dynamic loader; pip install nvidia-cudnn-cu11==8.9.6.50'), line


@needs_cu117
@pytest.mark.skipif(_driver_present(), reason='this machine has an NVIDIA driver')
@pytest.mark.parametrize('command', ['train', 'score'])
def test_no_driver_names_libcuda(tmp_path, command):
    site = _cu117_overlay(tmp_path)
    proc = _run(_commands(tmp_path)[command], tmp_path, pythonpath=[site])
    line = _one_error(proc)
    assert line.startswith("error: mxnet-cu117 1.9.1 needs libcuda.so.1, the NVIDIA driver's CUDA library"), line
    assert 'install the NVIDIA driver (no pip package provides it)' in line


@needs_cu117
def test_cuda_found_by_the_dynamic_loader_still_works(tmp_path):
    """No nvidia-* package: the CUDA 11 libraries of a system install (here: links to the scratch
    install's, on LD_LIBRARY_PATH) are loaded through the dynamic loader and mxnet imports."""
    site = _cu117_overlay(tmp_path, leave_out=None)
    driver = _driver_stand_in(tmp_path)
    system = tmp_path / 'cuda11'
    system.mkdir()
    for path in glob.glob(os.path.join(CU117_SITE, 'nvidia', '*', 'lib', 'lib*.so*')):
        os.symlink(path, str(system / os.path.basename(path)))
    code = ('from crunet import cudabuild, perf; perf.configure(); import mxnet; '
            'print(mxnet.__version__, sorted(set(cudabuild.LOADED.values())), len(cudabuild.LOADED))')
    proc = _run(['-c', code], tmp_path, pythonpath=[site],
                env_extra={'LD_LIBRARY_PATH': '%s:%s' % (system, driver)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ['1.9.1', "['dynamic", "loader']", '12'], proc.stdout
