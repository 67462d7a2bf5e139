"""Robust intensity normalisation and channel handling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import InputConfig

_LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CHANNEL = {"red": 0, "green": 1, "blue": 2}

#: Largest number of samples used to estimate percentiles; a volume larger than
#: this is sampled with a stride so memory stays bounded.
MAX_STATS_SAMPLES = 4_000_000


def is_rgb(shape: tuple[int, ...], ndim_spatial: int | None = None) -> bool:
    """Whether the last axis is a colour axis (3 channels)."""
    return len(shape) >= 3 and shape[-1] == 3 and (ndim_spatial is None or len(shape) == ndim_spatial + 1)


#: A grey scan is read as CT in Hounsfield units when its 1st percentile is
#: below this (air, lungs, bowel gas or the outside of the field of view) ...
CT_AIR_BELOW = -500.0
#: ... its 99th percentile below this (dense bone and metal stay rarer) ...
CT_TOP_BELOW = 3500.0
#: ... and nothing lies below this (padding values go down to -3024).
CT_FLOOR = -4000.0
#: Bounds of the normalised input (0..1 is the range; outliers kept up to these).
CLIP = (-1.0, 2.0)
#: The same for a CT window: nothing below black.
CT_CLIP = (0.0, 2.0)
#: A grey scan has a dark surround (``body`` mode) when at least this share of
#: its voxels lies in the bottom ``DARK_LEVEL`` of its percentile range.
DARK_SHARE = 0.15
DARK_LEVEL = 0.1


@dataclass(frozen=True)
class Normalization:
    """How one image is mapped to network input: ``ranges`` (C, 2) holds the
    low/high intensity of every channel (mapped to 0/1), or (C, 4) with the
    clip bounds of the mapped values after them (CT); ``kind`` is the mode
    chosen (``ct``, ``body`` or ``percentile``)."""

    kind: str
    ranges: np.ndarray

    def describe(self) -> str:
        lo, hi = (float(v) for v in self.ranges[0, :2])
        if self.kind == "ct":
            return f"CT window {lo:g}..{hi:g} HU"
        if self.kind == "body":
            return f"inside-body percentiles {lo:.4g}..{hi:.4g}"
        return f"percentiles {lo:.4g}..{hi:.4g}" + (" (per channel)" if len(self.ranges) > 1 else "")


def _sample(array, rgb: bool) -> np.ndarray:
    """At most ``MAX_STATS_SAMPLES`` voxels, (N, C) float32, from a strided grid."""
    channels = array.shape[-1] if rgb else 1
    total = int(np.prod(array.shape)) // channels
    spatial_ndim = array.ndim - (1 if rgb else 0)
    stride = max(1, int(np.ceil((total / MAX_STATS_SAMPLES) ** (1 / max(1, spatial_ndim)))))
    index = tuple(slice(None, None, stride) for _ in range(spatial_ndim))
    return np.asarray(array[index], dtype=np.float32).reshape(-1, channels)


def _robust_range(values: np.ndarray, q: tuple[float, float]) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, q))
    if hi - lo < 1e-6:  # flat image: fall back to its full range
        lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-6:
        hi = lo + 1.0
    return lo, hi


def looks_like_ct(values: np.ndarray) -> bool:
    """Whether grey intensities are Hounsfield units: air near -1000 HU is
    present, dense values stay in the CT range, nothing below padding."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or float(finite.min()) < CT_FLOOR:
        return False
    p1, p99 = np.percentile(finite, (1.0, 99.0))
    return bool(p1 < CT_AIR_BELOW and p99 < CT_TOP_BELOW)


def resolve_normalization(array, input_config: InputConfig, rgb: bool) -> Normalization:
    """The normalisation of ``input_config`` for this image (NumPy, memmap,
    zarr or dask; statistics from at most ``MAX_STATS_SAMPLES`` voxels).

    ``auto`` looks at the image only, so the same image gets the same mapping
    in predict and fine-tune, and a fine-tuned model keeps its base's mode.
    """
    sample = _sample(array, rgb)
    q = (input_config.low_percentile, input_config.high_percentile)
    mode = input_config.normalization
    grey = sample.shape[1] == 1
    if mode == "auto":
        mode = "percentile"
        if grey and looks_like_ct(sample[:, 0]):
            mode = "ct"
        elif grey:
            lo, hi = _robust_range(sample[:, 0], q)
            if np.mean(sample[:, 0] <= lo + DARK_LEVEL * (hi - lo)) >= DARK_SHARE:
                mode = "body"
    if mode == "ct":
        # windowed as a radiologist reads it: air and lungs black (0), not
        # below; dense bone and contrast up to 2 (brighter than the window)
        window = np.array([*input_config.ct_window, CT_CLIP[0], CT_CLIP[1]], np.float32)
        return Normalization("ct", np.tile(window, (sample.shape[1], 1)))
    out = np.empty((sample.shape[1], 2), dtype=np.float32)
    for c in range(sample.shape[1]):
        values = sample[:, c]
        if mode == "body":
            lo, hi = _robust_range(values, q)
            inside = values[values > lo + DARK_LEVEL * (hi - lo)]
            if inside.size >= 64:
                values = inside
        out[c] = _robust_range(values, q)
    return Normalization(mode, out)


def intensity_ranges(array, input_config: InputConfig, rgb: bool) -> np.ndarray:
    """Low/high intensity per channel, shape (C, 2) (or (C, 4) with clip bounds), of the normalisation that
    ``input_config`` chooses for this image (:func:`resolve_normalization`)."""
    return resolve_normalization(array, input_config, rgb).ranges


def normalize_slice(
    plane: np.ndarray, ranges: np.ndarray, model_channels: int, input_config: InputConfig
) -> np.ndarray:
    """One 2D plane (Y,X) or (Y,X,3) -> float32 (C,Y,X) scaled with ``ranges``."""
    data = np.asarray(plane, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    else:
        data = np.moveaxis(data, -1, 0)
    lo = ranges[:, 0, None, None]
    hi = ranges[:, 1, None, None]
    data = (data - lo) / (hi - lo)
    np.nan_to_num(data, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    # keep outliers (a bright lesion beyond the 99.5th percentile) but bound
    # them; a CT window (columns 2-3 of ``ranges``) clips air to 0
    low, high = (float(ranges[0, 2]), float(ranges[0, 3])) if ranges.shape[1] >= 4 else CLIP
    np.clip(data, low, high, out=data)
    have = data.shape[0]
    if have == model_channels:
        return data
    if have == 3 and model_channels == 1:
        if input_config.rgb == "luminance":
            return np.tensordot(_LUMINANCE, data, axes=1)[None]
        return data[_CHANNEL[input_config.rgb]][None]
    if have == 1:
        return np.repeat(data, model_channels, axis=0)
    raise ValueError(f"an image with {have} channels cannot feed a model with {model_channels}")
