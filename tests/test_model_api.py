"""The model API: explicit keyword arguments (a typo is an error naming it), CRU-Net's unshared
twin, and the heads built from the same body."""
import mxnet as mx
import numpy as np
import pytest

from symbols import ChoiceError, count_params, get_symbol


def test_unknown_keyword_is_named_with_the_valid_ones():
    with pytest.raises(ChoiceError) as err:
        get_symbol('crunet', num_layers=56, settings='tiny')
    msg = str(err.value)
    assert 'settings' in msg and 'setting' in msg.split('valid arguments:')[1] and 'shared' in msg
    with pytest.raises(ChoiceError, match='widen_factor'):
        get_symbol('resnet', num_layers=50, widen_factor=2)
    with pytest.raises(ValueError, match='plain, blockdiag8, blockdiag16'):
        get_symbol('resnext', num_layers=50, grouped_conv='winograd')


def test_crunet56_unshared_twin_owns_its_bases():
    shared = get_symbol('crunet', num_layers=56)
    twin = get_symbol('crunet', num_layers=56, shared=False)
    # five more units of conv4 each own a 640x1024 1x1 basis and a 640x1x3x3 depthwise basis
    assert count_params(shared) == 25609384
    assert count_params(twin) == 25609384 + 5 * (640 * 1024 + 640 * 9) == 28914984
    args = twin.list_arguments()
    assert 'conv4_x__x_1x1_bases[dim3]_weight' in shared.list_arguments()
    assert not any(a.startswith('conv4_x__x_') for a in args)
    for k in range(1, 7):
        assert 'conv4_x__(%d)_1x1_bases[dim3]_weight' % k in args
        assert 'conv4_x__(%d)_3x3_bases[dim21]_weight' % k in args
    # everything else is the same network
    assert sorted(set(shared.list_arguments()) - set(args)) == ['conv4_x__x_1x1_bases[dim3]_weight',
                                                                'conv4_x__x_3x3_bases[dim21]_weight']


def test_crunet116_unshared_twin_count():
    extra = 5 * (352 * 512 + 352 * 9) + 3 * 5 * (704 * 1024 + 704 * 9)      # conv3 (one group), conv4 (three)
    assert count_params(get_symbol('crunet', num_layers=116, shared=False)) == 43656136 + extra == 55481576


def test_heads_from_one_body():
    kw = dict(num_layers=22, setting='cifar', num_classes=10, image_shape='3,32,32')
    train = get_symbol('crunet', **kw)
    logits = get_symbol('crunet', output='logits', **kw)
    probs = get_symbol('crunet', output='probabilities', **kw)
    feats = get_symbol('crunet', output='features', **kw)
    mean_max = get_symbol('crunet', output='logits', pooling='mean-max', **kw)
    params = [a for a in train.list_arguments() if a not in ('data', 'softmax_label')]
    for sym in (logits, probs, mean_max):
        assert sym.list_arguments() == ['data'] + params     # no label input, the same parameters
    assert feats.infer_shape(data=(2, 3, 32, 32))[1] == [(2, 256)]
    # the same weights give softmax(logits) and the training graph's softmax
    rng = np.random.RandomState(0)
    arg_shapes, _, aux_shapes = train.infer_shape(data=(2, 3, 32, 32), softmax_label=(2,))
    values = {n: mx.nd.array(rng.normal(0, 0.1, s)) for n, s in zip(train.list_arguments(), arg_shapes)}
    aux = {n: mx.nd.array(rng.uniform(0.5, 1.5, s)) for n, s in zip(train.list_auxiliary_states(), aux_shapes)}
    outs = {}
    for name, sym in (('train', train), ('logits', logits), ('probs', probs), ('mm', mean_max)):
        ex = sym.bind(mx.cpu(), {k: v for k, v in values.items() if k in sym.list_arguments()},
                      aux_states={k: v for k, v in aux.items()})
        outs[name] = ex.forward(is_train=False)[0].asnumpy()
    soft = np.exp(outs['logits'] - outs['logits'].max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    assert np.allclose(outs['probs'], soft, atol=1e-6) and np.allclose(outs['train'], soft, atol=1e-6)
    assert np.abs(outs['mm'] - outs['logits']).max() > 1e-3 * np.abs(outs['logits']).max()   # pools differently


def test_sharesnet_presets_name_their_family():
    assert count_params(get_symbol('sharesnet', num_layers=164, setting='cifar', num_classes=10,
                                   image_shape='3,32,32')) == 929530
    with pytest.raises(ChoiceError, match='imagenet'):
        get_symbol('sharesnet', num_layers=50, setting='cifar')
