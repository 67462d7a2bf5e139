"""Evaluate a model (default: the bundled one) on held-out simulated scans and
the real retina photo that scikit-image ships.

    python benchmarks/eval_bundled.py --per-modality 25 --seed 0 \
        --json .cache/eval_bundled.json --pictures docs/images

* Held-out simulated set: ``--per-modality`` scans of each modality (256x256,
  every scan with at least one lesion and one vessel tree, augmentation on)
  drawn from the stream ``SeedSequence(seed, spawn_key=(2,))``, which the
  training (``default_rng(seed)``) and validation (``spawn_key=(1,)``)
  streams never touch. Dice per class is computed from one confusion matrix
  per modality and one over everything (so large scans do not dominate less
  than small ones). Predicted through the product's own path
  (:func:`napari_unet.core.predict.predict`, float32, CPU).
* "Hard" sets: thick low-contrast vessels, small lesions, and no
  augmentation, to show where the model is weak.
* The plugin's ``lesion_scan`` sample (a separate generator; 3D Dice), printed
  and in the JSON as ``lesion_scan_sample``.
* Real labelled images: none of the installed packages ships a medical image
  with a segmentation (scikit-image's ``microaneurysms`` and ``retina`` have
  no labels), so there is no real-image Dice; the retina photo is evaluated
  by eye from the pictures written to ``--pictures``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet.core.datasets import TEST_STREAM, _seeded
from napari_unet.core.metrics import confusion_matrix, dice_from_confusion
from napari_unet.core.predict import predict
from napari_unet.core.simulate import MODALITIES, SimulatorConfig, simulate_scan
from napari_unet.core.weights import load_model

SETS = {
    "standard": SimulatorConfig(tumor_probability=1.0, nerve_probability=1.0),
    "no-augmentation": SimulatorConfig(tumor_probability=1.0, nerve_probability=1.0, augment=False),
    "thick-faint-vessels": SimulatorConfig(tumor_probability=0.0, nerve_probability=1.0,
                                           nerve_width=(8.0, 12.0), contrast=(0.08, 0.2)),
    # lesions 3-10 px across at the usual contrast (only fundus scans keep vessels, faint ones)
    "small-lesions": SimulatorConfig(tumor_probability=1.0, nerve_probability=0.0,
                                     tumor_diameter=(0.012, 0.04), contrast=(0.15, 0.3)),
}


def evaluate_simulated(model, per_modality: int, seed: int, config: SimulatorConfig, size: int = 256) -> dict:
    rng = _seeded(seed, TEST_STREAM)
    results = {}
    total = np.zeros((3, 3), np.int64)
    for modality in MODALITIES:
        matrix = np.zeros((3, 3), np.int64)
        for _ in range(per_modality):
            image, labels = simulate_scan(rng, (size, size), modality, config=config)
            pred = predict(image, model, device="cpu", precision="float32").labels
            matrix += confusion_matrix(pred, labels, 3)
        total += matrix
        results[modality] = _dice(matrix)
    results["all"] = _dice(total)
    return results


def evaluate_sample(model) -> dict:
    """3D Dice on the plugin's ``lesion_scan`` sample (File > Open Sample): a
    separate generator from the training simulator (its own anatomy, bias field
    and Rician noise), so a small check of how the model carries over."""
    from napari_unet._samples import lesion_scan

    image, labels = lesion_scan()
    pred = predict(image, model, device="cpu", precision="float32")
    return {**_dice(confusion_matrix(pred.labels, labels, 3)), "zoom": pred.zoom,
            "tumor_voxels": int((pred.labels == 1).sum()), "tumor_voxels_true": int((labels == 1).sum())}


def _dice(matrix: np.ndarray) -> dict:
    dice = dice_from_confusion(matrix)
    return {"tumor": _num(dice[1]), "nerve": _num(dice[2]), "pixels": int(matrix.sum())}


def _num(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 4)


def retina_pictures(model, out_dir: Path, small_scale: float = 0.35) -> dict:
    """Predict the retina photo at full size (1411 px) and at ``small_scale``;
    write an overview (photo | full-size prediction | small-scale prediction)
    and a full-resolution crop around the optic disc.

    Overlay colours: nerve yellow, tumor blue (the product's red tumor colour
    is invisible on a red fundus).
    """
    from skimage import data
    from skimage.io import imsave
    from skimage.transform import rescale, resize

    image = data.retina()
    colour = {1: np.array([0, 122, 255]), 2: np.array([255, 230, 0])}

    def overlay_of(picture: np.ndarray, labels: np.ndarray) -> np.ndarray:
        out = picture.copy()
        for cls, rgb in colour.items():
            out[labels == cls] = (0.25 * picture[labels == cls] + 0.75 * rgb).astype(np.uint8)
        return out

    report = {}
    start = time.perf_counter()
    full = predict(image, model, device="cpu", precision="float32").labels
    report["seconds_full"] = round(time.perf_counter() - start, 2)
    small_image = (rescale(image, small_scale, channel_axis=-1, anti_aliasing=True) * 255).astype(np.uint8)
    small = predict(small_image, model, device="cpu", precision="float32").labels
    for name, labels, picture in (("full", full, image), (f"scale_{small_scale}", small, small_image)):
        inside = picture.mean(axis=-1) > 20  # the dark frame around the fundus is not retina
        report[name] = {
            "shape": list(picture.shape[:2]),
            "nerve_fraction_of_retina": round(float((labels[inside] == 2).mean()), 4),
            "tumor_fraction_of_retina": round(float((labels[inside] == 1).mean()), 4),
            "tumor_components": int(_components(labels == 1)),
        }
    panel = (706, 706)
    panels = [
        resize(image, panel, anti_aliasing=True),
        resize(overlay_of(image, full), panel, anti_aliasing=True),
        resize(overlay_of(small_image, small), panel, order=0, preserve_range=True) / 255.0,
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    imsave(out_dir / "retina_prediction.png", (np.concatenate(panels, axis=1) * 255).astype(np.uint8),
           check_contrast=False)
    crop = (slice(350, 862), slice(150, 662))  # optic disc and the upper arcade
    small_crop = resize(overlay_of(small_image, small), image.shape[:2], order=0, preserve_range=True)[crop]
    imsave(out_dir / "retina_prediction_crop.png",
           np.concatenate([image[crop], overlay_of(image, full)[crop], small_crop.astype(np.uint8)], axis=1),
           check_contrast=False)
    return report


def simulated_examples(model, seed: int, path: Path, per_modality: int = 2) -> None:
    """A montage of held-out simulated scans: image / truth / prediction."""
    from skimage.io import imsave

    rng = _seeded(seed, TEST_STREAM)
    config = SETS["standard"]
    colours = np.array([[0, 0, 0], [255, 59, 48], [255, 214, 10]], np.uint8)
    columns = []
    for modality in MODALITIES:
        for _ in range(per_modality):
            image, labels = simulate_scan(rng, (256, 256), modality, config=config)
            pred = predict(image, model, device="cpu", precision="float32").labels
            grey = image.mean(axis=-1) if image.ndim == 3 else image
            lo, hi = np.percentile(grey, (1, 99.5))
            grey = (np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
            panel = [np.stack([grey] * 3, -1), colours[labels], colours[pred]]
            columns.append(np.concatenate([np.pad(a, ((2, 2), (2, 2), (0, 0)), constant_values=255)
                                           for a in panel], axis=0))
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, np.concatenate(columns, axis=1), check_contrast=False)


def _components(mask: np.ndarray) -> int:
    from scipy import ndimage

    return ndimage.label(mask)[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or bundled name (default: the bundled default)")
    p.add_argument("--per-modality", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--pictures", type=Path, default=None, help="write retina pictures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    report = {"model": model.name, "provenance": model.config.provenance, "seed": args.seed,
              "per_modality": args.per_modality, "simulated": {}}
    for name in args.sets:
        start = time.perf_counter()
        report["simulated"][name] = evaluate_simulated(model, args.per_modality, args.seed, SETS[name])
        print(f"{name} ({time.perf_counter() - start:.0f}s)", file=sys.stderr)
        print(f"\n{name}: Dice per class ({args.per_modality} scans per modality, seed {args.seed})")
        print("| modality | tumor | nerve |\n|---|---|---|")
        for modality, row in report["simulated"][name].items():
            print(f"| {modality} | {row['tumor']} | {row['nerve']} |")
    report["lesion_scan_sample"] = evaluate_sample(model)
    print(f"\nlesion_scan sample (3D): {report['lesion_scan_sample']}")
    if args.pictures:
        report["retina"] = retina_pictures(model, args.pictures)
        simulated_examples(model, args.seed, args.pictures / "simulated_predictions.png")
        print(f"\nretina photo: {report['retina']}")
    report["real_labelled"] = "none available in the installed packages"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
