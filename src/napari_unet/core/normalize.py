"""Robust intensity normalisation and channel handling."""

from __future__ import annotations

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


def percentile_range(array, input_config: InputConfig, rgb: bool) -> np.ndarray:
    """Low/high percentiles per channel, shape (C, 2), from at most
    ``MAX_STATS_SAMPLES`` values. Works on NumPy, memory-mapped and dask arrays."""
    channels = array.shape[-1] if rgb else 1
    total = int(np.prod(array.shape)) // channels
    stride = max(1, int(np.ceil((total / MAX_STATS_SAMPLES) ** (1 / max(1, array.ndim - (1 if rgb else 0))))))
    spatial_ndim = array.ndim - (1 if rgb else 0)
    index = tuple(slice(None, None, stride) for _ in range(spatial_ndim))
    sample = np.asarray(array[index], dtype=np.float32)
    sample = sample.reshape(-1, channels)
    q = [input_config.low_percentile, input_config.high_percentile]
    out = np.empty((channels, 2), dtype=np.float32)
    for c in range(channels):
        finite = sample[:, c][np.isfinite(sample[:, c])]
        if finite.size == 0:
            out[c] = (0.0, 1.0)
            continue
        lo, hi = np.percentile(finite, q)
        if hi - lo < 1e-6:  # flat image: fall back to its full range
            lo, hi = float(finite.min()), float(finite.max())
        if hi - lo < 1e-6:
            hi = lo + 1.0
        out[c] = (lo, hi)
    return out


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
    # keep outliers (a bright lesion beyond the 99.5th percentile) but bound them
    np.clip(data, -1.0, 2.0, out=data)
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
