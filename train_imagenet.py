#!/usr/bin/env python
"""Train a model of the zoo on RecordIO images (``crunet-train``); see ``crunet/cli/train.py``.

    python train_imagenet.py                 # the embedded demo on the bundled digits
    python train_imagenet.py --help          # every flag
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # this checkout's crunet and symbols

if __name__ == '__main__':
    from crunet.cli.train import run
    sys.exit(run())
