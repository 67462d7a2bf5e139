"""Reading scans and writing labels by format (chosen from the extension).

Readers return every axis of the file (``Scan.leading_axes`` names the
non-spatial ones); :func:`read_scans` / :func:`read_scan` then pick one
volume of a 4D/5D file with ``index``. TIFF, NIfTI, DICOM and zarr live in
their own modules; NumPy and PNG/JPEG are here.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    MAX_MEMORY_VOXELS,
    MAX_STREAM_VOXELS,
    IndexRequired,
    IOErrorMessage,
    Scan,
    ScanMeta,
    atomic_path,
    format_of,
    is_zarr_folder,
    reason,
    size_text,
)
from .checks import check_scan
from .output import (
    LabelsOutput,
    MemoryLabelsOutput,
    TiffLabelsOutput,
    ZarrLabelsOutput,
    scan_meta,
)

Index = int | Sequence[int] | None


#: Formats the napari reader opens (NumPy and PNG/JPEG are left to napari's own reader).
VIEWER_FORMATS = ("nifti", "dicom", "tiff", "zarr")


def plugin_can_read(path: str | os.PathLike) -> bool:
    """Whether napari-unet's napari reader opens ``path``: an existing NIfTI, DICOM
    file, TIFF or zarr, or a folder holding zarr metadata or DICOM files. Cheap:
    looks at the name and, for a folder, at a few files."""
    path = Path(path)
    if path.is_dir():
        if is_zarr_folder(path) or path.name.lower().endswith(".zarr"):
            return True
        from .dicom import folder_has_dicom

        return folder_has_dicom(path)
    try:
        return format_of(path) in VIEWER_FORMATS and path.exists()
    except IOErrorMessage:
        return False


def read_all_axes(path: str | os.PathLike) -> list[Scan]:
    """Every scan in ``path`` with all its axes (4D/5D kept); for viewers."""
    path = Path(path)
    if not path.exists():
        raise IOErrorMessage(f"{path} does not exist")
    kind = format_of(path)
    reader = _READERS.get(kind)
    if reader is None:
        raise IOErrorMessage(f"{path}: reading {kind} is not supported in this build")
    if kind != "dicom" and kind != "zarr" and path.is_dir():
        raise IOErrorMessage(f"{path} is a folder, not a {kind} file")
    if path.is_file():
        _check_content(path, kind)
    scans = reader(path)
    scans = scans if isinstance(scans, list) else [scans]
    return [check_scan(scan) for scan in scans]


#: File signatures (offset, bytes) -> format name, for files named with another format's extension.
_MAGIC = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"), (0, b"\xff\xd8\xff", "JPEG"), (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"), (0, b"II+\x00", "TIFF"), (0, b"MM\x00+", "TIFF"), (0, b"\x1f\x8b", "gzip"),
    (0, b"\x93NUMPY", "NumPy .npy"), (128, b"DICM", "DICOM"), (344, b"n+1\x00", "NIfTI"),
    (0, b"PK\x03\x04", "zip"), (0, b"BM", "BMP"),
)
#: What each format's files may start with (the names of :data:`_MAGIC`).
_EXPECTED = {
    "tiff": {"TIFF"}, "png": {"PNG", "JPEG", "BMP"}, "npy": {"NumPy .npy"},
    "nifti": {"NIfTI", "gzip"}, "dicom": {"DICOM"},
}
_SUFFIX_OF = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "NumPy .npy": ".npy", "DICOM": ".dcm",
              "NIfTI": ".nii", "BMP": ".bmp"}


def _check_content(path: Path, kind: str) -> None:
    """A one-line error for an empty file, or one whose first bytes are another
    known format's (a PNG named ``.tif``), before the format's reader sees it."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(352)
    except OSError as exc:
        raise IOErrorMessage(f"{path}: cannot be read ({reason(exc)})") from exc
    if not head:
        raise IOErrorMessage(f"{path}: the file is empty (0 bytes)")
    expected = _EXPECTED.get(kind)
    if expected is None:
        return
    found = next((name for offset, magic, name in _MAGIC if head[offset : offset + len(magic)] == magic), None)
    if found is None or found in expected:
        gz = str(path).lower().endswith(".gz")
        if kind == "nifti" and found == ("NIfTI" if gz else "gzip"):
            raise IOErrorMessage(f"{path}: is {'not ' if gz else ''}gzip-compressed; name it "
                                 f"{'.nii' if gz else '.nii.gz'}")
        return
    suffix = ".nii.gz" if str(path).lower().endswith(".nii.gz") else path.suffix
    hint = f"; rename it to {_SUFFIX_OF[found]}" if found in _SUFFIX_OF else ""
    raise IOErrorMessage(f"{path}: is a {found} file despite its {suffix} name{hint}")


def read_scans(path: str | os.PathLike, index: Index = None, *, leading_only: bool = False) -> list[Scan]:
    """Every scan in ``path`` (a DICOM folder may hold several series), each 2D or 3D.

    ``index`` picks one volume of a 4D/5D file (see :func:`select_index`);
    without it such a file is an error that says how to choose. With
    ``leading_only`` the index applies to 4D/5D scans only and 2D/3D ones are
    returned as they are (a batch of mixed scans given one ``--index``).
    """
    return [select_index(scan, index if scan.leading_axes or not leading_only else None)
            for scan in read_all_axes(path)]


def read_scan(path: str | os.PathLike, index: Index = None, *, leading_only: bool = False) -> Scan:
    """The one scan in ``path``; a folder with several DICOM series is an error that names them."""
    scans = read_scans(path, index, leading_only=leading_only)
    if len(scans) > 1:
        names = ", ".join(repr(s.name) for s in scans)
        raise IOErrorMessage(
            f"{path} holds {len(scans)} series ({names}); open one series' folder or one of its files"
        )
    return scans[0]


def select_index(scan: Scan, index: Index) -> Scan:
    """The 2D/3D volume of ``scan`` at ``index`` on its leading (time/channel) axes.

    ``index`` is an int (for one leading axis, or counting volumes in order
    over several) or one int per leading axis. A scan with no leading axes is
    returned as is when ``index`` is ``None`` or 0.
    """
    leading = scan.leading_axes
    shape = tuple(int(s) for s in scan.data.shape)
    if not leading:
        if index in (None, 0, (0,), ()):
            return scan
        raise IOErrorMessage(f"{scan.source or scan.name}: index {index} given but the scan is {len(shape)}D {shape}")
    counts = shape[: len(leading)]
    described = " x ".join(f"{n} {_AXIS_WORDS.get(a, 'volumes')}" for a, n in zip(leading, counts))
    if index is None:
        raise IndexRequired(
            f"{scan.source or scan.name} is {len(shape)}D (shape {shape}: {described})", int(np.prod(counts))
        )
    if isinstance(index, int | np.integer):
        if not 0 <= int(index) < int(np.prod(counts)):
            raise IOErrorMessage(
                f"{scan.source or scan.name}: index {index} is out of range 0..{int(np.prod(counts)) - 1} ({described})"
            )
        position = tuple(int(i) for i in np.unravel_index(int(index), counts))
    else:
        position = tuple(int(i) for i in index)
        if len(position) != len(counts) or any(not 0 <= p < n for p, n in zip(position, counts)):
            raise IOErrorMessage(f"{scan.source or scan.name}: index {tuple(index)} does not fit {described}")
    data = scan.data[position]
    label = ",".join(f"{a.lower()}={p}" for a, p in zip(leading, position))
    extra = {k: v for k, v in scan.meta.extra.items() if k != "pyramid"}
    extra["index"] = dict(zip(leading, position))
    return replace(scan, data=data, name=f"{scan.name} [{label}]", leading_axes="", meta=replace(scan.meta, extra=extra))


_AXIS_WORDS = {"T": "time points", "C": "channels", "Q": "volumes", "I": "images"}


# ------------------------------------------------------------------- writing
def _labels_dtype(labels) -> np.dtype:
    """The smallest unsigned/signed integer dtype holding ``labels`` (read lazily if dask)."""
    dtype = np.dtype(getattr(labels, "dtype", np.uint8))
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise IOErrorMessage(f"labels must be integers, got {dtype}")
    if dtype in (np.uint8, np.uint16) and np.issubdtype(dtype, np.integer):
        return dtype
    low, high = _extent(labels)
    for candidate in (np.uint8, np.uint16, np.int16, np.int32, np.int64):
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            return np.dtype(candidate)
    raise IOErrorMessage(f"labels range {low}..{high} does not fit an integer type")


def _extent(labels) -> tuple[int, int]:
    if hasattr(labels, "compute"):
        import dask

        low, high = dask.compute(labels.min(), labels.max())
    else:
        data = np.asarray(labels)
        if data.size == 0:
            return 0, 0
        low, high = data.min(), data.max()
    if not (np.isfinite(low) and np.isfinite(high)) or low != np.round(low) or high != np.round(high):
        raise IOErrorMessage("labels must be whole numbers")
    return int(low), int(high)


def write_labels(
    path: str | os.PathLike,
    labels,
    like: Scan | ScanMeta | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label image atomically, keeping ``like``'s geometry when the format can.

    ``labels`` is (Y,X) or (Z,Y,X), a NumPy, zarr or dask array; zarr and
    TIFF are written plane by plane (a lazy array is never loaded whole).
    Refuses an existing ``path`` unless ``overwrite``.
    """
    path = Path(path)
    kind = format_of(path)
    meta = scan_meta(like)
    if kind in _STREAMING:
        shape = tuple(int(s) for s in labels.shape)
        with labels_output(path, shape, like=meta, overwrite=overwrite, dtype=_labels_dtype(labels)) as sink:
            if len(shape) == 2:
                sink.array[...] = np.asarray(labels)
            else:
                for z in range(shape[0]):
                    sink.array[z] = np.asarray(labels[z])
        return path
    writer = _WRITERS.get(kind)
    if writer is None:
        raise IOErrorMessage(f"{path}: writing labels as {kind} is not supported")
    return writer(path, labels, meta, overwrite)


def labels_output(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    like: Scan | ScanMeta | None = None,
    overwrite: bool = False,
    dtype=np.uint8,
) -> LabelsOutput:
    """An output for labels of ``shape``: fill ``.array`` plane by plane
    (``out[z] = plane``), then ``commit()`` (atomic) or ``abort()`` (nothing written).

    zarr and TIFF outputs stream each plane to disk (bounded memory); NIfTI,
    NumPy and PNG keep the labels in memory until commit. An existing ``path``
    is refused now unless ``overwrite``; an unknown extension fails before any
    work is done. ``output.label_counts()`` gives voxels per label.
    """
    path = Path(path)
    kind = format_of(path)
    shape = tuple(int(s) for s in shape)
    meta = scan_meta(like)
    if len(shape) not in (2, 3):
        raise IOErrorMessage(f"{path}: labels must be 2D or 3D, got shape {shape}")
    if meta.shape is not None and tuple(meta.shape) != shape:
        raise IOErrorMessage(
            f"{path}: labels shape {shape} differs from the scan's {tuple(meta.shape)}; its geometry would not fit"
        )
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise IOErrorMessage(f"{path} already exists (pass --overwrite to replace it)")
    _check_output_size(path, kind, shape, np.dtype(dtype))
    if kind == "zarr":
        return ZarrLabelsOutput(path, shape, meta, overwrite, dtype)
    if kind == "tiff":
        return TiffLabelsOutput(path, shape, meta, overwrite, dtype)
    if np.issubdtype(np.dtype(dtype), np.floating):  # a float map (uncertainty), not labels
        writer = _MAP_WRITERS.get(kind)
        if writer is None:
            raise IOErrorMessage(f"{path}: a float map cannot be written as {kind}; use .tif, .nii.gz, .npy or .zarr")
    else:
        writer = _WRITERS.get(kind)
    if writer is None:
        raise IOErrorMessage(f"{path}: writing labels as {kind} is not supported")
    return MemoryLabelsOutput(path, shape, meta, overwrite, writer, dtype)


def _check_output_size(path: Path, kind: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse, before anything is allocated or written, labels larger than the
    output can hold: in-memory formats :data:`MAX_MEMORY_VOXELS`, streamed ones
    :data:`MAX_STREAM_VOXELS`."""
    voxels = int(np.prod(shape, dtype=np.float64))
    if kind in _STREAMING:
        if voxels > MAX_STREAM_VOXELS:
            raise IOErrorMessage(
                f"{path}: labels of {size_text(shape, dtype.itemsize)} are more than napari-unet writes "
                f"({MAX_STREAM_VOXELS:.3g} voxels); crop the scan or segment part of it"
            )
    elif voxels > MAX_MEMORY_VOXELS:
        raise IOErrorMessage(
            f"{path}: labels of {size_text(shape, dtype.itemsize)} do not fit in memory as {kind} "
            f"(at most {MAX_MEMORY_VOXELS:.3g} voxels); write .zarr or .tif, which stream plane by plane"
        )


# ----------------------------------------------------------------- NumPy / PNG
def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, data offset) from a ``.npy`` header, ``None`` for a version
    this check does not parse (``np.load`` then reports)."""
    from numpy.lib import format as npy_format

    with open(path, "rb") as fh:
        version = npy_format.read_magic(fh)
        read = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}.get(version)
        if read is None:
            return None
        shape, _, dtype = read(fh)
        return tuple(int(s) for s in shape), np.dtype(dtype), fh.tell()


def _read_npy(path: Path) -> Scan:
    from .checks import check_dtype

    try:
        header = _npy_header(path)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        why = reason(exc)
        if " object at 0x" in why or isinstance(exc, SyntaxError):  # ast's repr of the bad header
            why = "its header is malformed"
        raise IOErrorMessage(f"{path}: not a readable .npy array ({why})") from exc
    if header is not None:
        shape, dtype, offset = header
        check_dtype(dtype, str(path))
        need = offset + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        size = path.stat().st_size
        if need > size:
            raise IOErrorMessage(
                f"{path}: .npy file is truncated ({size} bytes; its header declares "
                f"{size_text(shape, dtype.itemsize)}, {need} bytes)"
            )
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise IOErrorMessage(f"{path}: not a readable .npy array ({reason(exc)})") from exc
    rgb = data.ndim in (3, 4) and data.shape[-1] in (3, 4)
    leading = "Q" * max(0, data.ndim - (4 if rgb else 3))
    return Scan(data=data, name=path.stem, rgb=rgb, source=str(path), leading_axes=leading)


def _write_npy(path: Path, labels, meta: ScanMeta, overwrite: bool) -> Path:
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(labels), allow_pickle=False)
    return path


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, ``None`` when not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _read_png(path: Path) -> Scan:
    import warnings

    from PIL import Image
    from skimage.io import imread

    try:
        size = _png_size(path)
    except OSError as exc:
        raise IOErrorMessage(f"{path}: not a readable image ({reason(exc)})") from exc
    if size is not None and size[0] * size[1] > MAX_MEMORY_VOXELS:
        raise IOErrorMessage(
            f"{path}: the PNG declares {size[0]} x {size[1]} = {size[0] * size[1]:.3g} pixels, more than "
            f"napari-unet decodes ({MAX_MEMORY_VOXELS:.3g}); refusing it (a decompression bomb?)"
        )
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 M pixels and refuses above 179 M; either way we say it once
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            data = imread(path)
    except Image.DecompressionBombError as exc:
        shown = f"{size[0]} x {size[1]} pixels" if size else "too many pixels"
        raise IOErrorMessage(f"{path}: the image declares {shown}, more than Pillow decodes safely "
                             f"({Image.MAX_IMAGE_PIXELS * 2:.3g}); refusing it (a decompression bomb?)") from exc
    except (ValueError, OSError, SyntaxError, EOFError, zlib.error) as exc:
        raise IOErrorMessage(f"{path}: not a readable image ({reason(exc)})") from exc
    rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
    return Scan(data=data, name=path.stem, rgb=rgb, source=str(path))


def _write_png(path: Path, labels, meta: ScanMeta, overwrite: bool) -> Path:
    from skimage.io import imsave

    data = np.asarray(labels)
    if data.ndim != 2:
        raise IOErrorMessage(f"{path}: PNG holds 2D labels only; use .tif, .nii.gz or .zarr for stacks")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise IOErrorMessage(f"{path}: PNG labels must be 0..255; use .tif, .nii.gz or .zarr")
    with atomic_path(path, overwrite) as tmp:
        imsave(str(tmp), data.astype(np.uint8), check_contrast=False)
    return path


def _read_tiff(path: Path) -> list[Scan]:
    from .tiff import read_tiff

    return read_tiff(path)


def _read_nifti(path: Path) -> list[Scan]:
    from .nifti import read_nifti

    return read_nifti(path)


def _write_nifti(path: Path, labels, meta: ScanMeta, overwrite: bool) -> Path:
    from .nifti import write_nifti

    return write_nifti(path, labels, meta, overwrite)


def _write_nifti_map(path: Path, values, meta: ScanMeta, overwrite: bool) -> Path:
    from .nifti import write_nifti_map

    return write_nifti_map(path, values, meta, overwrite)


def _read_dicom(path: Path) -> list[Scan]:
    from .dicom import read_dicom

    return read_dicom(path)


def _read_zarr(path: Path) -> list[Scan]:
    from .zarrio import read_zarr

    return read_zarr(path)


_READERS: dict[str, Callable[[Path], Any]] = {
    "tiff": _read_tiff,
    "npy": _read_npy,
    "png": _read_png,
    "nifti": _read_nifti,
    "dicom": _read_dicom,
    "zarr": _read_zarr,
}
_WRITERS: dict[str, Callable[[Path, Any, ScanMeta, bool], Path]] = {
    "npy": _write_npy,
    "png": _write_png,
    "nifti": _write_nifti,
}
#: Writers of float maps (the uncertainty), kept in memory until commit like the labels above.
_MAP_WRITERS: dict[str, Callable[[Path, Any, ScanMeta, bool], Path]] = {
    "npy": _write_npy,
    "nifti": _write_nifti_map,
}
#: Formats whose labels are written plane by plane through :func:`labels_output`.
_STREAMING = ("tiff", "zarr")
