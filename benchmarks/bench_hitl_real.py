"""The human-in-the-loop curve on real labelled tumour scans.

The protocol of the real-scans issue, per case (volume as Z, Y, X):

* split the slices at the median tumour-bearing slice: the *pool* below it
  may be corrected, the slices from it on are *held out*;
* round k corrects k pool slices (ground truth, whole slice trusted), spread
  evenly and centred over the pool's tumour-bearing slices (k=1 takes the
  middle one); where the pool has fewer tumour-bearing slices than k, the
  tumour-free pool slices nearest to the tumour fill up;
* ``fine-tuned``: the default fine-tuning round (the code the CLI runs:
  :func:`napari_unet.core.finetune.finetune_iter` with default options and
  the default budget, 60 s on a CPU) from the bundled model, on the whole
  volume with a trust mask, as a user's session would;
* ``scratch``: a MONAI ``BasicUNet`` (2D, default features) trained from
  random weights on the same trusted slices, the same normalised input and
  crops, cross-entropy + Dice, AdamW 1e-3, for the same seconds;
* ``zero-shot`` (k=0): the bundled model as shipped;
* score: 3D Dice of the tumour class over the held-out slices, the whole
  stack segmented; tumour regions that do not connect in 3D to a corrected
  tumour pixel are left out, as the widget does after a round
  (:mod:`napari_unet.core.postprocess`; the scratch anchor gets the same),
  and since 0.6 background pixels with a tumour probability of at least
  ``--grow`` (default: the product's 0.15) that connect to a kept region
  join it, as after a round in the widget; the figure with every region
  kept (plain argmax labels) is reported beside it.

Usage::

    python benchmarks/bench_hitl_real.py                          # all cases, k = 0 1 3 10 (~25 min)
    python benchmarks/bench_hitl_real.py --cases lung2 --ks 0 3 --no-scratch
    python benchmarks/bench_hitl_real.py --json .cache/real.json --picture docs/images/hitl_real.png
    python benchmarks/bench_hitl_real.py --ks 3 10 --no-scratch --strategy both --curve docs/images/strategies.png
    python benchmarks/bench_hitl_real.py --ks 1 3 10 --no-scratch --options '{"keep": "last", "patience": null}'

``--strategy suggested`` (the annotate-next issue): rounds of predict ->
correct the most uncertain unreviewed pool slices (the predictor's slice
score and the list's order, :mod:`napari_unet.core.uncertainty`) -> fine-tune
the starting model again on every correction so far, as the widget does
(``--rounds-from last``: the last round's model), with the same seconds per
round; k=3 is rounds of 1+2 slices, k=10 of 1+3+6. The first slice is the user's (where they see the
lesion: the even k=1 slice) unless ``--first list``.

MONAI is needed only for the scratch anchor (``make bench`` installs it;
``--no-scratch`` runs without). The scans are read from ``--data`` (default
``../shared/data/real-tumours`` next to the project) and never copied.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "real-tumours"
CASES = ("brain1", "breast1", "lung2")
TUMOUR = 1


def load_case(data: Path, name: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(image, labels, spacing) of one case, (Z, Y, X), labels 0/1."""
    from napari_unet.io.formats import read_scan

    image = read_scan(data / f"{name}_image.nii.gz")
    labels = read_scan(data / f"{name}_label.nii.gz")
    volume = np.asarray(image.data, dtype=np.float32)
    truth = (np.asarray(labels.data) == TUMOUR).astype(np.int64)
    if volume.shape != truth.shape:
        raise SystemExit(f"{name}: image {volume.shape} and labels {truth.shape} differ")
    return volume, truth, tuple(getattr(image.meta, "spacing", ()) or ())


def split(truth: np.ndarray) -> tuple[int, list[int]]:
    """(first held-out slice, tumour-bearing slices of the pool)."""
    tumour = [int(z) for z in np.flatnonzero(truth.reshape(truth.shape[0], -1).any(axis=1))]
    if not tumour:
        raise SystemExit("a case without tumour cannot be benchmarked")
    median = tumour[len(tumour) // 2]
    return median, [z for z in tumour if z < median]


def choose_slices(k: int, median: int, pool_tumour: list[int]) -> list[int]:
    """k pool slices: spread evenly and centred over the pool's tumour-bearing
    slices; then the tumour-free pool slices nearest to the tumour."""
    if k <= len(pool_tumour):
        n = len(pool_tumour)
        return sorted({pool_tumour[int(round((i + 0.5) * n / k - 0.5))] for i in range(k)})
    chosen = list(pool_tumour)
    centre = float(np.mean(pool_tumour)) if pool_tumour else median - 1
    rest = sorted((z for z in range(median) if z not in chosen), key=lambda z: (abs(z - centre), z))
    chosen += rest[: k - len(chosen)]
    return sorted(chosen)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred == TUMOUR, truth == TUMOUR
    denom = int(p.sum()) + int(t.sum())
    return 2.0 * int((p & t).sum()) / denom if denom else float("nan")


def held_out_dice(model, volume: np.ndarray, truth: np.ndarray, median: int,
                  mask: np.ndarray | None = None, row: dict | None = None) -> tuple[float, float]:
    """(Dice, Dice of every region) of the tumour class over the held-out slices.

    The whole stack is segmented, as a user segments the whole scan after a
    round. The first figure is what the widget shows after a round: tumour
    regions that do not connect in 3D to any pixel the user trusted as
    tumour (``mask`` marks the corrected slices) are left out
    (:mod:`napari_unet.core.postprocess`); the second keeps every region.
    Without corrections (zero-shot) both are the same. With ``row``, the
    connected figure with one missed slice bridged (``keep_connected(...,
    bridge=1)``, an option, off by default) goes into ``row["bridged"]``: the
    same prediction, so the two clean-ups compare without training noise."""
    from napari_unet.core.normalize import intensity_ranges
    from napari_unet.core.predict import PredictOptions, predict_iter, run_to_end

    ranges = intensity_ranges(volume, model.config.input, False)
    options = PredictOptions(device="cpu", return_probabilities=mask is not None, flips=FLIPS)
    result = run_to_end(predict_iter(volume, model, options, intensity_ranges=ranges))
    if row is not None and COMPARE_FLIPS:
        other = replace(options, flips=_other_flips())
        alt = run_to_end(predict_iter(volume, model, other, intensity_ranges=ranges))
        row[f"flips{other.flips}"], row[f"flips{other.flips}_every_region"] = _both(
            alt.labels, truth, median, mask, alt.probabilities)
    return _both(result.labels, truth, median, mask, result.probabilities, row)


#: test-time flips of the headline score (``--flips``; the product's default unless given)
FLIPS = 1
#: also score each round's model with the other flips setting (``--compare-flips``)
COMPARE_FLIPS = False


def _other_flips() -> int:
    """The flips setting ``--compare-flips`` scores beside the headline's."""
    return 4 if FLIPS == 1 else 1


#: the clean-up's widening threshold (``--grow``; the product's default unless given)
GROW = None


def _both(pred: np.ndarray, truth: np.ndarray, median: int, mask: np.ndarray | None,
          probabilities: np.ndarray | None = None, row: dict | None = None) -> tuple[float, float]:
    """(connected, every region); the connected figure also widens the kept
    regions with less certain pixels (``probabilities`` (C,Z,Y,X)) as the
    product does after a round."""
    from napari_unet.core.postprocess import (
        GROW_PROBABILITY,
        grow_candidates,
        keep_connected,
        seeds_from_corrections,
    )

    every = dice(pred[median:], truth[median:])
    if mask is None:
        return every, every
    grow = GROW_PROBABILITY if GROW is None else GROW
    candidates = None
    if probabilities is not None and grow < 0.5:
        candidates = grow_candidates(probabilities, pred, grow)
    seeds = seeds_from_corrections(truth, mask, classes=[TUMOUR])
    if row is not None:
        bridged = pred.copy()
        keep_connected(bridged, seeds, candidates, bridge=1)
        row["bridged"] = dice(bridged[median:], truth[median:])
    keep_connected(pred, seeds, candidates)
    return dice(pred[median:], truth[median:]), every


def train_scratch(volume, truth, mask, base, seconds: float, seed: int):
    """A MONAI BasicUNet trained from scratch on the trusted slices; returns a
    predictor for :func:`held_out_scratch`."""
    import torch
    from monai.networks.nets import BasicUNet

    from napari_unet.core.augment import AugmentConfig
    from napari_unet.core.finetune import (
        CorrectionSampler,
        FinetuneOptions,
        batch_for_crop,
        prepare_corrections,
        round_crop,
    )
    from napari_unet.core.losses import masked_ce_dice_loss

    options = FinetuneOptions(val_fraction=0.0)
    corrections, _ = prepare_corrections(volume, truth, mask, base, options, seed, 1)
    largest = max(max(c.plane.shape[1:]) for c in corrections)
    # the round's crops and batch (an instance-norm net, as ours: crops much
    # smaller than the slice it predicts would handicap it as they did ours)
    crop = round_crop(largest, options.crop_size, 16)  # BasicUNet's divisor
    sampler = CorrectionSampler(corrections, crop, AugmentConfig.light())
    batch = batch_for_crop(options, crop)
    torch.manual_seed(seed)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    net.train()
    start = time.perf_counter()
    steps = 0
    while time.perf_counter() - start < seconds:
        x, y, m = sampler(rng, batch)
        logits = net(torch.from_numpy(x))
        loss = masked_ce_dice_loss(logits, torch.from_numpy(y), torch.from_numpy(m))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    net.eval()
    return net, steps


def held_out_scratch(net, base, volume, truth, median, mask=None, flips: int = 1) -> tuple[float, float]:
    """As :func:`held_out_dice`, for the scratch anchor (the same clean-up)."""
    import torch

    from napari_unet.core.normalize import intensity_ranges, normalize_slice
    from napari_unet.core.predict import (
        PredictOptions,
        PredictProgress,
        mirror_mean,
        predict_planes,
    )

    ranges = intensity_ranges(volume, base.config.input, False)
    planes = (normalize_slice(p, ranges, 1, base.config.input) for p in volume)

    def predictor(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch))
            return mirror_mean(lambda tiles: torch.softmax(net(tiles), dim=1), x, flips).numpy()

    pred = np.zeros(truth.shape, np.uint8)
    probabilities = np.zeros((2, *truth.shape), np.float32)
    options = PredictOptions(tile=256, device="cpu")
    for event in predict_planes(planes, len(pred), pred.shape[1:], predictor, 16, options):
        if not isinstance(event, PredictProgress):
            index, probs = event
            pred[index] = probs.argmax(axis=0)
            probabilities[:, index] = probs
    return _both(pred, truth, median, mask, probabilities)


def run_case(name: str, args, base) -> dict:
    from napari_unet.core.finetune import finetune

    volume, truth, spacing = load_case(args.data, name)
    median, pool_tumour = split(truth)
    print(
        f"{name}: {volume.shape} spacing {spacing}; held out from slice {median} "
        f"({int(truth[median:].sum())} tumour voxels); pool tumour slices {pool_tumour}",
        file=sys.stderr,
    )
    rows = []
    for k in args.ks:
        row: dict = {"k": k}
        if k == 0:
            row["finetuned"], row["every_region"] = held_out_dice(base, volume, truth, median)
            row["scratch"] = None
        else:
            chosen = choose_slices(k, median, pool_tumour)
            mask = np.zeros(truth.shape, bool)
            mask[chosen] = True
            start = time.perf_counter()
            result = finetune(volume, truth, mask, base, max_seconds=args.seconds, device="cpu",
                              seed=args.seed, options=args.finetune_options, return_result=True)
            row.update(
                slices=chosen,
                seconds=round(time.perf_counter() - start, 1),
                steps=result.steps,
                planned=result.train.planned_steps,
                stop=result.stop_reason,
                val_before=result.val_dice_before,
                val_after=result.val_dice_after,
            )
            row["finetuned"], row["every_region"] = held_out_dice(result.model, volume, truth, median, mask, row)
            if args.save_models:
                from napari_unet.core.weights import save_model

                save_model(result.model, args.save_models / f"{name}-k{k}", overwrite=True)
            if args.scratch:
                net, steps = train_scratch(volume, truth, mask, base, row["seconds"], args.seed)
                row["scratch"], row["scratch_every_region"] = held_out_scratch(
                    net, base, volume, truth, median, mask, FLIPS)
                if COMPARE_FLIPS:
                    row[f"scratch_flips{_other_flips()}"], _ = held_out_scratch(
                        net, base, volume, truth, median, mask, _other_flips())
                row["scratch_steps"] = steps
            else:
                row["scratch"] = None
        rows.append(row)
        scratch = "" if row["scratch"] is None else f"  scratch {row['scratch']:.3f}"
        scratch += f"  (every region: {row['every_region']:.3f})" if k else ""
        extra = f" ({row['steps']} steps, {row['seconds']}s, {row['stop']})" if k else ""
        for key in ("flips4", "flips1", "scratch_flips4", "scratch_flips1"):
            if key in row:
                extra += f"  {key} {row[key]:.3f}"
        print(f"  k={k:2d}: fine-tuned {row['finetuned']:.3f}{scratch}{extra}", file=sys.stderr)
    return {"case": name, "shape": list(volume.shape), "held_out_from": median, "rows": rows}


#: slices corrected per round of the ``suggested`` strategy, for each total k
ROUNDS = {1: [1], 3: [1, 2], 10: [1, 3, 6]}


def rounds_for(k: int) -> list[int]:
    """Slices per round for a total of ``k``: the schedule above, or rounds doubling in size."""
    if k in ROUNDS:
        return ROUNDS[k]
    sizes, left, n = [], k, 1
    while left > 0:
        sizes.append(min(n, left))
        left -= sizes[-1]
        n *= 2
    return sizes


def pool_scores(model, volume: np.ndarray, median: int, truth: np.ndarray | None = None,
                reviewed: list[int] = (), near_lesion: bool = True) -> np.ndarray:
    """Per-slice uncertainty of the pool slices (0..median-1), normalised with the whole volume.

    With ``reviewed`` slices (their ``truth`` trusted) and ``near_lesion``,
    the doubt near the corrected lesion ranks first, as the widget's list
    after a round does (``predict(..., corrections=...)``)."""
    from napari_unet.core.normalize import intensity_ranges
    from napari_unet.core.postprocess import seeds_from_corrections
    from napari_unet.core.predict import PredictOptions, predict_iter, run_to_end

    ranges = intensity_ranges(volume, model.config.input, False)
    options = PredictOptions(device="cpu", uncertainty=True)
    seeds = None
    if near_lesion and reviewed and truth is not None:
        mask = np.zeros((median, *volume.shape[1:]), bool)
        mask[[z for z in reviewed if z < median]] = True
        seeds = seeds_from_corrections(truth[:median], mask) or None
    return run_to_end(predict_iter(volume[:median], model, options, intensity_ranges=ranges,
                                   seeds=seeds)).slice_uncertainty


def run_case_suggested(name: str, args, base) -> dict:
    """The ``suggested`` strategy: rounds of predict -> correct the most
    uncertain unreviewed pool slices -> fine-tune (``--rounds-from base``, the
    default: the starting model again on every correction so far, as the
    widget does; ``last``: the last round's model), the same seconds per round.

    With ``--first user`` (the default) the first round's slice is the one
    the user picks, where they see the lesion (the ``even`` k=1 slice), and
    the list suggests the rest; ``--first list`` takes that one from the list
    too (the zero-shot model's doubt, on scans it does not know)."""
    from napari_unet.core.finetune import finetune
    from napari_unet.core.uncertainty import review_order

    volume, truth, _ = load_case(args.data, name)
    median, _ = split(truth)
    rows = []
    for k in [k for k in args.ks if k > 1 or (k == 1 and args.first == "list")]:
        model, reviewed, rounds, start = base, [], [], time.perf_counter()
        for i, size in enumerate(rounds_for(k)):
            if i == 0 and args.first == "user":
                picked = choose_slices(size, median, split(truth)[1])
            else:
                scores = pool_scores(model, volume, median, truth, reviewed, args.near_lesion)
                picked = [z for z, _ in review_order(scores, reviewed, top=size)]
            reviewed += picked
            mask = np.zeros(truth.shape, bool)
            mask[reviewed] = True
            start_from = base if args.rounds_from == "base" else model
            options = args.finetune_options if i == 0 else args.later_options
            result = finetune(volume, truth, mask, start_from, max_seconds=args.seconds, device="cpu",
                              seed=args.seed, options=options, return_result=True)
            model = result.model
            rounds.append({"picked": picked, "tumour_in_picked": int(truth[picked].sum()),
                           "steps": result.steps, "planned": result.train.planned_steps,
                           "stop": result.stop_reason})
        row = {"k": k, "strategy": "suggested", "slices": sorted(reviewed), "rounds": rounds,
               "seconds": round(time.perf_counter() - start, 1),
               "scratch": None}
        row["finetuned"], row["every_region"] = held_out_dice(model, volume, truth, median, mask, row)
        rows.append(row)
        with_tumour = sum(1 for z in reviewed if truth[z].any())
        print(f"  suggested k={k:2d}: fine-tuned {row['finetuned']:.3f} (slices {row['slices']}, "
              f"{with_tumour} with tumour, {len(rounds)} rounds)", file=sys.stderr)
    return {"case": name, "shape": list(volume.shape), "held_out_from": median, "rows": rows}


def table(results: list[dict], ks: list[int]) -> str:
    lines = ["| case | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    means: dict[int, list[float]] = {k: [] for k in ks}
    smeans: dict[int, list[float]] = {k: [] for k in ks}
    for res in results:
        cells = []
        for row in res["rows"]:
            cell = f"{row['finetuned']:.3f}"
            means[row["k"]].append(row["finetuned"])
            if row["scratch"] is not None:
                cell += f" (scratch {row['scratch']:.3f})"
                smeans[row["k"]].append(row["scratch"])
            cells.append(cell)
        lines.append(f"| {res['case']} | " + " | ".join(cells) + " |")
    cells = []
    for k in ks:
        cell = f"**{np.nanmean(means[k]):.3f}**"
        if smeans[k]:
            cell += f" (scratch {np.nanmean(smeans[k]):.3f})"
        cells.append(cell)
    lines.append("| mean | " + " | ".join(cells) + " |")
    every = [np.nanmean([r["every_region"] for res in results for r in res["rows"] if r["k"] == k and "every_region" in r] or [np.nan]) for k in ks]
    lines.append("| mean, every region kept | " + " | ".join(f"{v:.3f}" for v in every) + " |")
    bridged = [[r["bridged"] for res in results for r in res["rows"] if r["k"] == k and "bridged" in r] for k in ks]
    if any(bridged):
        lines.append("| mean, one missed slice bridged | " + " | ".join(
            f"{np.nanmean(v):.3f}" if v else "-" for v in bridged) + " |")
    return "\n".join(lines)


def picture(args, base, path: Path) -> None:
    """A held-out slice of each case: image, truth, zero-shot, fine-tuned (k=3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_unet.core.normalize import intensity_ranges, normalize_slice
    from napari_unet.core.predict import PredictOptions, predict_iter, run_to_end
    from napari_unet.core.weights import load_model

    fig, axes = plt.subplots(len(args.cases), 3, figsize=(9, 3 * len(args.cases)), dpi=100, squeeze=False)
    for row, name in zip(axes, args.cases):
        volume, truth, _ = load_case(args.data, name)
        median, _ = split(truth)
        tumour = np.flatnonzero(truth[median:].reshape(len(truth) - median, -1).any(axis=1))
        z = median + int(tumour[len(tumour) // 2])
        ranges = intensity_ranges(volume, base.config.input, False)
        shown = normalize_slice(volume[z], ranges, 1, base.config.input)[0]
        tuned_dir = args.save_models / f"{name}-k3" if args.save_models else None
        models = [("zero-shot", base)]
        if tuned_dir is not None and tuned_dir.exists():
            models.append(("fine-tuned, k=3", load_model(tuned_dir, "cpu")))
        row[0].imshow(shown, cmap="gray", vmin=0, vmax=1)
        row[0].contour(truth[z], levels=[0.5], colors="lime", linewidths=0.8)
        row[0].set_title(f"{name} slice {z}: truth", fontsize=8)
        for ax, (title, model) in zip(row[1:], models):
            opts = PredictOptions(device="cpu")
            pred = run_to_end(predict_iter(volume[z], model, opts, intensity_ranges=ranges)).labels
            ax.imshow(shown, cmap="gray", vmin=0, vmax=1)
            ax.imshow(np.ma.masked_where(pred != TUMOUR, pred), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
            ax.contour(truth[z], levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_title(f"{title}: Dice {dice(pred, truth[z]):.2f}", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def strategy_curve(even: list[dict], suggested: list[dict], path: Path) -> None:
    """Held-out Dice against corrected slices, per case and the mean, for both strategies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(even) + 1, figsize=(3.2 * (len(even) + 1), 3), dpi=100, squeeze=False)
    curves = {"even": {}, "suggested": {}}
    for label, results in (("even", even), ("suggested", suggested)):
        for ax, res in zip(axes[0], results):
            ks = [r["k"] for r in res["rows"] if r["k"] > 0]
            ds = [r["finetuned"] for r in res["rows"] if r["k"] > 0]
            ax.plot(ks, ds, "o-", label=label)
            ax.set_title(res["case"], fontsize=9)
            for k, d in zip(ks, ds):
                curves[label].setdefault(k, []).append(d)
    for label, per_k in curves.items():
        ks = sorted(per_k)
        axes[0][-1].plot(ks, [float(np.nanmean(per_k[k])) for k in ks], "o-", label=label)
    axes[0][-1].set_title("mean", fontsize=9)
    ticks = sorted(set(curves["even"]) | set(curves["suggested"]))
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("corrected slices (k)", fontsize=8)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("held-out tumour Dice", fontsize=8)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _options(fields: dict) -> dict:
    """``--options`` fields for :class:`FinetuneOptions`; ``"augment"`` is a dict of
    :class:`AugmentConfig` fields changed from the fine-tuning default
    (:meth:`AugmentConfig.light`), e.g. ``{"augment": {"scale_prob": 0.5}}``."""
    import dataclasses

    from napari_unet.core.augment import AugmentConfig

    fields = dict(fields)
    if "augment" in fields:
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(fields["augment"]).items()}
        fields["augment"] = dataclasses.replace(AugmentConfig.light(), **changes)
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of NAME_image/NAME_label.nii.gz")
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 3, 10])
    parser.add_argument("--seconds", type=float, default=None, help="budget per round (default: the library's)")
    parser.add_argument("--model", default=None, help="model to start from (default: the bundled model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", default="{}", metavar="JSON",
                        help='FinetuneOptions fields to change, e.g. \'{"keep": "last", "patience": null}\' '
                             '(augment: a dict of AugmentConfig fields changed from the light preset)')
    parser.add_argument("--no-scratch", dest="scratch", action="store_false", help="skip the MONAI anchor")
    parser.add_argument("--grow", type=float, default=None, metavar="P",
                        help="the clean-up's widening threshold (default: the product's; 0.5: argmax labels only)")
    parser.add_argument("--save-models", type=Path, default=None, help="keep the fine-tuned models here")
    parser.add_argument("--picture", type=Path, default=None, help="write a before/after picture (k=3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--strategy", choices=("even", "suggested", "both"), default="even",
                        help="which slices are corrected: even (spread over the pool's tumour slices), "
                             "suggested (rounds on the most uncertain pool slices), or both")
    parser.add_argument("--plain-scores", dest="near_lesion", action="store_false",
                        help="suggested: rank by the plain slice score, not the doubt near the corrected lesion first")
    parser.add_argument("--first", choices=("user", "list"), default="user",
                        help="suggested strategy: the first slice is the user's (the even k=1 slice) or the list's")
    parser.add_argument("--rounds-from", choices=("last", "base"), default="base",
                        help="suggested strategy: each round starts again from the starting model with every "
                             "correction so far (as the widget does since 0.9.4), or continues the last round's model")
    parser.add_argument("--later-options", default=None, metavar="JSON",
                        help="suggested strategy: FinetuneOptions fields for the rounds after the first, "
                             "over --options (e.g. '{\"lr\": 3e-4}': a gentler continuing round)")
    parser.add_argument("--flips", type=int, choices=(1, 4), default=None,
                        help="test-time flips of every held-out prediction (default: the product's)")
    parser.add_argument("--compare-flips", action="store_true",
                        help="also score each round with the other --flips setting (same models)")
    parser.add_argument("--curve", type=Path, default=None,
                        help="with --strategy both: write a plot of Dice against corrected slices")
    args = parser.parse_args(argv)
    global GROW, FLIPS, COMPARE_FLIPS
    GROW = args.grow
    from napari_unet.core.predict import PredictOptions

    FLIPS = args.flips or PredictOptions().flips
    COMPARE_FLIPS = args.compare_flips
    if not args.data.is_dir():
        print(f"no real scans at {args.data} (pass --data DIR)", file=sys.stderr)
        return 2
    import torch

    from napari_unet.core.finetune import CPU_SECONDS
    from napari_unet.core.weights import load_model

    args.seconds = args.seconds or CPU_SECONDS
    from napari_unet.core.finetune import FinetuneOptions

    try:
        args.finetune_options = FinetuneOptions(**_options(json.loads(args.options)))
    except (ValueError, TypeError) as exc:
        print(f"--options: {exc}", file=sys.stderr)
        return 2
    try:
        later = {**json.loads(args.options), **json.loads(args.later_options or "{}")}
        args.later_options = FinetuneOptions(**_options(later))
    except (ValueError, TypeError) as exc:
        print(f"--later-options: {exc}", file=sys.stderr)
        return 2
    if args.picture and args.save_models is None:
        args.save_models = ROOT / ".cache" / "bench_hitl_real_models"
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # first-use import cost, not timed
    base = load_model(args.model, "cpu")
    print(f"model {base.config.name}; budget {args.seconds:g} s; torch threads {torch.get_num_threads()}",
          file=sys.stderr)
    results, suggested = [], []
    for name in args.cases:
        if args.strategy in ("even", "both"):
            results.append(run_case(name, args, base))
        if args.strategy in ("suggested", "both"):
            suggested.append(run_case_suggested(name, args, base))
    if results:
        print("even:\n" + table(results, args.ks))
    if suggested:
        print("suggested:\n" + table(suggested, sorted({r["k"] for res in suggested for r in res["rows"]})))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model": base.config.name, "seconds": args.seconds, "options": json.loads(args.options),
                   "rounds_from": args.rounds_from,
                   "cases": results, "suggested": suggested}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    if args.curve and results and suggested:
        strategy_curve(results, suggested, args.curve)
        print(f"wrote {args.curve}", file=sys.stderr)
    if args.picture:
        picture(args, base, args.picture)
        print(f"wrote {args.picture}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
