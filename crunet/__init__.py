"""CRU-Net for MXNet: training, scoring, RecordIO data and cluster launching.

The model zoo is the top-level package :mod:`symbols`; everything else lives here:

==========================  ====================================================================
module                      what it holds
==========================  ====================================================================
``crunet.errors``           the exit-code convention, the domain errors, one-line ``error:`` reporting
``crunet.files``            atomic writes (:mod:`symbols.files`), the model-prefix lock, output folders
``crunet.args``             the argument parser every command uses, the model flags
``crunet.log``              logging format, durations
``crunet.perf``             thread settings applied before MXNet is imported
``crunet.devices``          ``--gpus``/``--cpus`` parsing and MXNet contexts
``crunet.isa``              the CPU's vector ISA and the training graph it wants
``crunet.gpu``              CUDA libraries and the GPU architectures the MXNet build can drive
``crunet.data``             RecordIO format and checks, iterators, packing CLI, the demo set
``crunet.train``            flags, training state (checkpoints), kvstore, reporting, ``fit``
``crunet.evaluate``         scoring: crops, top-k, the scoring flags resolved from the training run
``crunet.classify``         classifying image files
``crunet.quantize``         int8 checkpoints calibrated on RecordIO images
``crunet.launch``           the ps-lite cluster launcher (``crunet-launch``)
``crunet.cli``              the commands (``crunet-train``, ``crunet-score``, ``crunet-export``,
                            ``python -m symbols``)
==========================  ====================================================================

The layers (README, "Layout"; ``tests/test_layers.py`` keeps them): each module imports only its
own layer and those below it.

Nothing here imports MXNet at package import time, so :func:`crunet.perf.configure` can run first.
"""
__version__ = '0.2.0'
