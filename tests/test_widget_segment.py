"""The Segment widget in a real napari viewer (under pytest-xvfb)."""

import numpy as np
import pytest

from napari_unet.widgets._turns import turns_pending
from napari_unet.widgets.segment import FOLDER_CHOICE, SCOPE_ALL, SCOPE_SLICE, SegmentWidget


@pytest.fixture
def widget(make_napari_viewer, tiny_model_dir):
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model.value = FOLDER_CHOICE
    w.model_folder.value = str(tiny_model_dir)
    w.device.value = "cpu"
    return viewer, w


def _wait(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: w._worker is None and w.segment_button.enabled and not turns_pending(), timeout=timeout)


def test_click_segment_makes_a_labels_layer(widget, qtbot, blob_image):
    viewer, w = widget
    image = viewer.add_image(blob_image, name="scan", scale=(0.5, 0.25), translate=(10, 20))
    w.reset_choices()
    w.image.value = image
    w.segment_button.clicked.emit()  # as a user's click does
    assert w._worker is not None and not w.segment_button.enabled and w.cancel_button.enabled
    _wait(qtbot, w)
    labels = viewer.layers["scan segmentation"]
    assert labels.data.shape == blob_image.shape and labels.data.dtype == np.uint8
    np.testing.assert_allclose(labels.scale, (0.5, 0.25))
    np.testing.assert_allclose(labels.translate, (10, 20))
    assert list(labels.features["class"]) == ["background", "tumor", "nerve"]
    np.testing.assert_allclose(labels.colormap.map(np.array([1]))[0][:3], (1.0, 59 / 255, 48 / 255), atol=0.01)
    assert labels.metadata["napari_unet"]["image_layer"] == "scan"
    assert w.segment_button.enabled and "done" in w.status.value
    # a class the model found nowhere is named, with what to do about it
    missing = [name for class_id, name in ((1, "tumor"), (2, "nerve")) if not (labels.data == class_id).any()]
    assert (f"No {' or '.join(missing)} found" in w.status.value) == bool(missing)

def test_segment_names_what_it_did_not_find(widget, qtbot, blob_image, tiny_model, tmp_path):
    import torch

    from napari_unet.core.weights import save_model

    viewer, w = widget
    with torch.no_grad():  # a model that calls every pixel background
        tiny_model.net.head.weight.zero_()
        tiny_model.net.head.bias.copy_(torch.tensor([10.0, -10.0, -10.0]))
    w.model_folder.value = str(save_model(tiny_model, tmp_path / "background-only"))
    viewer.add_image(blob_image, name="scan")
    w.reset_choices()
    w.segment()
    _wait(qtbot, w)
    assert not viewer.layers["scan segmentation"].data.any()
    assert "tumor 0 px, nerve 0 px. No tumor or nerve found; if there is one, paint it with the brush" in w.status.value
    assert w.status.value.endswith("then press Fine-tune")


def test_resegmenting_keeps_user_edits(widget, qtbot, blob_image):
    viewer, w = widget
    viewer.add_image(blob_image, name="scan")
    w.reset_choices()
    w.segment()
    _wait(qtbot, w)
    first = viewer.layers["scan segmentation"]
    w.segment()  # unedited: updated in place
    _wait(qtbot, w)
    assert len(viewer.layers) == 2
    first.paint((5, 5), 1)  # the user's correction, with napari's own brush
    edited = first.data.copy()
    w.segment()
    _wait(qtbot, w)
    assert len(viewer.layers) == 3
    np.testing.assert_array_equal(first.data, edited)


def test_segment_only_the_slice_on_screen(widget, qtbot):
    viewer, w = widget
    stack = np.random.default_rng(0).random((5, 30, 40)).astype(np.float32)
    viewer.add_image(stack, name="stack")
    w.reset_choices()
    w.scope.value = SCOPE_SLICE
    viewer.dims.set_current_step(0, 3)
    w.segment()
    _wait(qtbot, w)
    assert "slice 3" in w.status.value
    labels = viewer.layers["stack segmentation"]
    assert labels.data.shape == (5, 30, 40)
    assert "tile" not in w.status.value
    assert " px" in w.status.value and "voxels" not in w.status.value  # one plane: pixels
    w.scope.value = SCOPE_ALL
    w.segment()
    _wait(qtbot, w)
    assert "done (image)" in w.status.value and " voxels" in w.status.value and " px" not in w.status.value


def test_cancel_changes_nothing(widget, qtbot):
    viewer, w = widget
    stack = np.random.default_rng(0).random((60, 64, 64)).astype(np.float32)
    viewer.add_image(stack, name="big")
    w.reset_choices()
    w._tile = 16
    worker = w.segment()
    w.cancel_button.clicked.emit()
    _wait(qtbot, w)
    assert worker is not None
    assert "big segmentation" not in viewer.layers
    assert "cancelled" in w.status.value and w.segment_button.enabled


@pytest.mark.parametrize(
    "data,kwargs,message",
    [
        (np.zeros((4, 3, 20, 20)), {}, "4 dimensions"),
        (np.zeros((20, 20, 4), np.uint8), {"rgb": True}, "RGBA"),
    ],
)
def test_bad_layers_notify_and_change_nothing(widget, monkeypatch, data, kwargs, message):
    viewer, w = widget
    seen = []
    monkeypatch.setattr("napari_unet.widgets.segment.show_warning", seen.append)
    viewer.add_image(data, name="bad", **kwargs)
    w.reset_choices()
    assert w.segment() is None
    assert len(seen) == 1 and message in seen[0]
    assert len(viewer.layers) == 1


def test_no_image_notifies(widget, monkeypatch):
    viewer, w = widget
    seen = []
    monkeypatch.setattr("napari_unet.widgets.segment.show_warning", seen.append)
    assert w.segment() is None
    assert "No image selected" in seen[0]


def test_missing_model_folder_notifies(widget, monkeypatch, blob_image):
    viewer, w = widget
    seen = []
    monkeypatch.setattr("napari_unet.widgets.segment.show_warning", seen.append)
    viewer.add_image(blob_image)
    w.reset_choices()
    w.model_folder.value = ""
    assert w.segment() is None
    assert "Choose a model folder" in seen[0]


def test_dask_volume_gives_a_chunked_result(widget, qtbot, monkeypatch):
    import dask.array as da

    viewer, w = widget
    monkeypatch.setattr("napari_unet.widgets.segment.LAZY_RESULT_VOXELS", 1000)
    stack = da.from_array(np.random.default_rng(0).random((4, 30, 40)).astype(np.float32), chunks=(1, 30, 40))
    viewer.add_image(stack, name="lazy", metadata={"affine": np.eye(4).tolist()})
    w.reset_choices()
    w.segment()
    _wait(qtbot, w)
    labels = viewer.layers["lazy segmentation"]
    assert not isinstance(labels.data, np.ndarray)  # zarr, chunk per plane
    assert labels.data.shape == (4, 30, 40) and labels.data.chunks == (1, 30, 40)
    assert np.asarray(labels.data[2]).max() < 3
    assert labels.metadata["affine"] == np.eye(4).tolist()
    labels.paint((1, 5, 5), 2)  # an edit on the zarr-backed layer is detected
    w.segment()
    _wait(qtbot, w)
    assert len([layer for layer in viewer.layers if "segmentation" in layer.name]) == 2


def test_reviewed_slice_counts_as_user_work(widget, qtbot, blob_image):
    """A slice marked reviewed (no pixel changed) is still kept on re-segmenting."""
    from napari_unet.widgets.corrections import tracker_for

    viewer, w = widget
    viewer.add_image(blob_image, name="scan")
    w.reset_choices()
    w.segment()
    _wait(qtbot, w)
    result = viewer.layers["scan segmentation"]
    assert result.metadata["napari_unet"]["model_source"]
    tracker = tracker_for(result, create=False)
    assert tracker is not None  # corrections are recorded from the first stroke
    tracker.set_reviewed(0)
    w.segment()
    _wait(qtbot, w)
    assert len([layer for layer in viewer.layers if "segmentation" in layer.name]) == 2


def test_docked_as_a_plugin(make_napari_viewer, qtbot, tiny_model_dir, blob_image):
    """Through napari's plugin manager the widget sees a proxied viewer and proxied
    layers; segmenting and correction tracking must work there too."""
    from napari_unet.widgets.corrections import tracker_for

    viewer = make_napari_viewer()
    viewer.add_image(blob_image, name="scan")
    _, w = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Segment")
    w.model.value = FOLDER_CHOICE
    w.model_folder.value = str(tiny_model_dir)
    w.segment()
    _wait(qtbot, w)
    assert "done" in w.status.value
    labels = viewer.layers["scan segmentation"]
    labels.paint((3, 3), 2)
    tracker = tracker_for(labels, create=False)
    assert tracker is not None and tracker.edited_mask().sum() > 0


def test_inline_run_leaves_the_widget_idle(widget, blob_image, monkeypatch):
    """With NAPARI_UNET_SYNC the job runs inside segment(); afterwards nothing is 'running'."""
    monkeypatch.setenv("NAPARI_UNET_SYNC", "1")
    viewer, w = widget
    viewer.add_image(blob_image, name="scan")
    w.reset_choices()
    w.zoom.value = 0.75
    assert w.segment() is not None
    assert w._worker is None and w.segment_button.enabled and not w.cancel_button.enabled
    labels = viewer.layers["scan segmentation"]
    assert labels.metadata["napari_unet"]["zoom"] == 0.75
    assert labels.metadata["napari_unet"]["role"] == "segmentation"


def test_result_layer_is_added_over_later_turns(make_napari_viewer, qtbot, monkeypatch):
    """napari makes, selects and draws a layer in the call that inserts it;
    the Segment widget's result is inserted in the next turn of the event
    loop, hidden, unselected and with its editing overlays off, and shown,
    selected and given its overlays in the turns after (shorter stalls). The
    end state is napari's, and napari's own switch is left as it was."""
    from napari.layers import Labels

    from napari_unet.widgets._turns import add_layer_in_turns

    monkeypatch.delenv("NAPARI_UNET_SYNC", raising=False)
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((8, 8), np.float32))
    labels = Labels(np.zeros((8, 8), np.uint8), name="result")
    seen = []  # the state in the turn that inserted it, right after the insertion

    def on_added(layer):
        overlays = layer._overlays
        seen.append((layer in viewer.layers, viewer.layers.selection.active, layer.visible,
                     overlays["polygon"].visible, overlays["brush_stroke"].visible))

    add_layer_in_turns(viewer, labels, on_added=on_added)
    assert labels not in viewer.layers and not seen  # not in this turn
    qtbot.waitUntil(lambda: labels._overlays["brush_stroke"].visible, timeout=5_000)
    assert seen == [(True, image, False, False, False)]  # in, unselected, hidden, no overlays
    assert labels.visible and labels._overlays["polygon"].visible
    assert viewer.layers.selection.active is labels
    gone = Labels(np.zeros((8, 8), np.uint8), name="gone")
    add_layer_in_turns(viewer, gone, on_added=viewer.layers.remove)  # removed before its other turns
    qtbot.waitUntil(lambda: gone not in viewer.layers, timeout=5_000)  # then: not selected, nothing raised, whole
    qtbot.waitUntil(lambda: gone._overlays["brush_stroke"].visible, timeout=5_000)
    assert gone.visible and viewer.layers.selection.active is not gone
    later = viewer.add_image(np.ones((8, 8), np.float32))
    assert viewer.layers.selection.active is later  # napari still selects what others add


def test_a_second_segment_waits_for_the_first_result_layer(make_napari_viewer, qtbot, monkeypatch):
    """Segment stays off until its result layer is in the list, so a second
    click reuses that layer instead of adding a twin."""
    monkeypatch.delenv("NAPARI_UNET_SYNC", raising=False)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="scan")
    w = SegmentWidget(viewer)
    w._tile = 32
    w.reset_choices()
    inserted = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value.name))
    w.segment()
    qtbot.waitUntil(lambda: "scan segmentation" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: w.segment_button.enabled, timeout=5_000)
    assert not w.cancel_button.enabled
    w.segment()
    qtbot.waitUntil(lambda: w.segment_button.enabled and w.status.value.startswith("done"), timeout=60_000)
    assert inserted == ["scan segmentation"]
