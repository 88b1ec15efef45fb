"""CRU-Net, ShaResNet and ResNet/ResNeXt baselines in MXNet Symbol form."""
from setuptools import setup

setup(
    name='crunet-mxnet',
    version='0.1.0',
    description='Collective Residual Units (CRU-Net) and ShaResNet for MXNet, '
                'loading the released CRU-Net checkpoints on stock MXNet 1.9.1',
    python_requires='>=3.8',
    packages=['symbols', 'common', 'data', 'bench', 'tools'],
    py_modules=['train_imagenet', 'score'],
    install_requires=[
        'numpy<1.24',        # mxnet 1.9.1 still uses np.bool
        'scikit-learn',      # ships the bundled demo images (handwritten digits)
        'pillow',
        'opencv-python',     # image decoding/encoding in data/im2rec.py and data/demo.py
        'matplotlib',
        'graphviz<0.9',      # mx.viz.plot_network
        'onnx',
        'protobuf',
        'requests',
    ],
    extras_require={
        # exactly one MXNet build: `pip install -e .[cpu]` or `pip install -e .[gpu]`
        'cpu': ['mxnet==1.9.1'],
        'gpu': ['mxnet-cu112==1.9.1'],
        'test': ['pytest'],
        # peers for bench/ only
        'bench': ['gluoncv==0.10.5.post0', 'gluoncv2==0.0.64', 'pandas'],
    },
)
