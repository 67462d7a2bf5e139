"""Screenshot of "Review next": a real brain scan segmented with its uncertainty shown.

Run under a display: ``xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python
scripts/review_next_screenshot.py``. It opens the scan with napari-unet's reader,
docks both widgets (as tabs), presses Segment with "Show uncertainty" on (the bundled
model, from an empty model store), optionally marks the list's first entry
reviewed ``--reviewed N`` times (a click, then Shift-R), clicks the first entry and
saves the whole window, scaled to 1280x800, to ``docs/images/review-next.png``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

SCAN = "/work/shared/data/real-tumours/brain1_image.nii.gz"
SIZE = (1280, 800)


def settle(app, seconds: float = 0.5) -> None:
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", default=SCAN)
    parser.add_argument("--out", default="docs/images/review-next.png")
    parser.add_argument("--reviewed", type=int, default=0,
                        help="first mark this many entries reviewed, each the list's first at the time (click, Shift-R)")
    args = parser.parse_args()
    os.environ.setdefault("XDG_CONFIG_HOME", str(Path(".cache/screenshot-config").resolve()))
    os.environ.setdefault("NAPARI_UNET_MODELS_DIR", tempfile.mkdtemp(prefix="napari-unet-store-"))
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from napari_unet.widgets.launch import dock_plugin_widget, open_viewer

    viewer = open_viewer(args.scan)
    window = viewer.window._qt_window
    window.resize(*SIZE)
    app = QApplication.instance()
    segment = dock_plugin_widget(viewer, "Segment")
    tune = dock_plugin_widget(viewer, "Fine-tune")
    # both widgets do not fit one 800-pixel column: they share it as tabs, Fine-tune on top
    window.tabifyDockWidget(segment.native.parent(), tune.native.parent())
    segment.reset_choices()
    segment.show_uncertainty.value = True
    segment.segment()
    while segment._worker is not None:
        settle(app, 0.1)
    waited = time.time()
    while tune.review_next.list.count() == 0 and time.time() - waited < 30:  # the list follows the layer's events
        settle(app, 0.2)
    print("segment:", segment.status.value)
    print("review next:", [tune.review_next.list.item(i).text() for i in range(tune.review_next.list.count())])
    for _ in range(args.reviewed):
        tune.review_next.list.itemClicked.emit(tune.review_next.list.item(0))
        tune.toggle_reviewed()  # the slice on screen, as Shift-R does
        print("review next:", [tune.review_next.list.item(i).text() for i in range(tune.review_next.list.count())])
    first = tune.review_next.list.item(0)
    if first is not None:
        tune.review_next.list.itemClicked.emit(first)  # as a click on the entry does
        tune.review_next.list.setCurrentItem(first)
    viewer.layers.selection.active = viewer.layers[f"{viewer.layers[0].name} segmentation"]
    tune.native.parent().raise_()
    settle(app, 1.5)
    # the Fine-tune widget needs a little more than 800 pixels of height: grab a
    # larger window of the same aspect ratio and scale it down evenly
    needed = max(SIZE[1], window.minimumSizeHint().height(), window.grab().height())
    window.resize(round(needed * SIZE[0] / SIZE[1]), needed)
    settle(app, 1.5)
    image = window.grab().toImage()
    print(f"window grabbed at {image.width()}x{image.height()}")
    image = image.scaled(*SIZE, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print("saved", args.out)
    viewer.close()


if __name__ == "__main__":
    main()
