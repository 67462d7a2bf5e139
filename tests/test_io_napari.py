"""The napari reader and writers (headless LayerData checks, then one real viewer)."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from napari_unet._napari_io import (  # noqa: E402
    get_reader,
    layer_data,
    write_labels_nifti,
    write_labels_tiff,
    write_labels_zarr,
)
from napari_unet.io import read_scan  # noqa: E402

AFFINE = np.array(
    [
        [0.0, 0.0, -2.5, 10.0],
        [-0.8, 0.0, 0.0, 20.0],
        [0.0, 0.9, 0.0, -30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


@pytest.fixture
def scan_path(tmp_path):
    data = np.random.default_rng(0).normal(100, 20, size=(7, 6, 5)).astype(np.float32)
    path = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def _napari_meta(data, kwargs):
    """What napari hands a writer: the layer's attributes (scale, translate, metadata...)."""
    ndim = data.ndim
    return {
        "name": kwargs["name"],
        "scale": kwargs.get("scale", (1.0,) * ndim),
        "translate": kwargs.get("translate", (0.0,) * ndim),
        "metadata": kwargs.get("metadata", {}),
    }


def test_reader_gives_scale_translate_metadata(scan_path):
    reader = get_reader(str(scan_path))
    assert callable(reader)
    [(data, kwargs, kind)] = reader(str(scan_path))
    assert kind == "image"
    assert data.shape == (5, 6, 7)
    assert kwargs["name"] == "brain"
    assert kwargs["scale"] == pytest.approx((2.5, 0.9, 0.8))
    assert kwargs["translate"] == pytest.approx((-30.0, 20.0, 10.0))
    np.testing.assert_allclose(kwargs["metadata"]["affine"], AFFINE, atol=1e-6)
    assert kwargs["metadata"]["orientation"] == "PSL"
    assert kwargs["metadata"]["nifti"]["sform_code"] == 2


def test_reader_opens_label_maps_as_labels(tmp_path):
    labels = np.zeros((7, 6, 5), np.uint8)
    labels[1:3] = 1
    nib.save(nib.Nifti1Image(labels, AFFINE), tmp_path / "seg.nii")
    [(data, kwargs, kind)] = get_reader(str(tmp_path / "seg.nii"))(str(tmp_path / "seg.nii"))
    assert kind == "labels"
    assert "contrast_limits" not in kwargs


def test_reader_keeps_4d_whole(tmp_path):
    data = np.zeros((7, 6, 5, 3), np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "bold.nii.gz")
    [(array, kwargs, _)] = get_reader(str(tmp_path / "bold.nii.gz"))(str(tmp_path / "bold.nii.gz"))
    assert array.shape == (3, 5, 6, 7)
    assert kwargs["scale"] == pytest.approx((1.0, 2.5, 0.9, 0.8))
    assert kwargs["metadata"]["leading_axes"] == "T"


def test_reader_gives_ome_zarr_pyramids(tmp_path):
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=2)
    data = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    group.create_array("0", data=data)
    group.create_array("1", data=data[:, ::2, ::2])
    axes = [{"name": a, "type": "space"} for a in "zyx"]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 1.0]}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 2.0, 2.0]}]},
            ],
        }
    ]
    assert get_reader(str(tmp_path / "img.zarr")) is not None
    [(levels, kwargs, kind)] = get_reader(str(tmp_path / "img.zarr"))(str(tmp_path / "img.zarr"))
    assert kwargs["multiscale"] is True
    assert [level.shape for level in levels] == [(4, 16, 16), (4, 8, 8)]
    assert kwargs["scale"] == (2.0, 1.0, 1.0)


def test_reader_declines_what_it_cannot_open(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "array.npy", np.zeros(3))
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "array.npy")) is None
    assert get_reader(str(tmp_path / "missing.nii.gz")) is None


@pytest.mark.parametrize(
    ("writer", "name"),
    [(write_labels_nifti, "mask.nii.gz"), (write_labels_tiff, "mask.tif"), (write_labels_zarr, "mask.zarr")],
)
def test_writers_keep_the_geometry(tmp_path, scan_path, writer, name):
    image_data, image_kwargs, _ = layer_data(read_scan(scan_path))
    labels = np.zeros(image_data.shape, np.int32)  # napari's default labels dtype
    labels[2, 1:4, 2:6] = 3
    meta = _napari_meta(labels, image_kwargs)  # the labels layer carries the image's geometry
    assert writer(str(tmp_path / name), labels, meta) == [str(tmp_path / name)]
    back = read_scan(tmp_path / name)
    np.testing.assert_array_equal(np.asarray(back.data), labels)
    assert back.meta.spacing == pytest.approx((2.5, 0.9, 0.8))
    if name != "mask.tif":  # TIFF has no orientation
        np.testing.assert_allclose(back.meta.affine, AFFINE, atol=1e-6)
        assert back.meta.origin == pytest.approx((-30.0, 20.0, 10.0))


def test_writer_without_metadata_uses_scale_and_translate(tmp_path):
    labels = np.ones((3, 4, 5), np.uint8)
    meta = {"scale": (2.0, 1.5, 1.0), "translate": (5.0, 6.0, 7.0), "metadata": {}}
    write_labels_nifti(str(tmp_path / "m.nii.gz"), labels, meta)
    image = nib.load(tmp_path / "m.nii.gz")
    np.testing.assert_allclose(image.affine, [[1, 0, 0, 7], [0, 1.5, 0, 6], [0, 0, 2, 5], [0, 0, 0, 1]])


def test_viewer_opens_nifti_with_the_plugin(make_napari_viewer, scan_path, tmp_path):
    viewer = make_napari_viewer()
    layers = viewer.open(str(scan_path), plugin="napari-unet-loop")
    assert len(layers) == 1
    image = layers[0]
    assert image.data.shape == (5, 6, 7)
    np.testing.assert_allclose(image.scale, (2.5, 0.9, 0.8), rtol=1e-6)
    np.testing.assert_allclose(image.translate, (-30.0, 20.0, 10.0))
    labels = viewer.add_labels(
        np.zeros(image.data.shape, np.uint8),
        scale=image.scale,
        translate=image.translate,
        metadata=dict(image.metadata),
    )
    labels.data[1, 2, 3] = 2
    saved = labels.save(str(tmp_path / "out.nii.gz"), plugin="napari-unet-loop")
    assert saved == [str(tmp_path / "out.nii.gz")]
    back = nib.load(tmp_path / "out.nii.gz")
    np.testing.assert_allclose(back.affine, AFFINE, atol=1e-6)
    assert np.asanyarray(back.dataobj)[3, 2, 1] == 2
