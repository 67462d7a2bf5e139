"""Run one human-in-the-loop round in the real napari GUI and screenshot it.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/hitl_gui_check.py

Opens a ``gravel-thick`` stack (benchmarks/bench_hitl.py: slices 0-2 to
correct, 4 held-out slices after them), presses Segment, corrects slices 0-2
through the Labels layer's own edit API (``data_setitem``, which records undo
history and emits ``paint`` like the brush does) and marks them reviewed,
presses Fine-tune with the default 60 s budget, waits for the re-segmentation,
prints held-out Dice before and after, and saves
``docs/images/finetune-round.png`` showing a held-out slice.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))


def dice(pred: np.ndarray, truth: np.ndarray) -> str:
    from napari_unet.core.metrics import confusion_matrix, dice_from_confusion

    d = dice_from_confusion(confusion_matrix(pred, truth, 3))
    return f"tumor {d[1]:.3f} nerve {d[2]:.3f}"


def main() -> None:
    os.environ.setdefault("XDG_CONFIG_HOME", str((ROOT / ".cache" / "screenshot-config").resolve()))
    os.environ.setdefault("NAPARI_UNET_MODELS_DIR", str((ROOT / ".cache" / "gui-check-models").resolve()))
    import napari
    from bench_hitl import HELD_OUT_FIRST, make_stack
    from make_screenshots import wait_for as wait
    from qtpy.QtWidgets import QApplication

    from napari_unet.widgets.corrections import tracker_for

    k = 3
    train, train_truth = make_stack("gravel-thick", k, 256, 0)
    test, test_truth = make_stack("gravel-thick", 4, 256, 0, first=HELD_OUT_FIRST)
    image = np.concatenate([train, test])
    truth = np.concatenate([train_truth, test_truth])

    viewer = napari.Viewer(title="napari-unet: one fine-tuning round")
    viewer.window.resize(1600, 1000)
    app = QApplication.instance()
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Segment")
    _, tune = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Fine-tune")
    viewer.add_image(image, name="gravel-thick")
    segment.reset_choices()
    segment.segment()
    wait(segment, app)
    result = viewer.layers[-1]
    before = np.asarray(result.data).copy()
    print("segmented:", segment.status.value)
    print("held-out before:", dice(before[k:], truth[k:]))

    tracker = tracker_for(result)
    for z in range(k):  # the simulated user fixes every wrong pixel of slices 0..k-1
        ys, xs = np.nonzero(before[z] != truth[z])
        result.data_setitem((np.full(ys.shape, z), ys, xs), truth[z][ys, xs])
        tracker.set_reviewed(z)
    tune.reset_choices()
    tune.image.value, tune.labels_layer.value = viewer.layers["gravel-thick"], result
    print("trusted:", tracker.summary())
    tune.finetune()
    wait(tune, app)
    print("fine-tune:", tune.status.value)
    after = np.asarray(result.data)
    print("held-out after:", dice(after[k:], truth[k:]))
    print("corrected slices kept:", bool(np.array_equal(after[:k], truth[:k])))
    viewer.dims.set_current_step(0, k + 1)
    out = ROOT / "docs" / "images" / "finetune-round.png"
    viewer.screenshot(str(out), canvas_only=False)
    print("wrote", out)
    viewer.close()


if __name__ == "__main__":
    main()
