"""Batch samplers for the training engine: the simulator and folders of pairs.

Both produce what :func:`napari_unet.core.train.train_iter` asks for:
``sample_batch(rng, n) -> (x (N,C,H,W) float32, y (N,H,W) int64, mask (N,H,W) float32)``
with images normalised exactly as the predictor normalises them
(:mod:`napari_unet.core.normalize`), so training and inference see the same
input scale.

* :class:`SimulatedBatches` draws from :func:`napari_unet.core.simulate.simulate_scan`
  through a pool: each batch generates a few fresh scans and reuses pooled ones
  under a random flip/rotation, so the CPU spends most of its time training.
* :class:`FolderBatches` crops patches from a folder of pairs laid out as
  ``DIR/images/<name>.<ext>`` + ``DIR/labels/<name>.<ext>`` (TIFF, PNG/JPEG,
  NPY; 2D, RGB or 3D stacks, whose Z slices are sampled as 2D images).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import InputConfig, ModelConfig
from .normalize import intensity_ranges, normalize_slice
from .simulate import SimulatorConfig, simulate_scan

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]

#: File name endings a folder of pairs may use.
PAIR_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".nii", ".nii.gz")


class DatasetError(ValueError):
    """A training folder that cannot be used; the message names the file and says why."""


def normalize_image(image: np.ndarray, input_config: InputConfig, in_channels: int, rgb: bool | None = None) -> np.ndarray:
    """A 2D image (H,W) or (H,W,3) -> float32 (C,H,W), as the predictor normalises it."""
    is_rgb = image.ndim == 3 and image.shape[-1] == 3 if rgb is None else rgb
    ranges = intensity_ranges(image, input_config, is_rgb)
    return normalize_slice(image, ranges, in_channels, input_config)


def _dihedral(x: np.ndarray, y: np.ndarray, code: int) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 flips/rotations of (C,H,W) and (H,W), chosen by ``code`` 0..7."""
    if code & 4:
        x, y = x[:, :, ::-1], y[:, ::-1]
    k = code & 3
    if k:
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
    return x, y


def _seeded(seed: int, stream: int) -> np.random.Generator:
    """An independent generator for ``(seed, stream)``: streams never overlap."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(stream,)))


#: Stream ids of :func:`_seeded`: training draws from the engine's own
#: generator; validation and the held-out test set use these disjoint streams.
VALIDATION_STREAM = 1
TEST_STREAM = 2


# ------------------------------------------------------------------ simulator
class SimulatedBatches:
    """``sample_batch`` over simulated scans, with a pool that is refreshed as it goes.

    Every call generates ``fresh`` new scans (more while the pool fills up),
    stores them normalised, and returns ``n`` pool entries under a random flip
    or 90-degree rotation. With ``fresh = n`` every sample is new; smaller
    values trade variety for speed (generation costs ~20-40 ms per 256x256 scan).
    Everything is drawn from the ``rng`` the engine passes, so a run is
    reproducible from its seed.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        size: tuple[int, int] = (256, 256),
        pool_size: int = 256,
        fresh: int = 2,
        modalities: Sequence[str] | None = None,
        sim_config: SimulatorConfig | None = None,
        canvas_scales: Sequence[tuple[float, float]] | None = None,
    ) -> None:
        divisor = model_config.architecture.divisor
        if size[0] % divisor or size[1] % divisor:
            raise ValueError(f"patch size {size} must be a multiple of {divisor} for this model")
        self.model_config = model_config
        self.size = (int(size[0]), int(size[1]))
        self.pool_size = max(1, int(pool_size))
        self.fresh = max(1, int(fresh))
        self.modalities = tuple(modalities) if modalities else None
        self.sim_config = sim_config or SimulatorConfig()
        self.canvas_scales = tuple(canvas_scales) if canvas_scales else None
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._next = 0
        self.generated = 0

    def _generate(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        modality = None if self.modalities is None else self.modalities[rng.integers(len(self.modalities))]
        canvas = 1.0
        if self.canvas_scales:
            weights = np.array([w for _, w in self.canvas_scales], float)
            canvas = self.canvas_scales[int(rng.choice(len(weights), p=weights / weights.sum()))][0]
        return simulated_sample(rng, self.model_config, self.size, modality, self.sim_config, canvas=canvas)

    def _add(self, x: np.ndarray, y: np.ndarray) -> None:
        if len(self._x) < self.pool_size:
            self._x.append(x)
            self._y.append(y)
        else:
            self._x[self._next] = x
            self._y[self._next] = y
            self._next = (self._next + 1) % self.pool_size
        self.generated += 1

    def __call__(self, rng: np.random.Generator, n: int) -> Batch:
        count = max(self.fresh, min(n, self.pool_size) - len(self._x))
        for _ in range(count):
            self._add(*self._generate(rng))
        xs, ys = [], []
        for i in rng.integers(0, len(self._x), size=n):
            x, y = _dihedral(self._x[i], self._y[i], int(rng.integers(8)))
            xs.append(x)
            ys.append(y)
        x = np.ascontiguousarray(np.stack(xs), dtype=np.float32)
        y = np.ascontiguousarray(np.stack(ys), dtype=np.int64)
        return x, y, np.ones(y.shape, np.float32)


def simulated_sample(
    rng: np.random.Generator | int,
    model_config: ModelConfig,
    size: tuple[int, int] = (256, 256),
    modality: str | None = None,
    sim_config: SimulatorConfig | None = None,
    canvas: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One simulated scan, normalised for ``model_config``: (C,H,W) float32, (H,W) uint8.

    ``canvas > 1`` simulates a scan ``canvas`` times larger (the same anatomy
    at a finer pixel size, as in a 512 px CT slice or a 1400 px fundus photo),
    normalises it whole, as the predictor does, and returns a ``size`` crop of
    it: centred on a labelled pixel half of the time, anywhere otherwise.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    full = size if canvas <= 1.0 else tuple(int(round(n * canvas)) for n in size)
    image, labels = simulate_scan(rng, full, modality, config=sim_config)
    x = normalize_image(image, model_config.input, model_config.architecture.in_channels)
    if full != tuple(size):
        h, w = size
        fg = np.flatnonzero(labels.ravel())
        if fg.size and rng.random() < 0.5:
            i = fg[rng.integers(fg.size)]
            cy, cx = divmod(int(i), full[1])
            y0 = int(np.clip(cy - h // 2 + rng.integers(-h // 4, h // 4 + 1), 0, full[0] - h))
            x0 = int(np.clip(cx - w // 2 + rng.integers(-w // 4, w // 4 + 1), 0, full[1] - w))
        else:
            y0, x0 = int(rng.integers(full[0] - h + 1)), int(rng.integers(full[1] - w + 1))
        x = np.ascontiguousarray(x[:, y0 : y0 + h, x0 : x0 + w])
        labels = np.ascontiguousarray(labels[y0 : y0 + h, x0 : x0 + w])
    return x.astype(np.float32, copy=False), labels


def simulated_batches(
    seed: int,
    model_config: ModelConfig,
    count: int,
    size: tuple[int, int] = (256, 256),
    batch_size: int = 8,
    stream: int = VALIDATION_STREAM,
    modality: str | None = None,
    sim_config: SimulatorConfig | None = None,
) -> list[Batch]:
    """A fixed list of ``count`` simulated samples in batches (validation or test sets).

    Drawn from the stream ``(seed, stream)``, which never overlaps the
    training stream ``numpy.random.default_rng(seed)`` the engine uses.
    """
    rng = _seeded(seed, stream)
    batches: list[Batch] = []
    xs, ys = [], []
    for i in range(count):
        x, y = simulated_sample(rng, model_config, size, modality, sim_config)
        xs.append(x)
        ys.append(y.astype(np.int64))
        if len(xs) == batch_size or i == count - 1:
            y_arr = np.stack(ys)
            batches.append((np.stack(xs), y_arr, np.ones(y_arr.shape, np.float32)))
            xs, ys = [], []
    return batches


# ------------------------------------------------------------- folder of pairs
@dataclass(frozen=True)
class Pair:
    """One training image and its label file."""

    name: str
    image: Path
    labels: Path


def _stem(path: Path) -> str | None:
    lower = path.name.lower()
    for suffix in sorted(PAIR_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def find_pairs(folder: str | os.PathLike) -> list[Pair]:
    """Pairs in ``folder/images`` and ``folder/labels`` matched by file name
    without extension (``a.tif`` pairs with ``a.png``), sorted by name.

    Raises :class:`DatasetError` if a sub-folder is missing, nothing pairs
    up, or an image has no label file (the message names it).
    """
    folder = Path(folder)
    images_dir, labels_dir = folder / "images", folder / "labels"
    for sub in (images_dir, labels_dir):
        if not sub.is_dir():
            raise DatasetError(
                f"{folder}: expected sub-folders images/ and labels/ (missing {sub.name}/); "
                "put images/<name>.tif next to labels/<name>.tif"
            )

    def index(sub: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in sorted(sub.iterdir()):
            stem = _stem(path)
            if stem is None or path.name.startswith("."):
                continue
            if stem in found:
                raise DatasetError(f"{sub}: two files named {stem!r} ({found[stem].name}, {path.name})")
            found[stem] = path
        return found

    images, labels = index(images_dir), index(labels_dir)
    if not images:
        raise DatasetError(f"{images_dir}: no images ({', '.join(PAIR_SUFFIXES)})")
    missing = sorted(set(images) - set(labels))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DatasetError(f"{images[missing[0]]}: no label file labels/{missing[0]}.* found{more}")
    return [Pair(name, images[name], labels[name]) for name in sorted(images)]


def split_pairs(pairs: Sequence[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A fixed split into (train, validation) by name, from ``seed``.

    At least one pair stays for training; with ``val_fraction > 0`` and two or
    more pairs at least one is held out.
    """
    pairs = sorted(pairs, key=lambda p: p.name)
    if val_fraction <= 0 or len(pairs) < 2:
        return list(pairs), []
    count = min(len(pairs) - 1, max(1, round(val_fraction * len(pairs))))
    order = _seeded(seed, 3).permutation(len(pairs))
    held = set(order[:count].tolist())
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


@dataclass
class LoadedPair:
    """A pair in memory: normalised planes (Z,C,H,W) and labels (Z,H,W)."""

    name: str
    x: np.ndarray
    y: np.ndarray


def load_pair(pair: Pair, model_config: ModelConfig, foreground_class: int | None = None) -> LoadedPair:
    """Read and check a pair; normalise the image as the predictor would.

    Accepts 2D grey (H,W), RGB (H,W,3) and stacks (Z,H,W) / (Z,H,W,3) with
    labels of the matching spatial shape. ``foreground_class`` maps every
    non-zero label to that class id (binary masks saved as 0/1 or 0/255,
    e.g. vessel or tumor masks of public datasets). Raises
    :class:`DatasetError` naming the file for unreadable files, mismatched
    shapes or unknown class ids.
    """
    from napari_unet.io import IOErrorMessage, read_scan

    try:
        image_scan = read_scan(pair.image)
        label_scan = read_scan(pair.labels)
    except (IOErrorMessage, OSError, ValueError) as exc:
        raise DatasetError(f"{pair.name}: {exc}") from exc
    image = np.asarray(image_scan.data)
    labels = np.asarray(label_scan.data)
    rgb = bool(image_scan.rgb) or (image.ndim in (3, 4) and image.shape[-1] == 3 and labels.shape == image.shape[:-1])
    spatial = image.shape[:-1] if rgb else image.shape
    if labels.ndim == len(spatial) + 1 and labels.shape[-1] in (3, 4) and labels.shape[:-1] == spatial:
        # a label PNG saved as colour: accept it only if every channel is equal
        if not (labels[..., :1] == labels[..., :3]).all():
            raise DatasetError(f"{pair.labels}: labels must be one integer per pixel, got a colour image")
        labels = labels[..., 0]
    if labels.shape != spatial:
        raise DatasetError(
            f"{pair.labels}: label shape {labels.shape} does not match image {pair.image.name} "
            f"(spatial shape {spatial})"
        )
    if len(spatial) not in (2, 3):
        raise DatasetError(f"{pair.image}: expected a 2D image or a 3D stack, got shape {image.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):
            raise DatasetError(f"{pair.labels}: labels must be integers, got {labels.dtype} with fractions")
    labels = labels.astype(np.int64)
    if foreground_class is not None:
        labels = np.where(labels != 0, foreground_class, 0)
    k = model_config.architecture.num_classes
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise DatasetError(
            f"{pair.labels}: class ids must be 0..{k - 1} for this model, found {lo}..{hi} "
            "(a binary mask saved as 0/255? pass foreground_class / --foreground-class)"
        )
    arch = model_config.architecture
    ranges = intensity_ranges(image, model_config.input, rgb)
    planes = [image] if len(spatial) == 2 else list(image)
    x = np.stack([normalize_slice(p, ranges, arch.in_channels, model_config.input) for p in planes])
    y = labels[None] if len(spatial) == 2 else labels
    return LoadedPair(pair.name, x.astype(np.float32), y)


def _pad_to(x: np.ndarray, y: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ph, pw = max(0, size[0] - y.shape[0]), max(0, size[1] - y.shape[1])
    if ph == 0 and pw == 0:
        return x, y, m
    x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(y.shape) > max(ph, pw) else "edge")
    y = np.pad(y, ((0, ph), (0, pw)))
    m = np.pad(m, ((0, ph), (0, pw)))  # padding is untrusted
    return x, y, m


class FolderBatches:
    """``sample_batch`` that crops random ``size`` patches from loaded pairs.

    Slices are picked in proportion to their area; patches with foreground are
    preferred with probability ``foreground_bias`` (so sparse classes are seen
    often). Padding of images smaller than the patch is masked out. Each
    patch then passes through :func:`napari_unet.core.augment.augment_sample`
    with ``augment`` (heavy by default when training from scratch).
    """

    def __init__(
        self,
        pairs: Sequence[LoadedPair],
        size: tuple[int, int] = (256, 256),
        augment=None,
        foreground_bias: float = 0.5,
    ) -> None:
        if not pairs:
            raise DatasetError("no training pairs")
        self.pairs = list(pairs)
        self.size = (int(size[0]), int(size[1]))
        self.augment = augment
        self.foreground_bias = foreground_bias
        self._slices = [(i, z) for i, p in enumerate(self.pairs) for z in range(p.y.shape[0])]
        areas = np.array([self.pairs[i].y[z].size for i, z in self._slices], dtype=np.float64)
        self._weights = areas / areas.sum()

    def _crop(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i, z = self._slices[rng.choice(len(self._slices), p=self._weights)]
        x, y = self.pairs[i].x[z], self.pairs[i].y[z]
        h, w = y.shape
        th, tw = self.size
        if rng.random() < self.foreground_bias and (y > 0).any():
            fy, fx = np.nonzero(y > 0)
            j = rng.integers(fy.size)
            y0 = int(np.clip(fy[j] - th // 2 + rng.integers(-th // 4, th // 4 + 1), 0, max(0, h - th)))
            x0 = int(np.clip(fx[j] - tw // 2 + rng.integers(-tw // 4, tw // 4 + 1), 0, max(0, w - tw)))
        else:
            y0 = int(rng.integers(0, max(0, h - th) + 1))
            x0 = int(rng.integers(0, max(0, w - tw) + 1))
        xc = x[:, y0 : y0 + th, x0 : x0 + tw]
        yc = y[y0 : y0 + th, x0 : x0 + tw]
        return _pad_to(xc, yc, np.ones(yc.shape, np.float32), self.size)

    def __call__(self, rng: np.random.Generator, n: int) -> Batch:
        from .augment import augment_sample

        xs, ys, ms = [], [], []
        for _ in range(n):
            x, y, m = self._crop(rng)
            if self.augment is not None:
                x, y, m = augment_sample(np.ascontiguousarray(x), np.ascontiguousarray(y), m, rng, self.augment)
            xs.append(x)
            ys.append(y)
            ms.append(m)
        return (
            np.ascontiguousarray(np.stack(xs), dtype=np.float32),
            np.ascontiguousarray(np.stack(ys), dtype=np.int64),
            np.ascontiguousarray(np.stack(ms), dtype=np.float32),
        )


def folder_validation(pairs: Sequence[LoadedPair], divisor: int, max_size: int = 512) -> list[Batch]:
    """Fixed validation batches: every slice, centre-cropped to ``max_size``
    and padded (untrusted) up to a multiple of ``divisor``; one slice per batch."""
    batches: list[Batch] = []
    for pair in pairs:
        for z in range(pair.y.shape[0]):
            x, y = pair.x[z], pair.y[z]
            h, w = y.shape
            ch, cw = min(h, max_size), min(w, max_size)
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            x, y = x[:, y0 : y0 + ch, x0 : x0 + cw], y[y0 : y0 + ch, x0 : x0 + cw]
            target = (math.ceil(ch / divisor) * divisor, math.ceil(cw / divisor) * divisor)
            x, y, m = _pad_to(x, y, np.ones(y.shape, np.float32), target)
            batches.append((x[None].astype(np.float32), y[None].astype(np.int64), m[None]))
    return batches
