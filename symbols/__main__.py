"""``python -m symbols``: the zoo's command line, :mod:`crunet.cli.zoo` (an entry point, like
the root scripts: the zoo's modules themselves import only MXNet, NumPy and the zoo)."""
import sys

from crunet.cli.zoo import main

sys.exit(main())
