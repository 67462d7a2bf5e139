"""The trusted-pixel record saved beside a label image.

A corrected Labels layer carries which pixels the user edited and which
slices they reviewed (``layer.metadata["napari_unet"]["trusted"]``). Saving the
layer with napari-unet's writers also writes ``<labels file>.trusted.npz``; opening
that labels file again restores the record, so fine-tuning after a restart
learns from exactly the same pixels. Headless: no Qt, no napari.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import atomic_path

TRUSTED_SUFFIX = ".trusted.npz"
ENCODING = "packbits+zlib+base64"


def sidecar_path(labels_path: str | Path) -> Path:
    return Path(str(labels_path).rstrip("/\\") + TRUSTED_SUFFIX)


def pack_mask(mask: np.ndarray) -> str:
    """A boolean mask as compact text (for layer metadata)."""
    return base64.b64encode(zlib.compress(np.packbits(mask, axis=None).tobytes(), 6)).decode("ascii")


def unpack_mask(text: str, shape: Sequence[int]) -> np.ndarray:
    raw = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8)
    count = int(np.prod(shape))
    return np.unpackbits(raw, count=count).astype(bool).reshape(tuple(shape))


def trusted_metadata(edited: np.ndarray, reviewed: Sequence[int]) -> dict[str, Any]:
    """The record as it sits in ``layer.metadata["napari_unet"]["trusted"]``."""
    return {
        "shape": list(edited.shape),
        "reviewed": sorted(int(i) for i in reviewed),
        "edited": pack_mask(edited),
        "encoding": ENCODING,
    }


def write_trusted_file(path: str | Path, edited: np.ndarray, reviewed: Sequence[int], overwrite: bool = True) -> Path:
    """Write the edited-pixel mask and reviewed slices to an ``.npz`` sidecar (atomically)."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                edited=np.packbits(np.asarray(edited, bool), axis=None),
                shape=np.asarray(edited.shape, dtype=np.int64),
                reviewed=np.asarray(sorted(reviewed), dtype=np.int64),
            )
    return path


def read_trusted_file(path: str | Path) -> tuple[np.ndarray, list[int]]:
    """``(edited mask, reviewed slices)`` from a sidecar written by :func:`write_trusted_file`."""
    with np.load(Path(path), allow_pickle=False) as data:
        shape = tuple(int(s) for s in data["shape"])
        edited = np.unpackbits(data["edited"], count=int(np.prod(shape))).astype(bool).reshape(shape)
        reviewed = [int(i) for i in data["reviewed"]]
    return edited, reviewed


def write_sidecar_from_metadata(labels_path: str | Path, metadata: dict[str, Any] | None) -> Path | None:
    """Write the sidecar for a layer whose metadata holds a trusted record (else nothing)."""
    record = ((metadata or {}).get("napari_unet") or {}).get("trusted")
    if not isinstance(record, dict) or "edited" not in record:
        return None
    edited = unpack_mask(record["edited"], record["shape"])
    return write_trusted_file(sidecar_path(labels_path), edited, record.get("reviewed", []))


def metadata_from_sidecar(labels_path: str | Path) -> dict[str, Any] | None:
    """The trusted record saved beside ``labels_path``, or None (missing or unreadable)."""
    path = sidecar_path(labels_path)
    if not path.is_file():
        return None
    try:
        edited, reviewed = read_trusted_file(path)
    except (OSError, ValueError, KeyError):
        return None
    return trusted_metadata(edited, reviewed)
