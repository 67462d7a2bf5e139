"""zarr / OME-Zarr and TIFF: lazy reading, spacing, streamed label outputs, broken files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")
da = pytest.importorskip("dask.array")

from napari_unet.io import (  # noqa: E402
    IOErrorMessage,
    Scan,
    ScanMeta,
    labels_output,
    read_scan,
    read_scans,
    write_labels,
)


def _ome_zarr(path, data, scale, translation=None, axes="zyx", levels=1, zarr_format=2):
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    datasets = []
    for level in range(levels):
        factor = 2**level
        index = (slice(None),) * (data.ndim - 2) + (slice(None, None, factor),) * 2
        group.create_array(str(level), data=np.ascontiguousarray(data[index]), chunks=(1,) * (data.ndim - 2) + (8, 8))
        level_scale = list(scale[:-2]) + [s * factor for s in scale[-2:]]
        transforms = [{"type": "scale", "scale": level_scale}]
        if translation is not None:
            transforms.append({"type": "translation", "translation": translation})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    kinds = {"t": "time", "c": "channel"}
    ome_axes = [{"name": a, "type": kinds.get(a, "space")} for a in axes]
    for item in ome_axes:
        if item["type"] == "space":
            item["unit"] = "micrometer"
    multiscales = [{"version": "0.4", "axes": ome_axes, "datasets": datasets}]
    if zarr_format == 3:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    else:
        group.attrs["multiscales"] = multiscales
    return path


@pytest.fixture
def volume():
    return np.random.default_rng(0).integers(0, 4000, size=(5, 19, 23)).astype(np.uint16)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_is_lazy_with_spacing(tmp_path, volume, zarr_format):
    path = _ome_zarr(tmp_path / "img.ome.zarr", volume, [3.0, 0.5, 0.25], [1.0, 2.0, 3.0], levels=2, zarr_format=zarr_format)
    scan = read_scan(path)
    assert isinstance(scan.data, da.Array)
    assert scan.data.shape == volume.shape
    np.testing.assert_array_equal(scan.data[3].compute(), volume[3])
    assert scan.meta.spacing == (3.0, 0.5, 0.25)
    assert scan.meta.origin == (1.0, 2.0, 3.0)
    assert scan.meta.units == "um"
    assert scan.name == "img"
    assert len(scan.meta.extra["pyramid"]) == 1


def test_ome_zarr_5d_needs_an_index(tmp_path):
    data = np.arange(2 * 3 * 4 * 8 * 8, dtype=np.uint16).reshape(2, 3, 4, 8, 8)
    path = _ome_zarr(tmp_path / "tczyx.zarr", data, [1.0, 1.0, 2.0, 0.5, 0.5], axes="tczyx")
    with pytest.raises(IOErrorMessage, match="2 time points x 3 channels"):
        read_scan(path)
    scan = read_scan(path, index=(1, 2))
    assert scan.data.shape == (4, 8, 8)
    np.testing.assert_array_equal(scan.data, data[1, 2])
    assert scan.meta.spacing == (2.0, 0.5, 0.5)
    assert read_scan(path, index=5).name.endswith("[t=1,c=2]")


def test_plain_zarr_array(tmp_path, volume):
    zarr.create_array(str(tmp_path / "plain.zarr"), data=volume, chunks=(1, 19, 23))
    scan = read_scan(tmp_path / "plain.zarr")
    assert scan.meta.spacing is None
    np.testing.assert_array_equal(scan.data.compute(), volume)


def test_zarr_group_with_many_arrays_is_explained(tmp_path, volume):
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    group.create_array("a", data=volume)
    group.create_array("b", data=volume)
    with pytest.raises(IOErrorMessage, match=r"2 arrays \(a, b\)"):
        read_scan(tmp_path / "two.zarr")


def test_broken_zarr_is_a_clear_error(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(IOErrorMessage, match="not a readable zarr"):
        read_scan(tmp_path / "empty.zarr")
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(IOErrorMessage, match="not a readable zarr"):
        read_scan(tmp_path / "bad.zarr")


def test_zarr_output_streams_into_a_hidden_folder(tmp_path):
    meta = ScanMeta(spacing=(2.0, 0.5, 0.5), origin=(1.0, 2.0, 3.0), affine=np.diag([0.5, 0.5, 2.0, 1.0]), units="mm")
    final = tmp_path / "labels.zarr"
    sink = labels_output(final, (4, 10, 12), like=meta)
    for z in range(4):
        sink.array[z] = np.full((10, 12), z, np.uint8)
        assert not final.exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".labels.zarr.")]
    assert len(partial) == 1 and partial[0].is_dir()
    sink.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["labels.zarr"]
    back = read_scan(final)
    assert back.is_labels
    np.testing.assert_array_equal(back.data[:, 0, 0].compute(), [0, 1, 2, 3])
    assert back.meta.spacing == (2.0, 0.5, 0.5)
    assert back.meta.origin == (1.0, 2.0, 3.0)
    np.testing.assert_allclose(back.meta.affine, meta.affine)
    attrs = json.loads((final / ".zattrs").read_text())
    assert attrs["multiscales"][0]["axes"][0] == {"name": "z", "type": "space", "unit": "millimeter"}
    assert sink.label_counts() == {0: 120, 1: 120, 2: 120, 3: 120}
    np.testing.assert_array_equal(np.asarray(sink.array)[2], 2)  # readable after the rename


def test_aborted_output_leaves_nothing(tmp_path):
    for name in ("labels.zarr", "labels.tif"):
        sink = labels_output(tmp_path / name, (3, 8, 8))
        sink.array[0] = np.ones((8, 8), np.uint8)
        sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_failure_inside_a_with_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), labels_output(tmp_path / "l.tif", (3, 8, 8)) as sink:
        sink.array[0] = np.ones((8, 8), np.uint8)
        raise RuntimeError("cancelled")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["labels.zarr", "labels.tif"])
def test_existing_output_is_refused_then_replaced(tmp_path, name):
    target = tmp_path / name
    write_labels(target, np.ones((2, 5, 5), np.uint8))
    with pytest.raises(IOErrorMessage, match="already exists"):
        labels_output(target, (2, 5, 5))
    with pytest.raises(IOErrorMessage, match="already exists"):
        write_labels(target, np.zeros((2, 5, 5), np.uint8))
    write_labels(target, np.full((2, 5, 5), 2, np.uint8), overwrite=True)
    assert int(np.asarray(read_scan(target).data).max()) == 2
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_tiff_output_streams_pages_with_spacing(tmp_path):
    meta = ScanMeta(spacing=(3.0, 0.5, 0.25), units="um")
    final = tmp_path / "labels.tif"
    sink = labels_output(final, (5, 9, 11), like=meta)
    for z in (4, 0, 2, 1, 3):  # any order
        sink.array[z] = np.full((9, 11), z, np.uint8)
    assert not final.exists()
    np.testing.assert_array_equal(sink.array[2], 2)
    sink.commit()
    back = read_scan(final)
    assert back.data.shape == (5, 9, 11)
    np.testing.assert_array_equal(np.asarray(back.data)[:, 3, 3], [0, 1, 2, 3, 4])
    assert back.meta.spacing == pytest.approx((3.0, 0.5, 0.25))
    assert back.meta.units == "um"
    with tifffile.TiffFile(final) as tif:
        assert tif.is_imagej


def test_tiff_labels_from_lazy_array_and_wide_dtype(tmp_path):
    labels = da.from_array(np.arange(3 * 4 * 5, dtype=np.int64).reshape(3, 4, 5) * 10_000, chunks=(1, 4, 5))
    write_labels(tmp_path / "big.tif", labels, like=ScanMeta(spacing=(2.0, 0.5, 0.25), units="mm"))
    back = read_scan(tmp_path / "big.tif")
    assert back.data.dtype == np.int32  # up to 590000: too wide for ImageJ, a shaped TIFF
    np.testing.assert_array_equal(np.asarray(back.data), labels.compute())
    assert back.meta.spacing == pytest.approx((2.0, 0.5, 0.25))
    assert back.meta.units == "mm"


def test_imagej_tiff_spacing_and_memmap(tmp_path, volume):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, volume, imagej=True, resolution=(1 / 0.4, 1 / 0.3), metadata={"spacing": 2.5, "unit": "um"})
    scan = read_scan(path)
    assert isinstance(scan.data, np.memmap)
    assert scan.meta.spacing == pytest.approx((2.5, 0.3, 0.4))
    np.testing.assert_array_equal(scan.data, volume)


def test_ome_tiff_spacing(tmp_path, volume):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        path, volume, ome=True, compression="zlib",
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1.5},
    )
    scan = read_scan(path)
    assert scan.meta.spacing == pytest.approx((1.5, 0.3, 0.2))
    assert scan.name == "stack"
    np.testing.assert_array_equal(np.asarray(scan.data), volume)


def test_large_compressed_tiff_is_lazy(tmp_path, volume, monkeypatch):
    import napari_unet.io.tiff as tiff_io

    path = tmp_path / "zip.tif"
    tifffile.imwrite(path, volume, compression="zlib")
    monkeypatch.setattr(tiff_io, "EAGER_BYTES", 100)
    scan = read_scan(path)
    assert isinstance(scan.data, da.Array)
    np.testing.assert_array_equal(scan.data[2].compute(), volume[2])


def test_tiff_hyperstack_channels_need_an_index(tmp_path):
    data = np.zeros((4, 2, 8, 9), np.uint16)  # Z, C, Y, X as ImageJ stores it
    data[:, 1] = 7
    tifffile.imwrite(tmp_path / "zcyx.tif", data, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(IOErrorMessage, match="2 channels"):
        read_scan(tmp_path / "zcyx.tif")
    scan = read_scan(tmp_path / "zcyx.tif", index=1)
    assert scan.data.shape == (4, 8, 9)
    assert int(np.asarray(scan.data).min()) == 7


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff_is_a_clear_error(tmp_path, volume, compression):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, volume, compression=compression)
    payload = whole.read_bytes()
    (tmp_path / "cut.tif").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(IOErrorMessage, match="cut.tif") as info:
        read_scan(tmp_path / "cut.tif")
    assert "\n" not in str(info.value)


def test_2d_outputs(tmp_path):
    plane = np.zeros((7, 9), np.uint8)
    plane[2:4, 3:6] = 1
    for name in ("p.tif", "p.zarr", "p.nii.gz", "p.npy", "p.png"):
        sink = labels_output(tmp_path / name, plane.shape, like=ScanMeta(spacing=(0.5, 0.25)))
        sink.array[...] = plane
        sink.commit()
        back = read_scan(tmp_path / name)
        np.testing.assert_array_equal(np.asarray(back.data), plane, err_msg=name)


def test_unknown_extension_fails_before_work(tmp_path):
    with pytest.raises(IOErrorMessage, match="unknown file type"):
        labels_output(tmp_path / "labels.xyz", (2, 3, 3))
    assert read_scans  # the public names stay importable
    assert Scan


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_plain_tifffile_stack_is_a_z_stack(tmp_path, depth):
    data = np.random.default_rng(0).integers(0, 3000, (depth, 13, 17)).astype(np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tifffile.imwrite(tmp_path / "stack.tif", data)  # tifffile stores (3|4, Y, X) as planar RGB
    scan = read_scan(tmp_path / "stack.tif")
    assert scan.data.shape == (depth, 13, 17) and not scan.rgb
    np.testing.assert_array_equal(np.asarray(scan.data), data)


def test_rgb_tiff_stays_rgb(tmp_path):
    data = np.zeros((13, 17, 3), np.uint8)
    tifffile.imwrite(tmp_path / "photo.tif", data)
    scan = read_scan(tmp_path / "photo.tif")
    assert scan.rgb and scan.data.shape == (13, 17, 3) and scan.spatial_shape == (13, 17)

