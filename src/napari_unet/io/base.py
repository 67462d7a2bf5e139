"""Data types shared by the readers and writers, and atomic file replacement."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class IOErrorMessage(ValueError):
    """A file that cannot be read or written; the message says why, in one line."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


class GeometryWarning(UserWarning):
    """A scan that can be read but whose geometry is suspect (missing slices,
    non-uniform spacing, no orientation); the message names the slices."""


class IndexRequired(IOErrorMessage):
    """A 4D/5D scan read without saying which volume: the message says how to
    choose in the Python API (``index=N``); front ends that name the choice
    differently (the CLI's ``--index``) build their own advice from ``summary``
    (what the scan holds) and ``count`` (how many volumes)."""

    api_option = "index"

    def __init__(self, summary: str, count: int):
        self.summary = one_line(summary)
        self.count = int(count)
        super().__init__(f"{self.summary}; pick one volume with index=N (0..{self.count - 1})")

    def __reduce__(self):  # picklable (dask workers) with its own arguments
        return type(self), (self.summary, self.count)


def one_line(text: object, limit: int = 300) -> str:
    """``text`` with its whitespace (newlines included) collapsed, cut at ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def reason(exc: BaseException) -> str:
    """A library exception as a short reason: its message on one line, or its
    type's name when it has none (so a message never ends in ``()``)."""
    text = one_line(exc, limit=200)
    return text or type(exc).__name__


# ------------------------------------------------------------------ size limits
#: Voxels a reader decodes into memory at most (a decompressed ``.nii.gz``, a
#: PNG, an eager TIFF) and that an in-memory labels output (NIfTI, NumPy, PNG)
#: may hold; checked from the header, before anything is allocated.
MAX_MEMORY_VOXELS = 2**31
#: Voxels of one 2D plane at most, for every format (napari and the predictor
#: each read a whole plane at a time), unless the scan has a pyramid.
MAX_PLANE_VOXELS = 2**31
#: Voxels of a labels output written plane by plane (zarr, TIFF) at most: a
#: 4096^3 volume; larger would take days to segment and terabytes to write.
MAX_STREAM_VOXELS = 2**36


def size_text(shape: Sequence[int], itemsize: int = 1) -> str:
    """``"30000 x 30000 x 30000 = 2.7e+13 voxels (108 TB)"``: a shape, its voxels and bytes."""
    voxels = 1
    for s in shape:
        voxels *= int(s)
    nbytes = float(voxels) * int(itemsize)
    unit = next((u for u, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)) if nbytes >= f), "kB")
    factor = {"TB": 1e12, "GB": 1e9, "MB": 1e6, "kB": 1e3}[unit]
    dims = " x ".join(str(int(s)) for s in shape)
    return f"{dims} = {voxels:.3g} voxels ({nbytes / factor:.3g} {unit})"


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[list[str]]:
    """Keep the log lines of libraries (``tifffile``, ``nibabel``) off the
    console while a file is read; yields the list of messages they logged, so
    the reader can turn the ones that matter into its own one-line error.

    nibabel logs header fixes through its own stream handler and tifffile
    warns about damaged page chains; both would print before our message."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            with contextlib.suppress(Exception):
                messages.append(one_line(record.getMessage()))

    collector = _Collect(level=logging.WARNING)
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [collector]
        logger.propagate = False
    try:
        yield messages
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate


@dataclass
class ScanMeta:
    """Geometry of a scan; ``spacing`` and ``origin`` are in napari's axis order
    and cover the spatial axes only ((Z,)Y,X).

    ``spacing`` and ``origin`` go to a layer's ``scale`` and ``translate``.
    ``affine`` is 4x4 in the NIfTI convention whatever the file format: it maps a
    voxel index ``(i, j, k, 1)`` - napari's ``(x, y, z)``, i.e. the spatial axes
    reversed - to RAS+ world coordinates in millimetres. It is kept so a
    written mask overlays the scan in other tools (3D Slicer, ITK-SNAP, FSL).
    ``None`` when the file has no orientation (TIFF, plain zarr); writers then
    build an axis-aligned one from ``spacing`` and ``origin``.
    ``shape`` is the spatial shape the geometry belongs to (``None``: unknown).
    ``extra`` holds format-specific facts (NIfTI qform/sform codes, DICOM series
    description, window) that are safe to show; never patient identifiers.
    """

    spacing: tuple[float, ...] | None = None
    origin: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    units: str | None = None
    shape: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scan:
    """An image (or label image) and its geometry.

    ``data`` is a NumPy, memory-mapped, zarr or dask array; lazy arrays are
    read plane by plane by the predictor. Its axes are
    ``leading_axes + spatial (+ colour)``: ``leading_axes`` names the
    non-spatial axes before the spatial ones (``""`` for a plain 2D/3D scan,
    ``"T"`` for a 4D NIfTI time series, ``"C"`` for channels, ...);
    :func:`napari_unet.io.read_scan` with ``index=`` picks one of them.
    """

    data: Any  # numpy, memmap, zarr or dask array
    meta: ScanMeta = field(default_factory=ScanMeta)
    name: str = "image"
    rgb: bool = False
    is_labels: bool = False
    source: str = ""
    leading_axes: str = ""

    @property
    def spatial_ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return len(self.data.shape) - len(self.leading_axes) - (1 if self.rgb else 0)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes ((Z,)Y,X)."""
        start = len(self.leading_axes)
        return tuple(int(s) for s in self.data.shape[start : start + self.spatial_ndim])


_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")


def is_zarr_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a zarr array or group (v2 or v3)."""
    path = Path(path)
    return path.is_dir() and any((path / marker).exists() for marker in _ZARR_MARKERS)


def format_of(path: str | os.PathLike) -> str:
    """The format key of a path from its extension: tiff, npy, png, nifti, dicom, zarr.

    A folder is zarr when it holds zarr metadata, else DICOM.
    """
    name = str(path).lower().rstrip("/\\")
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".png", ".jpg", ".jpeg", ".bmp")):
        return "png"
    if name.endswith(".zarr") or is_zarr_folder(path):
        return "zarr"
    if name.endswith((".dcm", ".ima")) or Path(path).is_dir():
        return "dicom"
    raise IOErrorMessage(
        f"{path}: unknown file type (use .tif, .npy, .png, .jpg, .nii(.gz), .zarr or a DICOM folder)"
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()


class AtomicTarget:
    """A temporary path beside ``final``, moved onto it by :meth:`commit`.

    The temporary name starts with a dot and holds ``.partial`` so a crash
    leaves nothing under the final name. An existing ``final`` is refused
    unless ``overwrite`` (checked now and again at commit). Works for files
    and folders (zarr); replacing a folder moves the old one aside first and
    puts it back if the move fails.
    """

    def __init__(self, final: str | os.PathLike, overwrite: bool = False):
        self.final = Path(final)
        self.overwrite = overwrite
        self._check_final()
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IOErrorMessage(f"{self.final.parent}: cannot create the folder ({exc})") from exc
        suffix = "".join(self.final.suffixes[-2:]) or ".tmp"
        try:
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{self.final.name}.", suffix=f".partial{suffix}", dir=self.final.parent
            )
        except OSError as exc:
            raise IOErrorMessage(f"{self.final}: cannot write in {self.final.parent} ({exc})") from exc
        os.close(fd)
        self.tmp = Path(tmp_name)
        self.tmp.unlink()  # the writer creates a file or a folder here
        self.done = False

    def _check_final(self) -> None:
        if (self.final.exists() or self.final.is_symlink()) and not self.overwrite:
            raise IOErrorMessage(f"{self.final} already exists (pass --overwrite to replace it)")

    def commit(self) -> Path:
        """Move the temporary path onto the final one; returns the final path."""
        if self.done:
            return self.final
        if not (self.tmp.exists() or self.tmp.is_symlink()):
            raise IOErrorMessage(f"{self.final}: nothing was written")
        try:
            self._check_final()
            if self.final.is_dir() and not self.tmp.is_dir():
                raise IOErrorMessage(f"{self.final} is a folder; refusing to replace it with a file")
            if self.final.exists() and (self.final.is_dir() or self.tmp.is_dir()):
                old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
                _remove(old)
                os.replace(self.final, old)
                try:
                    os.replace(self.tmp, self.final)
                except BaseException:
                    os.replace(old, self.final)
                    raise
                _remove(old)
            else:
                os.replace(self.tmp, self.final)
        except OSError as exc:
            self.abort()
            raise IOErrorMessage(f"{self.final}: cannot write ({exc})") from exc
        except BaseException:
            self.abort()
            raise
        self.done = True
        return self.final

    def abort(self) -> None:
        """Remove whatever was written; the final path is untouched."""
        if not self.done:
            _remove(self.tmp)
            self.done = True


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary path beside ``final`` that is renamed onto it on success.

    Refuses an existing ``final`` unless ``overwrite``; on any error the
    temporary file (or folder) is removed and ``final`` is untouched.
    """
    target = AtomicTarget(final, overwrite)
    try:
        yield target.tmp
    except BaseException:
        target.abort()
        raise
    target.commit()
