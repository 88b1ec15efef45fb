"""``crunet.isa``: the ISA oneDNN runs, read from oneDNN itself (and from CPU flags where it cannot
be asked), cached per machine, and the grouped-convolution formulation chosen from it."""
import json
import os
import subprocess
import sys

import pytest

from crunet import isa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BASE = set('fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt'.split())
#: an AMD EPYC Zen 3 (AVX2, no AVX-512)
ZEN3 = BASE | set('avx f16c fma avx2 bmi1 bmi2 sha_ni vaes vpclmulqdq'.split())
#: an Intel Xeon with AVX-512, VNNI and BF16, no AMX
XEON_BF16 = ZEN3 | set('avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 avx512ifma'.split())
#: an AMD EPYC Zen 4 (AVX-512 as two 256-bit halves; the same flags)
ZEN4 = XEON_BF16 | set('avx512vbmi avx512_vbmi2 avx512_bitalg avx512_vpopcntdq'.split())
#: a Sapphire Rapids Xeon: AMX too
SPR = ZEN4 | set('avx_vnni amx_tile amx_int8 amx_bf16 avx512_fp16'.split())
SKYLAKE = ZEN3 | set('avx512f avx512dq avx512cd avx512bw avx512vl'.split())


@pytest.mark.parametrize('flags,expected,choice', [
    (BASE, 'sse41', 'blockdiag8'),
    (BASE | {'avx'}, 'avx', 'blockdiag8'),
    (ZEN3, 'avx2', 'blockdiag8'),
    (ZEN3 | {'avx_vnni'}, 'avx2_vnni', 'blockdiag8'),
    (SKYLAKE, 'avx512_core', 'blockdiag16'),
    (SKYLAKE | {'avx512_vnni'}, 'avx512_core_vnni', 'blockdiag16'),
    (XEON_BF16, 'avx512_core_bf16', 'blockdiag16'),
    (ZEN4, 'avx512_core_bf16', 'blockdiag16'),
    (SPR, 'avx512_core_bf16', 'blockdiag16'),   # oneDNN 2.4 leaves AMX out unless asked
])
def test_auto_choice_from_flags(flags, expected, choice):
    assert isa.cap_isa(isa.isa_from_flags(flags), {}) == expected
    assert isa.grouped_conv_for('auto', flags=flags, environ={}) == choice


def test_avx2_only_flags_choose_blockdiag8_and_avx512_choose_blockdiag16():
    assert isa.grouped_conv_for('auto', flags=ZEN3, environ={}) == 'blockdiag8'
    assert isa.grouped_conv_for('auto', flags=XEON_BF16, environ={}) == 'blockdiag16'
    assert isa.vector_isa(ZEN3) == 'avx2' and isa.vector_isa(XEON_BF16) == 'avx512'


def test_gpus_keep_the_plain_graph():
    for flags in (ZEN3, XEON_BF16, SPR):
        assert isa.grouped_conv_for('auto', gpus=True, flags=flags, environ={}) == 'plain'
        assert isa.grouped_conv_for('autotune', gpus=True, flags=flags, environ={}) == 'plain'


def test_dnnl_max_cpu_isa_is_honoured_as_onednn_reads_it():
    env = {'DNNL_MAX_CPU_ISA': 'AVX2'}
    assert isa.grouped_conv_for('auto', flags=XEON_BF16, environ=env) == 'blockdiag8'
    assert isa.cap_isa('avx512_core_bf16', env) == 'avx2'
    assert isa.cap_isa('avx2', {'DNNL_MAX_CPU_ISA': 'AVX512_CORE'}) == 'avx2'      # a cap never raises
    assert isa.cap_isa('avx512_core_bf16', {'DNNL_MAX_CPU_ISA': 'AVX512_CORE'}) == 'avx512_core'
    assert isa.cap_isa('avx512_core_bf16', {'DNNL_MAX_CPU_ISA': 'SSE41'}) == 'sse41'
    assert isa.cap_isa(isa.isa_from_flags(SPR), {'DNNL_MAX_CPU_ISA': 'AVX512_CORE_AMX'}) == 'avx512_core_amx'
    assert isa.cap_isa(isa.isa_from_flags(SPR), {'DNNL_MAX_CPU_ISA': 'ALL'}) == 'avx512_core_bf16'
    # oneDNN 2.4 ignores values it does not know, lower case included: so does the choice
    for ignored in ('avx2', 'AVX3', ''):
        assert isa.grouped_conv_for('auto', flags=XEON_BF16, environ={'DNNL_MAX_CPU_ISA': ignored}) == 'blockdiag16'


def test_explicit_choices_pass_through_and_bad_ones_are_refused():
    for choice in ('plain', 'blockdiag8', 'blockdiag16'):
        assert isa.grouped_conv_for(choice, flags=ZEN3, environ={}) == choice
        assert isa.grouped_conv_for(choice, gpus=True) == choice
    with pytest.raises(ValueError, match='auto, autotune, plain, blockdiag8, blockdiag16'):
        isa.grouped_conv_for('blockdiag')


@pytest.mark.parametrize('text,expected', [
    ('Intel SSE4.1', 'sse41'),
    ('Intel AVX', 'avx'),
    ('Intel AVX2', 'avx2'),
    ('Intel AVX2 with Intel DL Boost', 'avx2_vnni'),
    ('Intel AVX-512', 'avx512_mic'),
    ('Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions', 'avx512_core'),
    ('Intel AVX-512 with Intel DL Boost', 'avx512_core_vnni'),
    ('Intel AVX-512 with Intel DL Boost and bfloat16 support', 'avx512_core_bf16'),
    ('Intel AVX-512 with Intel DL Boost and bfloat16 support and Intel AMX with bfloat16 and 8-bit '
     'integer support', 'avx512_core_amx'),
    ('Intel 64', None),
])
def test_onednn_isa_descriptions(text, expected):
    assert isa.isa_from_text(text) == expected


def test_cpuinfo_parsing(tmp_path):
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n'
                    'flags\t\t: %s\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n'
                    % ' '.join(sorted(ZEN3)))
    assert isa.cpu_flags(str(info)) == ZEN3
    assert isa.cpu_model(str(info)) == 'AMD EPYC 7B13'
    assert isa.cpu_flags(str(tmp_path / 'missing')) == set()


def test_onednn_reports_what_the_flags_predict_on_this_machine():
    """The probe asks this machine's oneDNN; its answer is what the flags give with oneDNN's
    default cap, and ``DNNL_MAX_CPU_ISA=AVX2`` brings it to AVX2."""
    probe = isa.probe_onednn(dict(os.environ))
    assert probe is not None and probe['onednn'] and probe['mxnet']
    assert probe['isa'] == isa.cap_isa(isa.isa_from_flags(isa.cpu_flags()), {})
    env = dict(os.environ, DNNL_MAX_CPU_ISA='AVX2')
    flags_isa = isa.isa_from_flags(isa.cpu_flags())
    if isa.ISAS.index(flags_isa) >= isa.ISAS.index('avx2'):
        assert isa.probe_onednn(env)['isa'] == 'avx2'


def test_detect_caches_per_machine_and_cap(tmp_path):
    cache = tmp_path / 'crunet' / 'isa.json'
    env = {k: v for k, v in os.environ.items() if k != 'DNNL_MAX_CPU_ISA'}
    first = isa.detect(env, cache=str(cache))
    assert first['source'] == 'oneDNN' and first['isa'] in isa.ISAS
    assert first['cpu'] == isa.cpu_model() and first['cores'] >= 1
    data = json.loads(cache.read_text())
    key = isa.machine_key(isa.cpu_model(), isa.cpu_flags(), env)
    assert list(data) == [key]
    # the second call reads the cache (a marked record comes back unchanged) ...
    data[key]['isa_text'] = 'from the cache'
    cache.write_text(json.dumps(data))
    assert isa.detect(env, cache=str(cache))['isa_text'] == 'from the cache'
    # ... refresh asks oneDNN again; another DNNL_MAX_CPU_ISA is another entry
    assert isa.detect(env, cache=str(cache), refresh=True)['isa_text'] != 'from the cache'
    capped = isa.detect(dict(env, DNNL_MAX_CPU_ISA='SSE41'), cache=str(cache))
    assert capped['isa'] == 'sse41' and capped['vector_width'] == 8
    assert len(json.loads(cache.read_text())) == 2
    assert isa.grouped_conv_for('auto', environ=dict(env, DNNL_MAX_CPU_ISA='SSE41', XDG_CACHE_HOME=str(tmp_path))) \
        == 'blockdiag8'


def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path):
    cache = tmp_path / 'isa.json'
    cache.write_text('{not json')
    info = isa.detect(cache=str(cache))
    assert info['isa'] in isa.ISAS
    assert json.loads(cache.read_text())


def test_without_onednn_the_flags_decide(tmp_path):
    """``MXNET_MKLDNN_ENABLED=0``: no oneDNN line comes back; the flags give the answer."""
    env = dict(os.environ, MXNET_MKLDNN_ENABLED='0')
    info = isa.detect(env, cache=False)
    assert info['source'] == '/proc/cpuinfo' and info['onednn'] is None
    assert info['isa'] == isa.cap_isa(isa.isa_from_flags(isa.cpu_flags()), env)
    assert isa.describe(info).endswith('ISA %s (from /proc/cpuinfo)' % info['isa'])


def test_describe_names_cpu_cores_and_isa():
    line = isa.describe(dict(cpu='AMD EPYC 7B13', cores=2, isa='avx2', isa_text='Intel AVX2', onednn='2.4.4'))
    assert line == 'AMD EPYC 7B13, 2 cores, oneDNN 2.4.4 ISA avx2 (Intel AVX2)'
    line = isa.describe(dict(cpu='X', cores=4, isa='avx512_core', source='/proc/cpuinfo'))
    assert line == 'X, 4 cores, ISA avx512_core (from /proc/cpuinfo)'


def test_command_line_names_the_machine(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    proc = subprocess.run([sys.executable, '-m', 'crunet.isa'], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()[:2]
    assert first.startswith(isa.cpu_model()) and ' cores, oneDNN ' in first
    assert second.startswith('--grouped-conv auto on this CPU: blockdiag')
    assert (tmp_path / 'crunet' / 'isa.json').exists()


def test_autotune_measures_once_and_remembers_the_fastest(tmp_path):
    """``autotune`` times plain/blockdiag8/blockdiag16 on one conv2 unit here, keeps the fastest
    with the machine's record, and ``--grouped-conv autotune`` then reads it without measuring."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    env.pop('DNNL_MAX_CPU_ISA', None)
    tune = isa.autotune(environ=env)
    assert tune['measured'] and set(tune['ms']) == {'plain', 'blockdiag8', 'blockdiag16'}
    assert tune['best'] == min(tune['ms'], key=tune['ms'].get)
    assert all(ms > 0 for ms in tune['ms'].values())
    record = json.loads((tmp_path / 'crunet' / 'isa.json').read_text())
    (entry,) = record.values()
    assert entry['autotune']['best'] == tune['best'] and entry['isa'] in isa.ISAS
    # a marked record proves the second call reads the cache instead of measuring again
    entry['autotune']['best'] = 'plain' if tune['best'] != 'plain' else 'blockdiag8'
    (tmp_path / 'crunet' / 'isa.json').write_text(json.dumps(record))
    assert isa.grouped_conv_for('autotune', environ=env) == entry['autotune']['best']
    assert isa.detect(env)['autotune']['best'] == entry['autotune']['best']   # detection keeps it


def test_command_line_refuses_unknown_flags_in_one_line():
    proc = subprocess.run([sys.executable, '-m', 'crunet.isa', '--bogus'], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ['error: unrecognized arguments: --bogus (see python -m crunet.isa --help)']


def _unit_nodes(sym, prefix):
    """(op, attributes, name without ``prefix``) of the nodes of ``sym`` named ``prefix...``,
    weights and auxiliary states included, in graph order."""
    nodes = json.loads(sym.tojson())['nodes']
    return [(n['op'], n.get('attrs', {}), n['name'][len(prefix):]) for n in nodes if n['name'].startswith(prefix)]


@pytest.mark.parametrize('grouped_conv', ['plain', 'blockdiag8', 'blockdiag16'])
def test_autotune_times_the_unit_that_training_builds(grouped_conv):
    """The unit ``autotune`` times is, node for node, the second conv2 unit of the ResNeXt-50
    32x4d training graph of the same formulation: BatchNorm -> ReLU fused with blockdiag16 and
    apart otherwise, the same grouped-convolution formulation, the same attributes."""
    from symbols import get_symbol
    unit = _unit_nodes(isa.tuning_unit(grouped_conv), 'u_')
    trained = _unit_nodes(get_symbol('resnext', num_layers=50, grouped_conv=grouped_conv), 'conv2_x__2_')
    assert unit == trained and len(unit) > 10
    fused = sum(op == '_contrib_BatchNormWithReLU' for op, _, _ in unit)
    assert fused == (3 if grouped_conv == 'blockdiag16' else 0)
