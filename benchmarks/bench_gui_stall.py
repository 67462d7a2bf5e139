"""How long does the napari window freeze while the Fine-tune widget trains?

Opens a napari viewer (use Xvfb or QT_QPA_PLATFORM=offscreen without a
display), adds a generated scan and a result layer with a painted correction,
starts a real fine-tune in the widget's ``thread_worker`` and measures the
gaps between ticks of a 10 ms ``QTimer`` on the GUI thread. The longest gap
minus the 10 ms period is the longest event-loop stall. Target: < 100 ms.

    python benchmarks/bench_gui_stall.py [--seconds 15] [--size 256] [--base-channels 8]

Prints the longest stall, the 99th-percentile gap and how many training
events reached the GUI.

``--flow`` measures the default flow instead, as a user meets it: the bundled
model, both widgets docked as ``make run`` docks them, and a 1411x1411 RGB
fundus photo (``--data retina``, skimage.data.retina) or a 24x256x256 CT-like
stack (``--data ct``); the stalls of the window opening (napari's first
draws and the widgets' warm-up worker, before any click), of the first
Segment after that, of a second Segment, and of a Fine-tune clicked at once
after it (``--click-at-once``: the first Segment is clicked the moment the
widgets are docked, while the warm-up still runs)::

    python benchmarks/bench_gui_stall.py --flow --data retina --seconds 10

Without ``--flow`` a model is built fresh (nothing is downloaded) and saved
under a temporary folder; the model store is a temporary folder too.
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
    parser.add_argument("--flow", action="store_true", help="the default flow: bundled model, Segment twice, Fine-tune")
    parser.add_argument("--data", choices=("retina", "ct"), default="retina", help="the image of --flow")
    parser.add_argument("--where", action="store_true", help="with --flow: print the GUI thread's stack in each stall")
    parser.add_argument("--click-at-once", action="store_true",
                        help="with --flow: click Segment the moment the widgets are docked, before the start-up "
                        "warm-up ends (default: measure the start-up on its own, then click)")
    args = parser.parse_args(argv)
    if args.flow:
        return flow(args)

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


class StallMeter:
    """Gaps between the ticks of a 10 ms QTimer on the GUI thread while something runs."""

    def __init__(self) -> None:
        from qtpy.QtCore import QElapsedTimer, QTimer

        self.clock = QElapsedTimer()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self.last_tick = time.perf_counter()
        self.stacks: list[str] = []

    def _tick(self) -> None:
        self.gaps.append(self.clock.restart())
        self.last_tick = time.perf_counter()

    def watch(self, threshold: float = 0.2) -> None:
        """From a thread: record where the GUI thread is when it has not ticked for ``threshold`` s."""
        import threading
        import traceback

        main = threading.main_thread().ident

        def run() -> None:
            seen = None
            while True:
                time.sleep(0.05)
                if time.perf_counter() - self.last_tick > threshold and self.timer.isActive():
                    frame = sys._current_frames().get(main)
                    if frame is not None and self.last_tick != seen:
                        seen = self.last_tick
                        lines = traceback.format_stack(frame)
                        ours = [line for line in lines[:-4] if "napari_unet" in line and "bench_gui_stall" not in line]
                        self.stacks.append("".join(ours[-4:] + lines[-4:]))

        threading.Thread(target=run, daemon=True).start()

    def run(self, start, busy, limit: float) -> tuple[float, float, float]:
        """Call ``start()``, run Qt's event loop while ``busy()``; (seconds, longest stall, p99) in ms.

        A real ``QEventLoop`` as ``napari.run`` has, not a loop of
        ``processEvents``: that one never runs deferred deletes, and napari then
        leaves its status-bar animation repainting the window 16 times a second."""
        import numpy as np
        from qtpy.QtCore import QEventLoop

        loop = QEventLoop()
        self.gaps = []
        began = time.perf_counter()

        def check() -> None:
            if not busy() or time.perf_counter() - began >= limit:
                loop.quit()

        self.timer.timeout.connect(check)
        self.clock.start()
        self.timer.start()
        start()  # the click itself runs on the GUI thread: it counts
        if busy():
            loop.exec()
        self.timer.stop()
        self.timer.timeout.disconnect(check)
        gaps = self.gaps[:] or [10.0]
        return time.perf_counter() - began, max(gaps) - 10, float(np.percentile(gaps, 99)) - 10


def flow(args: argparse.Namespace) -> int:
    """First Segment after start, a second Segment, then a Fine-tune clicked at once."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-gui-stall-"))
    os.environ.setdefault("NAPARI_UNET_MODELS_DIR", str(tmp / "store"))
    os.environ.pop("NAPARI_UNET_SYNC", None)

    import napari
    import numpy as np

    from napari_unet.widgets.launch import _refit, dock_plugin_widget, fit_docks, fit_window

    viewer = napari.Viewer(show=True)
    if args.data == "retina":
        from skimage.data import retina

        image = viewer.add_image(retina(), name="retina", rgb=True)
    else:
        from napari_unet.core.simulate import simulate_volume

        volume, _ = simulate_volume(0, (24, 256, 256), "ct")
        image = viewer.add_image(volume, name="ct")
    meter = StallMeter()
    if args.where:
        meter.watch()
    results = []
    segment = dock_plugin_widget(viewer, "Segment")
    tune = dock_plugin_widget(viewer, "Fine-tune")
    fit_window(viewer)  # as `make run` lays it out: the window fills a laptop screen
    fit_docks(viewer)
    from qtpy.QtCore import QTimer

    QTimer.singleShot(200, lambda: _refit(viewer))  # and again once laid out, as open_viewer does
    segment.image.value = image
    if not args.click_at_once:
        # the window as it opens: napari draws, the widgets' warm-up worker does the
        # first-time work; nobody has clicked yet. Then a user's first second of looking.
        def warming() -> bool:
            return not segment._warmed.is_set()

        took, stall, p99 = meter.run(lambda: None, warming, 120)
        quiet = meter.run(lambda: None, lambda: True, 1.0)
        results.append(("start-up: window open, warm-up (no click)", took + quiet[0], max(stall, quiet[1]),
                        max(p99, quiet[2])))
    from napari_unet.widgets._turns import turns_pending

    def segmenting() -> bool:
        """Until the worker ended, the result layer's turns ran, and 0.3 s more (its draws)."""
        nonlocal settled
        if segment._worker is not None or not segment.segment_button.enabled or turns_pending():
            settled = None
            return True
        settled = settled or time.perf_counter()
        return time.perf_counter() - settled < 0.3

    for what in ("first Segment after start", "second Segment"):
        settled = None
        took, stall, p99 = meter.run(segment.segment, segmenting, 600)
        results.append((what, took, stall, p99))
    labels = viewer.layers[f"{image.name} segmentation"]
    tune.image.value = image
    tune.labels_layer.value = labels
    labels.brush_size = 40
    middle = tuple(s // 2 for s in labels.data.shape)
    labels.paint(middle, 1)
    tune.budget.value = args.seconds
    took, stall, p99 = meter.run(tune.finetune, lambda: tune._worker is not None, args.seconds + 600)
    results.append(("Fine-tune right after the click (+ re-segment)", took, stall, p99))
    print(f"data: {args.data} {tuple(np.shape(image.data))}, model: {segment.model.value}")
    for what, took, stall, p99 in results:
        print(f"{what:48s} {took:6.1f} s  longest stall {stall:6.0f} ms  99th percentile {p99:5.0f} ms")
    print(f"summary: {tune.summary.value}")
    for stack in meter.stacks:
        print("GUI thread in a stall:\n" + stack)
    sys.stdout.flush()
    os._exit(0 if max(r[2] for r in results if not r[0].startswith("start-up")) < 100 else 2)  # workers may still hold Qt objects


if __name__ == "__main__":
    sys.exit(main())
