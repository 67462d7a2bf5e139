"""Streaming prediction: a lazy volume in, labels written plane by plane to disk."""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from napari_unet.core.predict import PredictOptions, predict_iter, run_to_end  # noqa: E402
from napari_unet.io import labels_output, read_scan  # noqa: E402


@pytest.fixture
def lazy_scan(tmp_path):
    """A small OME-Zarr volume (odd sizes) read back lazily as dask."""
    rng = np.random.default_rng(0)
    volume = (1000 + 50 * rng.standard_normal((4, 37, 45))).astype(np.uint16)
    volume[:, 10:20, 12:30] += 800
    group = zarr.open_group(str(tmp_path / "scan.zarr"), mode="w", zarr_format=2)
    group.create_array("0", data=volume, chunks=(1, 37, 45))
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": a, "type": "space"} for a in "zyx"],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}],
        }
    ]
    return read_scan(tmp_path / "scan.zarr")


@pytest.mark.parametrize("name", ["labels.zarr", "labels.tif"])
def test_streamed_prediction_matches_in_memory(tmp_path, tiny_model, lazy_scan, name):
    options = PredictOptions(tile=32, batch_size=2, device="cpu", precision="float32")
    expected = run_to_end(predict_iter(np.asarray(lazy_scan.data), tiny_model, options)).labels
    sink = labels_output(tmp_path / name, lazy_scan.spatial_shape, like=lazy_scan)
    run_to_end(predict_iter(lazy_scan.data, tiny_model, options, out=sink.array))
    sink.commit()
    back = read_scan(tmp_path / name)
    np.testing.assert_array_equal(np.asarray(back.data), expected)
    assert back.meta.spacing == pytest.approx((2.0, 0.5, 0.5))
    values, counts = np.unique(expected, return_counts=True)
    assert sink.label_counts() == dict(zip(values.tolist(), counts.tolist()))
