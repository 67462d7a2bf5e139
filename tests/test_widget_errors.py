"""A failure inside a worker: one notification, a status line that says what to do,
no traceback notification and nothing re-raised into Qt (pytest-qt fails a test on
an exception in the event loop)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.widgets._turns import turns_pending
from napari_unet.widgets.segment import FOLDER_CHOICE


@pytest.fixture
def notifications(monkeypatch):
    """Every notification, from the widgets and from napari's own error relay."""
    from napari.utils.notifications import notification_manager

    import napari_unet.widgets._common as common
    import napari_unet.widgets.finetune as finetune
    import napari_unet.widgets.segment as segment

    seen: list[tuple[str, str]] = []
    for module in (common, finetune, segment):
        for level in ("show_info", "show_warning", "show_error"):
            if hasattr(module, level):
                monkeypatch.setattr(module, level, lambda text, level=level: seen.append((level, str(text))))
    monkeypatch.setattr(
        notification_manager, "receive_error", lambda *args, **kwargs: seen.append(("traceback", str(args[1])))
    )
    return seen


@pytest.fixture
def no_cuda(monkeypatch):
    """Whatever this machine has, device 'cuda' is unavailable."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def viewer_with_scan(make_napari_viewer, blob_image, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_MODELS_DIR", str(tmp_path / "store"))
    monkeypatch.delenv("NAPARI_UNET_SYNC", raising=False)  # the real worker thread
    viewer = make_napari_viewer()
    viewer.add_image(blob_image, name="scan")
    return viewer


def test_segment_on_a_missing_device_warns_once(viewer_with_scan, tiny_model_dir, qtbot, notifications, no_cuda):
    _, segment = viewer_with_scan.window.add_plugin_dock_widget("napari-unet-loop", "Segment")
    segment.model.value = FOLDER_CHOICE
    segment.model_folder.value = str(tiny_model_dir)
    segment.device.value = "cuda"
    assert segment.segment() is not None
    # the worker may be done before a waitSignal could connect: wait on the widget's state
    qtbot.waitUntil(lambda: segment._worker is None and segment.segment_button.enabled and not turns_pending(), timeout=60_000)
    assert len(notifications) == 1, notifications
    level, text = notifications[0]
    assert level == "show_warning" and "cuda" in text and "Traceback" not in text
    assert "choose device 'auto' or 'cpu'" in segment.status.value
    assert "scan segmentation" not in viewer_with_scan.layers
    assert segment.segment_button.enabled


def test_finetune_on_a_missing_device_warns_once(viewer_with_scan, tiny_model_dir, qtbot, notifications, no_cuda):
    viewer = viewer_with_scan
    labels = viewer.add_labels(
        np.zeros(viewer.layers["scan"].data.shape, np.uint8),
        name="scan segmentation",
        metadata={"napari_unet": {"role": "segmentation", "image_layer": "scan", "model": str(tiny_model_dir)}},
    )
    _, tune = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Fine-tune")
    qtbot.waitUntil(lambda: tune.warmed_up, timeout=60_000)
    labels.paint((30, 25), 1)
    tune.device.value = "cuda"
    before = labels.data.copy()
    assert tune.finetune() is not None
    # the worker may be done before a waitSignal could connect: wait on the widget's state
    qtbot.waitUntil(lambda: tune._worker is None and tune.finetune_button.enabled, timeout=60_000)
    assert len(notifications) == 1, notifications
    level, text = notifications[0]
    assert level == "show_warning" and "cuda" in text
    assert "choose device 'auto' or 'cpu'" in tune.status.value
    np.testing.assert_array_equal(labels.data, before)
    assert tune.store.list_versions() == []
    assert tune.finetune_button.enabled


def test_a_bug_in_a_worker_is_one_error_notification(viewer_with_scan, tiny_model_dir, qtbot, notifications, monkeypatch):
    import napari_unet.core.weights as weights

    def broken(*_args, **_kwargs):
        raise RuntimeError("something the code did not expect")

    monkeypatch.setattr(weights, "load_model", broken)
    _, segment = viewer_with_scan.window.add_plugin_dock_widget("napari-unet-loop", "Segment")
    segment.model.value = FOLDER_CHOICE
    segment.model_folder.value = str(tiny_model_dir)
    assert segment.segment() is not None
    # the worker may be done before a waitSignal could connect: wait on the widget's state
    qtbot.waitUntil(lambda: segment._worker is None and segment.segment_button.enabled and not turns_pending(), timeout=60_000)
    assert notifications == [("show_error", notifications[0][1])]
    assert "RuntimeError" in notifications[0][1] and "did not expect" in notifications[0][1]
    assert "failed" in segment.status.value


def test_worker_without_an_error_handler_is_not_reraised(qtbot, notifications):
    from napari_unet.widgets._common import run_generator

    def failing():
        yield 1
        raise ValueError("bad value for a setting")

    finished = []
    run_generator(failing, on_finish=lambda: finished.append(True))
    qtbot.waitUntil(lambda: finished == [True], timeout=10_000)
    assert len(notifications) == 1 and notifications[0][0] == "show_warning"
    assert "bad value for a setting" in notifications[0][1]


def test_failures_are_worded_for_the_user():
    from napari_unet.core.weights import ModelError
    from napari_unet.widgets._common import describe_failure

    device = describe_failure(ValueError("device 'cuda' was asked for but no CUDA GPU is available"))
    assert device.expected and "'cpu'" in device.hint
    model = describe_failure(ModelError("/x is not a model folder"))
    assert model.expected and "model" in model.hint
    assert describe_failure(MemoryError()).expected
    bug = describe_failure(KeyError("k"))
    assert not bug.expected and "KeyError" in bug.message
