"""Reading scans and writing label images, keeping their geometry.

``read_scan(path)`` returns a :class:`Scan` (array + spacing/origin/affine);
``write_labels(path, labels, like=scan)`` writes a label image atomically (a
failed write never leaves a half-written file under the final name). The
format is chosen from the file extension.
"""

from __future__ import annotations

from .base import IOErrorMessage, Scan, ScanMeta, atomic_path, format_of
from .formats import labels_output, read_scan, read_scans, write_labels

__all__ = [
    "IOErrorMessage",
    "Scan",
    "ScanMeta",
    "atomic_path",
    "format_of",
    "labels_output",
    "read_scan",
    "read_scans",
    "write_labels",
]
