"""Segment and Fine-tune docked together through napari's plugin machinery, as a user has them."""

from __future__ import annotations

import pytest

from napari_unet.widgets._turns import turns_pending
from napari_unet.widgets.segment import FOLDER_CHOICE


@pytest.fixture
def docked(make_napari_viewer, blob_image, tiny_model_dir, tmp_path, monkeypatch):
    """A viewer with a scan and both widgets docked from the plugin (proxied viewer),
    the Segment widget set to the tiny model, and an empty model store."""
    monkeypatch.setenv("NAPARI_UNET_MODELS_DIR", str(tmp_path / "store"))
    viewer = make_napari_viewer()
    viewer.add_image(blob_image, name="scan")
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Segment")
    _, tune = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Fine-tune")
    segment.model.value = FOLDER_CHOICE
    segment.model_folder.value = str(tiny_model_dir)
    segment.device.value = "cpu"
    tune.steps.value = 2
    return viewer, segment, tune


@pytest.fixture
def sync(monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_SYNC", "1")


def _expected_status(tracker) -> str:
    counts = tracker.summary()
    return (
        f"trusted: {counts['trusted_pixels']} px on {counts['trusted_slices']} slice(s) "
        f"({counts['edited_pixels']} px edited, {counts['reviewed_slices']} reviewed)"
    )


def _combo_labels(combo) -> list[str]:
    return [combo.native.itemText(i) for i in range(combo.native.count())]


def _label_of(combo, value) -> str:
    return combo.native.itemText(combo.native.findData(value))


def test_review_and_status_are_live_on_a_freshly_segmented_layer(docked, qtbot):
    """Segment in its real thread, then every kind of correction shows at once in the
    status line, and the button and Shift-R mark the image reviewed."""
    from app_model.types import KeyBinding

    from napari_unet.widgets.corrections import tracker_for

    viewer, segment, tune = docked
    segment.segment_button.clicked.emit()
    qtbot.waitUntil(lambda: segment._worker is None and segment.segment_button.enabled and not turns_pending(), timeout=60_000)
    layer = viewer.layers["scan segmentation"]
    assert tune.labels_layer.value is layer
    tracker = tracker_for(layer)
    assert tune.trusted_status.value == _expected_status(tracker) and "trusted: 0 px" in tune.trusted_status.value

    stale = "(not updated)"

    def check(what: str) -> None:
        assert tune.trusted_status.value == _expected_status(tracker), f"status line is stale after {what}"
        tune.trusted_status.value = stale  # so the next check sees whether the line was redrawn

    tune.trusted_status.value = stale
    layer.brush_size = 7
    layer.paint((30, 25), 2)  # brush
    check("a brush stroke")
    assert tracker.edited_mask().sum() > 0
    layer.brush_size = 3
    layer.paint((30, 25), 0)  # eraser (on the pixels just painted, so some change)
    check("an eraser stroke")
    layer.undo()  # Ctrl-Z
    check("undo")
    old = int(layer.data[5, 70])
    layer.fill((5, 70), (old + 1) % 3)  # fill bucket
    check("a fill")
    layer.undo()
    check("undo of the fill")

    layer.keymap[KeyBinding.from_str("Shift-R")](layer)  # the key, bound on the fresh layer
    check("Shift-R")
    assert tracker.reviewed == {0} and "Un-review" in tune.review_button.text
    tune.review_button.clicked.emit()  # the button
    check("the review button")
    assert tracker.reviewed == frozenset() and "Mark reviewed" in tune.review_button.text
    qtbot.waitUntil(lambda: tune.warmed_up, timeout=60_000)


def test_finetuned_version_is_the_model_both_widgets_use(docked, sync, make_napari_viewer):
    from napari_unet.widgets.segment import SegmentWidget

    viewer, segment, tune = docked
    segment.segment()
    layer = viewer.layers["scan segmentation"]
    layer.paint((30, 25), 1)
    tune.finetune()
    (first,) = tune.store.list_versions()
    assert "Now using v0001" in tune.summary.value
    # the Segment widget shows and uses it, without a layer being added first
    assert segment.model.value == str(first.path)
    assert segment._model_source() == str(first.path)
    assert _label_of(segment.model, str(first.path)).startswith("v0001")

    layer.paint((10, 60), 2)
    tune.finetune()
    first, second = tune.store.list_versions()
    assert segment.model.value == str(second.path)
    labels = _combo_labels(segment.model)
    assert len(labels) == len(set(labels))  # two versions of one model stay two entries
    assert any(text.startswith("v0001") for text in labels) and any(text.startswith("v0002") for text in labels)
    # in order: bundled, versions oldest first, and "a folder" stays last
    assert labels[-1] == FOLDER_CHOICE
    assert [t[:5] for t in labels if t.startswith("v0")] == ["v0001", "v0002"]
    assert "current" in _label_of(segment.model, str(second.path))
    assert tune.versions.value == second.id  # the version list shows the one in use
    assert any(text.startswith("v0002") for text in _combo_labels(tune.model))

    # one choice: picking a model to start from in Fine-tune changes Segment's, and back
    tune.model.value = str(first.path)
    assert segment.model.value == str(first.path)
    segment.model.value = str(second.path)
    assert tune.model.value == str(second.path)
    # "Use this version" in the version list moves both
    tune.versions.value = first.id
    tune.rollback()
    assert segment.model.value == str(first.path) == tune.model.value
    # a new window starts from the store's current version, not the bundled model
    fresh = SegmentWidget(make_napari_viewer())
    assert fresh.model.value == str(first.path)


def test_resegmenting_after_finetuning_keeps_the_zoom(docked, sync, monkeypatch):
    import napari_unet.core.predict as core_predict

    viewer, segment, tune = docked
    zooms: list[float] = []
    original = core_predict.predict_iter

    def recording_predict_iter(image, model, options=None, **kwargs):
        zooms.append(options.zoom)
        return original(image, model, options, **kwargs)

    monkeypatch.setattr(core_predict, "predict_iter", recording_predict_iter)
    segment.zoom.value = 0.5
    segment.segment()
    layer = viewer.layers["scan segmentation"]
    assert layer.metadata["napari_unet"]["zoom"] == 0.5
    layer.paint((30, 25), 1)
    tune.finetune()
    assert "Now using v0001" in tune.summary.value
    assert zooms == [0.5, 0.5]  # Segment's prediction, then the re-segmentation after fine-tuning
