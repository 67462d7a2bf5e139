"""Screenshots of the whole napari window with both plugin widgets docked, as
``make run`` opens it, at a laptop size (1280x800) and a desktop size (1920x1080).

Run headless with::

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/layout_screenshots.py

It writes ``docs/images/layout-1280x800.png`` and ``docs/images/layout-1920x1080.png``
(or into ``--out``) and prints the share of the window width the canvas gets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

SIZES = ((1280, 800), (1920, 1080))


def settle(app, seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the PNGs")
    parser.add_argument("--sample", default="retina", help="the plugin's sample to load (retina, lesion_scan)")
    args = parser.parse_args()

    from qtpy.QtWidgets import QApplication

    from napari_unet.widgets.launch import fit_docks, open_viewer

    viewer = open_viewer(sample=args.sample)
    app = QApplication.instance()
    window = viewer.window._qt_window
    window.showNormal()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for width, height in SIZES:
        window.resize(width, height)
        settle(app, 1.0)
        fit_docks(viewer)  # as open_viewer does for the window napari opens
        settle(app, 1.0)
        viewer.reset_view()
        settle(app, 0.5)
        canvas = viewer.window._qt_viewer.canvas.native
        share = canvas.width() / window.width()
        path = out / f"layout-{width}x{height}.png"
        window.grab().save(str(path))
        print(f"{path}: window {window.width()}x{window.height()}, canvas {canvas.width()}x{canvas.height()} "
              f"({share:.0%} of the width)")
    # leave without closing: the model warm-up may still run in a worker thread,
    # and closing the window under it aborts the interpreter
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
