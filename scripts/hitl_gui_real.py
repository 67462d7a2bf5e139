"""One fine-tuning round on a real scan in the real napari GUI, against the
same round headless.

    xvfb-run -a -s "-screen 0 1280x800x24" python scripts/hitl_gui_real.py --case lung2
    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/hitl_gui_real.py --case lung2 --no-headless \
        --window 1600x1000 --click --out review.png

Opens ``../shared/data/real-tumours/CASE_image.nii.gz`` with the plugin's
reader, presses Segment, corrects the k pool slices the real-scan benchmark
would (benchmarks/bench_hitl_real.py; ground truth written through the
Labels layer's own edit API, slices marked reviewed), presses Fine-tune
with the default budget and waits for the re-segmentation. Then runs the
same round headless (``finetune`` on the same image, labels and trusted
mask) and prints both: steps, seconds, steps per second, and held-out
tumour Dice. Saves ``docs/images/finetune-real-round.png``. ``--click``
clicks the Review next list's first entry after the round, as a user would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="lung2")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "real-tumours")
    parser.add_argument("--no-headless", dest="headless", action="store_false",
                        help="skip the headless round (only the GUI round and its review list)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "finetune-real-round.png")
    parser.add_argument("--window", default="1280x800", help="window size WxH (the Review next list is "
                        "below the fold at 1280x800)")
    parser.add_argument("--mid", type=float, default=None, metavar="SECONDS",
                        help="also a picture this many seconds into the round (OUT with -mid before the suffix)")
    parser.add_argument("--click", action="store_true",
                        help="after the round, click the list's first entry; the picture shows that slice")
    args = parser.parse_args()
    models = (ROOT / ".cache" / "gui-real-models").resolve()
    # a fresh store each run: the widget starts from the store's current
    # version, and the headless round below from the bundled model
    shutil.rmtree(models, ignore_errors=True)
    os.environ.setdefault("XDG_CONFIG_HOME", str((ROOT / ".cache" / "screenshot-config").resolve()))
    os.environ["NAPARI_UNET_MODELS_DIR"] = str(models)
    import napari
    from bench_hitl_real import choose_slices, dice, load_case, split
    from make_screenshots import wait_for as wait
    from qtpy.QtWidgets import QApplication

    from napari_unet._napari_io import open_in_viewer
    from napari_unet.core.finetune import finetune
    from napari_unet.widgets.corrections import tracker_for

    _, truth, _ = load_case(args.data, args.case)
    median, pool = split(truth)
    chosen = choose_slices(args.k, median, pool)

    viewer = napari.Viewer(title=f"napari-unet: a round on {args.case}")
    viewer.window.resize(*(int(v) for v in args.window.lower().split("x")))
    app = QApplication.instance()
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Segment")
    _, tune = viewer.window.add_plugin_dock_widget("napari-unet-loop", "Fine-tune")
    from napari_unet.widgets.launch import fit_docks

    fit_docks(viewer)  # as the launcher sizes them, so the picture shows what a user sees
    (image_layer,) = open_in_viewer(viewer, args.data / f"{args.case}_image.nii.gz")
    segment.reset_choices()
    segment.image.value = image_layer
    segment.segment()
    wait(segment, app)
    result = viewer.layers[-1]
    before = np.asarray(result.data).copy()
    print("segmented:", segment.status.value)
    print(f"held-out tumour Dice before: {dice(before[median:], truth[median:]):.3f}")

    tracker = tracker_for(result)
    for z in chosen:
        ys, xs = np.nonzero(before[z] != truth[z])
        result.data_setitem((np.full(ys.shape, z), ys, xs), truth[z][ys, xs].astype(before.dtype))
        tracker.set_reviewed(z)
    tune.reset_choices()
    tune.image.value, tune.labels_layer.value = image_layer, result
    print("trusted:", tracker.summary())
    start = time.perf_counter()
    tune.finetune()
    if args.mid is not None:
        from make_screenshots import run_loop

        run_loop(app, args.mid)
        mid = args.out.with_name(args.out.stem + "-mid" + args.out.suffix)
        mid.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(mid), canvas_only=False)
        print(f"wrote {mid} ({args.mid:.0f} s in: {tune.status.value!r}, progress shown: "
              f"{tune.progress.native.isVisible()})")
    wait(tune, app)
    gui_wall = time.perf_counter() - start
    print("fine-tune:", tune.status.value)
    print("summary:", tune.summary.value)
    listed = tune.review_next.list
    print("review next:", [listed.item(i).text() for i in range(listed.count())])
    after = np.asarray(result.data)
    gui_dice = dice(after[median:], truth[median:])
    newest = max(models.rglob("config.json"), key=lambda p: p.stat().st_mtime)
    gui = json.loads(newest.read_text())["provenance"]
    viewer.dims.set_current_step(0, median + 2)
    if args.click and listed.count():
        listed.itemClicked.emit(listed.item(0))  # the signal a mouse click sends
        app.processEvents()
        print("clicked:", listed.item(0).text(), "-> the viewer shows slice", viewer.dims.current_step[0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    print("wrote", args.out)
    mask = np.zeros(truth.shape, bool)
    mask[chosen] = True
    image = np.asarray(image_layer.data)
    trusted_labels = np.asarray(result.data).astype(np.int64)
    viewer.close()
    if not args.headless:
        return

    headless = finetune(image, trusted_labels, mask, None, device="cpu", return_result=True)
    rate_gui = gui["steps"] / gui["seconds"]
    rate_cli = headless.steps / headless.seconds
    print(f"GUI round:      {gui['steps']} steps in {gui['seconds']:.1f} s = {rate_gui:.2f} steps/s "
          f"({gui['stop_reason']}; {gui_wall:.0f} s with re-segmentation); held-out Dice {gui_dice:.3f}")
    print(f"headless round: {headless.steps} steps in {headless.seconds:.1f} s = {rate_cli:.2f} steps/s "
          f"({headless.stop_reason})")
    print(f"GUI / headless steps per second: {rate_gui / rate_cli:.2f}")


if __name__ == "__main__":
    main()
