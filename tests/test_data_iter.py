"""Training / validation iterators of crunet.data.iterators on real RecordIO files packed by crunet.data.packing.

Every file here is made by the test from generated images (32-128 px): round trip (counts,
labels, pixels), the augmentation really applied by ImageRecordIter (crop area / aspect
measured on an image whose pixels encode their coordinates, mirror rate, HSL noise range),
sharding, seeds, the synthetic iterator and --test-io.
"""
import argparse
import logging
import os
import types

import cv2
import mxnet as mx
import numpy as np
import pytest

from crunet.data import iterators as cd, lists, packing
from crunet.data import checks as dchecks, flags as dflags


# ---------------------------------------------------------------------------------------------- helpers
def write_tree(root, classes, per_class, size=(32, 32), ext='.jpg', seed=0):
    """Random-pattern images root/<class>/<i>.<ext>; returns {relpath: BGR image written}."""
    rng = np.random.RandomState(seed)
    out = {}
    h, w = size
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            # smooth random colour field: distinct per image, survives JPEG well
            img = cv2.resize(rng.uniform(0, 255, (4, 4, 3)).astype(np.float32), (w, h),
                             interpolation=cv2.INTER_CUBIC)
            img = np.clip(img, 0, 255).astype(np.uint8)
            rel = '%s/%02d%s' % (c, i, ext)
            params = [cv2.IMWRITE_JPEG_QUALITY, 98] if ext == '.jpg' else []
            assert cv2.imwrite(os.path.join(root, rel), img, params)
            out[rel] = img
    return out


def pack_tree(root, prefix, train_ratio=1.0, **kw):
    made = lists.make_lists(prefix, root, train_ratio=train_ratio, seed=0)
    return [packing.pack(lst, root, progress=False, **kw)['rec'] for lst in made]


def pack_images(prefix, images, labels=None, ext='.png'):
    """Pack in-memory BGR images (list) through the real list + pack path; label i defaults to i."""
    root = prefix + '_img'
    os.makedirs(root, exist_ok=True)
    items = []
    for i, img in enumerate(images):
        rel = '%05d%s' % (i, ext)
        assert cv2.imwrite(os.path.join(root, rel), img)
        items.append((rel, [float(i if labels is None else labels[i])]))
    lists.write_lst(prefix + '.lst', items)
    return packing.pack(prefix + '.lst', root, progress=False)['rec']


def make_args(**over):
    return dflags.data_args(**dict(dict(batch_size=8, seed=1, data_nthreads=2), **over))


RAW = dict(rgb_mean='0,0,0', rgb_std='1,1,1', scale=1.0)        # pixels out as they are


def read_all(it, epochs=1):
    """[(labels without pad, images without pad (N,C,H,W))] per epoch."""
    out = []
    for _ in range(epochs):
        it.reset()
        labs, imgs = [], []
        for b in it:
            n = b.data[0].shape[0] - b.pad
            labs.append(b.label[0].asnumpy()[:n])
            imgs.append(b.data[0].asnumpy()[:n])
        out.append((np.concatenate(labs), np.concatenate(imgs)))
    return out


def lst_labels(rec):
    return [int(lab[0]) for _, lab, _ in lists.read_lst(os.path.splitext(rec)[0] + '.lst')]


def to_bgr(chw):
    return np.clip(np.round(chw.transpose(1, 2, 0)[:, :, ::-1]), 0, 255).astype(np.uint8)


class FakeKV(object):
    type = 'dist_sync'

    def __init__(self, num_workers, rank):
        self.num_workers, self.rank = num_workers, rank


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    d = tmp_path_factory.mktemp('iter')
    root = str(d / 'images')
    images = write_tree(root, ['ant', 'bee', 'cow'], 7)
    train, val = pack_tree(root, str(d / 'set'), train_ratio=0.6)
    return types.SimpleNamespace(root=root, images=images, train=train, val=val, dir=d)


@pytest.fixture(scope='module')
def coords(tmp_path_factory):
    """128x96 PNG whose R grows with x (0..254) and G with y (0..253): pixels encode coordinates."""
    d = tmp_path_factory.mktemp('coords')
    W, H = 128, 96
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :, 2] = (np.arange(W) * 2)[None, :]
    img[:, :, 1] = np.round(np.arange(H) * (253.0 / (H - 1)))[:, None]
    img[:, :, 0] = 128
    rec = pack_images(str(d / 'coords'), [img] * 160, labels=[0] * 160)
    return types.SimpleNamespace(rec=rec, W=W, H=H)


# ---------------------------------------------------------------------------------------------- round trip
def test_round_trip_counts_and_labels(tree):
    a = make_args(data_train=tree.train, data_val=tree.val, image_shape='3,32,32', resize_val=32, batch_size=4)
    train, val = cd.get_rec_iter(a)
    assert train.provide_data[0].name == 'data' and train.provide_data[0].shape == (4, 3, 32, 32)
    assert train.provide_label[0].name == 'softmax_label' and train.provide_label[0].shape == (4,)
    want_train, want_val = lst_labels(tree.train), lst_labels(tree.val)
    assert len(want_train) + len(want_val) == 21 and sorted(set(want_val)) == [0, 1, 2]
    (labs, imgs), = read_all(train)
    assert sorted(labs.astype(int).tolist()) == sorted(want_train)
    assert imgs.shape == (len(want_train), 3, 32, 32) and np.isfinite(imgs).all()
    for epoch_labels, epoch_imgs in read_all(val, epochs=2):      # exactly once per epoch, in list order
        assert epoch_labels.astype(int).tolist() == want_val
        assert epoch_imgs.shape[0] == len(want_val)


def test_round_trip_pixels_without_augmentation(tree):
    a = make_args(data_train=tree.train, data_val=tree.val, image_shape='3,32,32', resize_val=32, aug_off=1,
                  batch_size=4, **RAW)
    train, val = cd.get_rec_iter(a)
    src = lists.read_lst(os.path.splitext(tree.val)[0] + '.lst')
    (labs, imgs), = read_all(val)
    for (_, lab, rel), got, gl in zip(src, imgs, labs):
        assert int(gl) == int(lab[0])
        diff = np.abs(to_bgr(got).astype(int) - tree.images[rel].astype(int))
        assert diff.mean() < 3.0 and diff.max() <= 24, rel            # JPEG (q98, 4:2:0) tolerance
        decoded = cv2.imread(os.path.join(tree.root, rel))           # the file's own pixels, exactly
        assert np.abs(to_bgr(got).astype(int) - decoded.astype(int)).max() <= 1, rel
    # training order is shuffled: match every output to its nearest source, each exactly once
    (labs, imgs), = read_all(train)
    names = [rel for _, _, rel in lists.read_lst(os.path.splitext(tree.train)[0] + '.lst')]
    stack = np.stack([tree.images[n] for n in names]).astype(int)
    matched = []
    for got in imgs:
        err = np.abs(stack - to_bgr(got).astype(int)).mean(axis=(1, 2, 3))
        k = int(np.argmin(err))
        assert err[k] < 3.0 and np.sort(err)[1] > 10.0
        matched.append(k)
    assert sorted(matched) == list(range(len(names)))


def test_val_pipeline_is_resize_shorter_side_then_centre_crop_bicubic(tmp_path):
    rng = np.random.RandomState(3)
    img = np.clip(cv2.resize(rng.uniform(0, 255, (5, 6, 3)).astype(np.float32), (60, 40),
                             interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    rec = pack_images(str(tmp_path / 'v'), [img] * 2)
    a = make_args(data_val=rec, image_shape='3,24,24', resize_val=32, batch_size=2, **RAW)
    (_, imgs), = read_all(cd.get_val_iter(a))
    ref = cv2.resize(img, (48, 32), interpolation=cv2.INTER_CUBIC)[4:28, 12:36]      # 40x60 -> 32x48, centre 24
    assert np.abs(to_bgr(imgs[0]).astype(int) - ref.astype(int)).max() <= 3
    # normalisation: (pixel - mean) / std * scale, RGB order
    a = make_args(data_val=rec, image_shape='3,24,24', resize_val=32, batch_size=2, rgb_mean='124,117,104',
                  rgb_std='2,2,2', scale=0.0167)
    (_, norm), = read_all(cd.get_val_iter(a))
    mean = np.array([124, 117, 104], np.float32)[:, None, None]
    np.testing.assert_allclose(norm[0], (imgs[0] - mean) / 2 * 0.0167, atol=1e-4)


def test_small_images_are_upscaled(tmp_path):
    tiny = np.zeros((6, 9, 3), np.uint8)
    tiny[:] = (30, 160, 220)
    rec = pack_images(str(tmp_path / 'tiny'), [tiny] * 4)
    for over in (dict(), dict(aug_off=1), dict(random_resized_crop=0)):
        a = make_args(data_train=rec, data_val=rec, image_shape='3,32,32', batch_size=4, random_h=0, random_s=0,
                      random_l=0, **dict(RAW, **over))
        train, val = cd.get_rec_iter(a)
        for it in (train, val):
            (_, imgs), = read_all(it)
            assert imgs.shape == (4, 3, 32, 32)
            np.testing.assert_allclose(imgs[:, :, 4:-4, 4:-4].mean(axis=(0, 2, 3)), [220, 160, 30], atol=2)


# ---------------------------------------------------------------------------------------------- augmentation
def measure_crops(rec, W, H, n_out=32, **over):
    """(area fraction, aspect w/h, x0, x1, y0, y1) of every crop the training iterator made."""
    a = make_args(data_train=rec, image_shape='3,%d,%d' % (n_out, n_out), random_mirror=0, random_h=0,
                  random_s=0, random_l=0, batch_size=16, **dict(RAW, **over))
    (_, imgs), = read_all(cd._train_iter(a))
    R, G = imgs[:, 0] / 2.0, imgs[:, 1] * ((H - 1) / 253.0)         # back to x, y coordinates
    # output pixel i samples source x = x0 + (i + 0.5) * w / n - 0.5: the first and last columns give w
    xa, xb = R[:, 4:-4, 0].mean(1), R[:, 4:-4, -1].mean(1)
    ya, yb = G[:, 0, 4:-4].mean(1), G[:, -1, 4:-4].mean(1)
    w, h = (xb - xa) * n_out / (n_out - 1), (yb - ya) * n_out / (n_out - 1)
    x0, y0 = xa - (0.5 * w / n_out - 0.5), ya - (0.5 * h / n_out - 0.5)
    return w * h / (W * H), w / h, x0, x0 + w, y0, y0 + h


def test_random_resized_crop_bounds_paper_defaults(coords):
    area, aspect, x0, x1, y0, y1 = measure_crops(coords.rec, coords.W, coords.H)
    assert len(area) == 160
    # inside the configured bounds (8%-100% of the area, aspect 3/4-4/3), up to integer crop sizes
    assert area.min() >= 0.08 * 0.93 and area.max() <= 1.0 + 1e-3
    assert aspect.min() >= 0.75 * 0.95 and aspect.max() <= (4 / 3.) * 1.05
    assert x0.min() >= -0.6 and y0.min() >= -0.6 and x1.max() <= coords.W + 0.6 and y1.max() <= coords.H + 0.6
    # and really random over that range
    assert area.min() < 0.15 and area.max() > 0.6
    assert aspect.min() < 0.85 and aspect.max() > 1.2
    assert np.ptp(x0) > 20 and np.ptp(y0) > 15


def test_random_resized_crop_bounds_follow_flags(coords):
    area, aspect, _, _, _, _ = measure_crops(coords.rec, coords.W, coords.H, min_random_area=0.3,
                                             max_random_area=0.4, min_random_aspect_ratio=0.9,
                                             max_random_aspect_ratio=1.1)
    assert area.min() >= 0.3 * 0.96 and area.max() <= 0.4 * 1.04
    assert aspect.min() >= 0.9 * 0.96 and aspect.max() <= 1.1 * 1.04


def test_mirror_about_half_the_time(coords):
    def mirrored(**over):
        a = make_args(data_train=coords.rec, image_shape='3,32,32', random_resized_crop=0, resize_val=32,
                      random_h=0, random_s=0, random_l=0, batch_size=16, **dict(RAW, **over))
        (_, imgs), = read_all(cd._train_iter(a))
        slope = imgs[:, 0, :, -1].mean(1) - imgs[:, 0, :, 0].mean(1)          # R grows with x unless flipped
        assert np.all(np.abs(slope) > 100)
        return float(np.mean(slope < 0))
    assert 0.3 <= mirrored(random_mirror=1) <= 0.7
    assert mirrored(random_mirror=0) == 0.0


def test_hsl_noise_in_range(tmp_path):
    rng = np.random.RandomState(5)
    hls = np.zeros((32, 32, 3), np.uint8)          # mid lightness and saturation: no clipping at +-50 / +-40
    hls[:, :, 0] = np.linspace(30, 150, 32)[None, :].astype(np.uint8)
    hls[:, :, 1] = 128
    hls[:, :, 2] = 150
    img = cv2.cvtColor(hls, cv2.COLOR_HLS2BGR)
    ref = cv2.cvtColor(img, cv2.COLOR_BGR2HLS).astype(int)
    rec = pack_images(str(tmp_path / 'hsl'), [img] * 96, labels=[0] * 96)

    def shifts(h, s, l):
        a = make_args(data_train=rec, image_shape='3,32,32', random_resized_crop=0, resize_val=32, random_mirror=0,
                      random_h=h, random_s=s, random_l=l, batch_size=16, **RAW)
        (_, imgs), = read_all(cd._train_iter(a))
        assert imgs.min() >= 0 and imgs.max() <= 255
        out = []
        for chw in imgs:
            got = cv2.cvtColor(to_bgr(chw), cv2.COLOR_BGR2HLS).astype(int)
            out.append(np.median((got - ref)[4:-4, 4:-4].reshape(-1, 3), axis=0))
        return np.array(out)                         # per image: dH, dL, dS
    d = shifts(20, 40, 50)
    dh, dl, ds = d[:, 0], d[:, 1], d[:, 2]
    assert np.abs(dh).max() <= 20 + 2 and np.abs(dl).max() <= 50 + 2 and np.abs(ds).max() <= 40 + 3
    assert dh.min() < -8 and dh.max() > 8 and dl.min() < -20 and dl.max() > 20 and ds.min() < -15 and ds.max() > 15
    d = shifts(0, 0, 0)
    assert np.abs(d).max() <= 1
    d = shifts(0, 0, 10)                              # each channel switchable on its own
    assert np.abs(d[:, 0]).max() <= 1 and np.abs(d[:, 2]).max() <= 3 and np.abs(d[:, 1]).max() <= 12


def test_train_seed_gives_same_batches(tree):
    def first(seed):
        a = make_args(data_train=tree.train, image_shape='3,24,24', batch_size=4, seed=seed, data_nthreads=2)
        b = cd._train_iter(a).next()
        return b.data[0].asnumpy(), b.label[0].asnumpy()
    d1, l1 = first(7)
    d2, l2 = first(7)
    d3, _ = first(8)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(l1, l2)
    assert not np.array_equal(d1, d3)


def test_float16_runs_get_float32_data(tree):
    """Under --dtype float16 the iterators still give float32 data: the float16 graph casts its input."""
    a = make_args(data_train=tree.train, data_val=tree.val, image_shape='3,24,24', batch_size=4, dtype='float16')
    train, val = cd.get_rec_iter(a)
    assert train.next().data[0].dtype == np.float32 and val.next().data[0].dtype == np.float32


# ---------------------------------------------------------------------------------------------- sharding
@pytest.fixture(scope='module')
def numbered(tmp_path_factory):
    d = tmp_path_factory.mktemp('shard')
    rng = np.random.RandomState(1)
    imgs = [rng.randint(0, 255, (16, 16, 3)).astype(np.uint8) for _ in range(23)]
    return pack_images(str(d / 'numbered'), imgs)          # label = record number


@pytest.mark.parametrize('parts', [1, 2, 3, 4])
def test_shards_cover_every_record_once(numbered, parts):
    seen_val, seen_train = [], [[], []]
    sizes = dchecks.part_sizes(23, parts)
    for rank in range(parts):
        kv = FakeKV(parts, rank)
        a = make_args(data_train=numbered, data_val=numbered, image_shape='3,16,16', resize_val=16, batch_size=4)
        train, val = cd.get_rec_iter(a, kv)
        (vl, _), = read_all(val)
        assert len(vl) == sizes[rank]
        seen_val += vl.astype(int).tolist()
        for epoch, (tl, _) in enumerate(read_all(train, epochs=2)):     # every epoch: the whole part, once
            assert sorted(tl.tolist()) == sorted(vl.tolist())
            seen_train[epoch] += tl.astype(int).tolist()
    assert sorted(seen_val) == list(range(23))
    assert sorted(seen_train[0]) == sorted(seen_train[1]) == list(range(23))


def test_train_epochs_reshuffle(numbered):
    a = make_args(data_train=numbered, image_shape='3,16,16', batch_size=5)
    e0, e1, e2 = [labels.astype(int).tolist() for labels, _ in read_all(cd._train_iter(a), epochs=3)]
    assert sorted(e0) == sorted(e1) == sorted(e2) == list(range(23))
    assert e0 != e1 and e1 != e2


def test_train_set_epoch_is_the_epoch_of_seed_plus_epoch(numbered):
    """Epoch e of a TrainIter is always the permutation of seed + e, reached by resets or directly
    (exact resume), and equal to a fresh iterator built with that seed."""
    def epoch_labels(it):
        (labels, _), = read_all(it)
        return labels.astype(int).tolist()
    a = make_args(data_train=numbered, image_shape='3,16,16', batch_size=5, seed=7)
    by_reset = [lab.astype(int).tolist() for lab, _ in read_all(cd._train_iter(a), epochs=3)]
    jumped = cd._train_iter(a)
    jumped.set_epoch(2)
    assert jumped.epoch == 2 and epoch_labels(jumped) == by_reset[2]
    assert epoch_labels(cd._train_iter(make_args(data_train=numbered, image_shape='3,16,16', batch_size=5,
                                                 seed=9))) == by_reset[2]
    jumped.set_epoch(1)
    assert epoch_labels(jumped) == by_reset[1]


def test_real_kvstore_means_one_part(numbered):
    kv = mx.kv.create('local')
    a = make_args(data_val=numbered, image_shape='3,16,16', resize_val=16, batch_size=5)
    (vl, _), = read_all(cd.get_val_iter(a, kv))
    assert vl.astype(int).tolist() == list(range(23))


def test_effective_threads_match_mxnet(numbered, capfd):
    import re
    it = mx.io.ImageRecordIter(path_imgrec=numbered, path_imgidx=numbered[:-4] + '.idx', data_shape=(3, 16, 16),
                               batch_size=4, preprocess_threads=8, verbose=True)
    del it
    used = re.findall(r'use (\d+) threads for decoding', capfd.readouterr().err)
    assert used and int(used[-1]) == dchecks.effective_threads(8)
    assert dchecks.effective_threads(1) == 1


def test_part_sizes_match_dmlc():
    assert dchecks.part_sizes(10, 4) == [3, 3, 3, 1]
    assert dchecks.part_sizes(5, 4) == [2, 2, 1, 0]
    assert sum(dchecks.part_sizes(1281167, 7)) == 1281167


# ---------------------------------------------------------------------------------------------- helpers for the trainer
def test_synthetic_iter():
    it = cd.SyntheticDataIter(10, (4, 3, 8, 8), 3, np.float32)
    assert it.provide_data[0].name == 'data' and it.provide_data[0].shape == (4, 3, 8, 8)
    assert it.provide_label[0].name == 'softmax_label' and it.provide_label[0].shape == (4,)
    for _ in range(2):
        it.reset()
        batches = list(it)
        assert len(batches) == 3
        lab = batches[0].label[0].asnumpy()
        assert batches[0].data[0].context == mx.cpu(0) and lab.min() >= 0 and lab.max() < 10
    assert cd.SyntheticDataIter(5, (2, 3, 4, 4), 1, 'float16').next().data[0].dtype == np.float16


def test_test_io_logs_speed(tree, caplog):
    a = make_args(data_train=tree.train, image_shape='3,24,24', batch_size=4, disp_batches=2)
    with caplog.at_level(logging.INFO):
        speed = cd.test_io(a, num_batches=5)
    assert speed > 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Batch [')]
    assert lines and lines[0].startswith('Batch [2] Speed: ') and lines[0].endswith(' samples/sec')


def test_flags_have_help_and_paper_defaults():
    p = argparse.ArgumentParser()
    groups = [dflags.add_data_args(p), dflags.add_data_aug_args(p)]
    for g in groups:
        for act in g._group_actions:
            assert act.help and len(act.help) > 15, act.dest
    a = p.parse_args([])
    assert (a.random_resized_crop, a.min_random_area, a.max_random_area) == (1, 0.08, 1.0)
    assert a.min_random_aspect_ratio == 0.75 and abs(a.max_random_aspect_ratio - 4 / 3.) < 1e-4
    assert (a.random_mirror, a.random_h, a.random_s, a.random_l, a.resize_val) == (1, 20, 40, 50, 256)
    assert (a.rgb_mean, a.scale, a.image_shape, a.data_nthreads) == ('124,117,104', 0.0167, '3,224,224', 4)
    assert a.inter_method == 2 and a.aug_off == 0
