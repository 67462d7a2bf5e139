"""Screenshots for the docs: napari with the plugin docked and a segmented scan.

Run under a display (``xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshots.py``).
It opens the sample retina photo and the generated lesion stack, presses
Segment in the real widget (default bundled model), and saves PNGs to
``docs/images/``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def run_loop(app, seconds: float, until=None) -> None:
    """Run Qt's event loop as napari does (``app.exec``: timers, deferred
    deletes) for ``seconds``, or until ``until()`` is true. A loop of
    ``processEvents`` is not the same: it never deletes what ``deleteLater``
    marked, and napari then leaves its status-bar animation running."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    start = time.time()

    def check() -> None:
        if time.time() - start >= seconds or (until is not None and until()):
            loop.quit()

    timer = QTimer()
    timer.timeout.connect(check)
    timer.start(20)
    loop.exec()
    timer.stop()


def wait_for(widget, app, timeout: float = 300.0) -> None:
    """Until ``widget``'s job ends (its ``_worker`` is cleared), then 0.4 s more."""
    run_loop(app, timeout, until=lambda: widget._worker is None)
    run_loop(app, 0.4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images")
    args = parser.parse_args()
    os.environ.setdefault("XDG_CONFIG_HOME", str(Path(".cache/screenshot-config").resolve()))
    import napari
    from qtpy.QtWidgets import QApplication

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-unet")
    viewer.window.resize(1600, 1000)
    app = QApplication.instance()
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Segment")

    viewer.open_sample("napari-unet-loop", "retina")
    segment.reset_choices()
    segment.zoom.value = 0.35  # the photo's vessels are ~3x wider than the model's (model card)
    segment.segment()
    wait_for(segment, app)
    print("retina:", segment.status.value)
    viewer.screenshot(str(out / "segment-retina.png"), canvas_only=False)

    viewer.layers.clear()
    viewer.open_sample("napari-unet-loop", "lesion_scan")
    segment.reset_choices()
    viewer.dims.set_current_step(0, 12)
    segment.zoom.value = 1.0
    segment.segment()
    wait_for(segment, app)
    print("lesion scan:", segment.status.value)
    viewer.screenshot(str(out / "segment-lesion-scan.png"), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main()
