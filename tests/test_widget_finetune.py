"""The Fine-tune widget under a real napari viewer, with a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

FAST_STEPS = 2


def _shown(widget) -> bool:
    """Whether a widget is meant to be visible (the test viewer's window is never shown)."""
    return not widget.native.isHidden()


@pytest.fixture
def sync(monkeypatch):
    """Run the widget's generator inline (no thread, no event loop needed)."""
    monkeypatch.setenv("NAPARI_UNET_SYNC", "1")


@pytest.fixture
def notes(monkeypatch):
    """Every notification the widget shows, as (level, text)."""
    import napari_unet.widgets._versions as versions_module
    import napari_unet.widgets.finetune as module

    seen: list[tuple[str, str]] = []
    for level in ("show_info", "show_warning", "show_error"):
        for target in (module, versions_module):
            if hasattr(target, level):
                monkeypatch.setattr(target, level, lambda text, level=level: seen.append((level, text)))
    return seen


@pytest.fixture
def scene(make_napari_viewer, blob_image, tiny_model_dir, store_dir):
    """A viewer with a scan, its (empty) segmentation and a docked Fine-tune widget."""
    from napari_unet.widgets.finetune import FinetuneWidget

    viewer = make_napari_viewer()
    image = viewer.add_image(blob_image, name="scan")
    labels = viewer.add_labels(
        np.zeros(blob_image.shape, np.uint8),
        name="scan segmentation",
        metadata={"napari_unet": {"role": "segmentation", "image_layer": "scan", "model": str(tiny_model_dir)}},
    )
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.steps.value = FAST_STEPS
    widget.budget.value = 30
    return viewer, image, labels, widget


def _paint_disc(labels, value=1):
    labels.brush_size = 15
    labels.paint((30, 25), value)
    return labels.data.copy()


def test_widget_picks_the_result_layer_of_the_image(scene):
    _, image, labels, widget = scene
    assert widget.image.value is image
    assert widget.labels_layer.value is labels
    assert "0 px" in widget.trusted_status.value


def test_finetune_round_saves_a_version_and_keeps_the_corrections(scene, sync, notes):
    viewer, _, labels, widget = scene
    corrected = _paint_disc(labels)
    from napari_unet.widgets.corrections import tracker_for

    trusted = tracker_for(labels).trusted_mask()
    assert trusted.sum() > 100
    assert widget.finetune() is not None
    assert widget._worker is None  # finished (synchronously)
    versions = widget.store.list_versions()
    assert len(versions) == 1
    version = versions[0]
    # the new version is used for this layer from now on, the base model untouched
    assert labels.metadata["napari_unet"]["model"] == str(version.path)
    # trusted pixels exactly as corrected; the rest is the new model's prediction
    np.testing.assert_array_equal(labels.data[trusted], corrected[trusted])
    from napari_unet.core.predict import predict
    from napari_unet.core.weights import load_model

    predicted = predict(viewer.layers["scan"].data, load_model(version.path), device="cpu").labels
    np.testing.assert_array_equal(labels.data[~trusted], predicted[~trusted])
    summary = widget.last_summary
    assert summary["trusted_pixels"] == int(trusted.sum())
    assert summary["slices"] == 1
    assert summary["steps"] == FAST_STEPS
    assert "Val. Dice" in widget.summary.value
    assert widget.plot.steps == list(range(1, FAST_STEPS + 1))
    assert ("show_info", notes[-1][1]) == notes[-1]
    # the record survived the re-segmentation
    np.testing.assert_array_equal(tracker_for(labels).trusted_mask(), trusted)
    # the version list shows it
    assert version.id in widget.versions.choices
    assert widget.store.current().id == version.id  # promoted: no regression


def test_reviewed_slice_alone_is_enough_to_finetune(scene, sync):
    _, _, labels, widget = scene
    widget.toggle_reviewed()
    assert "Un-review" in widget.review_button.text
    assert widget.finetune() is not None
    assert len(widget.store.list_versions()) == 1


def test_no_corrections_notifies_and_changes_nothing(scene, sync, notes):
    _, _, labels, widget = scene
    before = labels.data.copy()
    assert widget.finetune() is None
    assert notes and notes[-1][0] == "show_warning" and "No corrections yet" in notes[-1][1]
    np.testing.assert_array_equal(labels.data, before)
    assert widget.store.list_versions() == []


def test_shape_mismatch_notifies_and_changes_nothing(scene, sync, notes):
    viewer, _, _, widget = scene
    other = viewer.add_labels(np.zeros((20, 20), np.uint8), name="other")
    other.paint((5, 5), 1)
    widget.labels_layer.value = other
    before = other.data.copy()
    assert widget.finetune() is None
    assert "pick the result layer that belongs to this image" in notes[-1][1]
    np.testing.assert_array_equal(other.data, before)
    assert widget.store.list_versions() == []


def test_unknown_class_offers_a_new_output(scene, sync, notes):
    _, _, labels, widget = scene
    corrected = _paint_disc(labels, value=3)  # the tiny model knows 0, 1, 2
    widget.finetune()
    assert notes[-1][0] == "show_warning" and "class id(s) 3" in notes[-1][1]
    assert _shown(widget.add_class_button)
    np.testing.assert_array_equal(labels.data, corrected)
    assert widget.store.list_versions() == []
    # accepting the offer trains a model with a fourth class
    widget.add_classes_and_finetune()
    from napari_unet.core.weights import read_config

    (version,) = widget.store.list_versions()
    assert read_config(version.path).architecture.num_classes == 4
    assert not _shown(widget.add_class_button)


def test_cancel_changes_nothing_and_says_so(scene, sync, notes, monkeypatch):
    _, _, labels, widget = scene
    corrected = _paint_disc(labels)
    widget.steps.value = 50
    original = widget.plot.add

    def cancel_on_first_step(*args):  # the plot sees every training step
        original(*args)
        widget.cancel()

    monkeypatch.setattr(widget.plot, "add", cancel_on_first_step)
    widget.finetune()
    np.testing.assert_array_equal(labels.data, corrected)
    assert labels.metadata["napari_unet"]["model"] != ""
    assert "cancelled" in widget.status.value
    assert any("cancelled" in text for _, text in notes)
    assert widget.plot.steps == [1]  # stopped at the first step
    # the best weights so far are kept as a version, but not put to use
    (kept,) = widget.store.list_versions()
    assert kept.metrics["cancelled"] is True
    assert widget.store.current() is None
    assert kept.id in notes[-1][1] and "not in use" in notes[-1][1]
    assert widget.finetune_button.enabled and not widget.cancel_button.enabled


@pytest.mark.parametrize("metric", [
    "validation Dice on the held-back trusted pixels",
    "tumor Dice on the slices it learned from",
])
def test_regression_gate_lets_the_user_choose(scene, sync, notes, monkeypatch, metric):
    _, _, labels, widget = scene
    corrected = _paint_disc(labels)
    base_model = labels.metadata["napari_unet"]["model"]

    from napari_unet.core.versions import PromotionDecision

    def reject(store, candidate, previous, *_args, **_kwargs):
        return PromotionDecision(False, candidate.id, previous, 0.25, 0.75, "worse", metric)

    monkeypatch.setattr(type(widget.store), "promote", reject)
    import napari_unet.widgets.finetune as finetune_widget

    scrolled_to = []
    monkeypatch.setattr(finetune_widget, "bring_into_view", lambda scroll, what: scrolled_to.append(what))
    widget.finetune()
    assert _shown(widget.gate_status) and _shown(widget.use_new_button)
    assert scrolled_to[-1] is widget.gate_row  # the choice is scrolled into view, not below the fold
    assert "0.250" in widget.gate_status.value and "0.750" in widget.gate_status.value
    assert f"0.250 ({metric})" in widget.gate_status.value
    assert any(f"({metric}: 0.250 vs 0.750)" in text for level, text in notes if level == "show_warning")
    np.testing.assert_array_equal(labels.data, corrected)  # nothing applied yet
    assert labels.metadata["napari_unet"]["model"] == base_model
    widget.keep_previous()
    assert not _shown(widget.gate_status)
    np.testing.assert_array_equal(labels.data, corrected)
    assert labels.metadata["napari_unet"]["model"] == base_model

    assert widget.store.current() is None
    widget.finetune()
    widget.use_candidate()
    second = widget.store.list_versions()[-1]
    assert widget.store.current().id == second.id
    assert labels.metadata["napari_unet"]["model"] == str(second.path)
    assert widget.last_summary["val_dice_after"] is not None


def test_versions_rollback_rename_export_import(scene, sync, tmp_path, tiny_model_dir):
    _, _, labels, widget = scene
    _paint_disc(labels)
    widget.finetune()
    labels.paint((10, 60), 2)
    widget.finetune()
    versions = widget.store.list_versions()
    assert len(versions) == 2
    first = versions[0]
    assert widget.store.current().id == versions[1].id
    assert versions[1].parent == first.id  # the second round started from the first
    widget.versions.value = first.id
    widget.rollback()
    assert widget.store.current().id == first.id
    assert labels.metadata["napari_unet"]["model"] == str(first.path)
    widget.rename_version(first.id, "liver-v1")
    assert widget.store.get(first.id).name == "liver-v1"
    exported = widget.export_version(first.id, tmp_path / "exported")
    assert (exported / "weights.safetensors").is_file() and (exported / "config.json").is_file()
    imported = widget.import_model(tiny_model_dir)
    assert imported is not None
    assert imported.id in widget.versions.choices


def test_real_thread_keeps_the_event_loop_running(scene, qtbot, monkeypatch):
    """Fine-tune in napari's thread_worker while a 10 ms timer keeps ticking."""
    from qtpy.QtCore import QElapsedTimer, QTimer

    monkeypatch.delenv("NAPARI_UNET_SYNC", raising=False)
    _, _, labels, widget = scene
    corrected = _paint_disc(labels)
    widget.steps.value = 8
    gaps: list[int] = []
    clock = QElapsedTimer()
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: gaps.append(clock.restart()))
    clock.start()
    timer.start()
    worker = widget.finetune()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    timer.stop()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=5_000)
    assert len(gaps) >= 5  # the GUI thread kept running while the worker trained
    assert len(widget.store.list_versions()) == 1
    from napari_unet.widgets.corrections import tracker_for

    trusted = tracker_for(labels).trusted_mask()
    np.testing.assert_array_equal(labels.data[trusted], corrected[trusted])
    print(f"longest event-loop gap during fine-tuning: {max(gaps[1:])} ms")


@pytest.mark.parametrize("with_labels_layer", [False, True])
def test_every_field_has_its_label(make_napari_viewer, blob_image, store_dir, sync, with_labels_layer):
    """With or without a Labels layer when the widget is made, every field is named
    (``self.labels`` used to overwrite magicgui's show-the-labels flag with a combo box,
    falsy while it had no choices)."""
    from qtpy.QtWidgets import QLabel

    from napari_unet.widgets.finetune import FinetuneWidget

    viewer = make_napari_viewer()
    viewer.add_image(blob_image, name="scan")
    if with_labels_layer:
        viewer.add_labels(np.zeros(blob_image.shape, np.uint8), name="scan segmentation")
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    assert widget.labels is True
    texts = {label.text() for label in widget.native.findChildren(QLabel)}
    for name in ("image", "corrected labels", "start from", "time budget (s)", "learning rate", "versions"):
        assert name in texts, f"field '{name}' has no label: {sorted(texts)}"
    for name in ("max steps", "device", "seed"):  # the advanced fields too
        assert name in texts, f"field '{name}' has no label"


def _stack_with_segmentation(make_napari_viewer, stack, model_dir):
    """A viewer with ``stack``, an empty segmentation of it by ``model_dir`` and a
    Fine-tune widget set to short rounds."""
    from napari_unet.widgets.finetune import FinetuneWidget

    viewer = make_napari_viewer()
    viewer.add_image(stack, name="scan")
    labels = viewer.add_labels(
        np.zeros(stack.shape, np.uint8), name="scan segmentation",
        metadata={"napari_unet": {"role": "segmentation", "image_layer": "scan", "model": str(model_dir)}},
    )
    widget = FinetuneWidget(viewer)
    widget.steps.value = FAST_STEPS
    return viewer, labels, widget


@pytest.mark.parametrize("keep_connected", [True, False])
def test_after_a_round_regions_not_connected_to_the_corrections_are_left_out(
    make_napari_viewer, tiny_model_dir, store_dir, sync, threshold_network, keep_connected
):
    from napari_unet.widgets.corrections import tracker_for

    stack = np.full((4, 30, 30), 100, np.float32)
    stack[0:3, 5:10, 5:10] = 300  # the lesion, through slices 0-2
    stack[3, 20:25, 20:25] = 300  # a look-alike on a slice nobody corrected
    viewer, labels, widget = _stack_with_segmentation(make_napari_viewer, stack, tiny_model_dir)
    widget.keep_connected.value = keep_connected
    labels.data[1, 5:10, 5:10] = 1  # the user's lesion on slice 1 ...
    viewer.dims.set_current_step(0, 1)
    widget.toggle_reviewed()  # ... and the whole slice checked
    assert tracker_for(labels).trusted_slices() == [1]
    assert widget.finetune() is not None
    assert (labels.data[0:3, 5:10, 5:10] == 1).all()  # followed through the slices
    look_alike = labels.data[3, 20:25, 20:25]
    if keep_connected:
        assert (look_alike == 0).all()
        assert widget.last_summary["left_out_regions"] == 1
        assert "left out 1 other (25 voxels)" in widget.summary.value
    else:
        assert (look_alike == 1).all()
        assert "left out" not in widget.summary.value


@pytest.mark.parametrize("widen", [True, False])
def test_after_a_round_less_certain_pixels_next_to_the_kept_lesion_join_it_when_asked(
    make_napari_viewer, tiny_model_dir, store_dir, sync, ramp_network, widen
):
    stack = np.full((4, 30, 30), 100, np.float32)
    stack[0:3, 4:11, 4:11] = 150  # a dim rim: tumour probability 0.25, background by argmax
    stack[0:3, 5:10, 5:10] = 300  # the lesion
    stack[3, 20:25, 20:25] = 150  # a dim patch far from it
    stack[3, 0, 0] = 300
    viewer, labels, widget = _stack_with_segmentation(make_napari_viewer, stack, tiny_model_dir)
    widget.widen.value = widen
    labels.data[1, 5:10, 5:10] = 1
    viewer.dims.set_current_step(0, 1)
    widget.toggle_reviewed()
    assert widget.finetune() is not None
    rim = np.zeros(stack.shape, bool)
    rim[[0, 2], 4:11, 4:11] = True
    rim[:, 5:10, 5:10] = False
    assert (labels.data[0:3:2, 5:10, 5:10] == 1).all()
    assert (labels.data[3, 20:25, 20:25] == 0).all()  # not connected: never added
    if widen:
        assert (labels.data[rim] == 1).all()
        assert "widened by 48 less certain voxels" in widget.summary.value
    else:
        assert (labels.data[rim] == 0).all()
        assert "widened" not in widget.summary.value
    widget.keep_connected.value = False
    assert not widget.widen.enabled


def test_the_widen_tooltip_states_the_threshold_the_round_uses(make_napari_viewer, store_dir):
    from napari_unet.core.postprocess import GROW_PROBABILITY
    from napari_unet.widgets.finetune import FinetuneWidget

    widget = FinetuneWidget(make_napari_viewer())
    assert f"at least {round(100 * GROW_PROBABILITY)} %" in widget.widen.tooltip


@pytest.mark.parametrize("restart", [True, False])
def test_a_later_round_retrains_the_first_model_on_every_correction(scene, sync, monkeypatch, tiny_model_dir,
                                                                    restart):
    """By default a second round starts again from the model the layer was
    segmented with (and is compared with the model the user has now); with
    the box off it continues the last round's model."""
    from pathlib import Path

    import napari_unet.core.finetune as core

    _, _, labels, widget = scene
    widget.restart.value = restart
    _paint_disc(labels)
    widget.finetune()
    first = widget.store.list_versions()[0]
    assert labels.metadata["napari_unet"]["model"] == str(first.path)

    seen = []
    real = core.finetune_iter

    def spy(image, labels_, trusted, model, **kwargs):
        seen.append((model, kwargs.get("reference")))
        return real(image, labels_, trusted, model, **kwargs)

    monkeypatch.setattr(core, "finetune_iter", spy)
    labels.brush_size = 9
    labels.paint((60, 60), 1)
    widget.finetune()
    (model, reference), = seen
    second = widget.store.list_versions()[-1]
    assert second.id != first.id
    if restart:
        assert Path(model.source) == Path(tiny_model_dir)
        assert Path(reference.source) == first.path
    else:
        assert Path(model.source) == first.path and reference is None
    from napari_unet.core.weights import load_model

    provenance = load_model(second.path).config.provenance
    assert ("compared_with" in provenance) is restart


def test_the_notification_shows_the_fit_when_validation_cannot_see_the_lesion(tiny_model):
    """A blind validation figure (no tumour in the held-back pixels: 0 -> 1) is
    not what the toast shows; the lesion's fit on the corrected slices is."""
    from dataclasses import replace

    from napari_unet.core.finetune import FinetuneResult
    from napari_unet.widgets.finetune import _headline

    name = tiny_model.config.classes[1].name
    seen = FinetuneResult(tiny_model, 0.2, 0.7, 500, 1, 3.0, [])
    assert _headline(seen) == "val. Dice 0.200 → 0.700"
    blind = FinetuneResult(tiny_model, 0.0, 1.0, 500, 1, 3.0, [], blind_classes=[1], fit_before=0.0, fit_after=0.64)
    text = _headline(blind)
    assert text.startswith(f"0.000 → 0.640 ({name} Dice on the slices it learned from")
    assert "1.000" not in text
    # a fall of the other classes' validation figure is shown as such
    fell = FinetuneResult(tiny_model, 0.8, 0.3, 500, 1, 3.0, [], blind_classes=[1], fit_before=0.0, fit_after=0.64,
                          val_other_before=0.8, val_other_after=0.3)
    assert _headline(fell) == "0.800 → 0.300 (val. Dice of the classes the held-back pixels hold)"
    assert _headline(None) == "val. Dice n/a"
    # held-back pixels that hold no lesion, against none held back at all
    assert _headline(replace(blind, validation_pixels=900)).endswith("; the held-back pixels could not tell)")
    assert _headline(blind).endswith("; no pixel was held back)")
    # validation near 0 on a lesion the held-back pixels do hold: the fit beside it
    stuck = FinetuneResult(tiny_model, 0.0, 0.0, 500, 1, 3.0, [], validation_pixels=900, stuck_classes=[1],
                           fit_before=0.05, fit_after=0.83)
    # near 0 before and after, validation cannot tell: the fit comes first (a toast shows ~40 characters)
    assert _headline(stuck) == (f"0.050 → 0.830 ({name} Dice on the slices it learned from; "
                                "val. Dice 0.000 → 0.000: the round missed the held-back pixels)")
    # a fall to near 0 is a regression: the validation figure comes first
    fell_to_zero = replace(stuck, val_dice_before=0.6)
    assert _headline(fell_to_zero) == f"val. Dice 0.600 → 0.000; {name} Dice 0.050 → 0.830 on the slices it learned from"


def test_the_status_says_when_a_round_trains_on_past_its_budget(scene):
    """A round that has not learned a marked class yet trains on; the status line says why."""
    from napari_unet.core.train import TrainEvent

    *_, widget = scene
    common = dict(max_steps=None, elapsed=61.0, loss=0.4, lr=1e-3, val_dice=None, best_val_dice=0.5, improved=False)
    widget._on_event(TrainEvent(step=150, **common))
    assert widget.status.value.startswith("step 150, 61 s, loss 0.400")
    stage = "tumor not learned yet (found 0% of it on the corrected slices): training on, 1 of 2"
    widget._on_event(TrainEvent(step=151, **common, stage=stage))
    assert widget.status.value == f"step 151, 61 s: {stage}"


def test_the_summary_says_when_a_round_trained_past_its_budget(tiny_model):
    from napari_unet.core.finetune import FinetuneResult
    from napari_unet.widgets.finetune import _extended

    assert _extended(FinetuneResult(tiny_model, 0.2, 0.7, 500, 1, 3.0, [])) == ""
    assert _extended(None) == ""
    text = _extended(FinetuneResult(tiny_model, 0.2, 0.7, 500, 1, 3.0, [], extra_steps=170))
    assert text == "; 170 past the budget, as a class you marked was not learned yet"


def test_the_budget_tooltip_states_how_far_a_round_may_train_on(make_napari_viewer, store_dir):
    from napari_unet.core.finetune import FinetuneOptions
    from napari_unet.widgets.finetune import FinetuneWidget

    widget = FinetuneWidget(make_napari_viewer())
    assert f"up to {1 + FinetuneOptions().extend_unlearned}x this" in widget.budget.tooltip
