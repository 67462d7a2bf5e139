"""Class names and colours saved beside a label image (headless: no Qt, no napari).

A label file holds numbers; what they mean (``1`` = tumor, red) travels in
``<labels file>.classes.json``, written atomically by the napari writers next
to the ``.trusted.npz`` record, whatever the format (NIfTI, TIFF, zarr)::

    {"format": "napari-unet-classes", "version": 1,
     "classes": [{"id": 1, "name": "tumor", "color": "#ff3b30ff"}, ...],
     "default_color": "#ff00ffff"}

``color`` is ``#rrggbbaa`` or ``null`` (napari's own colour for that id);
``default_color`` (optional) colours ids not listed. Reading it back gives a
Labels layer its colormap and the features napari's status bar shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .base import atomic_path

CLASSES_SUFFIX = ".classes.json"
FORMAT = "napari-unet-classes"
VERSION = 1


def classes_path(labels_path: str | Path) -> Path:
    """The sidecar of ``labels_path`` (a file or a zarr folder)."""
    return Path(str(labels_path).rstrip("/\\") + CLASSES_SUFFIX)


def hex_color(color: Any) -> str | None:
    """``#rrggbbaa`` for an RGB(A) colour given as floats in 0..1 or a hex string; ``None`` if unreadable."""
    if color is None:
        return None
    if isinstance(color, str):
        text = color.strip().lstrip("#")
        if len(text) == 6:
            text += "ff"
        if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
            return "#" + text.lower()
        return None
    try:
        values = np.asarray(color, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    if values.size == 3:
        values = np.append(values, 1.0)
    if values.size != 4 or not np.all(np.isfinite(values)):
        return None
    return "#" + "".join(f"{int(round(min(max(v, 0.0), 1.0) * 255)):02x}" for v in values)


def rgba(color: str) -> tuple[float, float, float, float]:
    """Floats in 0..1 for a ``#rrggbb[aa]`` colour."""
    text = hex_color(color)
    if text is None:
        raise ValueError(f"not a colour: {color!r}")
    return tuple(int(text[i : i + 2], 16) / 255.0 for i in range(1, 9, 2))  # type: ignore[return-value]


def normalize_classes(classes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Entries ``{"id": int, "name": str, "color": "#rrggbbaa" | None}`` sorted by id (one per id)."""
    out: dict[int, dict[str, Any]] = {}
    for entry in classes:
        try:
            label = int(entry["id"])
        except (KeyError, TypeError, ValueError):
            continue
        name = entry.get("name")
        out[label] = {
            "id": label,
            "name": str(name) if name not in (None, "") else f"class {label}",
            "color": hex_color(entry.get("color")),
        }
    return [out[k] for k in sorted(out)]


def write_classes_file(
    path: str | Path,
    classes: Iterable[Mapping[str, Any]],
    default_color: Any = None,
    overwrite: bool = True,
) -> Path:
    """Write the class table to ``path`` (atomically)."""
    record: dict[str, Any] = {"format": FORMAT, "version": VERSION, "classes": normalize_classes(classes)}
    if hex_color(default_color) is not None:
        record["default_color"] = hex_color(default_color)
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return path


def read_classes_file(path: str | Path) -> dict[str, Any] | None:
    """``{"classes": [...], "default_color": str | None}`` from a sidecar, or ``None``
    when it is missing or not ours (a damaged sidecar never stops the labels opening)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT or int(record.get("version", 0)) > VERSION:
        return None
    classes = normalize_classes(c for c in record.get("classes", []) if isinstance(c, Mapping))
    if not classes:
        return None
    return {"classes": classes, "default_color": hex_color(record.get("default_color"))}


def layer_kwargs(record: Mapping[str, Any]) -> dict[str, Any]:
    """Labels-layer keyword arguments for a class table: ``colormap`` (a mapping napari
    turns into a ``DirectLabelColormap``; only when colours are known) and ``features``
    (``index`` + ``class`` columns, which the status bar shows)."""
    classes = list(record["classes"])
    kwargs: dict[str, Any] = {
        "features": {"index": [c["id"] for c in classes], "class": [c["name"] for c in classes]}
    }
    colors: dict[Any, Any] = {c["id"]: rgba(c["color"]) for c in classes if c.get("color")}
    if colors:
        default = record.get("default_color")
        colors[None] = rgba(default) if default else (1.0, 0.0, 1.0, 1.0)  # unknown ids stand out
        colors.setdefault(0, (0.0, 0.0, 0.0, 0.0))  # background stays transparent
        kwargs["colormap"] = colors
    return kwargs
