"""Trusted-pixel recording from a real napari Labels layer's edit history."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.widgets.corrections import (
    TRUSTED_SUFFIX,
    current_slice,
    read_trusted_file,
    show_trusted,
    tracker_for,
    trusted_layer_name,
)


def _prediction_2d() -> np.ndarray:
    data = np.zeros((24, 30), dtype=np.uint8)
    data[4:12, 4:12] = 1  # a predicted "tumor"
    data[:, 20] = 2  # a predicted "nerve"
    return data


@pytest.fixture
def labels_2d():
    from napari.layers import Labels

    return Labels(_prediction_2d(), name="scan segmentation")


@pytest.fixture
def labels_3d():
    from napari.layers import Labels

    data = np.zeros((5, 16, 18), dtype=np.uint8)
    data[:, 3:7, 3:7] = 1
    return Labels(data, name="stack segmentation")


def test_untouched_layer_trusts_nothing(labels_2d):
    tracker = tracker_for(labels_2d)
    assert tracker.trusted_mask().shape == (24, 30)
    assert not tracker.trusted_mask().any()
    assert tracker.trusted_slices() == []


def test_paint_records_exactly_the_changed_pixels(labels_2d):
    tracker = tracker_for(labels_2d)
    before = labels_2d.data.copy()
    labels_2d.brush_size = 5
    labels_2d.paint((18, 8), 1)
    changed = labels_2d.data != before
    assert changed.any()
    np.testing.assert_array_equal(tracker.trusted_mask(), changed)
    # painting a pixel with the value it already has is not an edit
    labels_2d.paint((18, 8), 1)
    np.testing.assert_array_equal(tracker.trusted_mask(), changed)


def test_fill_erase_and_polygon_are_recorded(labels_2d):
    tracker = tracker_for(labels_2d)
    original = labels_2d.data.copy()
    labels_2d.fill((6, 6), 2)  # relabel the predicted tumor as nerve
    filled = (original == 1)
    np.testing.assert_array_equal(tracker.trusted_mask(), filled)
    labels_2d.brush_size = 3
    labels_2d.paint((10, 20), 0)  # erase part of the nerve line
    erased = (original == 2) & (labels_2d.data == 0)
    assert erased.sum() >= 1
    np.testing.assert_array_equal(tracker.trusted_mask(), filled | erased)
    labels_2d.paint_polygon(np.array([[15, 25], [15, 29], [20, 29], [20, 25]]), 1)
    polygon = (original == 0) & (labels_2d.data == 1)
    assert polygon.sum() > 10
    np.testing.assert_array_equal(tracker.trusted_mask(), filled | erased | polygon)
    assert tracker.num_edits == 3


def test_undo_unrecords_and_redo_records_again(labels_2d):
    tracker = tracker_for(labels_2d)
    labels_2d.brush_size = 3
    labels_2d.paint((18, 5), 1)
    first = tracker.trusted_mask()
    labels_2d.paint((18, 14), 2)
    both = tracker.trusted_mask()
    assert both.sum() > first.sum()
    labels_2d.undo()
    np.testing.assert_array_equal(tracker.trusted_mask(), first)
    labels_2d.undo()
    assert not tracker.trusted_mask().any()
    labels_2d.undo()  # nothing left to undo: nothing changes
    assert not tracker.trusted_mask().any()
    labels_2d.redo()
    np.testing.assert_array_equal(tracker.trusted_mask(), first)
    labels_2d.redo()
    np.testing.assert_array_equal(tracker.trusted_mask(), both)


def test_a_stroke_is_one_edit_and_undoes_as_one(labels_2d):
    tracker = tracker_for(labels_2d)
    labels_2d.brush_size = 3
    with labels_2d.block_history():  # what a mouse drag does
        for x in range(2, 14, 2):
            labels_2d.paint((20, x), 1)
    assert tracker.num_edits == 1
    assert tracker.trusted_mask()[20, 2:14].all()
    labels_2d.undo()
    assert not tracker.trusted_mask().any()
    np.testing.assert_array_equal(labels_2d.data, _prediction_2d())


def test_undone_pixel_stays_trusted_if_another_edit_covers_it(labels_2d):
    tracker = tracker_for(labels_2d)
    labels_2d.brush_size = 5
    labels_2d.paint((18, 8), 1)
    covered = tracker.trusted_mask()
    labels_2d.paint((18, 8), 2)  # the same spot again, another label
    labels_2d.undo()
    np.testing.assert_array_equal(tracker.trusted_mask(), covered)


def test_new_edit_after_undo_drops_the_redo(labels_2d):
    tracker = tracker_for(labels_2d)
    labels_2d.brush_size = 3
    labels_2d.paint((18, 5), 1)
    labels_2d.undo()
    labels_2d.paint((2, 25), 2)
    second = tracker.trusted_mask()
    labels_2d.redo()  # napari cleared its redo stack; so did the tracker
    np.testing.assert_array_equal(tracker.trusted_mask(), second)
    assert not second[18, 5]


def test_reviewed_slice_trusts_all_its_pixels_and_can_be_unreviewed(labels_3d):
    tracker = tracker_for(labels_3d)
    tracker.set_reviewed(2)
    mask = tracker.trusted_mask()
    assert mask[2].all()
    assert not mask[[0, 1, 3, 4]].any()
    assert tracker.trusted_slices() == [2]
    labels_3d.brush_size = 3
    labels_3d.paint((4, 10, 10), 1)
    assert tracker.trusted_slices() == [2, 4]
    assert tracker.toggle_reviewed(2) is False
    assert not tracker.trusted_mask()[2].any()
    assert tracker.trusted_slices() == [4]
    with pytest.raises(IndexError):
        tracker.set_reviewed(5)


def test_state_is_mirrored_in_metadata_and_restored(labels_3d):
    from napari.layers import Labels

    tracker = tracker_for(labels_3d)
    labels_3d.brush_size = 3
    labels_3d.paint((1, 10, 10), 2)
    tracker.set_reviewed(3)
    stored = labels_3d.metadata["napari_unet"]["trusted"]
    assert stored["reviewed"] == [3]
    # a layer rebuilt from (data, metadata), as a saved session gives back
    reopened = Labels(labels_3d.data.copy(), metadata=labels_3d.metadata)
    np.testing.assert_array_equal(tracker_for(reopened).trusted_mask(), tracker.trusted_mask())


def test_sidecar_round_trip(labels_2d, tmp_path):
    tracker = tracker_for(labels_2d)
    labels_2d.paint((18, 8), 1)
    tracker.set_reviewed(0, False)
    path = tracker.save(tmp_path / f"labels.tif{TRUSTED_SUFFIX}")
    edited, reviewed = read_trusted_file(path)
    np.testing.assert_array_equal(edited, tracker.edited_mask())
    assert reviewed == []


def test_replacing_the_data_elsewhere_clears_the_record(labels_2d):
    tracker = tracker_for(labels_2d)
    labels_2d.paint((18, 8), 1)
    with tracker.writing_labels():
        kept = labels_2d.data.copy()
        kept[0, 0] = 2
        labels_2d.data = kept
    assert tracker.trusted_mask().any()
    labels_2d.data = np.zeros_like(kept)  # e.g. a fresh segmentation
    assert not tracker.trusted_mask().any()


def test_review_key_overlay_and_undo_key_in_a_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    data = np.zeros((4, 20, 22), dtype=np.uint8)
    layer = viewer.add_labels(data, name="seg")
    tracker = tracker_for(layer)
    from napari_unet.widgets.corrections import bind_review_key

    bind_review_key(viewer, layer)
    viewer.dims.set_current_step(0, 2)
    assert current_slice(viewer, layer) == 2
    from app_model.types import KeyBinding

    layer.keymap[KeyBinding.from_str("Shift-R")](layer)
    assert tracker.reviewed == {2}
    overlay = show_trusted(viewer, layer)
    assert overlay.name == trusted_layer_name("seg")
    assert (overlay.data[2] == 2).all() and not overlay.data[1].any()
    layer.paint((1, 5, 5), 1)
    assert (overlay.data[1] == 1).any()  # the overlay follows the edits
    # napari's own Ctrl-Z binding calls layer.undo(), which the tracker follows
    from napari.layers.labels._labels_key_bindings import undo

    undo(layer)
    assert not overlay.data[1].any()
    show_trusted(viewer, layer, visible=False)
    assert not overlay.visible
