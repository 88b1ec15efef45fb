#!/usr/bin/env python
"""Score a checkpoint on a validation RecordIO file (``crunet-score``); see ``crunet/cli/score.py``.

    python score.py --model PREFIX --epoch N --data-val val.rec
    python score.py --help                   # every flag
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # this checkout's crunet and symbols

if __name__ == '__main__':
    from crunet.cli.score import run
    sys.exit(run())
