"""Readers and writers by format. TIFF, NumPy and PNG/JPEG are handled here;
NIfTI, DICOM and zarr live in their own modules."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import IOErrorMessage, Scan, ScanMeta, atomic_path, format_of


def read_scans(path: str | os.PathLike) -> list[Scan]:
    """Every scan in ``path`` (a DICOM folder may hold several series)."""
    path = Path(path)
    if not path.exists():
        raise IOErrorMessage(f"{path} does not exist")
    kind = format_of(path)
    reader = _READERS.get(kind)
    if reader is None:
        raise IOErrorMessage(f"{path}: reading {kind} is not supported in this build")
    scans = reader(path)
    return scans if isinstance(scans, list) else [scans]


def read_scan(path: str | os.PathLike) -> Scan:
    """The one scan in ``path``; a folder with several DICOM series is an error that names them."""
    scans = read_scans(path)
    if len(scans) > 1:
        names = ", ".join(s.name for s in scans)
        raise IOErrorMessage(f"{path} holds {len(scans)} series ({names}); choose one")
    return scans[0]


def write_labels(path: str | os.PathLike, labels, like: Scan | None = None, overwrite: bool = False) -> Path:
    """Write a label image, atomically, keeping ``like``'s geometry when the format can."""
    kind = format_of(path)
    writer = _WRITERS.get(kind)
    if writer is None:
        raise IOErrorMessage(f"{path}: writing labels as {kind} is not supported")
    return writer(Path(path), labels, like.meta if like is not None else ScanMeta(), overwrite)


# ------------------------------------------------------------------------ TIFF
def _read_tiff(path: Path) -> Scan:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            spacing = _tiff_spacing(tif, data.ndim)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError) as exc:
        raise IOErrorMessage(f"{path}: not a readable TIFF ({exc})") from exc
    rgb = data.ndim in (3, 4) and data.shape[-1] in (3, 4)
    return Scan(data=data, meta=ScanMeta(spacing=spacing), name=_stem(path), rgb=rgb, source=str(path))


def _tiff_spacing(tif, ndim: int) -> tuple[float, ...] | None:
    """(Z,)Y,X spacing from ImageJ metadata and resolution tags, when present."""
    try:
        page = tif.pages[0]
        xres = page.tags.get("XResolution")
        yres = page.tags.get("YResolution")
        if xres is None or yres is None:
            return None
        sx = xres.value[1] / xres.value[0]
        sy = yres.value[1] / yres.value[0]
        ij = tif.imagej_metadata or {}
        if "spacing" in ij:
            return (float(ij["spacing"]), sy, sx)
        return (sy, sx)
    except (ZeroDivisionError, TypeError, AttributeError, KeyError):
        return None


def _write_tiff(path: Path, labels, meta: ScanMeta, overwrite: bool) -> Path:
    import tifffile

    data = np.asarray(labels)
    kwargs = {}
    if meta.spacing and len(meta.spacing) >= 2 and all(s > 0 for s in meta.spacing):
        kwargs["resolution"] = (1.0 / meta.spacing[-1], 1.0 / meta.spacing[-2])
        if data.ndim == 3 and len(meta.spacing) == 3:
            kwargs["metadata"] = {"spacing": float(meta.spacing[0]), "axes": "ZYX"}
        kwargs["imagej"] = data.dtype in (np.uint8, np.uint16, np.float32)
    with atomic_path(path, overwrite) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)
    return path


# ----------------------------------------------------------------- NumPy / PNG
def _read_npy(path: Path) -> Scan:
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise IOErrorMessage(f"{path}: not a readable .npy array ({exc})") from exc
    rgb = data.ndim in (3, 4) and data.shape[-1] in (3, 4)
    return Scan(data=data, name=_stem(path), rgb=rgb, source=str(path))


def _write_npy(path: Path, labels, meta: ScanMeta, overwrite: bool) -> Path:
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(labels), allow_pickle=False)
    return path


def _read_png(path: Path) -> Scan:
    from skimage.io import imread

    try:
        data = imread(path)
    except (ValueError, OSError, SyntaxError) as exc:
        raise IOErrorMessage(f"{path}: not a readable image ({exc})") from exc
    rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
    return Scan(data=data, name=_stem(path), rgb=rgb, source=str(path))


def _write_png(path: Path, labels, meta: ScanMeta, overwrite: bool) -> Path:
    from skimage.io import imsave

    data = np.asarray(labels)
    if data.ndim != 2:
        raise IOErrorMessage(f"{path}: PNG holds 2D labels only; use .tif, .nii.gz or .zarr for stacks")
    with atomic_path(path, overwrite) as tmp:
        imsave(str(tmp), data.astype(np.uint8), check_contrast=False)
    return path


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".ome.zarr", ".ome.tif", ".ome.tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


_READERS = {"tiff": _read_tiff, "npy": _read_npy, "png": _read_png}
_WRITERS = {"tiff": _write_tiff, "npy": _write_npy, "png": _write_png}


# ------------------------------------------------------------ streamed output
class LabelsOutput:
    """Where the predictor writes labels plane by plane (``out[z] = plane``).

    This in-memory version writes the file at :meth:`commit`; formats that can
    stream (zarr, TIFF) use their own output so memory stays bounded.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], like: Scan | None, overwrite: bool):
        if path.exists() and not overwrite:
            raise IOErrorMessage(f"{path} already exists (pass --overwrite to replace it)")
        self.path, self.like, self.overwrite = path, like, overwrite
        self.array = np.zeros(shape, dtype=np.uint8)

    def commit(self) -> Path:
        return write_labels(self.path, self.array, like=self.like, overwrite=self.overwrite)

    def abort(self) -> None:
        self.array = None


def labels_output(path: str | os.PathLike, shape: tuple[int, ...], like: Scan | None = None, overwrite: bool = False):
    """An output for labels of ``shape``: fill ``.array`` (plane by plane), then
    ``commit()`` (atomic) or ``abort()`` (nothing written)."""
    path = Path(path)
    format_of(path)  # unknown extensions fail before any work is done
    return LabelsOutput(path, tuple(shape), like, overwrite)
