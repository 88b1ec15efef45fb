"""CRU-Net, ShaResNet and ResNet/ResNeXt baselines in MXNet Symbol form.

A non-editable install puts two packages in site-packages: ``symbols`` (the model zoo, the
documented import) and ``crunet`` (training, scoring, data, launcher), with the data recipes of
``data/`` as ``crunet/recipes``; and the commands ``crunet-train``, ``crunet-score``,
``crunet-im2rec``, ``crunet-export`` and ``crunet-launch``.
"""
from setuptools import setup

# the CUDA 11 libraries libmxnet.so of mxnet-cu112/mxnet-cu117 links (crunet/gpu.py loads them)
CUDA11_LIBRARIES = [
    'nvidia-cuda-runtime-cu11>=11.2,<12', 'nvidia-cublas-cu11>=11.4,<12', 'nvidia-cudnn-cu11>=8.1,<9',
    'nvidia-nccl-cu11>=2.8,<3', 'nvidia-cufft-cu11>=10.4,<11', 'nvidia-curand-cu11>=10.2,<11',
    'nvidia-cusolver-cu11>=11.1,<12', 'nvidia-cusparse-cu11>=11.4,<12', 'nvidia-cuda-nvrtc-cu11>=11.2,<12',
    'nvidia-nvtx-cu11>=11.2,<12',
]

setup(
    name='crunet-mxnet',
    version='0.2.0',
    description='Collective Residual Units (CRU-Net) and ShaResNet for MXNet, '
                'loading the released CRU-Net checkpoints on stock MXNet 1.9.1',
    python_requires='>=3.8',
    packages=['symbols', 'crunet', 'crunet.cli', 'crunet.data', 'crunet.train', 'crunet.recipes'],
    package_dir={'crunet.recipes': 'data'},
    package_data={'crunet.recipes': ['*.sh', 'README.md']},
    entry_points={'console_scripts': [
        'crunet-train = crunet.cli.train:run',
        'crunet-score = crunet.cli.score:run',
        'crunet-im2rec = crunet.data.im2rec:run',
        'crunet-export = crunet.cli.export:run',
        'crunet-launch = crunet.launch:run',
    ]},
    install_requires=[
        'numpy<1.24',        # mxnet 1.9.1 still uses np.bool
        'scikit-learn',      # ships the bundled demo images (handwritten digits)
        'pillow',
        'opencv-python<4.9',  # image decoding/encoding in crunet.data (4.9+ wants numpy>=1.24 wheels)
        'matplotlib<3.8',
        'graphviz<0.9',      # mx.viz.plot_network
        'requests',
    ],
    extras_require={
        # exactly one MXNet build: `pip install -e .[cpu]`, `.[cu117]` (= `.[gpu]`) or `.[cu112]`;
        # the CUDA wheels ship no CUDA library: the nvidia-*-cu11 packages provide them (cuDNN 8)
        'cpu': ['mxnet==1.9.1'],
        'cu112': ['mxnet-cu112==1.9.1'] + CUDA11_LIBRARIES,
        'cu117': ['mxnet-cu117==1.9.1'] + CUDA11_LIBRARIES,
        'gpu': ['mxnet-cu117==1.9.1'] + CUDA11_LIBRARIES,
        # MXNet 1.9.1's ONNX exporter imports onnx.mapping (gone in onnx 1.19) and needs protobuf 3.
        # onnxruntime (to verify the export) is not listed: its first Python 3.11 release, 1.15.0,
        # declares numpy>=1.24.2 (as do all later ones) while mxnet needs numpy<1.24; 1.15.0 runs on
        # numpy 1.23.5, so install it without its dependencies (the Makefile does):
        #   pip install --no-deps onnxruntime==1.15.0 coloredlogs humanfriendly flatbuffers sympy 'mpmath<1.4'
        'onnx': ['onnx>=1.10,<1.15', 'protobuf>=3.20,<4'],
        'test': ['pytest', 'tensorboardX>=2.6'],     # tests/test_train_recipe.py reads --tensorboard's events
        'tensorboard': ['tensorboardX>=2.6'],       # --tensorboard DIR (TensorBoard events writer)
        # --kv-store horovod: built against the installed MXNet, so without build isolation and with
        # its switches: make install HOROVOD=1 (README, "Horovod")
        'horovod': ['horovod==0.28.1'],
        # peers for bench/ only
        'bench': ['gluoncv==0.10.5.post0', 'gluoncv2==0.0.64', 'pandas'],
    },
)
