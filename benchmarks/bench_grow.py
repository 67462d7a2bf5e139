"""How far the clean-up after a round should widen the kept regions.

After a round, :func:`napari_unet.core.postprocess.keep_connected` keeps the
regions that connect to the user's corrections and lets background pixels
whose foreground probability is at least ``grow`` join them
(``PredictOptions.grow``, default
:data:`~napari_unet.core.postprocess.GROW_PROBABILITY`). This benchmark runs
each round once and scores every threshold on its probabilities:

* **real scans** (the judge): the protocol of ``bench_hitl_real.py`` (k
  slices of the pool corrected, default 60 s round, 3D tumour Dice on the
  held-out slices), for each seed;
* **simulated stacks** (a check for thin structures): simulated MRI, CT and
  EM volumes with tumours and nerves, three tumour-bearing slices corrected
  (whole slices), a 30 s round, tumour and nerve Dice on the other slices.

Usage::

    python benchmarks/bench_grow.py                       # 3 cases x k 1 3 10 x 2 seeds + 6 stacks (~25 min)
    python benchmarks/bench_grow.py --cases breast1 --ks 3 --seeds 0 --no-sim
    python benchmarks/bench_grow.py --seeds 0 1 2 --flips 1 4 --save-models .cache/grow-models

Not part of the test suite. The real scans are read from ``--data`` and never copied.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_hitl_real as real  # noqa: E402

THRESHOLDS = (0.5, 0.3, 0.2, 0.15, 0.1, 0.05, 0.02)


def scored(labels: np.ndarray, probabilities: np.ndarray, seeds: dict, threshold: float) -> np.ndarray:
    from napari_unet.core.postprocess import grow_candidates, keep_connected

    out = labels.copy()
    keep_connected(out, seeds, grow_candidates(probabilities, labels, threshold) if threshold < 0.5 else None)
    return out


def run_real(args, base) -> list[dict]:
    from napari_unet.core.finetune import finetune
    from napari_unet.core.normalize import intensity_ranges
    from napari_unet.core.postprocess import seeds_from_corrections
    from napari_unet.core.predict import PredictOptions, predict_iter, run_to_end

    rows = []
    for case in args.cases:
        volume, truth, _ = real.load_case(args.data, case)
        median, pool = real.split(truth)
        for k in args.ks:
            chosen = real.choose_slices(k, median, pool)
            mask = np.zeros(truth.shape, bool)
            mask[chosen] = True
            seeds = seeds_from_corrections(truth, mask, classes=[real.TUMOUR])
            for seed in args.seeds:
                result = finetune(volume, truth, mask, base, device="cpu", seed=seed, return_result=True)
                if args.save_models:
                    from napari_unet.core.weights import save_model

                    save_model(result.model, args.save_models / f"{case}-k{k}-s{seed}", overwrite=True)
                ranges = intensity_ranges(volume, result.model.config.input, False)
                row = {"case": case, "k": k, "seed": seed, "steps": result.steps}
                for flips in args.flips:
                    options = PredictOptions(device="cpu", return_probabilities=True, flips=flips)
                    pred = run_to_end(predict_iter(volume, result.model, options, intensity_ranges=ranges))
                    prefix = "" if flips == 1 else f"flips{flips}:"
                    for t in THRESHOLDS:
                        labels = scored(pred.labels, pred.probabilities, seeds, t)
                        row[prefix + str(t)] = round(real.dice(labels[median:], truth[median:]), 3)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def run_sim(args, base) -> list[dict]:
    from napari_unet.core.finetune import finetune
    from napari_unet.core.postprocess import seeds_from_corrections
    from napari_unet.core.predict import PredictOptions, predict_iter, run_to_end
    from napari_unet.core.simulate import SimulatorConfig, simulate_volume

    def dice(p, t, c):
        a, b = p == c, t == c
        d = int(a.sum()) + int(b.sum())
        return 2 * int((a & b).sum()) / d if d else float("nan")

    rows = []
    config = SimulatorConfig(tumor_probability=1.0, nerve_probability=1.0)
    for i, modality in enumerate(["mri", "ct", "em"] * 2):
        volume, labels = simulate_volume(1000 + i, (20, 160, 160), modality, config=config)
        tumour = [z for z in range(len(labels)) if (labels[z] == 1).any()]
        chosen = [tumour[len(tumour) // 4], tumour[len(tumour) // 2], tumour[3 * len(tumour) // 4]]
        mask = np.zeros(labels.shape, bool)
        mask[chosen] = True
        result = finetune(volume, labels, mask, base, max_seconds=30, device="cpu", seed=0, return_result=True)
        pred = run_to_end(predict_iter(volume, result.model, PredictOptions(device="cpu", return_probabilities=True)))
        seeds = seeds_from_corrections(labels, mask)
        rest = ~mask.any(axis=(1, 2))
        row = {"stack": i, "modality": modality}
        for t in THRESHOLDS:
            out = scored(pred.labels, pred.probabilities, seeds, t)
            row[str(t)] = [round(dice(out[rest], labels[rest], c), 3) for c in (1, 2)]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=real.DEFAULT_DATA)
    parser.add_argument("--cases", nargs="+", default=list(real.CASES))
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--no-sim", dest="sim", action="store_false", help="skip the simulated stacks")
    parser.add_argument("--flips", type=int, nargs="+", choices=(1, 4), default=[1],
                        help="score each real round's model with these test-time flips (1 4: both)")
    parser.add_argument("--save-models", type=Path, default=None, help="keep each real round's model here")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no real scans at {args.data} (pass --data DIR)", file=sys.stderr)
        return 2
    import torch

    from napari_unet.core.weights import load_model

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # first-time import, not timed
    base = load_model(None, "cpu")
    rows = run_real(args, base)
    sim = run_sim(args, base) if args.sim else []
    print("real scans, mean held-out tumour Dice over cases and seeds (connected, widened at P):")
    print("P      " + "  ".join(f"k={k:<4d}" for k in args.ks))
    for flips in args.flips:
        prefix = "" if flips == 1 else f"flips{flips}:"
        if len(args.flips) > 1:
            print(f"test-time flips {flips}:")
        for t in THRESHOLDS:
            means = [np.mean([r[prefix + str(t)] for r in rows if r["k"] == k]) for k in args.ks]
            print(f"{t:<6} " + "  ".join(f"{m:.3f}" for m in means))
    if sim:
        print("simulated stacks, mean Dice on uncorrected slices (tumour / nerve):")
        for t in THRESHOLDS:
            tum = np.nanmean([r[str(t)][0] for r in sim])
            ner = np.nanmean([r[str(t)][1] for r in sim])
            print(f"{t:<6} {tum:.3f} / {ner:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"real": rows, "sim": sim, "thresholds": THRESHOLDS}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
