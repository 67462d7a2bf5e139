"""Saved labels reopen with their class names and colours (NIfTI, TIFF, zarr)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_unet._napari_io import (
    get_reader,
    write_labels_nifti,
    write_labels_tiff,
    write_labels_zarr,
)
from napari_unet.io.classes import classes_path, hex_color, layer_kwargs, read_classes_file

WRITERS = [(write_labels_nifti, "mask.nii.gz"), (write_labels_tiff, "mask.tif"), (write_labels_zarr, "mask.zarr")]
COLOURS = {0: (0.0, 0.0, 0.0, 0.0), 1: (1.0, 59 / 255, 48 / 255, 1.0), 2: (1.0, 214 / 255, 10 / 255, 1.0)}


class DirectColormap:
    """What napari hands a writer as ``meta["colormap"]``: an object with ``color_dict``."""

    def __init__(self, colors):
        self.color_dict = {k: np.asarray(v) for k, v in colors.items()}


def _labels():
    labels = np.zeros((3, 8, 9), np.int32)
    labels[1, 2:4, 2:5] = 1
    labels[2, 5:7, 1:8] = 2
    return labels


def _meta(colormap=None, features=None, classes=None):
    return {
        "scale": (2.0, 1.0, 1.0),
        "translate": (0.0, 0.0, 0.0),
        "metadata": {"napari_unet": {"classes": classes}} if classes else {},
        "colormap": colormap,
        "features": features,
    }


@pytest.mark.parametrize(("writer", "name"), WRITERS)
def test_names_and_colours_survive_a_round_trip(tmp_path, writer, name):
    path = tmp_path / name
    colormap = DirectColormap({**COLOURS, None: (1.0, 0.0, 1.0, 1.0)})
    features = {"index": [0, 1, 2], "class": ["background", "tumor", "nerve"]}
    written = writer(str(path), _labels(), _meta(colormap, features))
    assert written == [str(path), str(classes_path(path))]
    [(data, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "labels"
    np.testing.assert_array_equal(np.asarray(data), _labels())
    assert kwargs["features"] == {"index": [0, 1, 2], "class": ["background", "tumor", "nerve"]}
    for label, colour in COLOURS.items():
        np.testing.assert_allclose(kwargs["colormap"][label], colour, atol=1 / 255)
    np.testing.assert_allclose(kwargs["colormap"][None], (1.0, 0.0, 1.0, 1.0))
    assert kwargs["metadata"]["napari_unet"]["classes"] == {0: "background", 1: "tumor", 2: "nerve"}


def test_names_from_metadata_alone_and_default_colours(tmp_path):
    path = tmp_path / "m.nii.gz"
    write_labels_nifti(str(path), _labels(), _meta(classes={1: "tumor", 2: "nerve"}))
    [(_, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "labels"
    assert kwargs["features"]["class"] == ["tumor", "nerve"]
    assert "colormap" not in kwargs  # no colours of its own: napari's cycle, as before saving


def test_layer_without_classes_writes_no_table_and_removes_a_stale_one(tmp_path):
    path = tmp_path / "m.tif"
    write_labels_tiff(str(path), _labels(), _meta(DirectColormap(COLOURS)))
    assert classes_path(path).is_file()
    assert write_labels_tiff(str(path), _labels(), _meta()) == [str(path)]
    assert not classes_path(path).exists()


def test_damaged_or_foreign_table_is_ignored(tmp_path):
    path = tmp_path / "t.classes.json"
    path.write_text("{not json")
    assert read_classes_file(path) is None
    path.write_text(json.dumps({"format": "something-else", "classes": [{"id": 1}]}))
    assert read_classes_file(path) is None


def test_hex_colours():
    assert hex_color((1.0, 0.0, 0.5)) == "#ff0080ff"
    assert hex_color("#FFD60A") == "#ffd60aff"
    assert hex_color("red") is None
    kwargs = layer_kwargs({"classes": [{"id": 1, "name": "tumor", "color": "#ff000080"}], "default_color": None})
    assert kwargs["colormap"][1] == pytest.approx((1.0, 0.0, 0.0, 128 / 255))
    assert kwargs["colormap"][0] == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(("name"), ["seg.nii.gz", "seg.tif", "seg.zarr"])
def test_viewer_saves_and_reopens_labels_as_they_were(make_napari_viewer, tmp_path, name):
    """Through napari itself: layer.save with our writer, then open with our reader."""
    from napari.utils.colormaps import DirectLabelColormap

    viewer = make_napari_viewer()
    layer = viewer.add_labels(
        _labels().astype(np.uint8),
        colormap=DirectLabelColormap(color_dict={**COLOURS, None: (1.0, 0.0, 1.0, 1.0)}),
        features={"index": [0, 1, 2], "class": ["background", "tumor", "nerve"]},
        scale=(2.0, 1.0, 1.0),
    )
    path = tmp_path / name
    layer.save(str(path), plugin="napari-unet-loop")
    viewer.layers.clear()
    [back] = viewer.open(str(path), plugin="napari-unet-loop")
    assert back._type_string == "labels"
    np.testing.assert_allclose(back.colormap.map(2), COLOURS[2], atol=1 / 255)  # yellow, not teal
    np.testing.assert_allclose(back.colormap.map(1), COLOURS[1], atol=1 / 255)
    assert list(back.features["class"]) == ["background", "tumor", "nerve"]
    # world position of voxel (2, 5, 1) with scale (2, 1, 1), on its slice: the status bar names the class
    viewer.dims.set_current_step(0, 4.0)
    assert back.get_status((4.0, 5.0, 1.0))["coordinates"].endswith("class: nerve")
