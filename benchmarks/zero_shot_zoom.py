"""Zero-shot tumour finding on the real scans at several zooms, and on simulated lesions by size.

Why: the bundled models label almost no real tumour at the default zoom
(issue 9's zero-shot row). This measures whether they *see* the lesion at
all, and whether that depends on the lesion's size in pixels, separately
from the threshold and the clean-up:

* per real case (``../shared/data/real-tumours``, never copied) and zoom:
  the held-out Dice of the plain argmax labels (the zero-shot cell of
  ``bench_hitl_real.py``: slices from the median tumour slice on, the whole
  stack segmented), the whole-stack Dice, the mean tumour probability inside
  the lesion, ``rank``: the share of non-lesion voxels whose tumour
  probability is above the lesion's median (0.5 is chance, 0 a perfect
  ranking), and the voxels labelled tumour;
* with ``--sim N``: N simulated MRI and CT scans (256 px, a seed stream
  disjoint from training's), each lesion (connected component) binned by its
  equivalent diameter in pixels: the mean tumour probability inside and the
  share of lesions with more than half of their pixels labelled.

Usage::

    python benchmarks/zero_shot_zoom.py                                   # the default model
    python benchmarks/zero_shot_zoom.py --models unet-sim-v5 unet-sim-v3 --sim 40 --json docs/zero_shot_zoom.json

Not part of the test suite; about 1 min per model on 2 CPU cores (plus
about 1 min for ``--sim 40``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hitl_real import CASES, DEFAULT_DATA, TUMOUR, dice, load_case, split  # noqa: E402

ZOOMS = (0.5, 1.0, 1.5, 2.0, 2.5)
SIZE_BINS = ((0, 10), (10, 20), (20, 35), (35, 60), (60, 10_000))


def lesion_rank(probability: np.ndarray, lesion: np.ndarray) -> float:
    """Share of the voxels outside ``lesion`` whose ``probability`` is above the
    lesion's median: 0 when the lesion ranks above everything, about 0.5 when
    the model cannot tell it from the rest, near 1 when it ranks below it."""
    return float((probability[~lesion] > np.median(probability[lesion])).mean())


def _predict(model, volume: np.ndarray, zoom: float):
    from napari_unet.core.normalize import intensity_ranges
    from napari_unet.core.predict import PredictOptions, predict_iter, run_to_end

    options = PredictOptions(device="cpu", zoom=zoom, return_probabilities=True)
    ranges = intensity_ranges(volume, model.config.input, False)
    return run_to_end(predict_iter(volume, model, options, intensity_ranges=ranges))


def real_rows(model, data: Path, cases, zooms) -> list[dict]:
    rows = []
    for name in cases:
        volume, truth, _ = load_case(data, name)
        median, _ = split(truth)
        lesion = truth == TUMOUR
        for zoom in zooms:
            result = _predict(model, volume, zoom)
            p = result.probabilities[TUMOUR]
            row = {"case": name, "zoom": zoom,
                   "held_out_dice": dice(result.labels[median:], truth[median:]),
                   "dice": dice(result.labels, truth),
                   "p_inside": float(p[lesion].mean()),
                   "rank": lesion_rank(p, lesion),
                   "tumour_voxels": int((result.labels == TUMOUR).sum())}
            rows.append(row)
            print(f"  {name:8s} zoom {zoom:4.2f}: held-out Dice {row['held_out_dice']:.3f}, "
                  f"Dice {row['dice']:.3f}, p inside {row['p_inside']:.3f}, rank {row['rank']:.3f}, "
                  f"{row['tumour_voxels']} tumour voxels", file=sys.stderr)
    return rows


def sim_rows(model, scans: int) -> list[dict]:
    from scipy import ndimage

    from napari_unet.core.simulate import simulate_scan

    lesions = []
    for modality in ("mri", "ct"):
        for seed in range(900_000, 900_000 + scans):
            image, labels = simulate_scan(seed, (256, 256), modality)
            result = _predict(model, image[None], 1.0)
            p, pred = result.probabilities[TUMOUR][0], result.labels[0]
            components, n = ndimage.label(labels == TUMOUR)
            for i in range(1, n + 1):
                c = components == i
                lesions.append((modality, 2.0 * np.sqrt(c.sum() / np.pi), float(p[c].mean()),
                                float((pred[c] == TUMOUR).mean())))
    rows = []
    for modality in ("mri", "ct"):
        for lo, hi in SIZE_BINS:
            sel = [x for x in lesions if x[0] == modality and lo <= x[1] < hi]
            if sel:
                rows.append({"modality": modality, "diameter_px": [lo, hi], "lesions": len(sel),
                             "p_inside": float(np.mean([x[2] for x in sel])),
                             "found": float(np.mean([x[3] > 0.5 for x in sel]))})
                r = rows[-1]
                print(f"  sim {modality} diameter {lo}-{hi} px: {r['lesions']:3d} lesions, "
                      f"p inside {r['p_inside']:.3f}, found {r['found']:.2f}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=[None], help="bundled names or folders (default: the default)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--zooms", nargs="+", type=float, default=list(ZOOMS))
    parser.add_argument("--sim", type=int, default=0, metavar="N", help="also N simulated MRI and CT scans by lesion size")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: no real scans at {args.data} (--data)", file=sys.stderr)
        return 2
    from napari_unet.core.weights import load_model

    out = []
    for source in args.models:
        model = load_model(source, "cpu")
        print(f"{model.config.name}:", file=sys.stderr)
        out.append({"model": model.config.name, "real": real_rows(model, args.data, args.cases, args.zooms),
                    "sim": sim_rows(model, args.sim) if args.sim else []})
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
