"""bench.io_speed times the project's training pipeline against MXNet's own ImageRecordIter with the
same augmentation, and reports what a GPU's input would need."""
import os

import mxnet as mx

from bench import io_speed
from crunet.data import iterators

AUGMENTATION = ('data_shape', 'batch_size', 'shuffle', 'round_batch', 'preprocess_threads', 'label_width',
                'random_resized_crop', 'min_random_area', 'max_random_area', 'min_aspect_ratio', 'max_aspect_ratio',
                'rand_mirror', 'random_h', 'random_s', 'random_l', 'inter_method', 'mean_r', 'mean_g', 'mean_b',
                'scale', 'path_imgrec', 'path_imgidx')


def test_the_peer_iterator_has_the_projects_augmentation(tmp_path):
    """MXNet's iterator in the benchmark is built from parameters spelled out in the benchmark; they
    are the ones the project's training iterator passes to ImageRecordIter (std 1, no extra keys)."""
    rec = io_speed.synthetic_rec(str(tmp_path / 's'), num_images=8, width=64, height=48)
    ours = iterators._train_iter(io_speed._args(rec, 1, 4, '3,32,32'))._kw
    peer = io_speed.mxnet_train_kwargs(rec, 1, 4, '3,32,32')
    assert {k: peer[k] for k in AUGMENTATION} == {k: ours[k] for k in AUGMENTATION}
    assert (ours['std_r'], ours['std_g'], ours['std_b']) == (1.0, 1.0, 1.0)
    assert set(peer) - set(AUGMENTATION) == {'seed'}
    batch = mx.io.ImageRecordIter(**peer).next()
    assert batch.data[0].shape == (4, 3, 32, 32)


def test_run_reports_the_ratio_per_thread_rate_and_threads_for_a_gpu():
    r = io_speed.run(num_images=32, batch_size=8, repeat=2, breakdown=False, image_shape='3,32,32',
                     log=lambda m: None)
    assert len(r['rounds']) == 2 and r['augment_img_s'] > 0
    ratio = sorted(g['full training augmentation'] / g["MXNet's ImageRecordIter, same augmentation"]
                   for g in r['rounds'])
    assert r['augment_x_mxnet'] == sum(ratio) / 2                  # the median of the two rounds' ratios
    assert r['augment_img_s_per_thread'] == r['augment_img_s'] / r['threads']
    assert r['threads_for']['1500'] * r['augment_img_s_per_thread'] >= 1500
    assert (r['threads_for']['1500'] - 1) * r['augment_img_s_per_thread'] < 1500
