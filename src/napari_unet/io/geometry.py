"""Axis order and voxel-to-world geometry shared by the formats.

Conventions (see ``docs/io.md``):

* napari axes are ``(Z, Y, X)`` (or ``(Y, X)``); file index axes ``(i, j, k)``
  in NIfTI and DICOM are ``(column, row, slice)`` = napari's reversed.
* :attr:`ScanMeta.affine <napari_unet.io.base.ScanMeta>` maps ``(i, j, k, 1)``
  to RAS+ millimetres (the NIfTI convention). DICOM patient coordinates are
  LPS+; :data:`LPS_TO_RAS` converts between them.
* ``spacing`` (napari ``scale``) is the length of each index axis' world
  step; ``origin`` (napari ``translate``) is the world position of voxel 0,
  both listed in napari's axis order. Rotations and flips stay in the affine:
  napari shows voxels on an axis-aligned grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Flips x and y: DICOM LPS+ patient coordinates <-> NIfTI RAS+ world.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def spacing_from_affine(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    """Voxel spacing in napari order ((Z,)Y,X) from a 4x4 index->world affine."""
    lengths = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    return tuple(float(v) for v in lengths[:ndim][::-1])


def origin_from_affine(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    """World position of voxel 0 in napari order ((Z,)Y,X) from a 4x4 affine."""
    return tuple(float(v) for v in np.asarray(affine, float)[:ndim, 3][::-1])


def affine_from_spacing(
    spacing: Sequence[float] | None, origin: Sequence[float] | None, ndim: int
) -> np.ndarray:
    """An axis-aligned 4x4 affine (NIfTI convention) from napari-order spacing/origin."""
    affine = np.eye(4)
    spacing = list(spacing or [])[-ndim:] if spacing else [1.0] * ndim
    origin = list(origin or [])[-ndim:] if origin else [0.0] * ndim
    for axis, (step, start) in enumerate(zip(reversed(spacing), reversed(origin))):
        affine[axis, axis] = float(step) if step and np.isfinite(step) and step > 0 else 1.0
        affine[axis, 3] = float(start)
    return affine


def axis_codes(affine: np.ndarray) -> str:
    """Anatomical direction of the index axes (i, j, k), e.g. ``"LPS"`` or ``"RAS"``.

    Each letter is the world direction an index axis points to most; napari's
    (Z, Y, X) point along the reversed string.
    """
    directions = np.asarray(affine, float)[:3, :3]
    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    codes = []
    for axis in range(3):
        column = directions[:, axis]
        world = int(np.argmax(np.abs(column)))
        codes.append(labels[world][1] if column[world] > 0 else labels[world][0])
    return "".join(codes)


def is_axis_aligned(affine: np.ndarray, tol: float = 1e-4) -> bool:
    """Whether the affine is a pure scale + translation (no rotation or flip)."""
    linear = np.asarray(affine, float)[:3, :3]
    return bool(np.allclose(linear, np.diag(np.diag(linear)), atol=tol) and np.all(np.diag(linear) > 0))
