#!/usr/bin/env python
"""Start a ps-lite cluster and run a training command on it (``crunet-launch``); see ``crunet/launch.py``.

    python tools/launch.py -n 2 -s 1 --launcher local python train_imagenet.py --kv-store dist_sync ...
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout

if __name__ == '__main__':
    from crunet.launch import run
    sys.exit(run())
