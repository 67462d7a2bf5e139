"""Augmentation keeps image, labels and trust mask aligned, and is reproducible."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_unet.core.augment import AugmentConfig, augment_sample

PRESETS = {"light": AugmentConfig.light(), "heavy": AugmentConfig.heavy()}


def _sample(h=48, w=40):
    rng = np.random.default_rng(3)
    labels = np.zeros((h, w), np.int64)
    labels[10:25, 8:20] = 1
    labels[30:40, 25:35] = 2
    image = (labels.astype(np.float32) / 2)[None] + 0.01 * rng.standard_normal((1, h, w), dtype=np.float32)
    mask = np.ones((h, w), np.float32)
    return image, labels, mask


@pytest.mark.parametrize("name", PRESETS)
def test_shapes_dtypes_and_determinism(name):
    image, labels, mask = _sample()
    a = augment_sample(image, labels, mask, np.random.default_rng(7), PRESETS[name])
    b = augment_sample(image, labels, mask, np.random.default_rng(7), PRESETS[name])
    for x, y, ref in zip(a, b, (image, labels, mask)):
        assert x.shape == ref.shape and x.dtype == ref.dtype and x.flags.c_contiguous
        np.testing.assert_array_equal(x, y)
    assert set(np.unique(a[1])) <= {0, 1, 2}
    assert set(np.unique(a[2])) <= {0.0, 1.0}


def test_geometry_moves_image_labels_and_mask_together():
    """With intensity transforms off, the image still encodes its labels after any warp."""
    image, labels, mask = _sample()
    config = AugmentConfig(rotate_prob=1.0, scale_prob=1.0, elastic_prob=1.0, elastic_alpha=3.0)
    for seed in range(10):
        img, lab, m = augment_sample(image, labels, mask, np.random.default_rng(seed), config)
        trusted = m > 0
        assert trusted.mean() > 0.3
        # the image's intensity (labels / 2, bilinear) matches the nearest label almost everywhere
        agree = np.abs(img[0] * 2 - lab) < 0.6
        assert agree[trusted].mean() > 0.93


def test_rotation_brings_in_untrusted_pixels():
    image, labels, mask = _sample(64, 64)
    config = AugmentConfig(flip=False, rot90=False, rotate_prob=1.0, max_rotation_degrees=45, scale_prob=1.0, scale_range=(0.6, 0.6))
    _, _, m = augment_sample(image, labels, mask, np.random.default_rng(0), config)
    assert 0 < m.mean() < 1  # the corners of a zoomed-out view come from outside the field


def test_untrusted_input_stays_untrusted_under_flips():
    image, labels, mask = _sample()
    mask[:, :20] = 0
    img, lab, m = augment_sample(image, labels, mask, np.random.default_rng(1), AugmentConfig(rotate_prob=0))
    assert m.sum() == mask.sum()


def test_none_preset_is_identity():
    image, labels, mask = _sample()
    out = augment_sample(image, labels, mask, np.random.default_rng(0), AugmentConfig.none())
    for x, ref in zip(out, (image, labels, mask)):
        np.testing.assert_array_equal(x, ref)


def test_speed_256():
    rng = np.random.default_rng(0)
    image = rng.random((1, 256, 256), dtype=np.float32)
    labels = (image[0] > 0.5).astype(np.int64)
    mask = np.ones((256, 256), np.float32)
    for name, budget in (("light", 0.015), ("heavy", 0.04)):  # generous: the CPU is shared
        start = time.perf_counter()
        for _ in range(20):
            augment_sample(image, labels, mask, rng, PRESETS[name])
        assert (time.perf_counter() - start) / 20 < budget, name


def test_bad_config():
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(rotate_prob=2.0)
