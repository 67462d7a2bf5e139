"""Uncertainty in the widgets: the Segment widget's layer, the Fine-tune widget's "Review next" list."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_unet.widgets._review import SCORES_KEY
from napari_unet.widgets._turns import turns_pending
from napari_unet.widgets.segment import FOLDER_CHOICE, SCOPE_SLICE, SegmentWidget

NOISY = 4


@pytest.fixture
def docked(make_napari_viewer, store_dir):
    """A viewer with both widgets docked (the Segment widget on the CPU)."""
    from napari_unet.widgets.finetune import FinetuneWidget

    viewer = make_napari_viewer()
    segment = SegmentWidget(viewer)
    tune = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment")
    viewer.window.add_dock_widget(tune, name="Fine-tune")
    segment.device.value = "cpu"
    return viewer, segment, tune


def _use_folder(segment, folder):
    segment.model.value = FOLDER_CHOICE
    segment.model_folder.value = str(folder)


def _segment(qtbot, segment):
    segment.reset_choices()
    assert segment.segment() is not None
    qtbot.waitUntil(lambda: segment._worker is None and segment.segment_button.enabled and not turns_pending(), timeout=60_000)
    assert "done" in segment.status.value, segment.status.value


def _disc_stack(depth=6):
    """A clean bright disc on every slice, except one slice of pure noise."""
    yy, xx = np.mgrid[:40, :48]
    disc = (100 + 60 * ((yy - 20) ** 2 + (xx - 24) ** 2 < 100)).astype(np.float32)
    stack = np.stack([disc] * depth)
    stack[NOISY] = np.random.default_rng(0).uniform(0, 200, disc.shape)
    return stack


def _entries(tune):
    return [tune.review_next.list.item(i).text() for i in range(tune.review_next.list.count())]


# ----------------------------------------------------------------- Segment widget
@pytest.mark.parametrize("show", [True, False])
def test_show_uncertainty_adds_a_layer_with_the_image_geometry(docked, qtbot, tiny_model_dir, show):
    viewer, segment, _ = docked
    _use_folder(segment, tiny_model_dir)
    stack = np.random.default_rng(1).random((3, 20, 24)).astype(np.float32)
    viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.25), translate=(1, 2, 3))
    segment.show_uncertainty.value = show
    _segment(qtbot, segment)
    labels = viewer.layers["stack segmentation"]
    scores = labels.metadata[SCORES_KEY]  # scored with or without the layer
    assert isinstance(scores, list) and len(scores) == 3 and all(0 <= s <= 1 for s in scores)
    if not show:
        assert "stack uncertainty" not in viewer.layers and len(viewer.layers) == 2
        return
    layer = viewer.layers["stack uncertainty"]
    assert layer.data.shape == stack.shape and layer.data.dtype == np.float32
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.25))
    np.testing.assert_allclose(layer.translate, (1, 2, 3))
    assert 0 <= layer.data.min() and layer.data.max() <= 1 and layer.data.max() > 0
    assert tuple(layer.contrast_limits) == (0, 1) and layer.colormap.name == "magma"
    # the review score is the entropy weighted by the foreground probability: never above the plain mean
    assert np.all(np.array(scores) <= layer.data.mean(axis=(1, 2)) + 1e-5)
    assert viewer.layers.selection.active is labels  # the result stays the layer to edit


def test_one_plane_updates_only_that_plane_and_score(docked, qtbot, tiny_model_dir):
    viewer, segment, _ = docked
    _use_folder(segment, tiny_model_dir)
    stack = np.random.default_rng(2).random((4, 20, 24)).astype(np.float32)
    viewer.add_image(stack, name="stack")
    segment.show_uncertainty.value = True
    segment.scope.value = SCOPE_SLICE
    viewer.dims.set_current_step(0, 2)
    _segment(qtbot, segment)
    layer = viewer.layers["stack uncertainty"]
    assert layer.data[2].max() > 0 and not layer.data[[0, 1, 3]].any()
    scores = viewer.layers["stack segmentation"].metadata[SCORES_KEY]
    assert [math.isnan(s) for s in scores] == [True, True, False, True]
    viewer.dims.set_current_step(0, 0)
    _segment(qtbot, segment)
    assert layer.data[0].max() > 0 and not layer.data[[1, 3]].any()
    scores = viewer.layers["stack segmentation"].metadata[SCORES_KEY]
    assert [math.isnan(s) for s in scores] == [False, True, False, True]


def test_a_layer_of_the_same_name_from_elsewhere_is_kept(docked, qtbot, tiny_model_dir, blob_image):
    viewer, segment, _ = docked
    _use_folder(segment, tiny_model_dir)
    viewer.add_image(blob_image, name="scan")
    theirs = viewer.add_image(np.ones_like(blob_image), name="scan uncertainty")
    segment.show_uncertainty.value = True
    _segment(qtbot, segment)
    np.testing.assert_array_equal(theirs.data, 1)
    ours = [layer for layer in viewer.layers if layer.name.startswith("scan uncertainty") and layer is not theirs]
    assert len(ours) == 1 and ours[0].data.shape == blob_image.shape


# ------------------------------------------------------------- Review next
def test_review_next_ranks_the_noisy_slice_first_and_jumps_to_it(docked, qtbot):
    """The bundled model is sure about a clean disc, unsure about noise."""
    from napari_unet.core.weights import default_model_name

    if default_model_name() is None:
        pytest.skip("no bundled model installed")
    viewer, segment, tune = docked
    viewer.add_image(_disc_stack(), name="stack")
    _segment(qtbot, segment)  # the shared default: the bundled model
    assert tune.labels_layer.value is viewer.layers["stack segmentation"]
    entries = _entries(tune)
    assert len(entries) == 5 and entries[0].startswith(f"slice {NOISY} — ")
    assert tune.review_next.entries[0][0] == NOISY
    viewer.dims.set_current_step(0, 0)
    from qtpy.QtCore import Qt

    review = tune.review_next.list
    qtbot.mouseClick(review.viewport(), Qt.MouseButton.LeftButton, pos=review.visualItemRect(review.item(0)).center())
    assert viewer.dims.current_step[0] == NOISY


def _scored_scene(viewer, tune, scores, scale=(1.0, 1.0, 1.0)):
    """A stack and its result layer with given slice scores (no model needed)."""
    depth = len(scores)
    viewer.add_image(np.zeros((depth, 16, 16), np.float32), name="stack", scale=scale)
    labels = viewer.add_labels(
        np.zeros((depth, 16, 16), np.uint8), name="stack segmentation", scale=scale,
        metadata={"napari_unet": {"role": "segmentation", "image_layer": "stack"}},
    )
    tune.reset_choices()
    tune.labels_layer.value = labels
    from napari_unet.widgets._review import store_slice_scores

    store_slice_scores(labels, scores)
    return labels


def test_reviewed_and_corrected_slices_drop_out(docked):
    viewer, _, tune = docked
    labels = _scored_scene(viewer, tune, [0.1, 0.5, 0.2, 0.9, 0.3, 0.05, 0.4])
    assert [z for z, _ in tune.review_next.entries] == [3, 1, 6, 4, 2]
    # 4 (0.3) comes after 6 (0.4) but before 2 (0.2): each sits next to a slice above it, and says so
    assert _entries(tune) == ["slice 3 — 0.900", "slice 1 — 0.500", "slice 6 — 0.400",
                              "slice 4 — 0.300 · near 3", "slice 2 — 0.200 · near 1"]
    tune.review_next.jump(3)
    tune.toggle_reviewed()  # the slice on screen, as the button and Shift-R do
    assert [z for z, _ in tune.review_next.entries] == [1, 6, 4, 2, 0]
    assert _entries(tune)[2] == "slice 4 — 0.300 · near 3"  # 3 is reviewed now, not listed
    labels.brush_size = 3
    labels.paint((1, 8, 8), 1)  # a correction with napari's brush on slice 1
    assert [z for z, _ in tune.review_next.entries] == [6, 4, 2, 0, 5]
    tune.toggle_reviewed()  # un-review slice 3: it comes back
    assert tune.review_next.entries[0][0] == 3


def test_jump_follows_the_layer_geometry(docked):
    viewer, _, tune = docked
    labels = _scored_scene(viewer, tune, [0.1, 0.2, 0.9, 0.3], scale=(3.0, 1.0, 1.0))
    viewer.add_image(np.zeros((2, 5, 16, 16), np.float32), name="time series")  # one more world axis
    tune.review_next.jump(2)
    axis = viewer.dims.ndim - 3
    assert axis == 1
    assert viewer.dims.point[axis] == pytest.approx(6.0)
    from napari_unet.widgets.corrections import current_slice

    assert current_slice(viewer, labels) == 2


def test_2d_image_has_nothing_to_rank(docked, qtbot, tiny_model_dir, blob_image):
    viewer, segment, tune = docked
    _use_folder(segment, tiny_model_dir)
    viewer.add_image(blob_image, name="scan")
    _segment(qtbot, segment)
    assert tune.review_next.title.value == "" and not tune.review_next.visible  # no row that says nothing
    assert tune.review_next.list.count() == 0 and tune.review_next.list.isHidden()


def test_a_finetune_round_scores_the_slices_again(docked, qtbot, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_SYNC", "1")
    viewer, segment, tune = docked
    _use_folder(segment, tiny_model_dir)
    viewer.add_image(_disc_stack(), name="stack")
    segment.show_uncertainty.value = True
    _segment(qtbot, segment)
    labels = viewer.layers["stack segmentation"]
    before = list(labels.metadata[SCORES_KEY])
    shown = viewer.layers["stack uncertainty"]
    old_map = np.array(shown.data)
    viewer.dims.set_current_step(0, 1)
    tune.toggle_reviewed()
    tune.steps.value = 2
    assert tune.finetune() is not None
    assert "Now using" in tune.summary.value
    after = labels.metadata[SCORES_KEY]
    assert len(after) == len(before) and after != before  # the new model's scores
    assert not np.array_equal(shown.data, old_map)  # the map follows the new model too
    assert 1 not in [z for z, _ in tune.review_next.entries]
    assert tune.review_next.entries == sorted(tune.review_next.entries, key=lambda e: -e[1])
