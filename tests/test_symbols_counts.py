"""Parameter counts, multiply-adds and sizes match the CRU-Net and ShaResNet papers' tables and the released files."""
import mxnet as mx
import pytest

from symbols import count_macs, count_params, get_symbol, model_size_mb

M = 1e6


@pytest.mark.parametrize('num_layers,expected', [(56, 25609384), (116, 43656136)])
def test_released_crunet_params_exact(num_layers, expected):
    assert count_params(get_symbol('crunet', num_layers=num_layers)) == expected


@pytest.mark.parametrize('network,kwargs,target', [
    ('resnet', dict(num_layers=50), 25.5),
    ('resnext', dict(num_layers=50, setting='32x4d'), 25.0),
    ('resnext', dict(num_layers=50, setting='Nx1d'), 24.9),
])
def test_baseline_params_within_0_1m(network, kwargs, target):
    assert abs(count_params(get_symbol(network, **kwargs)) / M - target) <= 0.1


# ShaResNet paper, Table 1: original -> shared (millions)
SHARESNET_TABLE = [
    (dict(num_layers=34), '3,224,224', 21.8, 13.6),
    (dict(num_layers=50), '3,224,224', 25.6, 20.5),
    (dict(num_layers=101), '3,224,224', 44.5, 29.4),
    (dict(num_layers=152), '3,224,224', 60.2, 36.8),
    (dict(num_layers=164, num_classes=10), '3,32,32', 1.70, 0.93),
    (dict(num_layers=40, widen_factor=4, num_classes=10), '3,32,32', 8.95, 5.85),
    (dict(num_layers=28, widen_factor=10, num_classes=100), '3,32,32', 36.54, 26.86),
]


@pytest.mark.parametrize('kwargs,shape,original,shared', SHARESNET_TABLE)
def test_sharesnet_table(kwargs, shape, original, shared):
    plain = count_params(get_symbol('sharesnet', image_shape=shape, shared=False, **kwargs), shape)
    tied = count_params(get_symbol('sharesnet', image_shape=shape, **kwargs), shape)
    assert abs(plain / M - original) <= 0.1
    assert abs(tied / M - shared) <= 0.1


@pytest.mark.parametrize('num_layers,gmacs', [(56, 5.63), (116, 12.65)])
def test_released_crunet_multiply_adds(num_layers, gmacs):
    assert abs(count_macs(get_symbol('crunet', num_layers=num_layers)) / 1e9 / gmacs - 1) <= 0.01


def test_resnet50_multiply_adds_near_paper():
    assert abs(count_macs(get_symbol('resnet', num_layers=50)) / 1e9 / 4.1 - 1) <= 0.05


def test_count_macs_by_hand():
    """A two-layer graph whose multiply-adds are worked out by hand."""
    data = mx.sym.Variable('data')
    x = mx.sym.Convolution(data, num_filter=8, kernel=(3, 3), stride=(2, 2), pad=(1, 1), no_bias=True, name='c1')
    x = mx.sym.Convolution(x, num_filter=8, kernel=(3, 3), pad=(1, 1), num_group=4, no_bias=True, name='c2')
    x = mx.sym.FullyConnected(mx.sym.Flatten(x), num_hidden=5, name='fc')
    # c1: 16x16 outputs x 8 filters x 3 in x 9; c2: 16x16 x 8 x 2 (grouped) x 9; fc: 8*16*16 x 5
    expected = 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 2 * 9 + 8 * 16 * 16 * 5
    assert count_macs(x, '3,32,32') == expected
    assert count_params(x, '3,32,32') == 8 * 3 * 9 + 8 * 2 * 9 + 8 * 16 * 16 * 5 + 5


@pytest.mark.parametrize('kwargs,paper_mb', [
    (dict(num_layers=56), 98), (dict(num_layers=56, setting='136x1d'), 98),
    (dict(num_layers=56, setting='tiny'), 48), (dict(num_layers=116), 168),
    (dict(num_layers=116, setting='wider'), 318),
])
def test_crunet_model_sizes_within_2_percent(kwargs, paper_mb):
    assert abs(model_size_mb(get_symbol('crunet', **kwargs)) / paper_mb - 1) <= 0.02


def test_shared_variable_counted_once():
    sym = get_symbol('crunet', num_layers=56)
    args = sym.list_arguments()
    assert args.count('conv4_x__x_3x3_bases[dim21]_weight') == 1
    # counting each of the six uses separately would add 5 * (640*1024 + 640*9)
    assert count_params(sym) == 25609384
