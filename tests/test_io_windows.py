"""CT in Hounsfield units opens with a soft-tissue window; other scans keep napari's contrast."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.io.windows import CT_WINDOWS, ct_display, sample_values, window_limits

nib = pytest.importorskip("nibabel")


def hu_volume(shape=(12, 40, 50), seed=0):
    """Air around a soft-tissue body with a bone rod: int16 HU, -1000..~1800."""
    rng = np.random.default_rng(seed)
    volume = np.full(shape, -1000, np.int16)
    zz, yy, xx = np.indices(shape)
    body = ((yy - shape[1] / 2) / (shape[1] * 0.4)) ** 2 + ((xx - shape[2] / 2) / (shape[2] * 0.4)) ** 2 < 1
    volume[body] = 40 + rng.normal(0, 20, body.sum()).astype(np.int16)
    volume[body & (np.abs(xx - shape[2] / 2) < 3) & (np.abs(yy - shape[1] / 2) < 3)] = 1800
    return volume


def test_window_limits_are_level_plus_minus_half_width():
    assert window_limits(400, 40) == (-160.0, 240.0)
    limits = {name: window_limits(*wl) for name, wl in CT_WINDOWS.items()}
    assert limits == {
        "soft tissue": (-160.0, 240.0),
        "liver": (-15.0, 135.0),
        "lung": (-1350.0, 150.0),
        "bone": (-500.0, 1300.0),
    }


def test_hu_volume_gets_the_soft_tissue_window_and_presets():
    display = ct_display(hu_volume(), spatial_ndim=3)
    assert display is not None
    assert display["contrast_limits"] == (-160.0, 240.0)
    assert display["window"] == "soft tissue"
    assert list(display["ct_windows"]) == ["soft tissue", "liver", "lung", "bone"]
    assert display["ct_windows"]["lung"] == {"width": 1500.0, "level": -600.0, "contrast_limits": (-1350.0, 150.0)}


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).normal(300, 80, (8, 30, 30)).astype(np.float32),  # MRI: positive
        np.random.default_rng(0).integers(0, 4096, (8, 30, 30)).astype(np.uint16),  # CT stored raw, no rescale
        np.linspace(-1, 1, 8 * 30 * 30).reshape(8, 30, 30),  # normalised floats
        (hu_volume().astype(np.int32) * 20),  # signed, far beyond HU
    ],
    ids=["mri", "raw-uint16", "normalised", "not-hu"],
)
def test_other_grey_scans_are_not_windowed(data):
    assert ct_display(data, spatial_ndim=3) is None


def test_rgb_is_never_windowed():
    rgb = np.full((20, 20, 3), -1000, np.int16)
    assert ct_display(rgb, spatial_ndim=2, rgb=True) is None


def test_sample_is_bounded_and_reads_few_planes():
    class Counting:
        """An array that records which planes are read (like a lazy zarr/dask volume)."""

        def __init__(self, data):
            self.data, self.shape, self.read = data, data.shape, []

        def __getitem__(self, index):
            self.read.append(index[0])
            return self.data[index]

    volume = Counting(np.zeros((200, 600, 600), np.int16) - 1000)
    values = sample_values(volume, spatial_ndim=3)
    assert len(volume.read) <= 9
    assert values.size <= 9 * 300 * 300
    assert volume.read[0] == 0 and volume.read[-1] == 199


def test_leading_axes_are_sampled_at_their_first_index():
    data = np.stack([hu_volume(), np.full((12, 40, 50), 500, np.int16)])  # (T, Z, Y, X)
    assert ct_display(data, spatial_ndim=3) is not None


def test_reader_opens_hu_nifti_with_soft_tissue_window(tmp_path):
    from napari_unet._napari_io import get_reader

    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(hu_volume().T), np.diag([0.7, 0.7, 2.0, 1.0])), path)
    [(data, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "image"
    assert kwargs["contrast_limits"] == (-160.0, 240.0)
    windows = kwargs["metadata"]["napari_unet"]["ct_windows"]
    assert windows["liver"]["contrast_limits"] == (-15.0, 135.0)
    assert windows["bone"]["contrast_limits"] == (-500.0, 1300.0)


def test_reader_leaves_mri_contrast_to_napari(tmp_path):
    from napari_unet._napari_io import get_reader

    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(300, 80, (30, 30, 8)).astype(np.float32), np.eye(4)), path)
    [(_, kwargs, _)] = get_reader(str(path))(str(path))
    assert "contrast_limits" not in kwargs
    assert "ct_windows" not in kwargs["metadata"].get("napari_unet", {})


def test_viewer_shows_ct_windowed_and_keeps_the_users_contrast(make_napari_viewer, tmp_path):
    from napari_unet._napari_io import open_in_viewer

    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(hu_volume().T), np.eye(4)), path)
    viewer = make_napari_viewer()
    [layer] = open_in_viewer(viewer, path)
    assert tuple(layer.contrast_limits) == (-160.0, 240.0)
    assert layer.contrast_limits_range[0] <= -1000 and layer.contrast_limits_range[1] >= 1800  # presets reachable
    layer.contrast_limits = (-1350.0, 150.0)  # the user picks lung
    viewer.dims.set_current_step(0, 5)
    layer.refresh()
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)


def test_file_open_path_also_gets_the_full_slider_range(make_napari_viewer, tmp_path):
    from napari.settings import get_settings

    from napari_unet._napari_io import PLUGIN_NAME

    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(hu_volume().T), np.eye(4)), path)
    viewer = make_napari_viewer()
    plugins = get_settings().plugins
    saved = dict(plugins.extension2reader)
    plugins.extension2reader = {"*.nii.gz": PLUGIN_NAME}
    try:
        [layer] = viewer.open(str(path), plugin=None)  # as File > Open does
    finally:
        plugins.extension2reader = saved
    assert tuple(layer.contrast_limits) == (-160.0, 240.0)
    assert layer.contrast_limits_range[0] <= -1350 and layer.contrast_limits_range[1] >= 1800
