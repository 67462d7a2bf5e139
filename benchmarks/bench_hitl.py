"""The human-in-the-loop curve: does fine-tuning on k corrected slices pay off?

A simulated user opens a stack of scans in a style the bundled model handles
poorly, corrects k = 1, 3, 10 slices with the ground truth (whole slices
marked reviewed), and fine-tunes with the default budget (60 s on a CPU).
Reported: mean foreground Dice (tumor, nerve) on held-out slices of the same
stack for

* ``zero-shot``: the bundled model as shipped;
* ``fine-tuned``: fine-tuned from the bundled model on the k slices;
* ``scratch``: the same architecture trained from random weights on the same
  slices for the same number of seconds (with a learning rate and batch-norm
  settings suited to training from scratch, so the comparison is fair).

A style is one consistent kind of image, as in a real stack from one
scanner or microscope: the same background, lesions and vessels of the same
polarity, new structures in every slice (:data:`STYLES`). The default,
``gravel-thick``: scikit-image's CC0 ``gravel`` texture behind thick (6-12 px)
bright vessels and dark lesions; the bundled model scores mean Dice ~0.27 on
it (thick vessels and real textures are its known weak spots). ``--style``
picks another. The correctable slices are 0..k-1 of the style's stream, the
held-out slices 1000.. of it, whatever ``--ks`` is.

Usage::

    python benchmarks/bench_hitl.py                    # full run, ~7 min on 2 cores
    python benchmarks/bench_hitl.py --style em-thick --ks 3 --no-plot
    python benchmarks/bench_hitl.py --model DIR        # any model folder as the start
    python benchmarks/bench_hitl.py --seconds 3 --ks 1 --test-slices 2 --size 64 --no-plot   # smoke

Writes ``docs/images/hitl_curve.png`` and prints a table (and ``--json PATH``).
Not part of the test suite.

``--strategy both`` compares, instead, which slices a user corrects (as
``bench_hitl_real.py --strategy both`` does on the real scans): ``even``
corrects the first k slices of a pool of ``--pool`` correctable slices (they
are independent scans, so any k are "evenly spread"); ``suggested`` runs
rounds (1, then 2 at k=3; 1, 3, 6 at k=10): the user picks the first slice
(the same as ``even``'s), then the "review next" list picks the most
uncertain unreviewed pool slices, and each round fine-tunes the previous
round's model on every slice reviewed so far, the same seconds per round::

    python benchmarks/bench_hitl.py --strategy both --ks 3 10 --json docs/bench_strategies_sim.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

#: Styles of scans (simulator settings). A style is one consistent kind of
#: image, as in a user's stack: the same background, the same polarity of
#: lesions and vessels, new structures in every slice; every slice has both.
STYLES = {
    # EM-like granular texture, thick (6-12 px) dark vessels, bright lesions: the
    # bundled model misses thick vessels or calls them tumor
    "em-thick": dict(modality="em", sim=dict(em_background="granular", nerve_width=(6.0, 12.0),
                                             nerve_sign=-1, tumor_sign=1)),
    # a real CC0 texture (scikit-image's gravel) behind thick bright vessels and dark lesions
    "gravel-thick": dict(modality="em", sim=dict(em_background="gravel", nerve_width=(6.0, 12.0),
                                                 nerve_sign=1, tumor_sign=-1)),
    # fluorescence-like dark background, bright thick vessels and bright lesions
    "fluo-thick": dict(modality="em", sim=dict(em_background="fluorescence", nerve_width=(6.0, 12.0),
                                               nerve_sign=1, tumor_sign=1)),
    "ct-thick": dict(modality="ct", sim=dict(nerve_width=(8.0, 12.0), nerve_sign=1, tumor_sign=-1)),
    "mri-thick": dict(modality="mri", sim=dict(nerve_width=(8.0, 12.0), nerve_sign=-1, tumor_sign=1)),
}


#: index of the first held-out slice (slices before it may be corrected)
HELD_OUT_FIRST = 1000


def make_stack(style: str, slices: int, size: int, seed: int, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``slices`` scans of one style as a (Z, Y, X) stack with ground-truth
    labels; slice ``z`` is the same for every call (``first`` skips ahead)."""
    from napari_unet.core.simulate import SimulatorConfig, simulate_scan

    spec = STYLES[style]
    config = SimulatorConfig(tumor_probability=1.0, nerve_probability=1.0, augment=False, **spec["sim"])
    modality = spec["modality"]
    images, labels = [], []
    for z in range(first, first + slices):
        image, label = simulate_scan(seed * 10_000 + z, (size, size), modality, rgb=False, config=config)
        images.append(image)
        labels.append(label)
    return np.stack(images), np.stack(labels)


def held_out_dice(model, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Dice per foreground class over all held-out slices (one confusion matrix)."""
    from napari_unet.core.metrics import confusion_matrix, dice_from_confusion, score_from_confusion
    from napari_unet.core.predict import predict

    k = model.config.architecture.num_classes
    pred = predict(images, model, device="cpu").labels
    matrix = confusion_matrix(pred, labels, k)
    dice = dice_from_confusion(matrix)
    out = {c.name: float(dice[c.id]) for c in model.config.classes if c.id}
    out["mean"] = score_from_confusion(matrix, fallback=False)
    return out


def _width(args: argparse.Namespace) -> int | str | None:
    """``--width``: the library's rule ("auto") unless given; 0 keeps the width."""
    return "auto" if args.width is None else (args.width or None)


def run(args: argparse.Namespace) -> dict:
    import torch

    from napari_unet.core.finetune import FinetuneOptions, finetune
    from napari_unet.core.weights import NoBundledModelError, load_model, new_model

    try:
        base = load_model(args.model, "cpu")
    except NoBundledModelError:
        print(
            "no bundled model is installed yet (it is trained by scripts/train_bundled.py); "
            "pass --model DIR to benchmark another model folder",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    # the first optimiser pulls in torch._dynamo (seconds): not part of any timing
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])

    max_k = max(args.ks)
    train_images, train_labels = make_stack(args.style, max_k, args.size, args.seed)
    # held-out slices come after every correctable slice, whatever --ks is
    test_images, test_labels = make_stack(args.style, args.test_slices, args.size, args.seed, first=HELD_OUT_FIRST)
    print(
        f"style {args.style}: {max_k} correctable + {args.test_slices} held-out slices of {args.size}px; "
        f"model {base.config.name}; torch threads {torch.get_num_threads()}",
        file=sys.stderr,
    )

    zero_shot = held_out_dice(base, test_images, test_labels)
    print(f"zero-shot: {zero_shot}", file=sys.stderr)
    rows = []
    for k in args.ks:
        volume, truth = train_images[:k], train_labels[:k]
        start = time.perf_counter()
        tuned = finetune(volume, truth, None, base, max_seconds=args.seconds, device="cpu", seed=args.seed,
                         options=FinetuneOptions(widen_to=_width(args)), return_result=True)
        seconds = time.perf_counter() - start
        tuned_dice = held_out_dice(tuned.model, test_images, test_labels)

        scratch_start = new_model(base.config.replace(provenance={}), seed=args.seed)
        scratch_options = FinetuneOptions(lr=2e-3, norm_eval=False, patience=None, widen_to=_width(args))
        # same wall-clock budget as the fine-tuning run (which may also stop early)
        scratch = finetune(volume, truth, None, scratch_start, max_seconds=args.seconds, device="cpu",
                           seed=args.seed, options=scratch_options, return_result=True)
        scratch_dice = held_out_dice(scratch.model, test_images, test_labels)
        row = {
            "k": k,
            "seconds": round(seconds, 1),
            "finetune_steps": tuned.steps,
            "finetune_stop": tuned.stop_reason,
            "scratch_steps": scratch.steps,
            "zero_shot": zero_shot,
            "finetuned": tuned_dice,
            "scratch": scratch_dice,
            "val_dice_before": tuned.val_dice_before,
            "val_dice_after": tuned.val_dice_after,
        }
        rows.append(row)
        print(
            f"k={k:2d}: zero-shot {zero_shot['mean']:.3f}  fine-tuned {tuned_dice['mean']:.3f}  "
            f"scratch {scratch_dice['mean']:.3f}  ({seconds:.0f}s, {tuned.steps} steps, {tuned.stop_reason})",
            file=sys.stderr,
        )
    return {
        "style": args.style,
        "size": args.size,
        "test_slices": args.test_slices,
        "budget_seconds": args.seconds,
        "model": base.config.name,
        "rows": rows,
    }


def run_strategies(args: argparse.Namespace) -> dict:
    """Even vs suggested slices on the simulator (see the module docstring)."""
    import torch
    from bench_hitl_real import rounds_for

    from napari_unet.core.finetune import finetune
    from napari_unet.core.predict import predict
    from napari_unet.core.uncertainty import review_order
    from napari_unet.core.weights import load_model

    base = load_model(args.model, "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    pool_images, pool_labels = make_stack(args.style, args.pool, args.size, args.seed)
    test_images, test_labels = make_stack(args.style, args.test_slices, args.size, args.seed, first=HELD_OUT_FIRST)
    print(f"style {args.style}: pool of {args.pool}, {args.test_slices} held-out slices of {args.size}px; "
          f"model {base.config.name}", file=sys.stderr)

    def tune(model, reviewed):
        mask = np.zeros(pool_labels.shape, bool)
        mask[sorted(reviewed)] = True
        return finetune(pool_images, pool_labels, mask, model, max_seconds=args.seconds, device="cpu",
                        seed=args.seed, return_result=True)

    rows = []
    for k in args.ks:
        even = tune(base, list(range(k)))
        even_dice = held_out_dice(even.model, test_images, test_labels)
        model, reviewed, picks = base, [], []
        for i, size in enumerate(rounds_for(k)):
            if i == 0:
                picked = list(range(size))  # the user's first slice, as in even
            else:
                scores = predict(pool_images, model, device="cpu", uncertainty=True).slice_uncertainty
                # the pool is independent simulated scans, not a stack: no neighbours to spread
                picked = [z for z, _ in review_order(scores, reviewed, top=size, spacing=0)]
            reviewed += picked
            picks.append(picked)
            model = tune(model, reviewed).model
        suggested_dice = held_out_dice(model, test_images, test_labels)
        rows.append({"k": k, "even": even_dice, "suggested": suggested_dice, "suggested_rounds": picks})
        print(f"k={k:2d}: even {even_dice['mean']:.3f}  suggested {suggested_dice['mean']:.3f}  "
              f"(rounds {picks})", file=sys.stderr)
    return {"style": args.style, "size": args.size, "pool": args.pool, "test_slices": args.test_slices,
            "budget_seconds": args.seconds, "model": base.config.name, "strategies": rows}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in results["rows"]]
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    ax.plot(ks, [r["zero_shot"]["mean"] for r in results["rows"]], "k--", label="zero-shot (bundled)")
    ax.plot(ks, [r["finetuned"]["mean"] for r in results["rows"]], "o-", label="fine-tuned from bundled")
    ax.plot(ks, [r["scratch"]["mean"] for r in results["rows"]], "s-", label="from scratch, same seconds")
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("corrected slices k")
    ax.set_ylabel("held-out Dice (tumor, nerve mean)")
    ax.set_ylim(0, 1)
    budget = results["budget_seconds"] or "default"
    ax.set_title(f"Human-in-the-loop curve ({results['style']}, budget {budget} s)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--style", choices=sorted(STYLES), default="gravel-thick")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--test-slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=None, help="fine-tuning budget (default: the library's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=None, metavar="C",
                        help="widen the network a round trains to C channels (default: the library's; 0: no)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "images" / "hitl_curve.png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--strategy", choices=("even", "both"), default="even",
                        help="both: compare evenly chosen slices with the review-next list's (no curve plot)")
    parser.add_argument("--pool", type=int, default=20, help="with --strategy both: correctable slices")
    args = parser.parse_args(argv)
    if args.strategy == "both":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        results = run_strategies(args)
        print(json.dumps(results, indent=1))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
        return 0
    results = run(args)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
