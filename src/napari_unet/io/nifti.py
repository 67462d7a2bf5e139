"""NIfTI-1/2 (``.nii``, ``.nii.gz``) with nibabel.

Axis order: the NIfTI array ``(i, j, k[, t[, u]])`` becomes napari's
``([u,] [t,] k, j, i)`` = ``([C,] [T,] Z, Y, X)`` by reversing the axes, with
no resampling; the affine is kept as it is (``i, j, k`` -> RAS+ mm), so writing
labels back applies the inverse transpose and the source affine and header
geometry (qform/sform and their codes).

An uncompressed ``.nii`` without intensity scaling is memory-mapped (lazy);
a ``.nii.gz`` is decompressed into memory when read.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    MAX_MEMORY_VOXELS,
    GeometryWarning,
    IOErrorMessage,
    Scan,
    ScanMeta,
    atomic_path,
    quiet_loggers,
    reason,
    size_text,
)
from .geometry import affine_from_spacing, axis_codes, origin_from_affine, spacing_from_affine

#: NIfTI intent codes that mean "this volume is a label map".
_LABEL_INTENTS = {1002, 1007}  # NIFTI_INTENT_LABEL, NIFTI_INTENT_NEURONAME
#: An integer volume with at most this many distinct non-negative values (in a
#: sample) is taken for a label map; more means an image (CT, MRI).
MAX_LABEL_VALUES = 64
_SAMPLE = 1_000_000


def _nibabel_errors() -> tuple[type[BaseException], ...]:
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    return (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error, MemoryError)


def read_nifti(path: Path) -> list[Scan]:
    """Read a NIfTI file as one :class:`Scan` in napari axis order (all axes kept).

    The header is checked before any data is read: a shape that is empty,
    over 5D, larger than :data:`MAX_MEMORY_VOXELS` when it must be decompressed
    or scaled into memory, or larger than the file, is refused; a voxel size
    that is not finite and positive becomes 1.0 with a :class:`GeometryWarning`."""
    import nibabel as nib

    errors = _nibabel_errors()
    with quiet_loggers("nibabel", "nibabel.global"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel's header repairs; we report what matters ourselves
        try:
            image = nib.load(str(path))
        except errors as exc:
            raise IOErrorMessage(f"{path}: not a readable NIfTI file ({reason(exc)})") from exc
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise IOErrorMessage(f"{path}: not a NIfTI image ({type(image).__name__})")
        header = image.header
        shape = tuple(int(s) for s in header["dim"][1 : 1 + max(0, min(7, int(header["dim"][0])))])
        if len(shape) < 2 or any(s <= 0 for s in shape):
            raise IOErrorMessage(f"{path}: NIfTI header declares an unusable shape {shape}")
        if len(shape) > 5:
            raise IOErrorMessage(f"{path}: {len(shape)}D NIfTI images are not supported (shape {shape})")
        from .checks import check_dtype

        try:
            dtype = np.dtype(header.get_data_dtype())
        except errors as exc:
            raise IOErrorMessage(f"{path}: NIfTI header has no usable data type ({reason(exc)})") from exc
        check_dtype(dtype, str(path))
        _check_declared_size(path, header, shape, dtype)
        try:
            # memmap for an uncompressed file without scaling, else read now so a
            # truncated file fails here, not later while slicing in the viewer
            raw = np.asanyarray(image.dataobj)
        except errors as exc:
            raise IOErrorMessage(
                f"{path}: NIfTI data cannot be read, the file may be truncated ({reason(exc)})"
            ) from exc
        except RuntimeError as exc:  # nibabel wraps some decompression errors
            raise IOErrorMessage(f"{path}: NIfTI data cannot be read ({reason(exc)})") from exc
        affine, note = _sane_affine(image.affine, header, path, len(shape))
        qform, qcode = image.get_qform(coded=True)
        sform, scode = image.get_sform(coded=True)
        spatial_unit, _ = header.get_xyzt_units()
    spatial_ndim = min(3, len(shape))
    data = raw.transpose(tuple(range(raw.ndim))[::-1])  # (i,j,k,t,u) -> (u,t,k,j,i), a view
    leading = "CT"[-(raw.ndim - spatial_ndim) :] if raw.ndim > spatial_ndim else ""
    if note:
        warnings.warn(f"{path}: {note}", GeometryWarning, stacklevel=2)
        # the header's own transforms are unusable: labels written back get the repaired one
        qform = affine if qform is not None and not _usable(qform) else qform
        sform = affine if sform is not None and not _usable(sform) else sform

    extra: dict[str, Any] = {
        "format": "nifti",
        "orientation": axis_codes(affine),
        "nifti": {
            "qform": None if qform is None else np.asarray(qform, float),
            "qform_code": int(qcode),
            "sform": None if sform is None else np.asarray(sform, float),
            "sform_code": int(scode),
            "xyzt_units": header.get_xyzt_units(),
            "descrip": _text(header.get("descrip")),
        },
    }
    meta = ScanMeta(
        spacing=spacing_from_affine(affine, spatial_ndim),
        origin=origin_from_affine(affine, spatial_ndim),
        affine=affine,
        units="mm" if spatial_unit in ("mm", "unknown") else spatial_unit,
        shape=tuple(data.shape[len(leading) :]),
        extra=extra,
    )
    if note:
        extra["geometry_notes"] = [note]
    is_labels = _looks_like_labels(header, raw)
    return [
        Scan(
            data=data,
            meta=meta,
            name=_stem(path),
            is_labels=is_labels,
            source=str(path),
            leading_axes=leading,
        )
    ]


def _check_declared_size(path: Path, header, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse a header whose data cannot be there: more than the file holds
    (uncompressed) or more than :data:`MAX_MEMORY_VOXELS` to decompress."""
    voxels = int(np.prod(shape, dtype=np.float64))
    compressed = str(path).lower().endswith(".gz")
    slope, inter = header.get_slope_inter()
    scaled = (slope is not None and slope != 1) or (inter is not None and inter != 0)
    if not compressed:
        offset = int(header.get_data_offset())
        need = offset + voxels * dtype.itemsize
        size = path.stat().st_size
        if need > size:
            raise IOErrorMessage(
                f"{path}: NIfTI file is truncated ({size} bytes; its header declares "
                f"{size_text(shape, dtype.itemsize)}, {need} bytes)"
            )
    if (compressed or scaled) and voxels > MAX_MEMORY_VOXELS:
        raise IOErrorMessage(
            f"{path}: the NIfTI header declares {size_text(shape, dtype.itemsize)}, more than "
            f"napari-unet decompresses into memory ({MAX_MEMORY_VOXELS:.3g} voxels)"
        )


def _usable(affine) -> bool:
    """Finite, with three non-zero voxel axes."""
    linear = np.asarray(affine, float)[:3, :3]
    return bool(np.all(np.isfinite(affine)) and np.all(np.sqrt((linear**2).sum(axis=0)) > 0))


def _stored_pixdim(path: Path, header) -> np.ndarray:
    """``pixdim[1:4]`` as the file stores them: nibabel repairs zero or negative
    ones while loading, and a repaired zero would otherwise go unnoticed."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as fh:
            stored = type(header).from_fileobj(fh, check=False)
        return np.asarray(stored["pixdim"], float)[1:4]
    except Exception:  # noqa: BLE001 - only for the note; the loaded header is used
        return np.asarray(header["pixdim"], float)[1:4]


def _sane_affine(affine, header, path: Path, ndim: int) -> tuple[np.ndarray, str | None]:
    """nibabel's affine with any voxel axis that is not finite or has zero length
    replaced by a 1 mm step along that axis, and a non-finite origin by 0; plus
    a note saying what was replaced (``None`` when nothing was)."""
    affine = np.array(affine, dtype=float)
    bad = set()
    for axis in range(3):
        column = affine[:3, axis]
        if not np.all(np.isfinite(column)) or not np.linalg.norm(column) > 0:
            bad.add(axis)
            column[:] = 0.0
            column[axis] = 1.0
    pixdim = _stored_pixdim(path, header)
    if int(header["sform_code"]) == 0:  # pixdim sets the spacing (qform or the base affine)
        bad |= {axis for axis in range(min(3, ndim)) if not (np.isfinite(pixdim[axis]) and pixdim[axis] != 0)}
    bad_origin = not np.all(np.isfinite(affine[:3, 3]))
    if bad_origin:
        affine[:3, 3] = np.where(np.isfinite(affine[:3, 3]), affine[:3, 3], 0.0)
    affine[3] = (0.0, 0.0, 0.0, 1.0)
    parts = []
    if bad:
        axes = ", ".join("ijk"[a] for a in sorted(bad))
        shown = ", ".join(f"{v:g}" for v in pixdim[: min(3, ndim)])
        parts.append(f"voxel spacing along {axes} is not finite and positive in the header "
                     f"(pixdim {shown}); using 1.0 there")
    if bad_origin:
        parts.append("the origin is not finite; using 0 there")
    return affine, "; ".join(parts) or None


def _text(value) -> str:
    if value is None:
        return ""
    try:
        item = value.item() if hasattr(value, "item") else value
        return item.decode("latin-1").strip("\x00 ") if isinstance(item, bytes) else str(item)
    except (AttributeError, ValueError):
        return ""


def _looks_like_labels(header, data) -> bool:
    """Label maps: a label intent, or integers with few distinct non-negative values."""
    if int(header.get("intent_code", 0)) in _LABEL_INTENTS:
        return True
    if not np.issubdtype(data.dtype, np.integer):
        return False
    stride = max(1, int(np.ceil((data.size / _SAMPLE) ** (1 / data.ndim))))
    sample = np.asarray(data[(slice(None, None, stride),) * data.ndim])
    if sample.size == 0 or sample.min() < 0:
        return False
    return len(np.unique(sample)) <= MAX_LABEL_VALUES


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _label_dtype(labels: np.ndarray) -> np.dtype:
    if labels.size == 0:
        return np.dtype(np.uint8)
    low, high = int(labels.min()), int(labels.max())
    for dtype in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise IOErrorMessage(f"labels range {low}..{high} does not fit NIfTI's int32")


def write_nifti_map(path: Path, values, meta: ScanMeta, overwrite: bool) -> Path:
    """Write a float map (an uncertainty map) as float32 NIfTI with ``meta``'s geometry."""
    return write_nifti(path, values, meta, overwrite, continuous=True)


def write_nifti(path: Path, labels, meta: ScanMeta, overwrite: bool, continuous: bool = False) -> Path:
    """Write a (Z,Y,X) or (Y,X) label image as NIfTI with ``meta``'s geometry.

    The labels are transposed back to the file's ``(i, j, k)`` order; the
    affine and the qform/sform codes of the source scan are reused (an
    axis-aligned affine from spacing/origin when the source had none). The
    whole label image is held in memory while writing.
    """
    import nibabel as nib

    data = np.asarray(labels)
    if data.ndim not in (2, 3):
        raise IOErrorMessage(f"{path}: NIfTI labels must be 2D or 3D, got shape {data.shape}")
    if continuous:
        data = data.astype(np.float32, copy=False)
    elif np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
            raise IOErrorMessage(f"{path}: labels must be whole numbers, got {data.dtype} values")
    elif not (np.issubdtype(data.dtype, np.integer) or data.dtype.kind == "b"):
        raise IOErrorMessage(f"{path}: labels must be integers, got {data.dtype}")
    if meta.shape is not None and tuple(meta.shape) != tuple(data.shape):
        raise IOErrorMessage(
            f"{path}: labels shape {tuple(data.shape)} differs from the scan's {tuple(meta.shape)}; "
            "its geometry would not fit"
        )
    dtype = np.dtype(np.float32) if continuous else _label_dtype(data)
    array = np.ascontiguousarray(data.astype(dtype, copy=False).transpose(tuple(range(data.ndim))[::-1]))
    info = meta.extra.get("nifti") or {}
    if meta.affine is not None:
        affine = np.asarray(meta.affine, float)
    else:
        affine = affine_from_spacing(meta.spacing, meta.origin, data.ndim)
    image = nib.Nifti1Image(array, affine)
    header = image.header
    header.set_data_dtype(dtype)
    qform, sform = info.get("qform"), info.get("sform")
    qcode, scode = int(info.get("qform_code", 0)), int(info.get("sform_code", 0))
    if info and (qcode or scode):
        image.set_qform(qform if qform is not None else affine, code=qcode)
        image.set_sform(sform if sform is not None else affine, code=scode)
    else:
        # from DICOM: scanner coordinates; from TIFF/zarr: aligned to nothing in particular
        code = 1 if meta.extra.get("format") == "dicom" else 2
        image.set_qform(affine, code=code)
        image.set_sform(affine, code=code)
    units = info.get("xyzt_units")
    header.set_xyzt_units(xyz=units[0] if units and units[0] != "unknown" else "mm")
    if not continuous:
        header.set_intent("label")
    header["descrip"] = b"napari-unet uncertainty" if continuous else b"napari-unet labels"
    with atomic_path(path, overwrite) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # qform approximations of a sheared affine
                nib.save(image, str(tmp))
        except OSError as exc:
            raise IOErrorMessage(f"{path}: cannot write NIfTI ({exc})") from exc
    return path
