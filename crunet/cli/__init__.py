"""The commands: ``crunet-train`` (:mod:`crunet.cli.train`), ``crunet-score``
(:mod:`crunet.cli.score`), ``crunet-export`` (:mod:`crunet.cli.export`, its ``quantize``
subcommand :mod:`crunet.cli.quantize`) and ``python -m symbols`` (:mod:`crunet.cli.zoo`).

The top of the layers: a command module is imported by console entry points and root scripts
only. Each command's ``run`` applies :func:`crunet.perf.configure` where it trains or scores,
before MXNet is imported, so importing a command module changes nothing in the process.
"""
