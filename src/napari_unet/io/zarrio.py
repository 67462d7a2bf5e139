"""zarr and OME-Zarr (NGFF 0.4/0.5), read lazily as dask arrays.

An OME-Zarr image gives its full-resolution level (``datasets[0]``) as the
scan, spacing and origin from its ``coordinateTransformations`` (``scale`` and
``translation``, multiplied by any multiscale-wide ones), and the lower levels
in ``meta.extra["pyramid"]`` for napari. A plain zarr array (or a group with
one array) has no geometry unless napari-unet wrote it.

Labels are written as an OME-Zarr 0.4 image on zarr format 2 (the most widely
read combination) with one level ``0``, chunked one plane at a time, plus the
full affine under the ``napari_unet`` attribute so a round trip keeps it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .base import IOErrorMessage, Scan, ScanMeta, reason
from .checks import lazy_array

#: OME-NGFF unit names <-> the short names used in :class:`ScanMeta`.
OME_UNITS = {"mm": "millimeter", "um": "micrometer", "nm": "nanometer", "cm": "centimeter", "m": "meter"}
_FROM_OME = {v: k for k, v in OME_UNITS.items()}
ATTRS_KEY = "napari_unet"


def _zarr_errors() -> tuple[type[BaseException], ...]:
    import zarr.errors

    return (zarr.errors.BaseZarrError, OSError, ValueError, KeyError, TypeError, json.JSONDecodeError)


def read_zarr(path: Path) -> list[Scan]:
    """Read a zarr array, a group with one array, or an OME-Zarr image (level 0 + pyramid)."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except _zarr_errors() as exc:
        raise IOErrorMessage(f"{path}: not a readable zarr store ({reason(exc)})") from exc
    attrs = dict(node.attrs)
    ours = attrs.get(ATTRS_KEY) or {}
    if isinstance(node, zarr.Array):
        array, transforms, axes, pyramid = node, {}, None, []
    else:
        ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
        multiscales = ome.get("multiscales")
        if multiscales:
            array, transforms, axes, pyramid = _multiscale(node, multiscales[0], path)
        else:
            arrays = sorted(name for name, _ in node.arrays())
            if len(arrays) != 1:
                listed = ", ".join(arrays[:8]) or "none"
                raise IOErrorMessage(
                    f"{path}: zarr group holds {len(arrays)} arrays ({listed}); open one of them as {path}/NAME"
                )
            array, transforms, axes, pyramid = node[arrays[0]], {}, None, []
        ours = ours or dict(array.attrs).get(ATTRS_KEY) or {}
    data = lazy_array(array, str(path))
    ndim = data.ndim
    names = _axis_names(axes, ndim)
    spatial_ndim = sum(1 for n in names if n in "ZYX")
    if spatial_ndim < 2 or not names.endswith("YX"):
        spatial_ndim = min(3, ndim)
        names = "Q" * (ndim - spatial_ndim) + "ZYX"[-spatial_ndim:]
    leading = names[: ndim - spatial_ndim]
    scale = transforms.get("scale")
    translation = transforms.get("translation")
    start = len(leading)
    spacing = tuple(float(v) for v in scale[start : start + spatial_ndim]) if scale else None
    origin = tuple(float(v) for v in translation[start : start + spatial_ndim]) if translation else None
    if spacing is None and ours.get("spacing"):
        spacing = tuple(float(v) for v in ours["spacing"])
    if origin is None and ours.get("origin"):
        origin = tuple(float(v) for v in ours["origin"])
    affine = np.asarray(ours["affine"], float) if ours.get("affine") is not None else None
    units = _units(axes, start, ours)
    extra: dict[str, Any] = {"format": "zarr", "pyramid": pyramid}
    for key in ("nifti", "orientation", "source_format"):
        if key in ours:
            extra[key] = _decode(ours[key])
    meta = ScanMeta(
        spacing=spacing,
        origin=origin,
        affine=affine,
        units=units,
        shape=tuple(int(s) for s in data.shape[start : start + spatial_ndim]),
        extra=extra,
    )
    ome_attrs = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else {}
    is_labels = "image-label" in attrs or "image-label" in ome_attrs or ours.get("kind") == "labels"
    name = path.name[: -len(".ome.zarr")] if path.name.lower().endswith(".ome.zarr") else path.stem
    return [
        Scan(data=data, meta=meta, name=name, is_labels=is_labels, source=str(path), leading_axes=leading)
    ]


def _multiscale(group, multiscale: dict, path: Path):
    datasets = multiscale.get("datasets") or []
    if not datasets:
        raise IOErrorMessage(f"{path}: OME-Zarr multiscales lists no datasets")
    try:
        levels = [group[d["path"]] for d in datasets]
    except _zarr_errors() as exc:
        raise IOErrorMessage(f"{path}: OME-Zarr level is missing ({reason(exc)})") from exc
    transforms = _transforms(datasets[0].get("coordinateTransformations"))
    shared = _transforms(multiscale.get("coordinateTransformations"))
    if shared.get("scale") and transforms.get("scale"):
        transforms["scale"] = [a * b for a, b in zip(transforms["scale"], shared["scale"])]
    if shared.get("translation"):
        base = transforms.get("translation") or [0.0] * len(shared["translation"])
        factor = shared.get("scale") or [1.0] * len(base)
        transforms["translation"] = [t * f + s for t, f, s in zip(base, factor, shared["translation"])]
    pyramid = [lazy_array(level, str(path)) for level in levels[1:]]
    return levels[0], transforms, multiscale.get("axes"), pyramid


def _transforms(items) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for item in items or []:
        kind = item.get("type")
        if kind in ("scale", "translation") and kind in item:
            found[kind] = [float(v) for v in item[kind]]
    return found


def _axis_names(axes, ndim: int) -> str:
    """One letter per axis: Z/Y/X for space, T for time, C for channel, Q unknown."""
    if not axes or len(axes) != ndim:
        spatial = min(3, ndim)
        return "Q" * (ndim - spatial) + "ZYX"[-spatial:]
    names = []
    for axis in axes:
        name = (axis.get("name", "") if isinstance(axis, dict) else str(axis)).lower()
        kind = axis.get("type", "") if isinstance(axis, dict) else ""
        if name in ("z", "y", "x") or kind == "space":
            names.append(name.upper() if name in ("z", "y", "x") else "Z")
        elif name in ("t", "time") or kind == "time":
            names.append("T")
        elif name in ("c", "channel") or kind == "channel":
            names.append("C")
        else:
            names.append("Q")
    return "".join(names)


def _units(axes, start: int, ours: dict) -> str | None:
    if ours.get("units"):
        return str(ours["units"])
    if axes and len(axes) > start and isinstance(axes[-1], dict) and axes[-1].get("unit"):
        unit = str(axes[-1]["unit"])
        return _FROM_OME.get(unit, unit)
    return None


def _decode(value):
    """Attributes come back as JSON: turn 4x4 lists inside NIfTI facts back into arrays."""
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return np.asarray(value, float)
    return value


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def ome_attributes(meta: ScanMeta, ndim: int, name: str) -> dict[str, Any]:
    """Group attributes of a one-level OME-Zarr 0.4 label image with ``meta``'s geometry."""
    unit = OME_UNITS.get(meta.units or "")
    axes = []
    for letter in "zyx"[-ndim:]:
        axis: dict[str, Any] = {"name": letter, "type": "space"}
        if unit:
            axis["unit"] = unit
        axes.append(axis)
    spacing = list(meta.spacing)[-ndim:] if meta.spacing and len(meta.spacing) >= ndim else [1.0] * ndim
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [float(s) for s in spacing]}]
    if meta.origin and len(meta.origin) >= ndim:
        transforms.append({"type": "translation", "translation": [float(v) for v in list(meta.origin)[-ndim:]]})
    ours = {
        "kind": "labels",
        "spacing": [float(s) for s in spacing],
        "origin": [float(v) for v in meta.origin[-ndim:]] if meta.origin else None,
        "affine": None if meta.affine is None else np.asarray(meta.affine, float).tolist(),
        "units": meta.units,
    }
    for key in ("nifti", "orientation"):
        if key in meta.extra:
            ours[key] = _jsonable(meta.extra[key])
    if meta.extra.get("format"):
        ours["source_format"] = meta.extra["format"]
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": name,
                "axes": axes,
                "datasets": [{"path": "0", "coordinateTransformations": transforms}],
            }
        ],
        "image-label": {"version": "0.4"},
        ATTRS_KEY: ours,
    }


def create_label_array(folder: Path, shape: tuple[int, ...], dtype, meta: ScanMeta, name: str):
    """A new OME-Zarr label image in ``folder`` (which must not exist); returns the array ``0``.

    Chunks hold one plane (tiled at 1024 pixels), so writing ``out[z] = plane``
    touches whole chunks only and never reads any back.
    """
    import zarr

    ndim = len(shape)
    plane = tuple(min(int(s), 1024) for s in shape[-2:])
    chunks = ((1,) * (ndim - 2)) + plane
    try:
        group = zarr.open_group(str(folder), mode="w-", zarr_format=2)
        array = group.create_array("0", shape=shape, dtype=dtype, chunks=chunks, fill_value=0)
        group.attrs.update(ome_attributes(meta, ndim, name))
    except _zarr_errors() as exc:
        raise IOErrorMessage(f"{folder}: cannot create a zarr store ({exc})") from exc
    return array
