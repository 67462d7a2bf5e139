"""How long does the napari window freeze while the Fine-tune widget trains?

Opens a napari viewer (use Xvfb or QT_QPA_PLATFORM=offscreen without a
display), adds a generated scan and a result layer with a painted correction,
starts a real fine-tune in the widget's ``thread_worker`` and measures the
gaps between ticks of a 10 ms ``QTimer`` on the GUI thread. The longest gap
minus the 10 ms period is the longest event-loop stall. Target: < 100 ms.

    python benchmarks/bench_gui_stall.py [--seconds 15] [--size 256] [--base-channels 8]

Prints the longest stall, the 99th-percentile gap and how many training
events reached the GUI. A model is built fresh (nothing is downloaded) and
saved under a temporary folder; the model store is a temporary folder too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="fine-tuning time budget")
    parser.add_argument("--size", type=int, default=256, help="edge of the generated 2D scan")
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="start at once, before the widget's warm-up ends")
    parser.add_argument("--timeline", action="store_true", help="print when each event reached the GUI")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-gui-stall-"))
    os.environ.setdefault("NAPARI_UNET_MODELS_DIR", str(tmp / "store"))
    os.environ.pop("NAPARI_UNET_SYNC", None)  # the real thread is what is measured

    import napari
    import numpy as np
    from qtpy.QtCore import QElapsedTimer, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_unet.core.config import ModelConfig, UNetConfig
    from napari_unet.core.weights import new_model, save_model
    from napari_unet.widgets.finetune import FinetuneWidget

    config = ModelConfig(name="bench", architecture=UNetConfig(depth=args.depth, base_channels=args.base_channels))
    model_dir = save_model(new_model(config, seed=0), tmp / "base")

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: args.size, : args.size]
    image = (100 + 5 * rng.standard_normal((args.size, args.size))).astype(np.float32)
    disc = (yy - args.size // 2) ** 2 + (xx - args.size // 3) ** 2 < (args.size // 6) ** 2
    image[disc] += 80

    viewer = napari.Viewer(show=True)
    image_layer = viewer.add_image(image, name="scan")
    labels = viewer.add_labels(
        np.zeros(image.shape, np.uint8),
        name="scan segmentation",
        metadata={"napari_unet": {"role": "segmentation", "image_layer": "scan", "model": str(model_dir)}},
    )
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.image.value = image_layer
    widget.labels_layer.value = labels
    labels.brush_size = args.size // 4
    labels.paint((args.size // 2, args.size // 3), 1)
    widget.budget.value = args.seconds
    widget.model.value = str(model_dir) if str(model_dir) in widget.model.choices else widget.model.value

    app = QApplication.instance()
    gaps: list[float] = []
    clock = QElapsedTimer()
    timer = QTimer()
    timer.setInterval(10)

    ends: list[float] = []  # when each gap ended, seconds after the start

    def tick() -> None:
        gaps.append(clock.restart())
        ends.append(time.perf_counter() - started)

    timer.timeout.connect(tick)
    events = {"n": 0}
    timeline: list[tuple[float, str]] = []
    original = widget._on_event

    def count(event):  # count what reaches the GUI thread
        events["n"] += 1
        timeline.append((time.perf_counter() - started, type(event).__name__ if not isinstance(event, tuple) else event[1]))
        original(event)

    widget._on_event = count
    waited = time.perf_counter()
    while not (args.cold or widget.warmed_up) and time.perf_counter() - waited < 60:
        app.processEvents()  # the widget imports the training code in the background
        time.sleep(0.01)
    for _ in range(20):  # settle the window first
        app.processEvents()
        time.sleep(0.01)
    started = time.perf_counter()
    clock.start()
    timer.start()
    worker = widget.finetune()
    if worker is None:
        print("fine-tune did not start", file=sys.stderr)
        return 1
    while widget._worker is not None and time.perf_counter() - started < args.seconds + 120:
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    gaps, ends = gaps[1:], ends[1:]
    worst = sorted(range(len(gaps)), key=lambda i: -gaps[i])[:5]
    for i in sorted(worst):
        print(f"  gap of {gaps[i]} ms ending at {ends[i]:.2f} s")
    if "--timeline" in (argv or sys.argv):
        for at, what in timeline:
            print(f"  {at:7.2f} s  {what}")
    stall = max(gaps) - 10 if gaps else float("nan")
    p99 = float(np.percentile(gaps, 99)) - 10 if gaps else float("nan")
    print(f"fine-tune + re-segment: {time.perf_counter() - started:.1f} s, {events['n']} events reached the GUI")
    print(f"timer ticks: {len(gaps)}; longest event-loop stall: {stall:.0f} ms; 99th percentile: {p99:.0f} ms")
    print(f"summary: {widget.summary.value}")
    viewer.close()
    return 0 if stall < 100 else 2


if __name__ == "__main__":
    sys.exit(main())
