"""The CPU's vector ISA, and the training-graph formulation it wants.

oneDNN picks its kernels per ISA: its direct (blocked) convolution and BatchNorm kernels work on
channel blocks of the f32 vector width, 8 on AVX2 and 16 on AVX-512. A grouped convolution
whose groups are not a multiple of that width falls to reference kernels, so the block-diagonal
merge of ``symbols.blocks`` (``grouped_conv='blockdiag8'``/``'blockdiag16'``) must follow the
machine (bench/FINDINGS.md). GPUs (cuDNN) keep the plain graph.
"""
import os

__all__ = ['cpu_flags', 'vector_isa', 'grouped_conv_for', 'GROUPED_CONV_FLAG_CHOICES']

#: values of the ``--grouped-conv`` flags: ``auto`` chooses with :func:`grouped_conv_for`
GROUPED_CONV_FLAG_CHOICES = ('auto', 'plain', 'blockdiag8', 'blockdiag16')


def cpu_flags(cpuinfo='/proc/cpuinfo'):
    """The feature flags of the first processor in ``/proc/cpuinfo`` (empty set elsewhere)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def vector_isa(flags=None):
    """``'avx512'`` (AVX-512 F/BW/VL/DQ: oneDNN's avx512_core), ``'avx2'`` or ``'sse41'``."""
    flags = cpu_flags() if flags is None else set(flags)
    if {'avx512f', 'avx512bw', 'avx512vl', 'avx512dq'} <= flags:
        return 'avx512'
    if {'avx2', 'fma'} <= flags:
        return 'avx2'
    return 'sse41'


def grouped_conv_for(choice='auto', gpus=False, flags=None, environ=None):
    """The ``grouped_conv`` formulation to train with: ``choice`` itself unless it is ``auto``;
    ``auto`` is ``plain`` on GPUs, ``blockdiag16`` on AVX-512 CPUs and ``blockdiag8`` otherwise.
    ``DNNL_MAX_CPU_ISA`` (oneDNN's own cap, when the user set it to an AVX2 level) is honoured."""
    if choice not in GROUPED_CONV_FLAG_CHOICES:
        raise ValueError('--grouped-conv %r: valid choices: %s' % (choice, ', '.join(GROUPED_CONV_FLAG_CHOICES)))
    if choice != 'auto':
        return choice
    if gpus:
        return 'plain'
    environ = os.environ if environ is None else environ
    cap = environ.get('DNNL_MAX_CPU_ISA', environ.get('MKLDNN_MAX_CPU_ISA', '')).lower()
    if cap and 'avx512' not in cap and 'amx' not in cap and cap != 'all':
        return 'blockdiag8'
    return 'blockdiag16' if vector_isa(flags) == 'avx512' else 'blockdiag8'
