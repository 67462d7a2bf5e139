"""Reading scans and writing label images, keeping their geometry.

``read_scan(path)`` returns a :class:`Scan` (array + spacing/origin/affine);
``write_labels(path, labels, like=scan)`` writes a label image atomically (a
failed write never leaves a half-written file under the final name);
``labels_output(path, shape, like=scan)`` streams labels plane by plane to
zarr or TIFF. The format is chosen from the file extension: TIFF, NIfTI,
DICOM (folder or file), zarr / OME-Zarr, NumPy, PNG/JPEG. Conventions
(axis order, RAS/LPS) are in ``docs/io.md`` and :mod:`napari_unet.io.geometry`.
"""

from __future__ import annotations

from .base import (
    AtomicTarget,
    GeometryWarning,
    IOErrorMessage,
    Scan,
    ScanMeta,
    atomic_path,
    format_of,
)
from .formats import labels_output, read_all_axes, read_scan, read_scans, select_index, write_labels
from .output import LabelsOutput, PlaneArray

__all__ = [
    "AtomicTarget",
    "GeometryWarning",
    "IOErrorMessage",
    "LabelsOutput",
    "PlaneArray",
    "Scan",
    "ScanMeta",
    "atomic_path",
    "format_of",
    "labels_output",
    "read_all_axes",
    "read_scan",
    "read_scans",
    "select_index",
    "write_labels",
]
