"""napari reader and writers (npe2 contributions) on top of :mod:`napari_unet.io`.

A reader returns plain LayerData tuples ``(data, kwargs, layer_type)`` and a
writer takes ``(path, data, meta)``; napari itself is imported only inside the
few functions that run in napari (reader preference, notifications), never at
module level, so the LayerData logic is testable headless.

Layers get ``scale`` = voxel spacing and ``translate`` = world position of
voxel 0, in napari's (Z, Y, X) order, and ``metadata`` with the 4x4 affine
(NIfTI convention: index (x, y, z) -> RAS+ mm) and format facts; the label
writers read that metadata back so a saved mask overlays its scan in other
tools. napari's save dialog asks before replacing a file, so these writers
overwrite. Class names and colours of a Labels layer are saved beside the
file (:mod:`napari_unet.io.classes`) and come back when it is reopened; a CT
in Hounsfield units opens with a soft-tissue window (:mod:`napari_unet.io.windows`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from .io import IOErrorMessage, Scan, ScanMeta, format_of, read_all_axes, write_labels
from .io.base import one_line, reason
from .io.classes import classes_path, hex_color, layer_kwargs, read_classes_file, write_classes_file
from .io.formats import plugin_can_read
from .io.trusted import metadata_from_sidecar, sidecar_path, write_sidecar_from_metadata
from .io.windows import ct_display

LayerData = tuple[Any, dict[str, Any], str]
PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]

#: The npe2 plugin name (``napari.yaml``).
PLUGIN_NAME = "napari-unet-loop"
#: Names this plugin had before (``napari-unet`` until 0.3: that name on the
#: package index belongs to another project). Reader preferences saved under
#: them are moved to :data:`PLUGIN_NAME` while no plugin of that name is installed.
FORMER_NAMES = ("napari-unet",)
#: The reader's ``filename_patterns`` in ``napari.yaml`` (a test keeps them equal).
READER_PATTERNS = ("*.nii", "*.nii.gz", "*.dcm", "*.DCM", "*.ima", "*.zarr", "*.tif", "*.tiff")


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """The reader for ``path`` (a file, folder or list of them), or ``None`` when
    this plugin cannot open it. Cheap: looks at names and, for folders, a few files.

    napari asks only when it reads with this plugin, so this is also where the
    plugin becomes napari's preferred reader for its patterns (see
    :func:`use_plugin_reader_by_default`)."""
    paths = _as_paths(path)
    if not paths or not all(_can_read(p) for p in paths):
        return None
    use_plugin_reader_by_default()
    return read_layers_in_napari


def can_read(path: PathOrPaths) -> bool:
    """Whether this plugin's reader opens ``path`` (headless; no napari needed)."""
    paths = _as_paths(path)
    return bool(paths) and all(_can_read(p) for p in paths)


# -------------------------------------------------------- napari integration
def preference_patterns() -> tuple[str, ...]:
    """Patterns to prefer this plugin for in napari's ``extension2reader``.

    napari matches a folder as ``path + os.sep``, so a zarr folder needs
    ``*.zarr/``. DICOM folders have no pattern that would not also claim
    every other folder, so they are not included."""
    return (*READER_PATTERNS, f"*.zarr{os.sep}")


def preferred_readers(
    current: Mapping[str, str], plugin: str = PLUGIN_NAME, former: tuple[str, ...] = ()
) -> dict[str, str]:
    """``current`` (napari's ``settings.plugins.extension2reader``) with ``plugin``
    added for each of :func:`preference_patterns` that no existing preference covers.

    A preference the user set (for the pattern itself, or a broader one such as
    ``*.gz`` that matches the same files) is never overridden, except one naming
    this plugin under a ``former`` name, which now names ``plugin``."""
    merged = {pattern: plugin if reader in former else reader for pattern, reader in current.items()}
    for pattern in preference_patterns():
        example = os.path.join(os.sep, "data", pattern.replace("*", "scan", 1))
        if any(fnmatch(example, existing) for existing in merged):
            continue
        merged[pattern] = plugin
    return merged


def use_plugin_reader_by_default() -> bool:
    """Make this plugin napari's reader for its patterns, so File > Open does not
    ask a newcomer to choose between it and napari's builtins. Keeps every
    preference the user set. Returns whether anything changed; does nothing
    (``False``) when napari's settings cannot be used."""
    try:
        from napari.settings import get_settings
        from npe2 import PluginManager

        settings = get_settings().plugins
        current = dict(settings.extension2reader)
        registered = {m.name for m in PluginManager.instance().iter_manifests()}
        former = tuple(name for name in FORMER_NAMES if name not in registered)
        merged = preferred_readers(current, former=former)
        if merged == current:
            return False
        settings.extension2reader = merged
        return True
    except Exception:  # noqa: BLE001 - a preference is a convenience; reading must go on
        return False


def notify_error(message: str) -> None:
    """Show ``message`` as a napari error notification (one line; no traceback)."""
    try:
        from napari.utils.notifications import show_error
    except ImportError:  # pragma: no cover - napari calls this, so it is there
        raise IOErrorMessage(message) from None
    show_error(message)


def read_layers_in_napari(path: PathOrPaths) -> list[LayerData]:
    """:func:`read_layers` for napari: a file that cannot be read gives a one-line
    error notification (and no layer) instead of a traceback and a reader dialog."""
    try:
        layers = read_layers(path)
    except IOErrorMessage as exc:
        notify_error(str(exc))
        return [(None,)]  # npe2's "read, but nothing to add": no other reader is tried
    except (OSError, ValueError, MemoryError) as exc:  # the same net as ``napari-unet view``
        notify_error(one_line(f"{_first(path)}: cannot be read ({type(exc).__name__}: {reason(exc)})"))
        return [(None,)]
    if any(_RANGE_KEY in (kw.get("metadata") or {}).get("napari_unet", {}) for _, kw, _ in layers):
        _watch_current_viewer()
    return layers


#: Layer metadata key (under ``napari_unet``) for the contrast slider range to set on insertion.
_RANGE_KEY = "contrast_range_on_open"
_WATCHED: list[Any] = []  # weak references to viewers whose layer list widens CT ranges


def widen_contrast_range(layer: Any) -> None:
    """Give a layer opened with a CT window the slider range stored by the reader
    (data and all presets), once, right after it is added. Never changes the
    contrast limits themselves."""
    meta = getattr(layer, "metadata", None)
    record = meta.get("napari_unet") if isinstance(meta, dict) else None
    if not isinstance(record, dict) or _RANGE_KEY not in record:
        return
    low, high = record.pop(_RANGE_KEY)
    current = layer.contrast_limits_range
    layer.contrast_limits_range = (min(low, current[0]), max(high, current[1]))


def _watch_current_viewer() -> None:
    import weakref

    try:
        from napari import current_viewer
    except ImportError:  # pragma: no cover - napari calls the reader
        return
    viewer = current_viewer()
    if viewer is None or any(ref() is viewer for ref in _WATCHED):
        return
    _WATCHED[:] = [ref for ref in _WATCHED if ref() is not None] + [weakref.ref(viewer)]
    viewer.layers.events.inserted.connect(lambda event: widen_contrast_range(event.value))


def open_in_viewer(viewer: Any, path: str | os.PathLike) -> list[Any]:
    """Open ``path`` in ``viewer`` with this plugin's reader (napari's builtins claim
    the same extensions, so a plain ``viewer.open`` would ask which reader to use).

    Returns the layers added; a file this plugin cannot open, or one that fails
    to read, gives a one-line notification and no layer."""
    use_plugin_reader_by_default()
    if not can_read(path):
        notify_error(f"{path}: napari-unet cannot open this (NIfTI, DICOM, TIFF or zarr scans)")
        return []
    layers = list(viewer.open(os.fspath(path), plugin=PLUGIN_NAME))
    for layer in layers:  # current_viewer() may be another window than ``viewer``
        widen_contrast_range(layer)
    return layers


def _first(path: PathOrPaths) -> str:
    paths = _as_paths(path)
    return str(paths[0]) if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"


def _as_paths(path: PathOrPaths) -> list[Path]:
    if isinstance(path, str | os.PathLike):
        return [Path(path)]
    return [Path(p) for p in path]


def _can_read(path: Path) -> bool:
    return plugin_can_read(path)


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
    # saved class names and colours mark a label image too, and give it back its look
    classes = read_classes_file(classes_path(scan.source)) if scan.source and not scan.rgb else None
    if record is not None and not scan.rgb:
        kwargs["metadata"].setdefault("napari_unet", {})["trusted"] = record
    if classes is not None:
        kwargs.update(layer_kwargs(classes))
        kwargs["metadata"].setdefault("napari_unet", {})["classes"] = {c["id"]: c["name"] for c in classes["classes"]}
    if (record is not None and not scan.rgb) or classes is not None or scan.is_labels:
        return data, kwargs, "labels"
    if scan.rgb:
        kwargs["rgb"] = True
    window = meta.extra.get("dicom", {}).get("window")
    if window is not None:
        center, width = window
        kwargs["contrast_limits"] = (center - width / 2, center + width / 2)
    try:
        display = ct_display(scan.data, scan.spatial_ndim, rgb=scan.rgb)
    except IOErrorMessage:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged chunk of a lazy scan, read for the first time here
        raise IOErrorMessage(f"{scan.source or scan.name}: the data cannot be read ({reason(exc)})") from exc
    if display is not None:
        # the file's own window (DICOM) wins; else soft tissue, and the presets for the GUI
        kwargs.setdefault("contrast_limits", display["contrast_limits"])
        kwargs["metadata"].setdefault("napari_unet", {})["ct_windows"] = display["ct_windows"]
        # napari shrinks the slider to the given limits; widen_contrast_range restores it on insertion
        kwargs["metadata"]["napari_unet"][_RANGE_KEY] = display["contrast_range"]
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
    out = [str(written)]
    # corrections (trusted pixels) travel with the labels, so fine-tuning resumes after a restart
    sidecar = write_sidecar_from_metadata(written, meta.get("metadata"))
    if sidecar:
        out.append(str(sidecar))
    else:  # a stale record would make fine-tuning trust pixels nobody corrected
        sidecar_path(written).unlink(missing_ok=True)
    # so do class names and colours, so the labels reopen as they were saved
    table = class_table(meta)
    if table is not None:
        out.append(str(write_classes_file(classes_path(written), table["classes"], table["default_color"])))
    else:
        classes_path(written).unlink(missing_ok=True)  # a stale table would repaint these labels
    return out


def class_table(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The class names and colours of a Labels layer from a writer's ``meta``:
    names from ``features`` (``index`` + ``class``/``name`` columns, as the
    Segment widget sets them) or ``metadata["napari_unet"]["classes"]``, colours
    from a direct colormap (``colormap.color_dict``). ``None`` when the layer has
    neither names nor colours of its own (napari's default cycle)."""
    names: dict[int, str] = {}
    stored = ((meta.get("metadata") or {}).get("napari_unet") or {}).get("classes")
    if isinstance(stored, Mapping):
        for key, value in stored.items():
            try:
                names[int(key)] = str(value)
            except (TypeError, ValueError):
                continue
    names.update(_feature_names(meta.get("features")))
    colors: dict[int, str] = {}
    default = None
    color_dict = getattr(meta.get("colormap"), "color_dict", None)
    if isinstance(color_dict, Mapping):
        for key, value in color_dict.items():
            if key is None:
                default = hex_color(value)
                continue
            try:
                label = int(key)
            except (TypeError, ValueError):
                continue
            if hex_color(value) is not None:
                colors[label] = hex_color(value)
    if not names and not colors:
        return None
    ids = sorted(set(names) | set(colors))
    classes = [{"id": i, "name": names.get(i, f"class {i}"), "color": colors.get(i)} for i in ids]
    return {"classes": classes, "default_color": default}


def _feature_names(features: Any) -> dict[int, str]:
    """``{id: name}`` from a features table (DataFrame or dict of columns) with an
    ``index`` column and a ``class`` or ``name`` column."""
    if features is None:
        return {}
    try:
        columns = list(features.keys())
        index = list(features["index"])
    except (AttributeError, KeyError, TypeError):
        return {}
    column = next((c for c in ("class", "name", "label") if c in columns), None)
    if column is None:
        return {}
    out: dict[int, str] = {}
    for label, name in zip(index, list(features[column]), strict=False):
        try:
            out[int(label)] = str(name)
        except (TypeError, ValueError):
            continue
    return out


def write_labels_nifti(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a Labels layer as NIfTI with its scan's affine (from the layer metadata)."""
    return _write(path, data, meta)


def write_labels_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a Labels layer as a TIFF stack with its spacing (ImageJ metadata)."""
    return _write(path, data, meta)


def write_labels_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a Labels layer as an OME-Zarr label image, written plane by plane."""
    return _write(path, data, meta)
