"""TIFF stacks with tifffile: ImageJ, OME and tifffile "shaped" spacing.

An uncompressed contiguous TIFF is memory-mapped; a large compressed or
tiled one is read lazily through tifffile's zarr store (as a dask array);
small ones are read into memory. Axes are reordered to
``leading + (Z,) Y, X (+ S for RGB)``: channel and time axes go first.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np

from .base import IOErrorMessage, Scan, ScanMeta, quiet_loggers, reason

#: TIFFs smaller than this are read into memory; larger ones stay lazy.
EAGER_BYTES = 256 * 2**20

#: Unit names as ImageJ/OME write them -> short names.
_UNITS = {
    "micron": "um", "microns": "um", "um": "um", "µm": "um", "\\u00B5m": "um", "micrometer": "um",
    "mm": "mm", "millimeter": "mm", "nm": "nm", "nanometer": "nm", "cm": "cm", "centimeter": "cm",
    "m": "m", "meter": "m",
}


def _tiff_errors() -> tuple[type[BaseException], ...]:
    import struct
    import zlib

    import tifffile

    # codecs raise zlib.error / RuntimeError (imagecodecs) on a damaged compressed page
    return (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError, EOFError, MemoryError,
            zlib.error, RuntimeError, struct.error)


#: tifffile log messages that mean pages of the file were lost (it reads on without them).
_LOST_PAGES = (
    "invalid page offset", "invalid offset to first page", "corrupted tag list", "invalid next page",
    "missing data are zeroed", "bytes, got",
)


def read_tiff(path: Path) -> list[Scan]:
    """Read the first series of a TIFF as one :class:`Scan` (lazily when large)."""
    import tifffile

    from .checks import check_dtype

    try:
        with quiet_loggers("tifffile") as logged, tifffile.TiffFile(path) as tif:
            if not len(tif.pages):
                raise IOErrorMessage(f"{path}: TIFF has no images" + _lost(logged))
            series = tif.series[0]
            axes = series.axes.upper()
            shape = tuple(int(s) for s in series.shape)
            lost = _lost(logged)
            if lost:
                raise IOErrorMessage(f"{path}: TIFF is truncated or damaged, pages are missing{lost}")
            check_dtype(series.dtype, str(path))
            _check_complete(tif, path)
            spacing_xyz, units = _tiff_spacing(tif)
            contiguous = series.dataoffset is not None
            nbytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(series.dtype).itemsize
            if not contiguous and nbytes <= EAGER_BYTES:
                data = series.asarray()
                lost = _lost(logged)
                if lost:
                    raise IOErrorMessage(f"{path}: TIFF image data cannot be decoded{lost}")
            else:
                data = None
    except IOErrorMessage:
        raise
    except _tiff_errors() as exc:
        raise IOErrorMessage(f"{path}: not a readable TIFF ({reason(exc)})") from exc
    if data is None:
        data = _lazy_tiff(path, contiguous)
    order, leading, rgb = _axis_order(axes, tuple(data.shape))
    if order != list(range(len(order))):
        data = data.transpose(order)
    spatial_ndim = data.ndim - len(leading) - (1 if rgb else 0)
    spacing = None
    if spacing_xyz is not None:
        z, y, x = spacing_xyz
        spacing = (y, x) if spatial_ndim == 2 else (z if z is not None else 1.0, y, x)
    meta = ScanMeta(
        spacing=spacing,
        units=units,
        shape=tuple(int(s) for s in data.shape[len(leading) : len(leading) + spatial_ndim]),
        extra={"format": "tiff", "axes": axes},
    )
    return [Scan(data=data, meta=meta, name=_stem(path), rgb=rgb, source=str(path), leading_axes=leading)]


def _lost(messages: list[str]) -> str:
    """`` (tifffile: ...)`` for the first log message saying pages or data were lost, else ``""``."""
    for message in messages:
        text = message.lower()
        if any(key in text for key in _LOST_PAGES):
            return f" (tifffile: {message.split('> ', 1)[-1]})"
    return ""


def _check_complete(tif, path: Path) -> None:
    """Fail early on a truncated file: the last page's data must lie inside it."""
    size = os.path.getsize(path)
    last = tif.pages[-1] if len(tif.pages) else None
    if last is None:
        raise IOErrorMessage(f"{path}: TIFF has no images")
    offsets = getattr(last, "dataoffsets", ()) or ()
    counts = getattr(last, "databytecounts", ()) or ()
    end = max((int(o) + int(c) for o, c in zip(offsets, counts)), default=0)
    if end > size:
        raise IOErrorMessage(f"{path}: TIFF is truncated ({size} bytes, its images need {end})")


def _lazy_tiff(path: Path, contiguous: bool):
    try:
        with quiet_loggers("tifffile"):
            return _open_lazy(path, contiguous)
    except IOErrorMessage:
        raise
    except _tiff_errors() as exc:
        raise IOErrorMessage(f"{path}: TIFF data cannot be mapped ({reason(exc)})") from exc


def _open_lazy(path: Path, contiguous: bool):
    import tifffile
    import zarr

    from .checks import lazy_array

    if contiguous:
        return tifffile.memmap(path, mode="r")
    store = tifffile.imread(path, aszarr=True)
    return lazy_array(zarr.open(store, mode="r"), str(path))


def _axis_order(axes: str, shape: tuple[int, ...]) -> tuple[list[int], str, bool]:
    """Transpose order putting non-spatial axes first; their names; whether RGB."""
    axes = axes.upper()
    rgb = len(axes) >= 3 and axes.endswith("S") and shape[-1] in (3, 4)
    body = axes[:-1] if rgb else axes
    # planar samples first ("SYX": how tifffile stores a (3, Y, X) array) read as unnamed
    # pages, so such a stack is a Z stack, as the writer most likely meant
    body = body.replace("S", "Q")
    if "Y" in body and "X" in body:
        plane = [body.index("Y"), body.index("X")]
    else:
        plane = [len(body) - 2, len(body) - 1][-len(body) :]
    rest = [i for i in range(len(body)) if i not in plane]
    if "Z" in body:
        depth = [body.index("Z")]
    elif len(rest) == 1 and (body[rest[0]] in "IQ" or body[rest[0]] == "C" and shape[rest[0]] > 4):
        # a plain page stack, or ImageJ "channels" of a stack written without
        # axes, is a Z stack; up to 4 channels stay channels
        depth = rest
    else:
        depth = []
    leading = [i for i in rest if i not in depth]
    order = leading + depth + plane + ([len(axes) - 1] if rgb else [])
    return order, "".join(body[i] for i in leading), rgb


def _tiff_spacing(tif) -> tuple[tuple[float | None, float, float] | None, str | None]:
    """(z, y, x) spacing and unit from OME, ImageJ or shaped metadata, when present.

    Resolution tags count only with ImageJ/shaped metadata or a centimetre
    unit: a bare inch resolution is a print DPI, not a pixel size.
    """
    if tif.is_ome and tif.ome_metadata:
        found = _ome_spacing(tif.ome_metadata)
        if found is not None:
            return found
    page = tif.pages[0]
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    unit_tag = page.tags.get("ResolutionUnit")
    centimetre = unit_tag is not None and int(unit_tag.value) == 3
    meta: dict[str, Any] = {}
    if tif.is_imagej:
        meta = dict(tif.imagej_metadata or {})
    elif tif.is_shaped and tif.shaped_metadata:
        meta = dict(tif.shaped_metadata[0])
    unit = _UNITS.get(str(meta.get("unit", "")).strip().lower())
    x = y = None
    if (meta or centimetre) and xres is not None and yres is not None:
        try:
            x = xres.value[1] / xres.value[0]
            y = yres.value[1] / yres.value[0]
        except (ZeroDivisionError, TypeError, IndexError):
            x = y = None
        if x is not None and centimetre and not meta:
            x, y, unit = 10.0 * x, 10.0 * y, "mm"
    z = meta.get("spacing")
    try:
        z = float(z) if z else None
    except (TypeError, ValueError):
        z = None
    if x is None and z is None:
        return None, unit
    return (z, float(y or 1.0), float(x or 1.0)), unit


def _ome_spacing(xml: str) -> tuple[tuple[float | None, float, float], str | None] | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    try:
        x = float(pixels.attrib["PhysicalSizeX"])
        y = float(pixels.attrib.get("PhysicalSizeY", x))
        z = float(pixels.attrib["PhysicalSizeZ"]) if "PhysicalSizeZ" in pixels.attrib else None
    except ValueError:
        return None
    unit = _UNITS.get(pixels.attrib.get("PhysicalSizeXUnit", "µm").lower(), None)
    return (z, y, x), unit


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def tiff_write_options(shape: tuple[int, ...], dtype: np.dtype, spacing, units: str | None) -> dict[str, Any]:
    """tifffile keyword arguments that keep spacing: ImageJ when it can hold the
    data, else a (Big)TIFF with tifffile's shaped metadata."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    imagej = dtype in (np.uint8, np.uint16, np.float32) and nbytes < 2**32 - 2**25 and len(shape) in (2, 3)
    options: dict[str, Any] = {"imagej": imagej, "photometric": "minisblack"}  # never RGB
    if not imagej and nbytes >= 2**32 - 2**25:
        options["bigtiff"] = True
    metadata: dict[str, Any] = {"axes": "ZYX" if len(shape) == 3 else "YX"}
    if spacing and len(spacing) >= 2 and all(s and s > 0 for s in spacing):
        options["resolution"] = (1.0 / float(spacing[-1]), 1.0 / float(spacing[-2]))
        if len(shape) == 3 and len(spacing) == 3:
            metadata["spacing"] = float(spacing[0])
        metadata["unit"] = {"um": "micron"}.get(units or "", units or "pixel") if imagej else (units or "")
    if not imagej:
        options["resolutionunit"] = 1  # NONE: the unit is in the metadata
    options["metadata"] = metadata
    return options
