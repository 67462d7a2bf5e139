"""Display windows for CT scans in Hounsfield units (pure NumPy; no Qt, no napari).

A CT opened with min-max contrast spans air to bone (about -1000..+1800 HU),
so soft tissue and lesions are one grey. :func:`ct_display` tells a CT in HU
from other grey scans with the same test the predictor's ``ct`` normalisation
uses (:func:`napari_unet.core.normalize.looks_like_ct`) and returns the
soft-tissue window to open it with, plus the usual presets for the GUI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet.core.normalize import looks_like_ct

#: Radiology windows as (width, level) in HU, in the order the GUI offers them.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft tissue": (400.0, 40.0),
    "liver": (150.0, 60.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
}
#: The window a CT opens with.
DEFAULT_CT_WINDOW = "soft tissue"
#: Planes and voxels per plane read to decide (bounded, so opening a lazy volume stays cheap).
SAMPLE_PLANES = 9
SAMPLE_PLANE_VOXELS = 256 * 256


def window_limits(width: float, level: float) -> tuple[float, float]:
    """Contrast limits ``(level - width / 2, level + width / 2)`` of a window."""
    return (float(level) - float(width) / 2.0, float(level) + float(width) / 2.0)


def sample_values(data: Any, spatial_ndim: int) -> np.ndarray:
    """A bounded strided sample of a grey scan as float32 (NumPy, memmap, zarr or dask).

    Leading (time/channel) axes are sampled at index 0; of a 3D volume at most
    :data:`SAMPLE_PLANES` evenly spaced planes are read, each with a stride
    that keeps about :data:`SAMPLE_PLANE_VOXELS` of its voxels."""
    shape = tuple(int(s) for s in data.shape)
    lead = len(shape) - spatial_ndim
    if lead < 0 or spatial_ndim < 2 or 0 in shape:
        return np.empty(0, np.float32)
    prefix: tuple[Any, ...] = (0,) * lead
    ny, nx = shape[-2:]
    stride = max(1, int(np.ceil(np.sqrt(ny * nx / SAMPLE_PLANE_VOXELS))))
    plane_index = (slice(None, None, stride), slice(None, None, stride))
    if spatial_ndim == 2:
        indices = [prefix + plane_index]
    else:
        depth = shape[lead]
        planes = sorted({int(round(z)) for z in np.linspace(0, depth - 1, min(depth, SAMPLE_PLANES))})
        extra = (0,) * (spatial_ndim - 3)  # a 4D spatial layout is not expected; stay safe
        indices = [prefix + (z,) + extra + plane_index for z in planes]
    return np.concatenate([np.asarray(data[i], dtype=np.float32).ravel() for i in indices])


def ct_display(data: Any, spatial_ndim: int, rgb: bool = False) -> dict[str, Any] | None:
    """How to display ``data`` if it is a CT in Hounsfield units, else ``None``.

    Returns ``{"contrast_limits": (lo, hi), "window": name, "ct_windows": {name:
    {"width", "level", "contrast_limits"}}, "contrast_range": (lo, hi)}``: the
    soft-tissue window (W400/L40 = -160..240 HU) to open with, every preset of
    :data:`CT_WINDOWS` for the GUI to offer, and the slider range that holds
    the data and all presets. A scan is HU when it is grey,
    its 1st percentile is below -500 (air) and its 99th below 3500."""
    if rgb:
        return None
    values = sample_values(data, spatial_ndim)
    if values.size == 0 or not looks_like_ct(values):
        return None
    presets = {
        name: {"width": width, "level": level, "contrast_limits": window_limits(width, level)}
        for name, (width, level) in CT_WINDOWS.items()
    }
    lows = [p["contrast_limits"][0] for p in presets.values()]
    highs = [p["contrast_limits"][1] for p in presets.values()]
    finite = values[np.isfinite(values)]
    return {
        "contrast_limits": presets[DEFAULT_CT_WINDOW]["contrast_limits"],
        "window": DEFAULT_CT_WINDOW,
        "ct_windows": presets,
        # the slider's extent: the data and every preset (napari would shrink it to the window)
        "contrast_range": (min(float(finite.min()), *lows), max(float(finite.max()), *highs)),
    }
