"""Sliding-window geometry as small pure functions.

The grid of tile origins and the blending weights do not depend on the model,
so they are easy to test on odd shapes (the place where tiling bugs live).
"""

from __future__ import annotations

import functools
import math

import numpy as np


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def tile_size_for(image_size: int, tile: int, divisor: int) -> int:
    """The tile length along one axis: the requested ``tile`` (a multiple of
    ``divisor``), shrunk to the image when the image is smaller."""
    tile = max(divisor, round_up(tile, divisor))
    return min(tile, round_up(image_size, divisor))


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Origins of tiles of length ``tile`` covering ``0..size`` with at least
    ``overlap`` (a fraction of the tile) shared between neighbours.

    The last tile ends exactly at ``size``; tiles are spread evenly, so the
    actual overlap is at least the requested one. ``size <= tile`` gives [0].
    """
    if tile <= 0:
        raise ValueError("tile must be positive")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= tile:
        return [0]
    max_step = max(1, int(tile * (1 - overlap)))
    count = math.ceil((size - tile) / max_step) + 1
    step = (size - tile) / (count - 1)
    return [int(round(i * step)) for i in range(count)]


@functools.lru_cache(maxsize=16)
def blend_weights(tile_shape: tuple[int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian importance map for one tile (float32, max 1, min > 0).

    The centre of a tile sees the most context and is trusted most; the
    borders are down-weighted so seams between tiles vanish when blended.
    """
    axes = []
    for n in tile_shape:
        centre = (n - 1) / 2
        sigma = max(n * sigma_scale, 1e-3)
        profile = np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2)
        # never zero (every pixel needs some weight, also at the image border);
        # the floor is applied per axis so that along an image border, where
        # all tiles are at their edge in one axis, the other axis still decides
        axes.append(np.maximum(profile / profile.max(), 1e-3))
    weights = np.outer(axes[0], axes[1]).astype(np.float32)
    weights.setflags(write=False)
    return weights


def tile_grid(
    shape: tuple[int, int], tile: tuple[int, int], overlap: float
) -> list[tuple[slice, slice]]:
    """All tile windows (as slices) covering a padded 2D ``shape``."""
    ys = tile_starts(shape[0], tile[0], overlap)
    xs = tile_starts(shape[1], tile[1], overlap)
    return [(slice(y, y + tile[0]), slice(x, x + tile[1])) for y in ys for x in xs]


#: colour photos whose shorter side is larger than this are shrunk by ``auto_zoom``
AUTO_ZOOM_ABOVE = 768
#: ... to about this shorter side (the scale of the scans the bundled model was trained on)
AUTO_ZOOM_TARGET = 512


def auto_zoom(plane_shape: tuple[int, ...], rgb: bool) -> float:
    """The zoom ``zoom=None`` (auto) means for a plane of ``plane_shape`` (Y, X).

    Colour photos larger than :data:`AUTO_ZOOM_ABOVE` px on their shorter
    side (a 1400 px fundus photo) are shrunk to about :data:`AUTO_ZOOM_TARGET`
    px: their structures are several times larger in pixels than in the
    scans the model learned from (up to 768 px wide). Grey scans (CT, MRI,
    EM, microscopy) keep their pixels (zoom 1), whatever their size.
    """
    side = min(int(plane_shape[0]), int(plane_shape[1]))
    if not rgb or side <= AUTO_ZOOM_ABOVE:
        return 1.0
    return round(AUTO_ZOOM_TARGET / side, 3)
