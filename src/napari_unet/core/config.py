"""Model configuration: architecture, classes, input handling, provenance.

Everything a model folder's ``config.json`` holds is described here as frozen
dataclasses with documented defaults, so a model is fully described by data
and never by pickled code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1

#: Norm layers the U-Net knows. ``batch`` folds into the convolutions at
#: inference time (fastest on CPU); ``instance``/``group`` are independent of
#: batch size; ``none`` is the original 2015 architecture.
NORMS = ("batch", "instance", "group", "none")

#: Bounds of a model's architecture, so a damaged or hostile ``config.json``
#: cannot make napari-unet build a network of terabytes: at most 4 input
#: channels (grey, RGB, RGBA), 256 classes (labels are uint8: ids 0..255),
#: depth 7 (inputs padded to multiples of 128) and 4096 channels per layer.
MAX_IN_CHANNELS = 4
MAX_CLASSES = 256
MAX_DEPTH = 7
MAX_CHANNELS = 4096


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    """``value`` must be an int (not a bool or a float) in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}, got {value}")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a 2D U-Net (Ronneberger, Fischer & Brox, 2015).

    ``depth`` is the number of 2x2 max-pool steps, so inputs must be
    divisible by ``2**depth`` (the predictor pads other sizes). Channel width
    doubles at every level, starting from ``base_channels`` and capped at
    ``max_channels``.
    """

    in_channels: int = 1
    num_classes: int = 3
    depth: int = 4
    base_channels: int = 12
    max_channels: int = 256
    norm: str = "batch"

    def __post_init__(self) -> None:
        _check_int("in_channels", self.in_channels, 1, MAX_IN_CHANNELS)
        _check_int("num_classes", self.num_classes, 2, MAX_CLASSES)
        _check_int("depth", self.depth, 0, MAX_DEPTH)
        _check_int("base_channels", self.base_channels, 1, MAX_CHANNELS)
        _check_int("max_channels", self.max_channels, 1, MAX_CHANNELS)
        if not isinstance(self.norm, str) or self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

    @property
    def divisor(self) -> int:
        """Spatial sizes must be a multiple of this (``2**depth``)."""
        return 2**self.depth

    def widths(self) -> list[int]:
        """Channel width of every level, from full resolution to the bottleneck."""
        return [min(self.base_channels * 2**level, self.max_channels) for level in range(self.depth + 1)]


@dataclass(frozen=True)
class ClassInfo:
    """One output class: its label id, a human name and an RGBA colour (hex)."""

    id: int
    name: str
    color: str

    def rgba(self) -> tuple[float, float, float, float]:
        """Colour as floats in [0, 1] (``#rrggbb`` or ``#rrggbbaa``)."""
        text = self.color.lstrip("#")
        if len(text) == 6:
            text += "ff"
        if len(text) != 8:
            raise ValueError(f"class {self.name!r}: colour {self.color!r} is not #rrggbb[aa]")
        return tuple(int(text[i : i + 2], 16) / 255.0 for i in range(0, 8, 2))  # type: ignore[return-value]


#: The product's classes: 0 background, 1 tumor, 2 nerve (nerve/vessel-like).
DEFAULT_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "background", "#00000000"),
    ClassInfo(1, "tumor", "#ff3b30"),
    ClassInfo(2, "nerve", "#ffd60a"),
)


#: How intensities are mapped to the network's input scale (see :class:`InputConfig`).
NORMALIZATIONS = ("auto", "ct", "body", "percentile")

#: The soft-tissue window (W400/L40, in Hounsfield units) CT scans are read with.
DEFAULT_CT_WINDOW = (-160.0, 240.0)


@dataclass(frozen=True)
class InputConfig:
    """How raw pixels become network input.

    Every mode maps intensities affinely to about 0..1 (values outside are
    kept up to -1..2, so a bright lesion beyond the range is not flattened),
    chosen per image by ``normalization``:

    * ``ct``: a fixed window in Hounsfield units (``ct_window``, by default
      the soft-tissue window -160..240 HU). HU are absolute, so every CT is
      read the same way, whatever else is in the field of view: a whole-volume
      percentile range would squeeze liver and tumour into a few hundredths.
    * ``body``: the ``low``..``high`` percentiles of the voxels inside the
      body (brighter than the dark background), as nnU-Net z-scores MRI
      inside its foreground; for MRI and other scans with a dark surround.
    * ``percentile``: the ``low``..``high`` percentiles of the whole image,
      per channel (photos, EM, microscopy; the only mode of format 1 models).
    * ``auto`` (the default): ``ct`` for a grey scan in HU (values down to air
      at about -1000), else ``body`` for a grey scan with a dark background,
      else ``percentile``. The choice depends only on the image, so predict
      and fine-tune always agree (:func:`napari_unet.core.normalize.resolve_normalization`).

    ``rgb`` says how a colour image feeds a grey model: ``luminance`` or one
    channel (``red``/``green``/``blue``). A grey image feeding an RGB model is
    repeated over the channels.
    """

    low_percentile: float = 1.0
    high_percentile: float = 99.5
    rgb: str = "luminance"
    normalization: str = "auto"
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW

    def __post_init__(self) -> None:
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError("percentiles must satisfy 0 <= low < high <= 100")
        if self.rgb not in ("luminance", "red", "green", "blue"):
            raise ValueError(f"rgb must be luminance/red/green/blue, got {self.rgb!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        window = tuple(float(v) for v in self.ct_window)
        if len(window) != 2 or not window[0] < window[1]:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {self.ct_window!r}")
        object.__setattr__(self, "ct_window", window)


@dataclass(frozen=True)
class ModelConfig:
    """Everything ``config.json`` holds about a model folder."""

    name: str
    architecture: UNetConfig = field(default_factory=UNetConfig)
    classes: tuple[ClassInfo, ...] = DEFAULT_CLASSES
    input: InputConfig = field(default_factory=InputConfig)
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"class ids must be 0..N-1 in order, got {ids}")
        if len(self.classes) != self.architecture.num_classes:
            raise ValueError(
                f"{len(self.classes)} classes named but the network has "
                f"{self.architecture.num_classes} outputs"
            )

    @property
    def class_names(self) -> dict[int, str]:
        return {c.id: c.name for c in self.classes}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "architecture": {"type": "unet2d", **dataclasses.asdict(self.architecture)},
            "classes": [dataclasses.asdict(c) for c in self.classes],
            "input": dataclasses.asdict(self.input),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Parse ``config.json``'s content, checking every field's type and bounds;
        a ``ValueError`` names the first wrong field (``architecture.depth must be ...``)."""
        if not isinstance(data, dict):
            raise ValueError(f"config.json must hold a JSON object, got {type(data).__name__}")
        version = data.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"format_version must be a whole number >= 0, got {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"model format version {version} is newer than this napari-unet "
                f"understands ({FORMAT_VERSION}); upgrade napari-unet"
            )
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        arch = _section(data, "architecture")
        kind = arch.pop("type", "unet2d")
        if kind != "unet2d":
            raise ValueError(f"architecture.type {kind!r} is unknown (napari-unet builds 'unet2d')")
        known = {f.name for f in dataclasses.fields(UNetConfig)}
        unknown = sorted(set(arch) - known)
        if unknown:
            raise ValueError(f"architecture has unknown field {unknown[0]!r}")
        try:
            architecture = UNetConfig(**arch)
        except ValueError as exc:
            raise ValueError(f"architecture.{exc}") from exc
        provenance = data.get("provenance", {})
        if not isinstance(provenance, dict):
            raise ValueError(f"provenance must be an object, got {type(provenance).__name__}")
        try:
            return cls(
                name=name,
                architecture=architecture,
                classes=_classes(data.get("classes")),
                input=_input_config(_section(data, "input")),
                provenance=dict(provenance),
                format_version=FORMAT_VERSION,
            )
        except TypeError as exc:  # pragma: no cover - every field is checked above
            raise ValueError(f"config.json has a field of the wrong type: {exc}") from exc

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be an object, got {type(value).__name__}")
    return dict(value)


def _classes(items: Any) -> tuple[ClassInfo, ...]:
    if not isinstance(items, list) or not items:
        raise ValueError(f"classes must be a list of {{id, name, color}} objects, got {items!r:.60}")
    if len(items) > MAX_CLASSES:
        raise ValueError(f"classes lists {len(items)} classes; at most {MAX_CLASSES} (labels are uint8)")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"classes[{n}] must be an object with id, name and color, got {item!r:.60}")
        unknown = sorted(set(item) - {"id", "name", "color"})
        if unknown:
            raise ValueError(f"classes[{n}] has unknown field {unknown[0]!r}")
        for key in ("id", "name", "color"):
            if key not in item:
                raise ValueError(f"classes[{n}] has no {key}")
        _check_int(f"classes[{n}].id", item["id"], 0, MAX_CLASSES - 1)
        if not isinstance(item["name"], str):
            raise ValueError(f"classes[{n}].name must be a string, got {item['name']!r:.60}")
        color = item["color"]
        text = color.lstrip("#") if isinstance(color, str) else ""
        if not (isinstance(color, str) and color.startswith("#") and len(text) in (6, 8)
                and all(c in "0123456789abcdefABCDEF" for c in text)):
            raise ValueError(f"classes[{n}].color must be '#rrggbb' or '#rrggbbaa', got {color!r:.60}")
        out.append(ClassInfo(item["id"], item["name"], color))
    return tuple(out)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"input.{name} must be a number, got {value!r:.60}")
    return float(value)


def _input_config(data: dict[str, Any]) -> InputConfig:
    """``config.json``'s ``input``; a model saved before ``normalization``
    existed was trained on whole-image percentiles and keeps them."""
    data = dict(data)
    known = {f.name for f in dataclasses.fields(InputConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"input has unknown field {unknown[0]!r}")
    data.setdefault("normalization", "percentile")
    for key in ("low_percentile", "high_percentile"):
        if key in data:
            data[key] = _number(key, data[key])
    for key in ("rgb", "normalization"):
        if not isinstance(data.get(key, ""), str):
            raise ValueError(f"input.{key} must be a string, got {data[key]!r:.60}")
    if "ct_window" in data:
        window = data["ct_window"]
        if not isinstance(window, list | tuple) or len(window) != 2:
            raise ValueError(f"input.ct_window must be [low, high], got {window!r:.60}")
        data["ct_window"] = tuple(_number("ct_window", v) for v in window)
    try:
        return InputConfig(**data)
    except ValueError as exc:
        raise ValueError(f"input: {exc}") from exc
