"""DICOM series (a folder, or one file of it) with pydicom.

Slices are grouped by ``SeriesInstanceUID``, sorted by their position along
the slice normal (``ImagePositionPatient`` projected on the cross product of
the ``ImageOrientationPatient`` direction cosines) and stacked to napari's
``(Z, Y, X)`` = (slice, row, column). ``RescaleSlope``/``RescaleIntercept`` are
applied (CT in Hounsfield units) in the smallest dtype that holds the actual
rescaled values: integers stay integers, fractional slopes give float32.

Geometry: spacing = (slice step, PixelSpacing[0] (rows), PixelSpacing[1]
(columns)); the LPS+ affine from DICOM is converted to the RAS+ NIfTI
convention for :attr:`ScanMeta.affine` (and kept as ``extra["dicom"]["lps_affine"]``).
Missing slices and non-uniform spacing give a :class:`GeometryWarning` naming
the slices. Patient identifiers are never copied into the metadata.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import GeometryWarning, IOErrorMessage, Scan, ScanMeta, reason
from .geometry import LPS_TO_RAS, axis_codes, origin_from_affine

#: Relative deviation of a slice step from the median step that counts as non-uniform.
SPACING_TOLERANCE = 0.01
#: A step this many times the median means slices are missing.
GAP_FACTOR = 1.5
_DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
_SKIP_NAMES = {"dicomdir", ".ds_store", "thumbs.db"}


@dataclass
class _Slice:
    path: Path
    header: Any  # pydicom Dataset without pixel data


def _pydicom_errors() -> tuple[type[BaseException], ...]:
    from pydicom.errors import InvalidDicomError

    return (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError)


def looks_like_dicom(path: Path) -> bool:
    """A cheap sniff: a DICOM suffix or the ``DICM`` marker at byte 128."""
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def folder_has_dicom(folder: Path, limit: int = 50) -> bool:
    """Whether ``folder`` (or a sub-folder) holds a DICOM file, checking at most ``limit`` files."""
    for count, candidate in enumerate(_candidate_files(folder)):
        if count >= limit:
            return False
        if looks_like_dicom(candidate):
            return True
    return False


def _candidate_files(folder: Path):
    for candidate in sorted(folder.rglob("*")):
        if candidate.is_file() and not candidate.name.startswith(".") and candidate.name.lower() not in _SKIP_NAMES:
            yield candidate


def _read_header(path: Path, strict: bool):
    """The dataset without pixels; ``None`` for a non-DICOM file when not ``strict``.

    ``strict`` (a file with a DICOM suffix, or one the user named) also accepts
    files without the 128-byte preamble, but fails on anything else.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        if not strict:
            return None
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except _pydicom_errors() as forced_exc:
            raise IOErrorMessage(f"{path}: not a readable DICOM file ({reason(forced_exc)})") from forced_exc
        if "SOPClassUID" not in header and "Rows" not in header:
            # pydicom's own text advises its force=True, which is no option of ours
            raise IOErrorMessage(f"{path}: not a DICOM file (no 'DICM' marker and no DICOM header)") from exc
        return header
    except _pydicom_errors() as exc:
        raise IOErrorMessage(f"{path}: not a readable DICOM file ({reason(exc)})") from exc


def series_uid(path: Path) -> str | None:
    """The ``SeriesInstanceUID`` of one DICOM file (header only), ``None`` if it has none."""
    uid = str(_read_header(Path(path), strict=True).get("SeriesInstanceUID", ""))
    return uid or None


def read_dicom(path: Path) -> list[Scan]:
    """Every image series in a DICOM folder, or the series one file belongs to."""
    path = Path(path)
    if path.is_file():
        first = _read_header(path, strict=True)
        uid = str(first.get("SeriesInstanceUID", ""))
        if int(first.get("NumberOfFrames", 1) or 1) > 1 or not uid:
            return [_build_series([_Slice(path, first)], path)]
        slices = [
            s for s in _scan_folder(path.parent) if str(s.header.get("SeriesInstanceUID", "")) == uid
        ]
        return [_build_series(slices or [_Slice(path, first)], path)]
    slices = _scan_folder(path)
    if not slices:
        raise IOErrorMessage(f"{path}: no DICOM images found in this folder")
    series: dict[str, list[_Slice]] = defaultdict(list)
    for item in slices:
        series[str(item.header.get("SeriesInstanceUID", "unknown"))].append(item)
    scans = [_build_series(items, path) for items in series.values()]
    _unique_names(scans)
    return sorted(scans, key=lambda s: (s.meta.extra["dicom"].get("series_number") or 0, s.name))


def _scan_folder(folder: Path) -> list[_Slice]:
    slices = []
    for candidate in _candidate_files(folder):
        header = _read_header(candidate, strict=candidate.suffix.lower() in _DICOM_SUFFIXES)
        if header is None or "Rows" not in header:
            continue  # DICOMDIR, structured reports, presentation states
        slices.append(_Slice(candidate, header))
    return slices


def _unique_names(scans: list[Scan]) -> None:
    seen: dict[str, int] = {}
    for scan in scans:
        count = seen.get(scan.name, 0)
        seen[scan.name] = count + 1
        if count:
            scan.name = f"{scan.name} ({count + 1})"


def _series_name(header, fallback: Path) -> str:
    description = str(header.get("SeriesDescription", "") or "").strip()
    if description:
        return description
    number = header.get("SeriesNumber")
    if number not in (None, ""):
        return f"series {number}"
    return fallback.stem or "dicom"


def _floats(value, count: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (count,) and np.all(np.isfinite(out)) else None


def _pixel_spacing(header) -> tuple[float, float]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _floats(header.get(keyword), 2) if keyword in header else None
        if value is not None and np.all(value > 0):
            return float(value[0]), float(value[1])
    shared = _functional(header, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence")
    if shared is not None and "PixelSpacing" in shared:
        value = _floats(shared.PixelSpacing, 2)
        if value is not None and np.all(value > 0):
            return float(value[0]), float(value[1])
    return 1.0, 1.0


def _functional(header, group: str, item: str, frame: int = 0):
    try:
        return getattr(getattr(header, group)[frame], item)[0]
    except (AttributeError, IndexError, TypeError):
        return None


def _build_series(slices: list[_Slice], source: Path) -> Scan:
    first = slices[0].header
    name = _series_name(first, source)
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        if len(slices) > 1:
            raise IOErrorMessage(f"{source}: series {name!r} mixes multi-frame files; open one file at a time")
        return _build_multiframe(slices[0], name, source)
    shapes = {(int(s.header.get("Rows", 0)), int(s.header.get("Columns", 0))) for s in slices}
    if len(shapes) > 1:
        raise IOErrorMessage(
            f"{source}: series {name!r} has slices of different sizes {sorted(shapes)}; split it first"
        )
    row_step, col_step = _pixel_spacing(first)
    orientation = _floats(first.get("ImageOrientationPatient"), 6)
    positions = [_floats(s.header.get("ImagePositionPatient"), 3) for s in slices]
    if orientation is None or any(p is None for p in positions):
        order = sorted(range(len(slices)), key=lambda i: int(slices[i].header.get("InstanceNumber", i) or i))
        step = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)
        if len(slices) > 1:
            warnings.warn(
                f"{name}: no ImagePositionPatient/ImageOrientationPatient; slices ordered by "
                f"InstanceNumber with spacing {step:g} mm",
                GeometryWarning,
                stacklevel=3,
            )
        row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
        origin = np.zeros(3)
        normal = np.array([0, 0, 1.0])
    else:
        row_dir, col_dir = orientation[:3], orientation[3:]
        normal = np.cross(row_dir, col_dir)
        depth = np.array([float(p @ normal) for p in positions])
        order = list(np.argsort(depth, kind="stable"))
        thickness = float(first.get("SliceThickness", 0) or 1.0)
        step = _check_spacing(depth[order], [slices[i].path for i in order], name, source, thickness)
        origin = positions[order[0]]
    ordered = [slices[i] for i in order]
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_step  # i: along a row = next column
    lps[:3, 1] = col_dir * row_step  # j: down a column = next row
    lps[:3, 2] = normal * step  # k: next slice
    lps[:3, 3] = origin
    volume, rgb, window = _read_pixels(ordered, name)
    ras = LPS_TO_RAS @ lps
    spatial = volume.shape[:3]
    meta = ScanMeta(
        spacing=(float(step), row_step, col_step),
        origin=origin_from_affine(ras, 3),
        affine=ras,
        units="mm",
        shape=tuple(int(s) for s in spatial),
        extra={
            "format": "dicom",
            "orientation": axis_codes(ras),
            "dicom": _series_facts(first, len(ordered), lps, window),
        },
    )
    return Scan(data=volume, meta=meta, name=name, rgb=rgb, source=str(source))


def _check_spacing(
    depth: np.ndarray, paths: list[Path], name: str, source: Path, default: float = 1.0
) -> float:
    """The slice step; warns about gaps and uneven steps, fails on stacked duplicates."""
    if len(depth) < 2:
        return default
    steps = np.diff(depth)
    duplicates = np.flatnonzero(steps < 1e-4)
    if duplicates.size:
        i = int(duplicates[0])
        raise IOErrorMessage(
            f"{source}: series {name!r} has {duplicates.size + 1} slices at the same position "
            f"(e.g. {paths[i].name} and {paths[i + 1].name}); several acquisitions or time points "
            "in one series are not supported, split it first"
        )
    step = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * step)
    if gaps.size:
        where = ", ".join(
            f"after slice {i} ({paths[i].name}, ~{round(steps[i] / step) - 1} missing)" for i in gaps[:5]
        )
        more = f" and {gaps.size - 5} more" if gaps.size > 5 else ""
        warnings.warn(
            f"{name}: missing slices {where}{more}; the volume is stacked without them",
            GeometryWarning,
            stacklevel=4,
        )
    uneven = np.flatnonzero((np.abs(steps - step) > SPACING_TOLERANCE * step) & (steps <= GAP_FACTOR * step))
    if uneven.size:
        where = ", ".join(f"{i}-{i + 1} ({steps[i]:.4g} mm)" for i in uneven[:5])
        more = f" and {uneven.size - 5} more" if uneven.size > 5 else ""
        warnings.warn(
            f"{name}: non-uniform slice spacing ({steps.min():.4g} to {steps.max():.4g} mm; using "
            f"{step:.4g} mm) between slices {where}{more}",
            GeometryWarning,
            stacklevel=4,
        )
    return step


def _rescale(header) -> tuple[float, float]:
    try:
        slope = float(header.get("RescaleSlope", 1) or 1)
        intercept = float(header.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return 1.0, 0.0
    return slope, intercept


def _read_pixels(slices: list[_Slice], name: str) -> tuple[np.ndarray, bool, tuple[float, float] | None]:
    """Stack the slices' pixels with rescale applied in a dtype that cannot overflow."""
    import pydicom

    raw: list[np.ndarray] = []
    scales: list[tuple[float, float]] = []
    for item in slices:
        try:
            dataset = pydicom.dcmread(item.path, force=True)
            pixels = dataset.pixel_array
        except _pydicom_errors() + (RuntimeError, NotImplementedError) as exc:
            raise IOErrorMessage(f"{item.path}: pixel data cannot be read, the file may be truncated ({reason(exc)})") from exc
        raw.append(pixels)
        scales.append(_rescale(dataset))
    rgb = raw[0].ndim == 3
    shapes = {r.shape for r in raw}
    if len(shapes) > 1:
        raise IOErrorMessage(f"{name}: slices have different pixel shapes {sorted(shapes)}")
    window = _window(slices[0].header)
    rescaled = not rgb and any(s != (1.0, 0.0) for s in scales)
    if not rescaled:
        return np.stack(raw), rgb, window
    low = min(min(float(r.min()) * s + b, float(r.max()) * s + b) for r, (s, b) in zip(raw, scales))
    high = max(max(float(r.min()) * s + b, float(r.max()) * s + b) for r, (s, b) in zip(raw, scales))
    integral = all(float(s).is_integer() and float(b).is_integer() for s, b in scales)
    dtype = _rescaled_dtype(low, high, integral)
    volume = np.empty((len(raw), *raw[0].shape), dtype=dtype)
    work = np.int64 if integral else np.float64
    for z in range(len(raw)):
        slope, intercept = scales[z]
        plane = raw[z].astype(work) * work(slope) + work(intercept)
        volume[z] = plane
        raw[z] = None  # free as we go
    return volume, rgb, window


def _rescaled_dtype(low: float, high: float, integral: bool) -> np.dtype:
    if not integral:
        return np.dtype(np.float32) if max(abs(low), abs(high)) < 3e38 else np.dtype(np.float64)
    for dtype in (np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float64)


def _window(header) -> tuple[float, float] | None:
    center, width = header.get("WindowCenter"), header.get("WindowWidth")
    try:
        center = float(center[0] if hasattr(center, "__len__") and not isinstance(center, str) else center)
        width = float(width[0] if hasattr(width, "__len__") and not isinstance(width, str) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width > 0 else None


def _series_facts(header, count: int, lps: np.ndarray, window) -> dict[str, Any]:
    """Non-identifying facts about the series, safe to keep in layer metadata."""
    facts: dict[str, Any] = {"slices": count, "lps_affine": lps}
    for keyword, key in (
        ("SeriesInstanceUID", "series_uid"),
        ("SeriesDescription", "series_description"),
        ("Modality", "modality"),
        ("PhotometricInterpretation", "photometric"),
    ):
        if keyword in header:
            facts[key] = str(header.get(keyword))
    number = header.get("SeriesNumber")
    try:
        facts["series_number"] = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        facts["series_number"] = None
    if window is not None:
        facts["window"] = window
    return facts


def _build_multiframe(item: _Slice, name: str, source: Path) -> Scan:
    """An enhanced (multi-frame) image: frames are slices, geometry from the functional groups."""
    header = item.header
    import pydicom

    try:
        dataset = pydicom.dcmread(item.path, force=True)
        pixels = dataset.pixel_array
    except _pydicom_errors() + (RuntimeError, NotImplementedError) as exc:
        raise IOErrorMessage(f"{item.path}: pixel data cannot be read ({reason(exc)})") from exc
    frames = pixels.shape[0]
    row_step, col_step = _pixel_spacing(header)
    plane = _functional(dataset, "SharedFunctionalGroupsSequence", "PlaneOrientationSequence")
    orientation = _floats(plane.ImageOrientationPatient, 6) if plane is not None else None
    positions = []
    for frame in range(frames):
        position = _functional(dataset, "PerFrameFunctionalGroupsSequence", "PlanePositionSequence", frame)
        positions.append(_floats(position.ImagePositionPatient, 3) if position is not None else None)
    measures = _functional(dataset, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence")
    step = float(getattr(measures, "SpacingBetweenSlices", 0) or getattr(measures, "SliceThickness", 0) or 1.0)
    lps = np.eye(4)
    if orientation is not None and all(p is not None for p in positions):
        row_dir, col_dir = orientation[:3], orientation[3:]
        normal = np.cross(row_dir, col_dir)
        depth = np.array([float(p @ normal) for p in positions])
        order = np.argsort(depth, kind="stable")
        pixels = pixels[order]
        step = _check_spacing(depth[order], [item.path.with_name(f"{item.path.name}#{i}") for i in order], name, source)
        lps[:3, 0], lps[:3, 1], lps[:3, 2] = row_dir * col_step, col_dir * row_step, normal * step
        lps[:3, 3] = positions[int(order[0])]
    else:
        lps[:3, :3] = np.diag([col_step, row_step, step])
    slope, intercept = _rescale(dataset)
    if (slope, intercept) != (1.0, 0.0):
        integral = float(slope).is_integer() and float(intercept).is_integer()
        ends = (float(pixels.min()) * slope + intercept, float(pixels.max()) * slope + intercept)
        dtype = _rescaled_dtype(min(ends), max(ends), integral)
        pixels = (pixels.astype(np.int64 if integral else np.float64) * slope + intercept).astype(dtype)
    ras = LPS_TO_RAS @ lps
    rgb = pixels.ndim == 4
    meta = ScanMeta(
        spacing=(float(step), row_step, col_step),
        origin=origin_from_affine(ras, 3),
        affine=ras,
        units="mm",
        shape=tuple(int(s) for s in pixels.shape[:3]),
        extra={"format": "dicom", "orientation": axis_codes(ras), "dicom": _series_facts(header, frames, lps, _window(header))},
    )
    return Scan(data=pixels, meta=meta, name=name, rgb=rgb, source=str(source))
