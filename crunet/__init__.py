"""CRU-Net for MXNet: training, scoring, RecordIO data and cluster launching.

The model zoo is the top-level package :mod:`symbols`; everything else lives here:

==========================  ====================================================================
module                      what it holds
==========================  ====================================================================
``crunet.errors``           the exit-code convention, one-line ``error:`` reporting, MXNet error lines
``crunet.files``            atomic writes, the model-prefix lock
``crunet.devices``          ``--gpus``/``--cpus`` parsing and MXNet contexts
``crunet.log``              logging format, durations
``crunet.perf``             thread settings applied before MXNet is imported
``crunet.isa``              the CPU's vector ISA and the training graph it wants
``crunet.gpu``              CUDA libraries and the GPU architectures the MXNet build can drive
``crunet.data``             RecordIO format and checks, iterators, packing CLI, the demo set
``crunet.train``            flags, training state (checkpoints), kvstore, reporting, ``fit``
``crunet.evaluate``         scoring: inference graph, crops, top-k
``crunet.cli``              the command lines (``crunet-train``, ``crunet-score``)
``crunet.launch``           the ps-lite cluster launcher (``crunet-launch``)
==========================  ====================================================================

Nothing here imports MXNet at package import time, so :func:`crunet.perf.configure` can run first.
"""
__version__ = '0.2.0'
