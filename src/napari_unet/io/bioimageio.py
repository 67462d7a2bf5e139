"""BioImage.IO model packages: export a model folder, import one back.

:func:`export_bioimageio` writes a zip in the BioImage.IO model format 0.5
(``bioimageio.spec``'s ``ModelDescr``), which other consumers (bioimageio.core,
deepImageJ, ilastik, ...) can run without napari-unet:

* TorchScript weights of the network alone, ending in a softmax (class
  probabilities); the normalisation is *not* inside, it is described as the
  input's preprocessing (:func:`preprocessing_steps`);
* input ``raw`` (batch, channel, y, x), output ``probabilities`` (batch,
  one channel per class, y, x); y and x are ``min + n * 2**depth``;
* test input/output tensors (the output computed by the exported TorchScript
  from the test input after the described preprocessing), a 2:1 cover, a
  README (the model card for bundled models, the provenance for your own),
  authors, licence, citation;
* napari-unet's own ``config.json`` and ``weights.safetensors`` as
  attachments, so :func:`import_bioimageio` restores the model folder.

Import reads only those attachments (safetensors: nothing is unpickled) and
needs no ``bioimageio.spec``; a package napari-unet did not write is refused
with a message saying what is supported. Export needs the ``bioimageio``
extra (``pip install "napari-unet-loop[bioimageio]"``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.core.config import InputConfig, ModelConfig
from napari_unet.core.normalize import CLIP, CT_CLIP
from napari_unet.core.weights import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    WEIGHTS_HASH_KEY,
    ModelError,
    SegmentationModel,
    is_bundled_path,
    load_model_folder,
    save_model,
    sha256_of,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONFIG_ATTACHMENT",
    "INSTALL_HINT",
    "BioimageioUnavailable",
    "ForeignPackageError",
    "PackageError",
    "Preprocessing",
    "apply_preprocessing",
    "export_bioimageio",
    "import_bioimageio",
    "preprocessing_steps",
    "read_package",
]

#: napari-unet's ``config.json`` inside a package (a distinctive name: other
#: packages may well carry a ``config.json`` of their own).
CONFIG_ATTACHMENT = "napari-unet-config.json"
#: The weights attachment: the model folder's own safetensors file.
WEIGHTS_ATTACHMENT = WEIGHTS_FILE
TORCHSCRIPT_FILE = "weights-torchscript.pt"
INPUT_ID = "raw"
OUTPUT_ID = "probabilities"
#: Pixels a tiling consumer should crop from each side of an output tile.
HALO = 32
LICENSE = "BSD-3-Clause"
UNET_CITATION = (
    "Ronneberger, Fischer & Brox (2015): U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015, LNCS 9351, 234-241",
    "10.1007/978-3-319-24574-4_28",
)
INSTALL_HINT = 'pip install "napari-unet-loop[bioimageio]"'
#: Largest attachment sizes import reads (a damaged or hostile zip cannot fill memory).
MAX_CONFIG_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 4 << 30
_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
_EXPORT_MODES = ("percentile", "ct", "body")


class PackageError(ModelError):
    """A BioImage.IO package that cannot be written or read; the message says why."""


class ForeignPackageError(PackageError):
    """A package (or file) that napari-unet did not export."""


class BioimageioUnavailable(PackageError):
    """``bioimageio.spec`` is not installed."""


def _spec():
    """``bioimageio.spec`` (imported on first use), or a clear error."""
    try:
        import bioimageio.spec as spec
        from bioimageio.spec.model import v0_5  # noqa: F401 - the 0.5 format must exist
    except ImportError as exc:
        raise BioimageioUnavailable(
            f"exporting a BioImage.IO package needs bioimageio.spec (0.5.4 or newer): {INSTALL_HINT}"
        ) from exc
    return spec


# ---------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class Preprocessing:
    """The input preprocessing of a package, as BioImage.IO operations.

    ``steps`` are ``{"id": ..., "kwargs": {...}}`` in the spec's terms;
    ``mode`` the napari-unet normalisation they describe; ``exact`` whether
    they reproduce it for a 2D image; ``notes`` what differs."""

    mode: str
    steps: tuple[dict[str, Any], ...]
    exact: bool
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        parts = []
        for step in self.steps:
            kwargs = ", ".join(f"{k}={v}" for k, v in step["kwargs"].items() if k != "axes")
            parts.append(f"{step['id']}({kwargs})")
        return " -> ".join(parts)


def preprocessing_steps(input_config: InputConfig, mode: str | None = None) -> Preprocessing:
    """The BioImage.IO preprocessing closest to ``input_config``'s normalisation.

    ``mode`` (``percentile``, ``ct`` or ``body``) overrides the config's; a
    config's ``auto`` chooses per image, which a package cannot, so it is
    exported as ``percentile`` (whole-image percentiles: what the bundled
    models were trained with, and ``auto``'s choice for everything that is
    neither CT nor a scan with a dark surround).
    """
    configured = input_config.normalization
    mode = mode or ("percentile" if configured == "auto" else configured)
    if mode not in _EXPORT_MODES:
        raise PackageError(f"normalization {mode!r} cannot be exported; choose one of {', '.join(_EXPORT_MODES)}")
    notes: list[str] = []
    if configured == "auto" and mode != configured:
        notes.append(
            f"napari-unet reads this model with normalization 'auto' (CT window for CT in HU, inside-body "
            f"percentiles for scans with a dark surround, whole-image percentiles otherwise); a package "
            f"describes one mode, here '{mode}'"
        )
    elif mode != configured:
        notes.append(f"napari-unet reads this model with normalization '{configured}'; exported as '{mode}'")
    first = {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}
    if mode == "ct":
        lo, hi = (float(v) for v in input_config.ct_window)
        steps = (
            first,
            {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": lo, "std": hi - lo}},
            {"id": "clip", "kwargs": {"min": float(CT_CLIP[0]), "max": float(CT_CLIP[1])}},
        )
        return Preprocessing(mode, steps, exact=not notes, notes=tuple(notes))
    low, high = float(input_config.low_percentile), float(input_config.high_percentile)
    if high <= 1.0:  # the spec's max_percentile must exceed 1 (it guards against 0..1 fractions)
        notes.append(f"the upper percentile {high:g} is below the spec's smallest (above 1); exported as 1.01")
        high = 1.01
        low = min(low, 1.0)
    steps = (
        first,
        {"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": low, "max_percentile": high,
                                         "eps": 1e-6}},
        {"id": "clip", "kwargs": {"min": float(CLIP[0]), "max": float(CLIP[1])}},
    )
    if mode == "body":
        notes.append(
            f"'body' takes the {low:g}..{high:g} percentiles of the pixels inside the body (brighter than the "
            f"dark surround), which BioImage.IO preprocessing cannot select; the package uses the whole "
            f"image's percentiles, so scans with a large dark background come out darker than napari-unet "
            f"feeds them"
        )
    return Preprocessing(mode, steps, exact=not notes, notes=tuple(notes))


def apply_preprocessing(array: np.ndarray, steps: Sequence[dict[str, Any]]) -> np.ndarray:
    """Apply ``steps`` to a (batch, channel, y, x) array as the BioImage.IO spec defines them."""
    data = np.asarray(array)
    for step in steps:
        kind, kwargs = step["id"], step["kwargs"]
        if kind == "ensure_dtype":
            data = data.astype(kwargs["dtype"])
        elif kind == "scale_range":
            axes = tuple(2 if a == "y" else 3 for a in kwargs["axes"])
            lo = np.percentile(data, kwargs["min_percentile"], axis=axes, keepdims=True)
            hi = np.percentile(data, kwargs["max_percentile"], axis=axes, keepdims=True)
            data = ((data - lo) / (hi - lo + kwargs["eps"])).astype(np.float32)
        elif kind == "fixed_zero_mean_unit_variance":
            data = ((data - kwargs["mean"]) / kwargs["std"]).astype(np.float32)
        elif kind == "clip":
            data = np.clip(data, kwargs["min"], kwargs["max"])
        else:
            raise ValueError(f"preprocessing {kind!r} is not implemented here")
    return data


def _spec_steps(steps: Sequence[dict[str, Any]]) -> list[Any]:
    from bioimageio.spec.model import v0_5 as m

    out = []
    for step in steps:
        kind, kwargs = step["id"], dict(step["kwargs"])
        if kind == "ensure_dtype":
            out.append(m.EnsureDtypeDescr(kwargs=m.EnsureDtypeKwargs(**kwargs)))
        elif kind == "scale_range":
            kwargs["axes"] = [m.AxisId(a) for a in kwargs["axes"]]
            out.append(m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(**kwargs)))
        elif kind == "fixed_zero_mean_unit_variance":
            out.append(m.FixedZeroMeanUnitVarianceDescr(kwargs=m.FixedZeroMeanUnitVarianceKwargs(**kwargs)))
        elif kind == "clip":
            out.append(m.ClipDescr(kwargs=m.ClipKwargs(**kwargs)))
        else:  # pragma: no cover - preprocessing_steps makes only the above
            raise ValueError(kind)
    return out


# ------------------------------------------------------------------- helpers
def _identifier(text: str, fallback: str) -> str:
    """``text`` as a lower-case identifier (channel names of older spec versions must be)."""
    ident = re.sub(r"[^0-9a-z_]+", "_", str(text).strip().lower()).strip("_")
    if not ident or ident[0].isdigit():
        ident = f"{fallback}_{ident}".strip("_")
    return ident


def _unique(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        candidate, n = name, 1
        while candidate in out:
            n += 1
            candidate = f"{name}_{n}"
        out.append(candidate)
    return out


def _resource_name(name: str) -> str:
    """A BioImage.IO name: 5-128 letters, digits, ``_+- ()`` and spaces."""
    text = re.sub(r"[^A-Za-z0-9_+\- ()]+", " ", name).strip()
    text = re.sub(r" +", " ", text)[:64].strip()
    return text if len(text) >= 5 else f"napari-unet {text}".strip()


def input_channel_names(in_channels: int) -> list[str]:
    if in_channels == 1:
        return ["grey"]
    if in_channels == 3:
        return ["red", "green", "blue"]
    return [f"channel{i}" for i in range(in_channels)]


def _sizes(divisor: int) -> tuple[int, int]:
    """``(min, step)`` of the spatial axes: multiples of ``divisor`` with room for the halo."""
    minimum = divisor * math.ceil((2 * HALO + 1) / divisor)
    return minimum, divisor


def _valid_size(requested: int, divisor: int) -> int:
    minimum, step = _sizes(divisor)
    return minimum + step * max(0, math.ceil((requested - minimum) / step))


def _test_image(config: ModelConfig, mode: str, size: int, seed: int = 7) -> np.ndarray:
    """A (1, C, size, size) float32 test input in raw units, of the kind the mode is for."""
    from napari_unet.core.simulate import simulate_scan

    channels = config.architecture.in_channels
    if channels == 3:
        image, _ = simulate_scan(seed, (size, size), "fundus", rgb=True)
        data = np.moveaxis(image, -1, 0)
    else:
        modality = {"ct": "ct", "body": "mri"}.get(mode, "em")
        image, _ = simulate_scan(seed, (size, size), modality)
        data = np.repeat(image[None], channels, axis=0)
    return np.ascontiguousarray(data[None], dtype=np.float32)


def _with_softmax(net):
    """The U-Net's layers followed by a softmax over the classes (without the
    size check of ``UNet.forward``, which tracing would freeze anyway)."""
    import torch
    from torch import nn

    class Probabilities(nn.Module):
        def __init__(self, unet: nn.Module) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.unet.head(self.unet.decoder(self.unet.encoder(x))), dim=1)

    return Probabilities(net).eval()


@contextlib.contextmanager
def _quiet_torchscript():
    """TorchScript is in maintenance mode; its deprecation notes are not for our users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def _trace(model: SegmentationModel, example: np.ndarray, path: Path):
    """Trace the network (batch norm folded, softmax at the end) to ``path``; returns the traced module."""
    import torch

    from napari_unet.core.model import fuse_batchnorm

    net = model.net
    net = fuse_batchnorm(net) if model.config.architecture.norm == "batch" else net
    wrapped = _with_softmax(_cpu_copy(net))
    with _quiet_torchscript(), torch.no_grad():
        traced = torch.jit.trace(wrapped, torch.from_numpy(example))
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    return loaded


def _cpu_copy(net: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(net).to("cpu").eval()


def _run(traced, data: np.ndarray) -> np.ndarray:
    import torch

    with _quiet_torchscript(), torch.no_grad():
        return traced(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))).numpy()


def _cover(config: ModelConfig, normalised: np.ndarray, probabilities: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the normalised test input, and its labels over it in the classes' colours."""
    from matplotlib.image import imsave

    channels = normalised[0]
    grey = np.clip(channels[:3].mean(axis=0) if channels.shape[0] != 3 else channels.mean(axis=0), 0, 1)
    left = np.clip(np.moveaxis(channels, 0, -1), 0, 1) if channels.shape[0] == 3 else np.repeat(grey[..., None], 3, -1)
    labels = probabilities[0].argmax(axis=0)
    right = np.repeat(grey[..., None], 3, -1).copy()
    for cls in config.classes:
        r, g, b, a = cls.rgba()
        if a > 0 and cls.id:
            where = labels == cls.id
            right[where] = 0.45 * right[where] + 0.55 * np.array([r, g, b])
    image = (np.concatenate([left, right], axis=1) * 255).round().astype(np.uint8)
    imsave(path, image)


def _model_card() -> Path | None:
    """``docs/model-card.md`` of a source checkout (not part of an installed wheel)."""
    import napari_unet

    path = Path(napari_unet.__file__).resolve().parents[2] / "docs" / "model-card.md"
    return path if path.is_file() else None


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _readme(config: ModelConfig, pre: Preprocessing, bundled: bool, sizes: tuple[int, int],
            license_id: str, test_shape: tuple[int, ...]) -> str:
    from napari_unet import __version__

    arch = config.architecture
    classes = ", ".join(f"{c.id} {c.name}" for c in config.classes)
    minimum, step = sizes
    lines = [
        f"# {config.name}: a napari-unet U-Net as a BioImage.IO model",
        "",
        f"Exported by `napari-unet export --format bioimageio` (napari-unet {__version__}). A 2D U-Net "
        f"(Ronneberger et al. 2015, 'same' padding), depth {arch.depth}, {arch.base_channels} base channels, "
        f"{arch.norm} norm, {arch.in_channels} input channel(s), {arch.num_classes} classes: {classes}.",
        "",
        "## Inputs and outputs",
        "",
        f"* Input `{INPUT_ID}`: axes batch, channel ({', '.join(input_channel_names(arch.in_channels))}), y, x; "
        f"y and x are {minimum} + n * {step} pixels (the network pools {arch.depth} times). Raw intensities: "
        "the preprocessing below normalises them.",
        f"* Output `{OUTPUT_ID}`: softmax class probabilities, one channel per class ({classes}), the input's "
        "y and x. The label of a pixel is the arg-max over the channels. Tiling consumers should crop "
        f"{HALO} px (the halo) from each side of a tile.",
        "* Weights: TorchScript of the network followed by the softmax (batch norm folded into the "
        "convolutions). The normalisation is not inside the weights; it is the preprocessing below.",
        "",
        "## Preprocessing",
        "",
        f"napari-unet normalisation '{pre.mode}', as BioImage.IO preprocessing: `{pre.describe()}`.",
        "",
    ]
    if pre.mode == "ct":
        lo, hi = config.input.ct_window
        lines.append(f"CT in Hounsfield units through the window {lo:g}..{hi:g} HU mapped to 0..1, air clipped to "
                     "0 and dense values kept up to 2. This is exactly what napari-unet does.")
    else:
        lines.append(
            f"The {pre.steps[1]['kwargs']['min_percentile']:g}..{pre.steps[1]['kwargs']['max_percentile']:g} "
            "percentiles of each channel of the image mapped to 0..1, outliers kept up to -1..2. For a 2D image "
            "this is what napari-unet does (up to the spec's eps of 1e-6 in the denominator; a flat image and "
            "NaN pixels are handled differently). For a 3D stack napari-unet takes one range from the whole "
            "stack, a BioImage.IO consumer one per 2D image."
        )
    if pre.notes:
        lines += ["", "**Not exactly napari-unet's normalisation:**", ""] + [f"* {note}." for note in pre.notes]
    rgb = config.input.rgb
    lines += [
        "",
        "Not expressible as preprocessing: napari-unet feeds a colour photo to a one-channel model as "
        + ("luminance (0.299 R + 0.587 G + 0.114 B)" if rgb == "luminance" else f"its {rgb} channel")
        + " and repeats a grey image over the channels of a multi-channel model; it also resamples colour "
        "photos larger than 768 px to about 512 px (`zoom`). Give this package images with the number of "
        "channels above, at the scale the model expects.",
        "",
        "## Validation",
        "",
        f"The test tensors (`test_input.npy`, {tuple(test_shape)}, raw units; `test_output.npy`, the "
        "probabilities) were made by running the exported TorchScript file, reloaded from disk, on the "
        "test input after the preprocessing above. At export the package was validated with bioimageio.spec "
        "and re-imported (`napari-unet import`) to the same config and bit-identical weights.",
    ]
    if bundled:
        lines += ["", "Held-out results of this model are in its model card below (section Results)."]
    else:
        lines += ["", "napari-unet records no held-out evaluation for this model beyond the metrics in its "
                      "provenance below; validate it on your own labelled data."]
    lines += [
        "",
        "## Licence",
        "",
        f"`{license_id}`. napari-unet's code is BSD-3-Clause."
        + (" The bundled models were trained on simulated scans only (napari-unet's own BSD-3-Clause simulator, "
           "with CC0 background textures from scikit-image); no patient data." if bundled else
           " These weights were trained by their user; the licence of the data they learned from may apply."),
        "",
        "## Back into napari-unet",
        "",
        "```",
        "napari-unet import this-package.zip -o my-model",
        "napari-unet predict scan.nii.gz -o labels.nii.gz --model my-model",
        "```",
        "",
        f"The package carries napari-unet's `{CONFIG_ATTACHMENT}` and `{WEIGHTS_ATTACHMENT}` for this.",
    ]
    card = _model_card() if bundled else None
    if card is not None:
        lines += ["", f"The model card of napari-unet's bundled models follows (this package holds `{config.name}`).",
                  "", "---", "", card.read_text(encoding="utf-8").rstrip()]
    else:
        lines += ["", "## Provenance", ""]
        provenance = config.provenance or {}
        lines += [f"* {key}: {_short(value)}" for key, value in provenance.items()] or ["* (none recorded)"]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- export
def export_bioimageio(
    model: SegmentationModel,
    path: str | os.PathLike,
    *,
    normalization: str | None = None,
    authors: Sequence[str] | None = None,
    license: str = LICENSE,
    test_size: int = 256,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a BioImage.IO model package (a ``.zip``) at ``path``.

    ``normalization`` (``percentile``, ``ct``, ``body``) chooses the
    normalisation described as preprocessing (default: the model's own, with
    ``auto`` exported as ``percentile``; see :func:`preprocessing_steps`).
    ``authors`` default to the napari-unet developers for bundled models.
    The package is validated by ``bioimageio.spec`` (offline: it references
    no URL) and re-imported before it is renamed into place; an existing
    ``path`` is refused unless ``overwrite``.
    """
    spec = _spec()
    from bioimageio.spec.model import v0_5 as m

    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise PackageError(f"{path}: a BioImage.IO package is a .zip file")
    if path.exists() and not overwrite:
        raise PackageError(f"{path} already exists; choose another name or pass overwrite")
    if path.is_dir():
        raise PackageError(f"{path} is a folder")
    if not path.parent.is_dir():
        raise PackageError(f"{path.parent}: no such folder for the package")
    from napari_unet.core.weights import bundled_model_names

    config = model.config
    arch = config.architecture
    pre = preprocessing_steps(config.input, normalization)
    bundled = model.source in bundled_model_names() or is_bundled_path(Path(model.source or "."))
    sizes = _sizes(arch.divisor)
    size = _valid_size(test_size, arch.divisor)
    names = _unique([_identifier(c.name, f"class{c.id}") for c in config.classes])
    if authors is None:
        authors = ["napari-unet developers"] if bundled else ["napari-unet user"]
    authors = [str(a).strip() for a in authors if str(a).strip()]
    if not authors or any("/" in a for a in authors):
        raise PackageError("give each author as a name without '/'")

    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as tmp:
        work = Path(tmp)
        folder = save_model(model, work / "model")  # the attachments: exactly what a model folder holds
        (work / CONFIG_ATTACHMENT).write_bytes((folder / CONFIG_FILE).read_bytes())
        os.replace(folder / WEIGHTS_FILE, work / WEIGHTS_ATTACHMENT)
        raw = _test_image(config, pre.mode, size)
        normalised = apply_preprocessing(raw, pre.steps)
        traced = _trace(model, normalised, work / TORCHSCRIPT_FILE)
        probabilities = _run(traced, normalised).astype(np.float32)
        np.save(work / "test_input.npy", raw)
        np.save(work / "test_output.npy", probabilities)
        import tifffile

        tifffile.imwrite(work / "sample_input.tif", raw[0], photometric="minisblack")
        tifffile.imwrite(work / "sample_output.tif", probabilities[0], photometric="minisblack")
        _cover(config, normalised, probabilities, work / "cover.png")
        (work / "README.md").write_text(
            _readme(config, pre, bundled, sizes, license, raw.shape), encoding="utf-8"
        )

        import torch

        from napari_unet import __version__

        def space(axis: str, out: bool):
            if out:
                ref = m.SizeReference(tensor_id=m.TensorId(INPUT_ID), axis_id=m.AxisId(axis))
                return m.SpaceOutputAxisWithHalo(id=m.AxisId(axis), size=ref, halo=HALO)
            return m.SpaceInputAxis(id=m.AxisId(axis), size=m.ParameterizedSize(min=sizes[0], step=sizes[1]))

        def file(name: str):
            return m.FileDescr(source=work / name)

        try:
            descr = m.ModelDescr(
                name=_resource_name(config.name),
                description=(
                    f"napari-unet 2D U-Net '{config.name}': per-pixel probabilities of "
                    f"{', '.join(c.name for c in config.classes)}."
                )[:500],
                authors=[m.Author(name=a) for a in authors],
                cite=[m.CiteEntry(text=UNET_CITATION[0], doi=m.Doi(UNET_CITATION[1]))],
                license=license,
                documentation=file("README.md"),
                covers=[file("cover.png")],
                tags=["napari-unet", "unet2d", "u-net", "pytorch", "torchscript", "2d",
                      "semantic-segmentation", *names[1:]],
                attachments=[file(CONFIG_ATTACHMENT), file(WEIGHTS_ATTACHMENT)],
                inputs=[
                    m.InputTensorDescr(
                        id=m.TensorId(INPUT_ID),
                        description=f"raw image, normalised by the preprocessing (napari-unet '{pre.mode}')",
                        axes=[
                            m.BatchAxis(),
                            m.ChannelAxis(channel_names=input_channel_names(arch.in_channels)),
                            space("y", False),
                            space("x", False),
                        ],
                        test_tensor=file("test_input.npy"),
                        sample_tensor=file("sample_input.tif"),
                        data=m.IntervalOrRatioDataDescr(type="float32"),
                        preprocessing=_spec_steps(pre.steps),
                    )
                ],
                outputs=[
                    m.OutputTensorDescr(
                        id=m.TensorId(OUTPUT_ID),
                        description="softmax class probabilities; the label is the arg-max over channels",
                        axes=[
                            m.BatchAxis(),
                            m.ChannelAxis(channel_names=list(names)),
                            space("y", True),
                            space("x", True),
                        ],
                        test_tensor=file("test_output.npy"),
                        sample_tensor=file("sample_output.tif"),
                        data=m.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                    )
                ],
                weights=m.WeightsDescr(
                    torchscript=m.TorchscriptWeightsDescr(
                        source=work / TORCHSCRIPT_FILE,
                        pytorch_version=m.Version(torch.__version__.split("+")[0]),
                        comment="torch.jit.trace of the U-Net (batch norm folded) followed by softmax over channels",
                    )
                ),
                config=m.Config(napari_unet={
                    "version": __version__,
                    "config": CONFIG_ATTACHMENT,
                    "weights": WEIGHTS_ATTACHMENT,
                    "normalization": pre.mode,
                    "normalization_exact": pre.exact,
                    "classes": [{"id": c.id, "name": c.name, "color": c.color} for c in config.classes],
                }),
            )
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise PackageError(f"the BioImage.IO description is invalid: {_first_line(exc)}") from exc
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial.zip")
        try:
            with _quiet_torchscript():
                spec.save_bioimageio_package(descr, output_path=partial)
            _check_reimport(partial, model)
            os.replace(partial, path)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            if isinstance(exc, ValueError):
                raise PackageError(f"bioimageio.spec refused the package: {_first_line(exc)}") from exc
            raise
    return path


def _check_reimport(path: Path, model: SegmentationModel) -> None:
    """The package must give back the model: same config, bit-identical tensors."""
    restored = read_package(path)
    ours = model.net.state_dict()
    theirs = restored.net.state_dict()
    same = restored.config == model.config and ours.keys() == theirs.keys() and all(
        ours[k].detach().cpu().equal(theirs[k]) for k in ours
    )
    if not same:  # pragma: no cover - a bug, not a user error
        raise PackageError(f"{path}: the package does not re-import to the same model")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:3])[:400] or type(exc).__name__


# -------------------------------------------------------------------- import
_SUPPORTED = (
    "napari-unet imports only BioImage.IO packages written by 'napari-unet export --format bioimageio' "
    f"(they carry {CONFIG_ATTACHMENT} + {WEIGHTS_ATTACHMENT}); run other models with bioimageio.core "
    "or the software they were made for"
)


def _member(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise PackageError(f"{path}: {name} is {info.file_size:,} bytes, more than a napari-unet model holds")
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
        raise PackageError(f"{path}: {name} cannot be read from the zip ({exc})") from exc


def read_package(path: str | os.PathLike, device: str = "cpu") -> SegmentationModel:
    """The model inside a package :func:`export_bioimageio` wrote (from its
    safetensors + config attachments; nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ForeignPackageError(f"{path} is not a zip file: {_SUPPORTED}") from exc
    with archive:
        names = set(archive.namelist())
        has_rdf = any(n in _RDF_NAMES or n.endswith(".bioimageio.yaml") for n in names)
        if not has_rdf:
            raise ForeignPackageError(f"{path} is not a BioImage.IO package (no rdf.yaml): {_SUPPORTED}")
        missing = [n for n in (CONFIG_ATTACHMENT, WEIGHTS_ATTACHMENT) if n not in names]
        if missing:
            raise ForeignPackageError(f"{path} is a BioImage.IO package napari-unet did not export: {_SUPPORTED}")
        config_bytes = _member(archive, CONFIG_ATTACHMENT, MAX_CONFIG_BYTES, path)
        weights_bytes = _member(archive, WEIGHTS_ATTACHMENT, MAX_WEIGHTS_BYTES, path)
    try:
        data = json.loads(config_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path}: {CONFIG_ATTACHMENT} is not valid JSON ({exc})") from exc
    with tempfile.TemporaryDirectory(prefix="napari-unet-import-") as tmp:
        folder = Path(tmp)
        (folder / CONFIG_FILE).write_bytes(config_bytes)
        (folder / WEIGHTS_FILE).write_bytes(weights_bytes)
        expected = data.get(WEIGHTS_HASH_KEY) if isinstance(data, dict) else None
        if expected and sha256_of(folder / WEIGHTS_FILE) != expected:
            raise PackageError(f"{path} is damaged: {WEIGHTS_ATTACHMENT} does not match the SHA-256 in {CONFIG_ATTACHMENT}")
        try:
            model = load_model_folder(folder, device)
        except ModelError as exc:
            message = str(exc).replace(str(folder / CONFIG_FILE), CONFIG_ATTACHMENT).replace(str(folder), str(path))
            raise PackageError(f"{path}: {message}") from exc
    model.source = str(path)
    return model


def import_bioimageio(path: str | os.PathLike, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Turn a package :func:`export_bioimageio` wrote back into a model folder
    (written atomically by :func:`~napari_unet.core.weights.save_model`; an
    existing ``folder`` is refused unless ``overwrite``)."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise PackageError(f"{folder} already exists; choose another folder or pass overwrite")
    model = read_package(path)
    return save_model(model, folder, overwrite=overwrite)
