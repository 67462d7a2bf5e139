"""Model folders: safe load and save, and the registry of bundled models.

A model is a folder holding ``weights.safetensors`` and ``config.json``.
Loading never unpickles code: pickled checkpoints (``.pt``/``.pth``/``.ckpt``)
are refused. Bundled models are checked against a SHA-256 before use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .model import UNet

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


class ModelError(ValueError):
    """A model folder or name that cannot be used; the message says why."""


class NoBundledModelError(ModelError):
    """No bundled model is installed with this copy of napari-unet."""


class HashMismatchError(ModelError):
    """A bundled model's files do not match their registered SHA-256."""


@dataclass
class SegmentationModel:
    """A U-Net with its configuration and where it came from."""

    config: ModelConfig
    net: UNet
    source: str = ""

    @property
    def name(self) -> str:
        return self.config.name

    def to(self, device: torch.device | str) -> SegmentationModel:
        self.net.to(device)
        return self


def new_model(config: ModelConfig, seed: int | None = None) -> SegmentationModel:
    """A freshly initialised model for ``config``."""
    if seed is not None:
        torch.manual_seed(seed)
    return SegmentationModel(config=config, net=UNet(config.architecture), source="new")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------- registry
def _registry_root() -> Path:
    return Path(str(resources.files("napari_unet") / "models"))


def bundled_registry() -> dict[str, Any]:
    """The registry of bundled models: ``{"default": name, "models": {...}}``."""
    path = _registry_root() / "registry.json"
    if not path.is_file():
        return {"default": None, "models": {}}
    return json.loads(path.read_text())


def bundled_model_names() -> list[str]:
    return sorted(bundled_registry().get("models", {}))


def default_model_name() -> str | None:
    return bundled_registry().get("default")


def bundled_model_path(name: str, verify: bool = True) -> Path:
    """Folder of a bundled model, after checking every file's SHA-256."""
    registry = bundled_registry()
    entry = registry.get("models", {}).get(name)
    if entry is None:
        known = ", ".join(sorted(registry.get("models", {}))) or "none"
        raise ModelError(f"no bundled model named {name!r} (bundled: {known})")
    folder = _registry_root() / entry["folder"]
    if verify:
        for filename, expected in entry["sha256"].items():
            path = folder / filename
            if not path.is_file():
                raise ModelError(f"bundled model {name!r} is incomplete: {filename} is missing")
            actual = sha256_of(path)
            if actual != expected:
                raise HashMismatchError(
                    f"bundled model {name!r}: {filename} has SHA-256 {actual[:12]}..., "
                    f"expected {expected[:12]}...; the installation is damaged, reinstall napari-unet"
                )
    return folder


def is_bundled_path(folder: Path) -> bool:
    with contextlib.suppress(OSError):
        return _registry_root().resolve() in Path(folder).resolve().parents
    return False


# ------------------------------------------------------------------ load / save
def read_config(folder: str | os.PathLike) -> ModelConfig:
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"{folder} is not a model folder: {CONFIG_FILE} is missing")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ModelError(f"{path}: {exc}") from exc


def load_model_folder(folder: str | os.PathLike, device: str | torch.device = "cpu") -> SegmentationModel:
    """Load a model folder without unpickling anything."""
    folder = Path(folder)
    if folder.is_file():
        if folder.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelError(
                f"{folder.name} is a pickled PyTorch checkpoint; napari-unet never unpickles files "
                f"(they can run arbitrary code). Use a model folder with {WEIGHTS_FILE} + {CONFIG_FILE}"
            )
        if folder.name == WEIGHTS_FILE or folder.name == CONFIG_FILE:
            folder = folder.parent
        else:
            raise ModelError(f"{folder} is a file; a model is a folder with {WEIGHTS_FILE} + {CONFIG_FILE}")
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    config = read_config(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        pickles = [p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        hint = f" (found {', '.join(pickles)}: pickles are refused)" if pickles else ""
        raise ModelError(f"{folder} has no {WEIGHTS_FILE}{hint}")
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights_path} is not a readable safetensors file: {exc}") from exc
    net = UNet(config.architecture)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{weights_path} does not match the architecture in {CONFIG_FILE}: {first}") from exc
    net.eval()
    return SegmentationModel(config=config, net=net.to(device), source=str(folder))


def load_model(source: str | os.PathLike | SegmentationModel | None = None, device: str | torch.device = "cpu") -> SegmentationModel:
    """A model from a folder path, a bundled model name, or the default bundled model (``None``)."""
    if isinstance(source, SegmentationModel):
        return source.to(device)
    if source is None:
        name = default_model_name()
        if name is None:
            raise NoBundledModelError(
                "no bundled model is installed with this napari-unet; pass a model folder "
                "(--model DIR) or train one with 'napari-unet train'"
            )
        return _load_bundled(name, device)
    path = Path(source)
    if path.exists():
        return load_model_folder(path, device)
    if str(source) in bundled_registry().get("models", {}):
        return _load_bundled(str(source), device)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(f"{source} does not exist (and pickled checkpoints are refused anyway)")
    known = ", ".join(bundled_model_names()) or "none installed"
    raise ModelError(f"{source} is neither a model folder nor a bundled model name (bundled: {known})")


def _load_bundled(name: str, device: str | torch.device) -> SegmentationModel:
    model = load_model_folder(bundled_model_path(name, verify=True), device)
    model.source = name
    return model


def save_model(
    model: SegmentationModel, folder: str | os.PathLike, overwrite: bool = False, config: ModelConfig | None = None
) -> Path:
    """Write ``model`` as a model folder, atomically.

    The folder is written under a temporary name beside the target and renamed
    into place, so a killed process never leaves a half-written model under
    the final name. An existing folder is refused unless ``overwrite``; a
    bundled model is never overwritten.
    """
    folder = Path(folder)
    config = config or model.config
    if is_bundled_path(folder):
        raise ModelError(f"{folder} is a bundled model; napari-unet never overwrites it")
    if folder.exists() and not overwrite:
        raise ModelError(f"{folder} already exists; choose another folder or pass overwrite")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.net.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "name": config.name})
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        for path in tmp.iterdir():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
