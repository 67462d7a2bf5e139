"""napari reader and writers (npe2 contributions) on top of :mod:`napari_unet.io`.

Imports neither napari nor Qt: a reader returns plain LayerData tuples
``(data, kwargs, layer_type)`` and a writer takes ``(path, data, meta)``.

Layers get ``scale`` = voxel spacing and ``translate`` = world position of
voxel 0, in napari's (Z, Y, X) order, and ``metadata`` with the 4x4 affine
(NIfTI convention: index (x, y, z) -> RAS+ mm) and format facts; the label
writers read that metadata back so a saved mask overlays its scan in other
tools. napari's save dialog asks before replacing a file, so these writers
overwrite.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import IOErrorMessage, Scan, ScanMeta, format_of, read_all_axes, write_labels
from .io.base import is_zarr_folder
from .io.trusted import metadata_from_sidecar, write_sidecar_from_metadata

LayerData = tuple[Any, dict[str, Any], str]
PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]

#: Formats this plugin opens in napari (NumPy/PNG are left to napari's own reader).
_VIEWER_FORMATS = ("nifti", "dicom", "tiff", "zarr")


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """The reader for ``path`` (a file, folder or list of them), or ``None`` when
    this plugin cannot open it. Cheap: looks at names and, for folders, a few files."""
    paths = _as_paths(path)
    if not paths or not all(_can_read(p) for p in paths):
        return None
    return read_layers


def _as_paths(path: PathOrPaths) -> list[Path]:
    if isinstance(path, str | os.PathLike):
        return [Path(path)]
    return [Path(p) for p in path]


def _can_read(path: Path) -> bool:
    if path.is_dir():
        if is_zarr_folder(path) or path.name.lower().endswith(".zarr"):
            return True
        from .io.dicom import folder_has_dicom

        return folder_has_dicom(path)
    try:
        return format_of(path) in _VIEWER_FORMATS and path.exists()
    except IOErrorMessage:
        return False


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Layer data for every scan in ``path``: one layer per DICOM series,
    4D/5D volumes whole (napari shows a slider for time/channel)."""
    layers: list[LayerData] = []
    seen_series: set[str] = set()
    for item in _as_paths(path):
        if item.is_file() and format_of(item) == "dicom":
            from .io.dicom import series_uid

            # one file opens its whole series: several files of one series read it once
            if series_uid(item) in seen_series:
                continue
        for scan in read_all_axes(item):
            uid = scan.meta.extra.get("dicom", {}).get("series_uid")
            if uid:  # several files of one DICOM series open it once
                if uid in seen_series:
                    continue
                seen_series.add(uid)
            layers.append(layer_data(scan))
    return layers


def layer_data(scan: Scan) -> LayerData:
    """``(data, kwargs, "image" | "labels")`` for one scan, with scale, translate and metadata."""
    ndim = len(scan.data.shape) - (1 if scan.rgb else 0)
    lead = ndim - scan.spatial_ndim
    kwargs: dict[str, Any] = {"name": scan.name, "metadata": layer_metadata(scan)}
    meta = scan.meta
    if meta.spacing and len(meta.spacing) == scan.spatial_ndim:
        kwargs["scale"] = (1.0,) * lead + tuple(float(s) for s in meta.spacing)
    if meta.origin and len(meta.origin) == scan.spatial_ndim:
        kwargs["translate"] = (0.0,) * lead + tuple(float(v) for v in meta.origin)
    data: Any = scan.data
    pyramid = meta.extra.get("pyramid") or []
    if pyramid:
        data = [scan.data, *pyramid]
        kwargs["multiscale"] = True
    # a trusted-pixel sidecar marks a corrected label image (whatever its dtype)
    record = metadata_from_sidecar(scan.source) if scan.source else None
    if record is not None and not scan.rgb:
        kwargs["metadata"].setdefault("napari_unet", {})["trusted"] = record
        return data, kwargs, "labels"
    if scan.is_labels:
        return data, kwargs, "labels"
    if scan.rgb:
        kwargs["rgb"] = True
    window = meta.extra.get("dicom", {}).get("window")
    if window is not None:
        center, width = window
        kwargs["contrast_limits"] = (center - width / 2, center + width / 2)
    return data, kwargs, "image"


def layer_metadata(scan: Scan) -> dict[str, Any]:
    """The scan's geometry and format facts as a layer's ``metadata`` dict."""
    meta = scan.meta
    out: dict[str, Any] = {
        "source": scan.source,
        "format": meta.extra.get("format"),
        "spacing": meta.spacing,
        "origin": meta.origin,
        "affine": None if meta.affine is None else np.asarray(meta.affine, float),
        "units": meta.units,
        "spatial_shape": meta.shape,
        "leading_axes": scan.leading_axes,
    }
    for key, value in meta.extra.items():
        if key not in ("pyramid", "format"):
            out[key] = value
    return out


def meta_from_layer(meta: dict[str, Any], shape: tuple[int, ...]) -> ScanMeta:
    """Geometry for writing a layer of ``shape`` from a writer's ``meta`` (the layer's attributes).

    Uses the layer ``metadata`` written by :func:`layer_metadata` (affine,
    NIfTI header facts) when it fits the shape, else the layer's scale/translate.
    """
    ndim = len(shape)
    details = meta.get("metadata") or {}
    spacing = details.get("spacing")
    origin = details.get("origin")
    if not spacing or len(spacing) != ndim:
        scale = meta.get("scale")
        spacing = tuple(float(s) for s in scale[-ndim:]) if scale is not None and len(scale) >= ndim else None
    if not origin or len(origin) != ndim:
        translate = meta.get("translate")
        origin = (
            tuple(float(t) for t in translate[-ndim:]) if translate is not None and len(translate) >= ndim else None
        )
    fitted = details.get("spatial_shape")
    fits = fitted is not None and tuple(fitted) == tuple(shape)
    affine = details.get("affine") if fits else None
    extra: dict[str, Any] = {}
    if fits:
        for key in ("nifti", "dicom", "orientation", "format"):
            if details.get(key) is not None:
                extra[key] = details[key]
    return ScanMeta(
        spacing=tuple(spacing) if spacing else None,
        origin=tuple(origin) if origin else None,
        affine=None if affine is None else np.asarray(affine, float),
        units=details.get("units"),
        shape=tuple(int(s) for s in shape),
        extra=extra,
    )


def _write(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    if isinstance(data, list):  # a multiscale labels layer: write full resolution
        data = data[0]
    shape = tuple(int(s) for s in data.shape)
    written = write_labels(path, data, like=meta_from_layer(meta, shape), overwrite=True)
    # corrections (trusted pixels) travel with the labels, so fine-tuning resumes after a restart
    sidecar = write_sidecar_from_metadata(written, meta.get("metadata"))
    return [str(written)] + ([str(sidecar)] if sidecar else [])


def write_labels_nifti(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a Labels layer as NIfTI with its scan's affine (from the layer metadata)."""
    return _write(path, data, meta)


def write_labels_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a Labels layer as a TIFF stack with its spacing (ImageJ metadata)."""
    return _write(path, data, meta)


def write_labels_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a Labels layer as an OME-Zarr label image, written plane by plane."""
    return _write(path, data, meta)
