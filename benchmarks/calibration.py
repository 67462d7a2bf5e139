"""Does the model's confidence match reality? Calibration on the shared real
cases (before and after a fine-tuning round) and on simulated scans.

    python benchmarks/calibration.py --tuned .cache/bench_hitl_real_models \
        --json docs/calibration.json --picture docs/images/calibration.png

* real cases: the held-out slices of the real-scans protocol
  (``benchmarks/bench_hitl_real.py``); "before" is the bundled model,
  "after" the k=3 rounds' models saved by ``bench_hitl_real.py --save-models
  DIR`` (``DIR/NAME-k3``) or ``bench_grow.py --save-models DIR``
  (``DIR/NAME-k3-sS``, every seed pooled); skipped when absent;
* ``--flips 1 4``: plain predictions and test-time flips (the mean of four
  mirrored predictions), each scored;
* simulated: held-out simulated CT and MRI scans (the test stream);
* expected calibration error (ECE, 10 equal-width bins) of the top-class
  confidence over all pixels, and of the tumour probability on the pixels
  where the model or the truth says tumour (``p(tumour) >= 0.05`` or tumour):
  there the question "when it says 70 % tumour, is it tumour 70 % of the
  time?" is not drowned by easy background;
* the mean per-slice uncertainty (normalised entropy) of the held-out slices.

Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_hitl_real import CASES, DEFAULT_DATA, TUMOUR, load_case, split  # noqa: E402

BINS = np.linspace(0.0, 1.0, 11)


def reliability(confidence: np.ndarray, correct: np.ndarray) -> dict:
    """Per-bin (mean confidence, accuracy, count) and the ECE."""
    confidence = confidence.ravel()
    correct = correct.ravel().astype(np.float64)
    index = np.clip(np.digitize(confidence, BINS[1:-1]), 0, len(BINS) - 2)
    conf, acc, count = [], [], []
    for b in range(len(BINS) - 1):
        m = index == b
        n = int(m.sum())
        count.append(n)
        conf.append(float(confidence[m].mean()) if n else float("nan"))
        acc.append(float(correct[m].mean()) if n else float("nan"))
    total = max(sum(count), 1)
    ece = sum(n / total * abs(c - a) for c, a, n in zip(conf, acc, count) if n)
    return {"ece": round(float(ece), 4), "confidence": conf, "accuracy": acc, "count": count}


def scores(probs: np.ndarray, truth: np.ndarray) -> dict:
    """Calibration of (K, ...) probabilities against integer ``truth``."""
    from napari_unet.core.uncertainty import normalized_entropy

    top = probs.max(axis=0)
    pred = probs.argmax(axis=0)
    p_tumour = probs[TUMOUR]
    is_tumour = truth == TUMOUR
    relevant = (p_tumour >= 0.05) | is_tumour
    entropy = normalized_entropy(probs)
    return {
        "top_class": reliability(top, pred == truth),
        "tumour": reliability(p_tumour[relevant], is_tumour[relevant]),
        "tumour_pixels": int(relevant.sum()),
        "mean_uncertainty": round(float(entropy.mean()), 4),
    }


def predict_probs(model, volume: np.ndarray, ranges=None, flips: int = 1) -> np.ndarray:
    from napari_unet.core.predict import PredictOptions, predict_iter, run_to_end

    options = PredictOptions(device="cpu", return_probabilities=True, flips=flips)
    return run_to_end(predict_iter(volume, model, options, intensity_ranges=ranges)).probabilities


def tuned_models(folder: Path | None, name: str) -> list[Path]:
    """The saved k=3 rounds of a case: ``NAME-k3`` (``bench_hitl_real.py
    --save-models``) or ``NAME-k3-sS``, one per seed (``bench_grow.py
    --save-models``)."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and re.fullmatch(rf"{name}-k3(-s\d+)?", p.name))


def real(args, base) -> dict:
    from napari_unet.core.normalize import intensity_ranges
    from napari_unet.core.weights import load_model

    out = {}
    for name in args.cases:
        volume, truth, _ = load_case(args.data, name)
        median, _ = split(truth)
        ranges = intensity_ranges(volume, base.config.input, False)
        held_out, truth_out = volume[median:], truth[median:]
        models = [load_model(path, "cpu") for path in tuned_models(args.tuned, name)]
        entry = {}
        for flips in args.flips:
            tag = "" if flips == 1 else f" flips{flips}"
            entry["before" + tag] = scores(predict_probs(base, held_out, ranges, flips), truth_out)
            if models:  # every seed's round pooled: one reliability curve over all their pixels
                probs = [predict_probs(m, held_out, ranges, flips) for m in models]
                entry["after" + tag] = scores(np.concatenate(probs, axis=1), np.concatenate([truth_out] * len(probs)))
                entry["after" + tag]["rounds"] = len(models)
        out[name] = entry
        print(f"{name}: tumour ECE " + ", ".join(f"{w} {v['tumour']['ece']:.3f}" for w, v in entry.items()),
              file=sys.stderr)
    return out


def simulated(args, base) -> dict:
    from napari_unet.core.datasets import TEST_STREAM, _seeded
    from napari_unet.core.simulate import SimulatorConfig, simulate_scan

    rng = _seeded(args.seed, TEST_STREAM)
    config = SimulatorConfig(tumor_probability=1.0)
    out = {}
    for modality in ("ct", "mri"):
        probs, truths = [], []
        scans = [simulate_scan(rng, (256, 256), modality, config=config) for _ in range(args.sim_scans)]
        truths = np.stack([labels for _, labels in scans])
        entry = {}
        for flips in args.flips:
            probs = np.stack([predict_probs(base, image, flips=flips) for image, _ in scans], axis=1)
            entry["before" + ("" if flips == 1 else f" flips{flips}")] = scores(probs, truths)
        out[f"sim {modality}"] = entry
        print(f"sim {modality}: tumour ECE " + ", ".join(f"{w} {v['tumour']['ece']:.3f}" for w, v in entry.items()),
              file=sys.stderr)
    return out


def picture(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(2.8 * len(results), 3), dpi=100, squeeze=False)
    for ax, (name, entry) in zip(axes[0], results.items()):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
        for when, style in (("before", "o-"), ("after", "s-"), ("after flips4", "s--")):
            if when in entry:
                rel = entry[when]["tumour"]
                ax.plot(rel["confidence"], rel["accuracy"], style, ms=3,
                        label=f"{when.replace('after', 'after k=3')} (ECE {rel['ece']:.2f})")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("p(tumour)", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, loc="upper left")
    axes[0][0].set_ylabel("fraction truly tumour", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cases", nargs="+", default=list(CASES))
    p.add_argument("--model", default=None)
    p.add_argument("--tuned", type=Path, default=ROOT / ".cache" / "bench_hitl_real_models")
    p.add_argument("--sim-scans", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flips", type=int, nargs="+", choices=(1, 4), default=[1],
                   help="score plain predictions (1), test-time flips (4), or both")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--picture", type=Path, default=None)
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"no real scans at {args.data} (pass --data DIR)", file=sys.stderr)
        return 2
    from napari_unet.core.weights import load_model

    base = load_model(args.model, "cpu")
    results = {**real(args, base), **simulated(args, base)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        slim = {n: {w: {"top_class_ece": v["top_class"]["ece"], "tumour_ece": v["tumour"]["ece"],
                        "tumour_pixels": v["tumour_pixels"], "mean_uncertainty": v["mean_uncertainty"],
                        **({"rounds": v["rounds"]} if "rounds" in v else {})}
                    for w, v in e.items()} for n, e in results.items()}
        args.json.write_text(json.dumps({"model": base.config.name, "results": slim}, indent=1) + "\n")
    if args.picture:
        picture(results, args.picture)
        print(f"wrote {args.picture}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
