"""The scan simulator: determinism, label/image alignment, speed."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from napari_unet.core.simulate import (
    MODALITIES,
    SimulatorConfig,
    fractal_noise,
    rasterize_vessels,
    simulate_scan,
    simulate_volume,
)

PLAIN = SimulatorConfig(augment=False, real_backgrounds=False)


@pytest.mark.parametrize("modality", [*MODALITIES, None])
def test_same_seed_same_scan(modality):
    a_img, a_lab = simulate_scan(7, (96, 128), modality)
    b_img, b_lab = simulate_scan(7, (96, 128), modality)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, _ = simulate_scan(8, (96, 128), modality)
    assert not np.array_equal(a_img, c_img)


@pytest.mark.parametrize("modality", MODALITIES)
def test_shapes_dtypes_and_classes(modality):
    for seed in range(4):
        image, labels = simulate_scan(seed, (64, 80), modality)
        assert labels.shape == (64, 80) and labels.dtype == np.uint8
        assert image.dtype == np.float32 and image.shape[:2] == (64, 80)
        assert image.ndim == 2 or (modality == "fundus" and image.shape == (64, 80, 3))
        assert set(np.unique(labels)) <= {0, 1, 2}
        assert np.isfinite(image).all()


def test_fundus_colour_and_grey():
    rgb, _ = simulate_scan(1, (64, 64), "fundus", rgb=True)
    grey, _ = simulate_scan(1, (64, 64), "fundus", rgb=False)
    assert rgb.shape == (64, 64, 3) and grey.shape == (64, 64)


def test_generator_is_advanced_in_place():
    rng = np.random.default_rng(3)
    a = simulate_scan(rng, (48, 48))[0]
    b = simulate_scan(rng, (48, 48))[0]
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("modality", MODALITIES)
def test_labels_are_exactly_where_the_structures_are_drawn(modality):
    """Same seed with and without contrast (the random draws are identical):
    the images differ on the labelled pixels (the lesion or vessel is drawn
    there, visibly) and nowhere far from a label."""
    from scipy import ndimage

    drawn = SimulatorConfig(augment=False, real_backgrounds=False, contrast=(0.8, 0.8),
                            tumor_contrast=(0.8, 0.8), tumor_probability=1.0, nerve_probability=1.0)
    hidden = SimulatorConfig(augment=False, real_backgrounds=False, contrast=(0.0, 0.0), visibility=(0.0, 0.0),
                             tumor_contrast=(0.0, 0.0), tumor_probability=1.0, nerve_probability=1.0)
    for seed in range(3):
        image, labels = simulate_scan(seed, (96, 96), modality, config=drawn, rgb=False)
        plain, same_labels = simulate_scan(seed, (96, 96), modality, config=hidden, rgb=False)
        np.testing.assert_array_equal(labels, same_labels)
        changed = np.abs(image - plain) > 1e-3 * (np.ptp(plain) + 1e-6)
        labelled = labels > 0
        if labelled.sum() < 10:
            continue
        assert changed[labelled].mean() > 0.95, seed
        # and visibly so: a typical labelled pixel moves by more than 2 % of the range
        spread = np.percentile(plain, 99) - np.percentile(plain, 1)
        assert np.median(np.abs(image - plain)[labelled]) > 0.02 * spread, seed
        far = ~ndimage.binary_dilation(labelled, iterations=30)
        assert changed[far].mean() < 0.01 if far.any() else True


def test_vessel_widths_and_centre_line():
    ys = np.full(50, 20.0)
    xs = np.arange(5, 55, dtype=float)
    profile, mask = rasterize_vessels((40, 60), ys, xs, np.full(50, 0.5), soft=False)
    assert mask[20, 10:50].all() and mask.sum(axis=0)[10:50].max() == 1  # 1 px wide
    _, wide = rasterize_vessels((40, 60), ys, xs, np.full(50, 6.0), soft=True)
    assert 11 <= wide.sum(axis=0)[30] <= 13  # 12 px wide
    assert profile.max() == pytest.approx(1.0)


def test_without_structures_labels_are_empty():
    config = SimulatorConfig(tumor_probability=0.0, nerve_probability=0.0)
    for modality in ("mri", "ct", "em"):
        assert simulate_scan(0, (64, 64), modality, config=config)[1].max() == 0


def test_unknown_modality_is_refused():
    with pytest.raises(ValueError, match="modality"):
        simulate_scan(0, (32, 32), "ultrasound")


def test_fractal_noise_is_normalised():
    field = fractal_noise(np.random.default_rng(0), (64, 64), beta=3.0)
    assert abs(field.mean()) < 1e-4 and field.std() == pytest.approx(1.0, abs=1e-3)


def test_volume():
    volume, labels = simulate_volume(0, (6, 48, 48), "mri",
                                     config=SimulatorConfig(tumor_probability=1.0, nerve_probability=1.0))
    assert volume.shape == labels.shape == (6, 48, 48)
    assert set(np.unique(labels)) <= {0, 1, 2} and labels.max() > 0
    again, _ = simulate_volume(0, (6, 48, 48), "mri",
                               config=SimulatorConfig(tumor_probability=1.0, nerve_probability=1.0))
    np.testing.assert_array_equal(volume, again)


def test_fast_enough():
    simulate_scan(0, (256, 256))  # warm caches
    start = time.process_time()  # CPU time: independent of other jobs on the machine
    for seed in range(10):
        simulate_scan(seed, (256, 256))
    per_scan = (time.process_time() - start) / 10
    # ~20-40 ms of CPU per scan; generous bound for slow CI machines
    assert per_scan < 0.15


def test_labelled_structures_stand_out_from_their_local_texture():
    """On busy backgrounds (scikit-image textures among them) the faintest
    vessels and lesions the config asks for are still drawn at least
    ``visibility`` x the local background std: a label never marks a
    structure hidden in the texture. With the floor switched off the same
    faint settings are drawn weaker (the floor is what makes them visible)."""
    from napari_unet.core.simulate import _local_std

    faint = dict(augment=False, real_backgrounds=True, contrast=(0.02, 0.02), tumor_contrast=(0.02, 0.02),
                 tumor_probability=1.0, nerve_probability=1.0, tumor_diameter=(0.1, 0.2))
    floor = SimulatorConfig(visibility=(2.0, 2.0), **faint)
    none = SimulatorConfig(visibility=(0.0, 0.0), **faint)
    hidden = SimulatorConfig(**{**faint, "contrast": (0.0, 0.0), "tumor_contrast": (0.0, 0.0)}, visibility=(0.0, 0.0))
    ratios_floor, ratios_none = [], []
    for seed in range(6):
        image, labels = simulate_scan(seed, (96, 96), "em", config=floor)
        weak, _ = simulate_scan(seed, (96, 96), "em", config=none)
        plain, same = simulate_scan(seed, (96, 96), "em", config=hidden)
        np.testing.assert_array_equal(labels, same)
        # EM noise is added after the structures, so compare against the plain image's local std
        local = _local_std(plain, (slice(0, 96), slice(0, 96)))
        for cls in (1, 2):
            where = labels == cls
            if where.sum() < 20:
                continue
            ratios_floor.append(np.median(np.abs(image - plain)[where] / local[where]))
            ratios_none.append(np.median(np.abs(weak - plain)[where] / local[where]))
    assert len(ratios_floor) >= 6
    # anti-aliased edges and soft profiles pull the median below the peak contrast
    assert np.median(ratios_floor) > 1.2
    assert np.median(ratios_floor) > 10 * np.median(ratios_none)


def test_fixed_style_background_and_polarity():
    """A fixed style (one background kind, one polarity) as in a user's stack:
    the draws stay the same (identical labels), vessels and lesions go the
    asked way, and bad values are refused."""
    base = dict(augment=False, tumor_probability=1.0, nerve_probability=1.0, em_background="granular")
    bright = SimulatorConfig(nerve_sign=1, tumor_sign=1, **base)
    dark = SimulatorConfig(nerve_sign=-1, tumor_sign=-1, **base)
    for seed in range(3):
        a, labels = simulate_scan(seed, (96, 96), "em", config=bright)
        b, same = simulate_scan(seed, (96, 96), "em", config=dark)
        np.testing.assert_array_equal(labels, same)
        for cls in (1, 2):
            where = labels == cls
            if where.sum() > 20:
                assert np.median((a - b)[where]) > 0, (seed, cls)
    # one background kind for every image of a stack, whatever the seed
    plain = dict(augment=False, tumor_probability=0.0, nerve_probability=0.0)
    fluo = [simulate_scan(s, (96, 96), "em", config=SimulatorConfig(em_background="fluorescence", **plain))[0]
            for s in range(6)]
    granular = [simulate_scan(s, (96, 96), "em", config=SimulatorConfig(em_background="granular", **plain))[0]
                for s in range(6)]
    assert all(img.mean() < 0.35 for img in fluo)  # dark fluorescence background
    assert all(img.mean() > 0.35 for img in granular)  # grey EM-like texture
    from napari_unet.core.simulate import _real_image

    gravel = simulate_scan(0, (96, 96), "em", config=SimulatorConfig(em_background="gravel", **plain))[0]
    assert gravel.min() >= -0.3 and gravel.max() <= 1.3  # a crop of the 0..1 texture (plus noise)
    assert _real_image.cache_info().currsize >= 1
    with pytest.raises(ValueError, match="em_background"):
        SimulatorConfig(em_background="marble")
    with pytest.raises(ValueError, match="nerve_sign"):
        SimulatorConfig(nerve_sign=2)


def test_mri_lesions_are_mostly_enhancing_and_ct_keeps_both_signs():
    """Tumour MRI is mostly post-contrast T1, T2 or FLAIR, where lesions are
    brighter than the tissue around them; CT lesions are hyper- or hypodense."""
    from scipy import ndimage

    def brighter_share(modality: str) -> float:
        signs = []
        for seed in range(40):
            image, labels = simulate_scan(seed, (128, 128), modality, config=PLAIN)
            lesion = labels == 1
            if modality == "ct":
                image = np.clip(image, -160, 240)
            components, n = ndimage.label(lesion)
            for i in range(1, n + 1):
                m = components == i
                ring = ndimage.binary_dilation(m, iterations=4) & ~ndimage.binary_dilation(m) & (labels == 0)
                if m.sum() >= 20 and ring.sum() >= 20:
                    signs.append(np.median(image[m]) > np.median(image[ring]))
        assert len(signs) >= 15, modality
        return float(np.mean(signs))

    assert brighter_share("mri") > 0.6
    assert 0.2 < brighter_share("ct") < 0.9


@pytest.mark.parametrize("center", [(-40.0, 10.0), (10.0, -40.0), (200.0, 10.0), (10.0, 300.0)])
def test_a_blob_centred_outside_the_field_has_an_empty_box(center):
    """An orbit drawn off a zoomed-in MRI crop once got the box slice(0, -5):
    nearly the whole image, paired with an empty mask (ValueError mid-training)."""
    from napari_unet.core.simulate import _blob_mask

    mask, box, rho = _blob_mask(np.random.default_rng(0), (120, 90), center, 5.0, 0.3)
    image = np.zeros((120, 90))
    assert mask.size == 0 and image[box].size == 0


def test_homogeneous_lesions_are_smoother_inside_than_mottled_ones():
    """``homogeneous_tumors`` draws lesions whose interior is near-uniform:
    relative to their contrast, their inside varies less than the mottled ones'."""

    from scipy import ndimage

    def relative_spread(config: SimulatorConfig) -> float:
        spreads = []
        for seed in range(30):
            image, labels = simulate_scan(seed, (128, 128), "mri", config=config)
            components, n = ndimage.label(labels == 1)
            for i in range(1, n + 1):
                m = components == i
                inside = ndimage.binary_erosion(m, iterations=2)
                ring = ndimage.binary_dilation(m, iterations=4) & ~ndimage.binary_dilation(m) & (labels == 0)
                if inside.sum() >= 40 and ring.sum() >= 20:
                    contrast = abs(np.median(image[inside]) - np.median(image[ring]))
                    spreads.append(np.std(image[inside]) / max(contrast, 1e-6))
        assert len(spreads) >= 10
        return float(np.median(spreads))

    plain = replace(PLAIN, tumor_probability=1.0, nerve_probability=0.0)
    smooth = relative_spread(replace(plain, homogeneous_tumors=1.0))
    mottled = relative_spread(replace(plain, homogeneous_tumors=0.0, tumor_texture=(0.4, 0.45)))
    assert smooth < 0.6 * mottled, (smooth, mottled)


def test_ct_lesions_are_labelled_only_in_tissue():
    """A lesion whose blob reaches past its tissue is clipped to it: no tumour
    label on the air around the patient (below -960 HU; aerated lung is -900 to
    -800 and a nodule's necrotic cavity may come near it). Before the clip, 6.6 %
    of these lesion pixels were air."""
    in_air = total = 0
    for seed in range(40):
        image, labels = simulate_scan(seed, (128, 128), "ct", config=replace(PLAIN, tumor_probability=1.0))
        lesion = labels == 1
        in_air += int((image[lesion] < -960).sum())
        total += int(lesion.sum())
    assert total > 1000
    assert in_air <= 0.005 * total, (in_air, total)
