"""The clean-up's widening threshold on a fine ladder, and a flood guard, on saved rounds.

``bench_grow.py --save-models DIR`` keeps each real round's model as
``DIR/CASE-kK-sS``. This script segments each case again with each saved
model (no training), widens the kept lesion at every threshold of
:data:`LADDER` (:func:`napari_unet.core.postprocess.keep_connected`, as the
product does after a round) and records the held-out tumour Dice and the
kept volume. Then it scores two rules on those numbers:

* a fixed threshold (what the product does: 0.15 by default);
* a *flood guard*: step down the ladder from argmax and stop before the
  first step that multiplies the kept volume by more than ``--guard``,
  never below ``--floor``. A widening that leaks into the tissue around a
  lesion shows as such a jump (lung2: 28 558 -> 64 470 voxels between 0.12
  and 0.1), while a widening that only adds the lesion's rim grows by at
  most about 1.1x a step. Not in the product (``docs/finetune.md``, "The
  widening threshold with 0.9.6's rounds").

Usage::

    python benchmarks/bench_grow.py --seeds 0 1 2 --save-models .cache/grow-models
    python benchmarks/grow_ladder.py --models .cache/grow-models --json .cache/grow-ladder.json

About 4 minutes for 27 saved rounds on 2 CPU cores. Not part of the test suite;
the real scans are read from ``--data`` and never copied.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_hitl_real as real  # noqa: E402

LADDER = (0.5, 0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02)


def score_models(models: Path, data: Path) -> list[dict]:
    """Dice and kept tumour volume at every ladder threshold, one row per saved round."""
    from napari_unet.core.normalize import intensity_ranges
    from napari_unet.core.postprocess import grow_candidates, keep_connected, seeds_from_corrections
    from napari_unet.core.predict import PredictOptions, predict_iter, run_to_end
    from napari_unet.core.weights import load_model

    rows = []
    found = sorted(p for p in models.iterdir() if re.fullmatch(r"\w+-k\d+-s\d+", p.name))
    for case in sorted({p.name.split("-k")[0] for p in found}):
        volume, truth, _ = real.load_case(data, case)
        median, pool = real.split(truth)
        for folder in (p for p in found if p.name.split("-k")[0] == case):
            k, seed = (int(v) for v in re.fullmatch(r"\w+-k(\d+)-s(\d+)", folder.name).groups())
            mask = np.zeros(truth.shape, bool)
            mask[real.choose_slices(k, median, pool)] = True
            seeds = seeds_from_corrections(truth, mask, classes=[real.TUMOUR])
            model = load_model(str(folder))
            ranges = intensity_ranges(volume, model.config.input, False)
            options = PredictOptions(device="cpu", return_probabilities=True)
            pred = run_to_end(predict_iter(volume, model, options, intensity_ranges=ranges))
            row = {"case": case, "k": k, "seed": seed, "dice": {}, "volume": {}}
            for t in LADDER:
                labels = pred.labels.copy()
                keep_connected(labels, seeds, grow_candidates(pred.probabilities, labels, t) if t < 0.5 else None)
                row["dice"][str(t)] = round(real.dice(labels[median:], truth[median:]), 4)
                row["volume"][str(t)] = int((labels == real.TUMOUR).sum())
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def guarded(row: dict, floor: float, guard: float) -> str:
    """The threshold the flood guard settles on for one round."""
    chosen = str(LADDER[0])
    for before, after in zip(LADDER, LADDER[1:]):
        if after < floor - 1e-9 or row["volume"][str(after)] > guard * max(row["volume"][str(before)], 1):
            break
        chosen = str(after)
    return chosen


def table(rows: list[dict], pick) -> tuple[dict, list[float]]:
    cases = sorted({r["case"] for r in rows})
    ks = sorted({r["k"] for r in rows})
    per_case = {c: [float(np.mean([r["dice"][pick(r)] for r in rows if r["case"] == c and r["k"] == k]))
                    for k in ks] for c in cases}
    return per_case, [float(np.mean([per_case[c][i] for c in cases])) for i in range(len(ks))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="bench_grow.py --save-models folder")
    parser.add_argument("--data", type=Path, default=real.DEFAULT_DATA)
    parser.add_argument("--floor", type=float, nargs="+", default=[0.15, 0.1, 0.07, 0.05],
                        help="lowest threshold the guard may reach")
    parser.add_argument("--guard", type=float, nargs="+", default=[2.0, 1.3],
                        help="largest growth of the kept volume in one ladder step")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-round rows as JSON")
    args = parser.parse_args(argv)
    if not args.data.is_dir() or not args.models.is_dir():
        print(f"need real scans at {args.data} and saved rounds at {args.models}", file=sys.stderr)
        return 2
    rows = score_models(args.models, args.data)
    if not rows:
        print(f"no CASE-kK-sS model folders in {args.models}", file=sys.stderr)
        return 2
    ks = sorted({r["k"] for r in rows})
    print("mean held-out tumour Dice, k = " + " / ".join(map(str, ks)))

    def show(name: str, pick) -> None:
        per_case, mean = table(rows, pick)
        cells = " | ".join(f"{c} " + "/".join(f"{v:.3f}" for v in vals) for c, vals in per_case.items())
        print(f"{name:<24} {cells} || mean " + "/".join(f"{v:.3f}" for v in mean))

    for t in LADDER:
        show(f"fixed {t}", lambda r, t=t: str(t))
    for floor in args.floor:
        for guard in args.guard:
            show(f"guard {guard}x, floor {floor}", lambda r, f=floor, g=guard: guarded(r, f, g))
    if args.json:
        args.json.write_text(json.dumps({"ladder": LADDER, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
