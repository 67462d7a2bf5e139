"""What every reader's scan must be before anyone uses it (docs/io.md, "Broken and odd inputs").

:func:`check_scan` runs on every scan :func:`napari_unet.io.read_all_axes`
returns, so the CLI, the batch runner and the napari reader see the same rules:

* values: plain numbers (bool, integers, floats). ``bool`` becomes ``uint8``
  and an RGB24/RGBA32 record (NIfTI's ``RGB`` dtype: fields ``R, G, B[, A]``)
  becomes an RGB(A) image; complex, structured, date/time, text, object and raw
  ``void`` data are refused (:func:`check_dtype`) instead of being cast (which
  would segment, say, the real part of k-space);
* shape: at least 2D and no empty axis; one plane at most
  :data:`~napari_unet.io.base.MAX_PLANE_VOXELS` (unless the scan has a pyramid);
* a float scan must hold finite values (a strided sample is checked);
* geometry: a spacing that is not finite and positive becomes 1.0 and an origin
  that is not finite becomes 0.0, each with one :class:`GeometryWarning`.

:func:`lazy_array` makes the dask array of a zarr (or TIFF-as-zarr) store whose
failed chunk reads raise :class:`IOErrorMessage` naming the file.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any

import numpy as np

from .base import MAX_PLANE_VOXELS, GeometryWarning, IOErrorMessage, Scan, reason, size_text

#: Field names of colour records that are read as RGB(A) (NIfTI RGB24 / RGBA32).
_COLOUR_FIELDS = (("R", "G", "B"), ("R", "G", "B", "A"))


def check_dtype(dtype, source: str) -> None:
    """Refuse values that are not image intensities (complex, dates, text, records, objects).

    ``bool`` and RGB(A) records are accepted here; :func:`check_scan` converts them."""
    dtype = np.dtype(dtype)
    if dtype.names is not None:
        if colour_fields(dtype) is not None:
            return
        fields = ", ".join(dtype.names[:6])
        raise IOErrorMessage(
            f"{source}: holds structured records (fields {fields}), not one intensity per voxel; "
            "save one field as its own image"
        )
    kind = dtype.kind
    if kind in "biuf":
        return
    if kind == "c":
        raise IOErrorMessage(
            f"{source}: holds complex values ({dtype}, e.g. MRI k-space or phase data); napari-unet "
            "segments real intensities: save the magnitude (abs) as a float image"
        )
    if kind in "Mm":
        what = "dates" if kind == "M" else "time spans"
        raise IOErrorMessage(f"{source}: holds {what} ({dtype}), not image intensities")
    if kind in "US":
        raise IOErrorMessage(f"{source}: holds text ({dtype}), not image intensities")
    if kind == "O":
        raise IOErrorMessage(
            f"{source}: holds Python objects, not numbers (napari-unet never unpickles files)"
        )
    raise IOErrorMessage(f"{source}: holds raw bytes ({dtype}, no numeric type), not image intensities")


def colour_fields(dtype) -> tuple[str, ...] | None:
    """``("R", "G", "B"[, "A"])`` for a record of one byte per colour, else ``None``."""
    dtype = np.dtype(dtype)
    if dtype.names is None:
        return None
    for fields in _COLOUR_FIELDS:
        if tuple(n.upper() for n in dtype.names) == fields and all(
            dtype.fields[n][0] == np.uint8 for n in dtype.names
        ):
            return tuple(dtype.names)
    return None


def _is_lazy(data) -> bool:
    return hasattr(data, "compute") or hasattr(data, "dask")


def _as_numbers(data, rgb: bool):
    """``(data, rgb)`` with bool as uint8 and colour records as a last RGB(A) axis."""
    dtype = np.dtype(data.dtype)
    if dtype.kind == "b":
        if isinstance(data, np.ndarray):
            return data.view(np.uint8), rgb  # free: bool is one byte of 0 or 1
        return data.astype(np.uint8), rgb
    fields = colour_fields(dtype)
    if fields is None:
        return data, rgb
    if _is_lazy(data):
        import dask.array as da

        return da.stack([data[f] for f in fields], axis=-1), True
    from numpy.lib import recfunctions

    return recfunctions.structured_to_unstructured(np.asarray(data) if not isinstance(data, np.ndarray) else data,
                                                   dtype=np.uint8), True


def check_scan(scan: Scan) -> Scan:
    """``scan`` after the rules above: converted (bool, RGB records, spacing) or
    an :class:`IOErrorMessage` naming the file."""
    source = scan.source or scan.name
    check_dtype(scan.data.dtype, source)
    data, rgb = _as_numbers(scan.data, scan.rgb)
    if data is not scan.data:
        scan = replace(scan, data=data, rgb=rgb)
    shape = tuple(int(s) for s in scan.data.shape)
    if len(shape) < 2:
        what = "a single number (0D)" if not shape else f"1D (shape {shape})"
        raise IOErrorMessage(f"{source}: is {what}; images are 2D (Y,X) or 3D (Z,Y,X)")
    if any(s <= 0 for s in shape):
        raise IOErrorMessage(f"{source}: the image is empty (shape {shape})")
    spatial = scan.spatial_shape
    if len(spatial) < 2:
        raise IOErrorMessage(f"{source}: shape {shape} has fewer than two spatial axes")
    plane = spatial[-2] * spatial[-1]
    if plane > MAX_PLANE_VOXELS and not scan.meta.extra.get("pyramid"):
        raise IOErrorMessage(
            f"{source}: one plane is {size_text(spatial[-2:], np.dtype(scan.data.dtype).itemsize)}, "
            f"more than napari-unet reads at once ({MAX_PLANE_VOXELS:.3g} pixels); crop or tile the image first"
        )
    if np.dtype(scan.data.dtype).kind == "f":
        _check_finite(scan, source)
    return _sane_geometry(scan, source)


def _check_finite(scan: Scan, source: str) -> None:
    from .windows import sample_values

    lead = len(scan.leading_axes)
    data = scan.data if not scan.rgb else scan.data[..., 0]
    try:
        values = sample_values(data, len(scan.data.shape) - lead - (1 if scan.rgb else 0))
    except IOErrorMessage:
        raise
    except Exception as exc:  # noqa: BLE001 - any store/codec failure is a damaged file
        raise IOErrorMessage(f"{source}: the data cannot be read ({reason(exc)})") from exc
    if values.size and not np.isfinite(values).any():
        raise IOErrorMessage(
            f"{source}: holds no finite values (NaN or infinite everywhere sampled); nothing to segment"
        )


def _sane_geometry(scan: Scan, source: str) -> Scan:
    meta = scan.meta
    notes = []
    spacing = meta.spacing
    if spacing is not None:
        fixed = []
        for value in spacing:
            v = float(value) if value is not None else math.nan
            if not math.isfinite(v) or v == 0:
                fixed.append(1.0)
            else:
                fixed.append(abs(v))
        if tuple(fixed) != tuple(float(v) if v is not None else math.nan for v in spacing):
            shown = ", ".join(f"{v:g}" if v is not None else "none" for v in spacing)
            notes.append(f"voxel spacing ({shown}) is not finite and positive; using "
                         f"{', '.join(f'{v:g}' for v in fixed)}")
            spacing = tuple(fixed)
    origin = meta.origin
    if origin is not None and not all(v is not None and math.isfinite(float(v)) for v in origin):
        origin = tuple(float(v) if v is not None and math.isfinite(float(v)) else 0.0 for v in origin)
        notes.append("the origin is not finite; using 0 on those axes")
    if not notes:
        return scan
    message = f"{source}: " + "; ".join(notes)
    warnings.warn(message, GeometryWarning, stacklevel=3)
    extra = dict(meta.extra)
    extra["geometry_notes"] = [*extra.get("geometry_notes", []), *notes]
    return replace(scan, meta=replace(meta, spacing=spacing, origin=origin, extra=extra))


class _Guarded:
    """A zarr array whose failed reads are one-line ``IOErrorMessage`` errors naming the file."""

    def __init__(self, array: Any, source: str):
        self.array = array
        self.source = source
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        try:
            return np.asarray(self.array[index])
        except IOErrorMessage:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt chunk, a codec error, a missing file
            raise IOErrorMessage(
                f"{self.source}: the data cannot be read, the file may be damaged ({reason(exc)})"
            ) from exc


def lazy_array(array: Any, source: str):
    """A dask array over a zarr array whose read errors are ``IOErrorMessage`` errors."""
    import dask.array as da
    from dask.base import tokenize

    chunks = getattr(array, "chunks", None) or array.shape
    name = "napari-unet-" + tokenize(source, str(getattr(array, "path", "")), array.shape, str(array.dtype), chunks)
    return da.from_array(_Guarded(array, source), chunks=chunks, name=name, asarray=True, inline_array=True,
                         meta=np.empty((0,) * len(array.shape), dtype=array.dtype))
