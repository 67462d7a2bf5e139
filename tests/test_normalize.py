"""Modality-aware normalisation: CT in HU gets a fixed window, MRI-like scans
inside-body percentiles, the rest whole-image percentiles; predict and
fine-tune read an image exactly the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_unet.core.config import DEFAULT_CT_WINDOW, InputConfig, ModelConfig
from napari_unet.core.normalize import intensity_ranges, normalize_slice, resolve_normalization


def ct_volume(seed: int = 0, slices: int = 4, size: int = 96, contrast: float = -30.0):
    """A CT-like volume in HU: air, fat, a liver-like organ (60 HU) and a
    hypodense lesion ``contrast`` HU below it, plus bone at +1000."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    body = (yy - c) ** 2 / (0.45 * size) ** 2 + (xx - c) ** 2 / (0.4 * size) ** 2 < 1
    organ = (yy - c) ** 2 + (xx - c * 0.9) ** 2 < (0.28 * size) ** 2
    lesion = (yy - c) ** 2 + (xx - c * 0.8) ** 2 < (0.08 * size) ** 2
    bone = (yy - 0.85 * size) ** 2 + (xx - c) ** 2 < (0.05 * size) ** 2
    plane = np.full((size, size), -1000.0)
    plane[body] = -100.0
    plane[organ] = 60.0
    plane[lesion] = 60.0 + contrast
    plane[bone] = 1000.0
    volume = np.stack([plane + 8 * rng.standard_normal(plane.shape) for _ in range(slices)])
    labels = np.broadcast_to(lesion, volume.shape).astype(np.uint8)
    return volume.astype(np.float32), labels.copy()


def mri_volume(seed: int = 0):
    """An MRI-like volume: a dark (noise-only) surround and a head."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:80, :80]
    head = (yy - 40) ** 2 + (xx - 40) ** 2 < 30**2
    plane = np.where(head, 400.0, 0.0) + 10 * np.abs(rng.standard_normal((80, 80)))
    plane[(yy - 40) ** 2 + (xx - 50) ** 2 < 36] += 500  # an enhancing lesion
    return np.stack([plane] * 3).astype(np.float32)


def test_ct_in_hounsfield_units_gets_the_soft_tissue_window():
    volume, _ = ct_volume()
    norm = resolve_normalization(volume, InputConfig(), rgb=False)
    assert norm.kind == "ct"
    np.testing.assert_allclose(norm.ranges[:, :2], [DEFAULT_CT_WINDOW])
    x = normalize_slice(volume[0], norm.ranges, 1, InputConfig())[0]
    assert x.min() == 0.0 and x.max() == 2.0  # air is black, not below; bone bounded
    assert "HU" in norm.describe()


def test_ct_window_keeps_a_low_contrast_lesion_visible():
    volume, labels = ct_volume(contrast=-30.0)
    contrast = {}
    for mode in ("auto", "percentile"):
        config = InputConfig(normalization=mode)
        x = normalize_slice(volume[0], intensity_ranges(volume, config, False), 1, config)[0]
        organ_ring = (labels[0] == 0) & (np.abs(volume[0] - 60) < 40)
        contrast[mode] = float(np.median(x[organ_ring]) - np.median(x[labels[0] == 1]))
    # 30 HU over a 400 HU window is 0.075; over the whole -1000..1000 range 0.015
    assert contrast["auto"] > 0.06
    assert contrast["percentile"] < 0.02


def test_mri_like_scan_is_normalised_inside_the_body():
    volume = mri_volume()
    norm = resolve_normalization(volume, InputConfig(), rgb=False)
    assert norm.kind == "body"
    lo, hi = norm.ranges[0]
    assert lo > 100  # the dark surround does not set the low end
    whole = resolve_normalization(volume, InputConfig(normalization="percentile"), rgb=False)
    assert whole.ranges[0, 0] < 50


def test_photos_and_textures_keep_whole_image_percentiles():
    rng = np.random.default_rng(0)
    texture = (120 + 30 * rng.standard_normal((64, 64))).astype(np.float32)
    assert resolve_normalization(texture, InputConfig(), rgb=False).kind == "percentile"
    rgb = rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)
    norm = resolve_normalization(rgb, InputConfig(), rgb=True)
    assert norm.kind == "percentile" and norm.ranges.shape == (3, 2)


def test_old_model_configs_keep_percentile_normalisation():
    config = ModelConfig(name="x").to_dict()
    del config["input"]["normalization"], config["input"]["ct_window"]
    old = ModelConfig.from_dict(json.loads(json.dumps(config)))
    assert old.input.normalization == "percentile"
    new = ModelConfig.from_dict(json.loads(json.dumps(ModelConfig(name="y").to_dict())))
    assert new.input.normalization == "auto" and new.input.ct_window == DEFAULT_CT_WINDOW


def test_bad_normalisation_settings_are_refused():
    with pytest.raises(ValueError, match="normalization"):
        InputConfig(normalization="zscore-everything")
    with pytest.raises(ValueError, match="ct_window"):
        InputConfig(ct_window=(200.0, -100.0))


def test_predict_and_finetune_read_the_volume_the_same_way(tiny_model, monkeypatch):
    """The planes fine-tuning trains on are exactly those predict feeds the network."""
    from napari_unet.core import predict as predict_module
    from napari_unet.core.finetune import FinetuneOptions, prepare_corrections

    model = tiny_model
    model.config = model.config.replace(input=InputConfig(normalization="auto"))
    volume, labels = ct_volume(slices=3, size=64)
    mask = np.zeros(labels.shape, bool)
    mask[1] = True
    corrections, _ = prepare_corrections(volume, labels, mask, model, FinetuneOptions(), 0, 1)
    fed = []
    real = predict_module.normalize_slice

    def spy(plane, ranges, channels, config):
        out = real(plane, ranges, channels, config)
        fed.append(out)
        return out

    monkeypatch.setattr(predict_module, "normalize_slice", spy)
    predict_module.predict(volume, model, device="cpu")
    np.testing.assert_array_equal(corrections[0].plane, fed[1])
