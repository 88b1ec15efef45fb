"""Test-session setup: with a CUDA build of MXNet installed, its CUDA libraries are loaded by path
before any test module imports MXNet (crunet.cudabuild); on the CPU build this does nothing."""
from crunet import cudabuild

cudabuild.prepare_mxnet_import()
