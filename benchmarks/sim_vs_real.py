"""How the simulator's CT and MRI compare with the shared real tumour scans.

    python benchmarks/sim_vs_real.py --per-modality 120 --json .cache/sim_vs_real.json \
        --picture docs/images/sim_vs_real.png

For every real case (each tumour-bearing slice) and for simulated CT and MRI
slices (256 px, augmentation off, at least one lesion), after the product's
own normalisation (``normalization: auto``, as the bundled model reads them):

* the histogram of normalised intensities inside the body;
* lesion size: the equivalent diameter of each connected lesion, as a
  fraction of the slice's shorter side (pixel sizes differ);
* lesion contrast: (lesion mean - mean of a 2-8 px ring around it) over the
  ring's standard deviation, signed (negative: darker than its surroundings).

The real scans are a reference, never training data. Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "real-tumours"
REAL = {"brain1": "mri", "breast1": "mri", "lung2": "ct"}


def lesion_stats(image: np.ndarray, lesion: np.ndarray) -> list[tuple[float, float]]:
    """(diameter fraction, contrast in ring-std units) of each connected lesion of a 2D slice."""
    out = []
    components, n = ndimage.label(lesion)
    side = min(image.shape)
    for i in range(1, n + 1):
        m = components == i
        if m.sum() < 4:
            continue
        ring = ndimage.binary_dilation(m, iterations=8) & ~ndimage.binary_dilation(m, iterations=2) & ~lesion
        if ring.sum() < 8:
            continue
        contrast = (image[m].mean() - image[ring].mean()) / max(image[ring].std(), 1e-6)
        out.append((2 * np.sqrt(m.sum() / np.pi) / side, float(contrast)))
    return out


def normalised_volume(volume: np.ndarray, input_config) -> np.ndarray:
    from napari_unet.core.normalize import intensity_ranges, normalize_slice

    ranges = intensity_ranges(volume, input_config, False)
    return np.stack([normalize_slice(plane, ranges, 1, input_config)[0] for plane in volume])


def real_stats(data: Path, input_config) -> dict:
    from napari_unet.io.formats import read_scan

    stats = {}
    for name, modality in REAL.items():
        volume = np.asarray(read_scan(data / f"{name}_image.nii.gz").data, np.float32)
        truth = np.asarray(read_scan(data / f"{name}_label.nii.gz").data) == 1
        norm = normalised_volume(volume, input_config)
        lesions, values = [], []
        for z in np.flatnonzero(truth.reshape(len(truth), -1).any(axis=1)):
            lesions += lesion_stats(norm[z], truth[z])
            values.append(norm[z][norm[z] > 0.02])
        stats[name] = {"modality": modality, "lesions": lesions, "values": np.concatenate(values)}
    return stats


def sim_stats(modality: str, count: int, seed: int, input_config) -> dict:
    from napari_unet.core.normalize import intensity_ranges, normalize_slice
    from napari_unet.core.simulate import TUMOR, SimulatorConfig, simulate_scan

    config = SimulatorConfig(augment=False, tumor_probability=1.0)
    rng = np.random.default_rng(seed)
    lesions, values = [], []
    for _ in range(count):
        image, labels = simulate_scan(rng, (256, 256), modality, config=config)
        ranges = intensity_ranges(image, input_config, False)
        norm = normalize_slice(image, ranges, 1, input_config)[0]
        lesions += lesion_stats(norm, labels == TUMOR)
        values.append(norm[norm > 0.02][::7])
    return {"modality": modality, "lesions": lesions, "values": np.concatenate(values)}


def summary(entry: dict) -> dict:
    lesions = np.array(entry["lesions"]) if entry["lesions"] else np.zeros((0, 2))
    pct = (10, 50, 90)
    return {
        "modality": entry["modality"],
        "lesions": int(len(lesions)),
        "diameter_fraction_p10_p50_p90": [round(float(v), 3) for v in np.percentile(lesions[:, 0], pct)]
        if len(lesions) else None,
        "contrast_p10_p50_p90": [round(float(v), 2) for v in np.percentile(lesions[:, 1], pct)]
        if len(lesions) else None,
        "intensity_p10_p50_p90": [round(float(v), 3) for v in np.percentile(entry["values"], pct)],
    }


def picture(stats: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3), dpi=100)
    for name, entry in stats.items():
        style = "-" if name.startswith("sim") else "--"
        hist, edges = np.histogram(np.clip(entry["values"], 0, 2), bins=60, range=(0, 2), density=True)
        axes[0].plot((edges[1:] + edges[:-1]) / 2, hist, style, label=name)
        lesions = np.array(entry["lesions"])
        if len(lesions):
            marker = "." if name.startswith("sim") else "o"
            axes[1].scatter(lesions[:, 0], lesions[:, 1], s=8 if marker == "." else 30, marker=marker, label=name,
                            alpha=0.6)
    axes[0].set_title("normalised intensity inside the body", fontsize=9)
    axes[1].set_title("lesions: size and contrast", fontsize=9)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("equivalent diameter / shorter side", fontsize=8)
    axes[1].set_ylabel("(lesion - ring) / ring std", fontsize=8)
    axes[1].axhline(0, color="grey", lw=0.5)
    axes[1].set_ylim(-12, 16)  # a lesion on a flat (clipped) background has a huge ratio
    for ax in axes[:2]:
        ax.legend(fontsize=7)
    rows = [[n, summary(e)["contrast_p10_p50_p90"], summary(e)["diameter_fraction_p10_p50_p90"]]
            for n, e in stats.items()]
    axes[2].axis("off")
    axes[2].table(cellText=[[r[0], str(r[1]), str(r[2])] for r in rows],
                  colLabels=["", "contrast p10/50/90", "diameter p10/50/90"], loc="center", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--per-modality", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--picture", type=Path, default=None)
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"no real scans at {args.data} (pass --data DIR)", file=sys.stderr)
        return 2
    from napari_unet.core.config import InputConfig

    input_config = InputConfig(normalization="auto")
    stats = {f"sim {m}": sim_stats(m, args.per_modality, args.seed, input_config) for m in ("ct", "mri")}
    stats.update(real_stats(args.data, input_config))
    table = {name: summary(entry) for name, entry in stats.items()}
    for name, row in table.items():
        print(f"{name:8s} {row}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    if args.picture:
        picture(stats, args.picture)
        print(f"wrote {args.picture}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
