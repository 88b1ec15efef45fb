"""The CPU's vector ISA as oneDNN sees it, and the training-graph formulation it wants.

    python -m crunet.isa                 # this machine: CPU, cores, oneDNN's ISA, the choice of auto
    python -m crunet.isa --autotune      # also time the three formulations here and remember the fastest

oneDNN picks its kernels per ISA: its direct (blocked) convolution and BatchNorm kernels work on
channel blocks of the f32 vector width, 8 on AVX2 (``nChw8c``) and 16 on AVX-512 (``nChw16c``). A
grouped convolution whose groups are not a multiple of that width falls to GEMM/reference kernels,
and so does the BatchNorm next to it, so the block-diagonal merge of ``symbols.blocks``
(``grouped_conv='blockdiag8'``/``'blockdiag16'``) must follow the machine (bench/FINDINGS.md, "ISA").
GPUs (cuDNN) keep the plain graph.

The ISA is read from oneDNN itself: a child process runs one tiny convolution with
``DNNL_VERBOSE=1`` and reports oneDNN's ``cpu,isa:`` line (so ``DNNL_MAX_CPU_ISA`` and the build's
own limits are what they are in training). The answer is cached per machine (CPU model, flags,
MXNet version and ``DNNL_MAX_CPU_ISA``) in ``~/.cache/crunet/isa.json`` (``$XDG_CACHE_HOME``
respected). Where oneDNN cannot be asked, the ``/proc/cpuinfo`` flags give the same answer the way
oneDNN 2.4 would (``DNNL_MAX_CPU_ISA`` applied as oneDNN applies it: upper-case names only).
"""
import hashlib
import json
import os
import subprocess
import sys
import time

__all__ = ['GROUPED_CONV_FLAG_CHOICES', 'ISAS', 'cpu_flags', 'cpu_model', 'isa_from_flags',
           'isa_from_text', 'cap_isa', 'vector_width', 'probe_onednn', 'cache_path', 'machine_key',
           'detect', 'describe', 'grouped_conv_for', 'autotune', 'tuning_unit', 'vector_isa']

#: values of the ``--grouped-conv`` flags: ``auto`` chooses with :func:`grouped_conv_for`;
#: ``autotune`` uses this machine's measured fastest (:func:`autotune`, measured once and cached)
GROUPED_CONV_FLAG_CHOICES = ('auto', 'autotune', 'plain', 'blockdiag8', 'blockdiag16')

#: oneDNN 2.x CPU ISAs from the least to the most capable, as ``DNNL_MAX_CPU_ISA`` spells them in
#: lower case (oneDNN itself only accepts the upper-case spelling).
ISAS = ('sse41', 'avx', 'avx2', 'avx2_vnni', 'avx512_mic', 'avx512_mic_4ops', 'avx512_core',
        'avx512_core_vnni', 'avx512_core_bf16', 'avx512_core_amx')
#: what oneDNN 2.4 uses when nothing caps it: AMX is opt-in (``DNNL_MAX_CPU_ISA=AVX512_CORE_AMX``)
_DEFAULT_TOP = 'avx512_core_bf16'

#: oneDNN's ``cpu,isa:`` descriptions (``get_isa_info``), most specific first
_ISA_TEXTS = (('Intel AMX', 'avx512_core_amx'), ('bfloat16', 'avx512_core_bf16'),
              ('AVX-512 with Intel DL Boost', 'avx512_core_vnni'), ('AVX512_4FMAPS', 'avx512_mic_4ops'),
              ('AVX512BW', 'avx512_core'), ('AVX512ER', 'avx512_mic'), ('AVX-512', 'avx512_mic'),
              ('AVX2 with Intel DL Boost', 'avx2_vnni'), ('AVX2', 'avx2'), ('AVX', 'avx'),
              ('SSE4.1', 'sse41'))

_PROBE = r'''
import json, mxnet as mx
x = mx.nd.ones((1, 8, 8, 8)); w = mx.nd.ones((8, 8, 3, 3))
mx.nd.Convolution(x, w, kernel=(3, 3), num_filter=8, no_bias=True).wait_to_read()
mx.nd.waitall()
print('CRUNET_ISA_PROBE ' + json.dumps({'mxnet': mx.__version__}), flush=True)
'''
_CPUINFO = '/proc/cpuinfo'


# ============================================================================ the CPU
def _cpuinfo_field(field, cpuinfo):
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.split(':', 1)[0].strip() == field:
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags(cpuinfo=_CPUINFO):
    """The feature flags of the first processor in ``/proc/cpuinfo`` (empty set elsewhere)."""
    return set((_cpuinfo_field('flags', cpuinfo) or '').split())


def cpu_model(cpuinfo=_CPUINFO):
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    name = _cpuinfo_field('model name', cpuinfo)
    if not name:
        import platform
        name = platform.processor() or platform.machine() or 'unknown CPU'
    return name


def isa_from_flags(flags):
    """The most capable entry of :data:`ISAS` the flags allow (AMX included: :func:`cap_isa` then
    applies oneDNN's default, which stops below it)."""
    flags = set(flags)
    if {'avx512f', 'avx512bw', 'avx512vl', 'avx512dq'} <= flags:
        if {'amx_tile', 'amx_int8', 'amx_bf16', 'avx512_bf16', 'avx512_vnni'} <= flags:
            return 'avx512_core_amx'
        if {'avx512_bf16', 'avx512_vnni'} <= flags:
            return 'avx512_core_bf16'
        return 'avx512_core_vnni' if 'avx512_vnni' in flags else 'avx512_core'
    if {'avx512f', 'avx512er', 'avx512pf'} <= flags:
        return 'avx512_mic_4ops' if {'avx512_4fmaps', 'avx512_4vnniw'} <= flags else 'avx512_mic'
    if {'avx2', 'fma'} <= flags:
        return 'avx2_vnni' if 'avx_vnni' in flags else 'avx2'
    if 'avx' in flags:
        return 'avx'
    return 'sse41'


def isa_from_text(text):
    """Entry of :data:`ISAS` for oneDNN's ``cpu,isa:`` description, e.g. ``'Intel AVX-512 with
    Intel DL Boost and bfloat16 support'`` -> ``'avx512_core_bf16'``; None when unrecognised."""
    for needle, isa in _ISA_TEXTS:
        if needle in text:
            return isa
    return None


def cap_isa(isa, environ=None):
    """``isa`` limited the way oneDNN 2.4 limits itself: by ``DNNL_MAX_CPU_ISA`` when it names an
    ISA in upper case (``AVX2``, ``AVX512_CORE``, ..., ``ALL``; oneDNN ignores other spellings),
    else by its default, which leaves AMX out."""
    environ = os.environ if environ is None else environ
    cap = environ.get('DNNL_MAX_CPU_ISA', '')
    top = _DEFAULT_TOP
    if cap == 'ALL':
        pass
    elif cap.isupper() and cap.lower() in ISAS:
        top = cap.lower()
    if top.startswith('avx512_mic') and isa.startswith('avx512_core'):
        return 'avx512_mic'  # the common AVX-512 subset (what oneDNN runs on a core under that cap)
    return isa if ISAS.index(isa) <= ISAS.index(top) else top


def vector_width(isa):
    """f32 lanes of the ISA's vectors, oneDNN's channel block: 16 on AVX-512, 8 below."""
    return 16 if isa.startswith('avx512') else 8


def vector_isa(flags=None):
    """``'avx512'``, ``'avx2'`` or ``'sse41'``: the family of :func:`isa_from_flags` (capped)."""
    isa = cap_isa(isa_from_flags(cpu_flags() if flags is None else flags))
    return 'avx512' if isa.startswith('avx512') else ('avx2' if isa.startswith('avx2') else 'sse41')


# ============================================================================ oneDNN itself
def probe_onednn(environ=None, timeout=120):
    """Ask oneDNN: run a tiny convolution with ``DNNL_VERBOSE=1`` in a child process (the parent
    may have imported MXNet already; verbose mode is read once). Returns ``{'isa_text', 'isa',
    'onednn', 'mxnet'}``, or None when no oneDNN line came back (no oneDNN in the build,
    ``MXNET_MKLDNN_ENABLED=0``, MXNet missing)."""
    environ = dict(os.environ if environ is None else environ)
    environ.update(DNNL_VERBOSE='1', MKLDNN_VERBOSE='1', OMP_NUM_THREADS='1')
    try:
        proc = subprocess.run([sys.executable, '-c', _PROBE], env=environ, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, universal_newlines=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    out = dict(isa_text=None, isa=None, onednn=None, mxnet=None)
    for line in proc.stdout.splitlines():
        if line.startswith(('dnnl_verbose,info,', 'mkldnn_verbose,info,')):
            if ',cpu,isa:' in line:
                out['isa_text'] = line.split(',cpu,isa:', 1)[1].strip()
            elif ',oneDNN v' in line or ',DNNL v' in line or ',MKL-DNN v' in line:
                out['onednn'] = line.split(' v', 1)[1].split()[0]
        elif line.startswith('CRUNET_ISA_PROBE '):
            try:
                out.update(json.loads(line.split(' ', 1)[1]))
            except ValueError:
                pass
    if not out['isa_text']:
        return None
    out['isa'] = isa_from_text(out['isa_text'])
    return out if out['isa'] else None


def cache_path(environ=None):
    """``$XDG_CACHE_HOME/crunet/isa.json`` (``~/.cache/crunet/isa.json``)."""
    environ = os.environ if environ is None else environ
    base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'crunet', 'isa.json')


def _mxnet_version():
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover
        return None
    for dist in ('mxnet', 'mxnet-cu112', 'mxnet-cu117', 'mxnet-mkl'):
        try:
            return '%s==%s' % (dist, metadata.version(dist))
        except Exception:
            continue
    return None


def machine_key(model, flags, environ=None):
    """Cache key of a machine: CPU model, flags, the installed MXNet, and the variables that change
    what oneDNN runs (``DNNL_MAX_CPU_ISA``, ``MXNET_MKLDNN_ENABLED``)."""
    environ = os.environ if environ is None else environ
    text = json.dumps([model, sorted(flags), _mxnet_version(), environ.get('DNNL_MAX_CPU_ISA', ''),
                       environ.get('MXNET_MKLDNN_ENABLED', '')])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _load_cache(path):
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(path, key, record):
    from .files import atomic_save
    data = _load_cache(path)
    data[key] = record
    try:
        atomic_save(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home: detection still works, only uncached


def detect(environ=None, cache=None, refresh=False, cpuinfo=_CPUINFO):
    """This machine: ``{'cpu', 'cores', 'isa', 'isa_text', 'source', 'onednn', 'mxnet', 'flags_isa',
    'vector_width'}``. ``isa`` is oneDNN's (``source`` 'oneDNN', read with :func:`probe_onednn` once
    per machine key and cached in ``cache`` (:func:`cache_path`; False: no cache); ``refresh``
    asks again) or, where oneDNN gives no answer, the flags' (``source`` '/proc/cpuinfo')."""
    environ = os.environ if environ is None else environ
    flags, model = cpu_flags(cpuinfo), cpu_model(cpuinfo)
    path = cache_path(environ) if cache is None else cache
    key = machine_key(model, flags, environ)
    if path and not refresh:
        rec = _load_cache(path).get(key)
        if isinstance(rec, dict) and rec.get('isa') in ISAS:
            return rec
    from .perf import physical_cores
    flags_isa = cap_isa(isa_from_flags(flags), environ) if flags else None
    rec = dict(cpu=model, cores=physical_cores(), flags_isa=flags_isa, onednn=None, mxnet=None)
    probe = probe_onednn(environ)
    if probe:
        rec.update(probe, source='oneDNN')
    else:
        rec.update(isa=flags_isa or 'sse41', isa_text=None, source='/proc/cpuinfo' if flags else 'default')
    rec['vector_width'] = vector_width(rec['isa'])
    rec['max_cpu_isa'] = environ.get('DNNL_MAX_CPU_ISA')
    if path:
        old = _load_cache(path).get(key)
        if isinstance(old, dict) and 'autotune' in old:
            rec['autotune'] = old['autotune']
        _store(path, key, rec)
    return rec


def describe(info=None):
    """One line naming the machine: ``'Intel(R) Xeon(R) Processor, 2 cores, oneDNN 2.4.4 ISA
    avx512_core_bf16 (Intel AVX-512 with Intel DL Boost and bfloat16 support)'``."""
    info = detect() if info is None else info
    isa = info['isa'] + (' (%s)' % info['isa_text'] if info.get('isa_text') else ' (from %s)' % info.get('source'))
    onednn = 'oneDNN %s ISA' % info['onednn'] if info.get('onednn') else 'ISA'
    return '%s, %d cores, %s %s' % (info['cpu'], info['cores'], onednn, isa)


# ============================================================================ the choice
def grouped_conv_for(choice='auto', gpus=False, flags=None, environ=None):
    """The ``grouped_conv`` formulation to train with: ``choice`` itself unless it is ``auto`` or
    ``autotune``. ``auto``: ``plain`` on GPUs, ``blockdiag16`` where oneDNN runs AVX-512 and
    ``blockdiag8`` below (the vector width, :func:`vector_width`). The ISA is this machine's
    (:func:`detect`), or that of the feature ``flags`` given (capped by ``DNNL_MAX_CPU_ISA`` in
    ``environ`` as oneDNN caps it). ``autotune``: the fastest formulation measured on this machine
    (:func:`autotune`, run once and cached); ``plain`` on GPUs."""
    if choice not in GROUPED_CONV_FLAG_CHOICES:
        raise ValueError('--grouped-conv %r: valid choices: %s' % (choice, ', '.join(GROUPED_CONV_FLAG_CHOICES)))
    if choice not in ('auto', 'autotune'):
        return choice
    if gpus:
        return 'plain'
    env = os.environ if environ is None else environ
    if env.get('MXNET_MKLDNN_ENABLED', '1').strip().lower() in ('0', 'false'):
        return 'plain'          # the block-diagonal graphs are oneDNN's (their fused BatchNorm-ReLU needs it)
    if choice == 'autotune':
        return autotune(environ=environ)['best']
    if flags is not None:
        isa = cap_isa(isa_from_flags(flags), environ)
    else:
        isa = detect(environ)['isa']
    return 'blockdiag16' if vector_width(isa) == 16 else 'blockdiag8'


# ============================================================================ measured choice
#: the unit :func:`autotune` times: conv2 of CRU-Net-56 / ResNeXt-50 32x4d (batch, size, width, out)
TUNE_UNIT = dict(batch=8, size=56, width=128, out=256, groups=32)


def tuning_unit(grouped_conv):
    """The graph :func:`autotune` times for ``grouped_conv``: one conv2 unit (BN-ReLU-1x1 256->128,
    BN-ReLU-grouped 3x3 32x4d, BN-ReLU-1x1 128->256, the sum with its input) built as training
    builds it, the BatchNorm -> ReLU pairs fused wherever the zoo's rule
    (``symbols.blocks.fuses_bn_relu``) fuses them in a training graph of that formulation."""
    import mxnet as mx
    from symbols import blocks
    u = TUNE_UNIT
    fuse = blocks.fuses_bn_relu(grouped_conv, 'float32', (u['width'], u['out']))
    data = mx.sym.var('data')
    body = blocks.bn_ac_conv(data, 'u_c1x1-a', u['width'], 1, fuse=fuse)
    body = blocks.bn_ac_conv(body, 'u_c3x3-b', u['width'], 3, num_group=u['groups'], grouped_conv=grouped_conv,
                             fuse=fuse)
    body = blocks.bn_ac_conv(body, 'u_c1x1-c', u['out'], 1, fuse=fuse)
    return mx.sym.make_loss(mx.sym.mean(mx.sym.ElementWiseSum(data, body, name='u_ele-sum')))


_TUNE = r'''
import json, statistics, sys, time
import mxnet as mx, numpy as np
from crunet.isa import TUNE_UNIT, tuning_unit
u = TUNE_UNIT
res = {}
for impl in sys.argv[1:]:
    ex = tuning_unit(impl).simple_bind(mx.cpu(), grad_req='write', data=(u['batch'], u['out'], u['size'], u['size']))
    rng = np.random.RandomState(0)
    for name, arr in ex.arg_dict.items():
        arr[:] = rng.normal(0, 0.1, arr.shape)
    times = []
    for i in range(7):
        t = time.perf_counter()
        ex.forward(is_train=True); ex.backward(); mx.nd.waitall()
        times.append(time.perf_counter() - t)
    res[impl] = 1e3 * statistics.median(times[2:])
print('CRUNET_ISA_TUNE ' + json.dumps(res), flush=True)
'''


def autotune(environ=None, cache=None, refresh=False, timeout=300):
    """Time the three formulations on one conv2 unit of CRU-Net/ResNeXt (:func:`tuning_unit`,
    the graph training runs; batch 8, 56x56, forward + backward, median of 5 steps after 2 warm-up
    steps) in a child process; ``{'ms': {formulation: ms}, 'best': ...}``,
    cached with :func:`detect`'s record (``refresh`` measures again). Falls back to ``auto``'s
    choice when the measurement fails."""
    environ = os.environ if environ is None else environ
    info = detect(environ, cache=cache)
    if info.get('autotune') and not refresh:
        return info['autotune']
    from . import perf
    env = dict(environ)
    perf.configure(env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
    t0 = time.time()
    ms = None
    try:
        proc = subprocess.run([sys.executable, '-c', _TUNE, 'plain', 'blockdiag8', 'blockdiag16'], env=env,
                              cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              universal_newlines=True, timeout=timeout)
        for line in proc.stdout.splitlines():
            if line.startswith('CRUNET_ISA_TUNE '):
                ms = json.loads(line.split(' ', 1)[1])
    except (OSError, subprocess.SubprocessError, ValueError):
        ms = None
    if not ms:
        return dict(ms=None, best='blockdiag16' if vector_width(info['isa']) == 16 else 'blockdiag8',
                    measured=False)
    result = dict(ms=ms, best=min(ms, key=ms.get), measured=True, seconds=round(time.time() - t0, 1),
                  when=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
    path = cache_path(environ) if cache is None else cache
    if path:
        _store(path, machine_key(info['cpu'], cpu_flags(), environ), dict(info, autotune=result))
    return result


def main(argv=None):
    from .args import ArgParser
    p = ArgParser(prog='python -m crunet.isa', description=__doc__.split('\n\n')[0])
    p.add_argument('--refresh', action='store_true', help='ask oneDNN again instead of using the cache')
    p.add_argument('--autotune', action='store_true',
                   help='also time plain/blockdiag8/blockdiag16 on a conv2 unit here (~20 s) and cache the fastest')
    p.add_argument('--json', action='store_true', help='print the record as JSON')
    args = p.parse_args(argv)
    info = detect(refresh=args.refresh)
    if args.autotune:
        info = dict(info, autotune=autotune(refresh=True))
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    print(describe(info))
    print('--grouped-conv auto on this CPU: %s (vector width %d; cache %s)'
          % (grouped_conv_for('auto'), info['vector_width'], cache_path()))
    tune = info.get('autotune')
    if tune and tune.get('ms'):
        print('--grouped-conv autotune: %s (%s ms per training step of a conv2 unit, batch 8, 56x56)'
              % (tune['best'], ', '.join('%s %.1f' % kv for kv in sorted(tune['ms'].items()))))
    return 0


if __name__ == '__main__':
    from .errors import cli_main
    sys.exit(cli_main(main))
