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
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ModelConfig

# torch (and the U-Net built on it) load only when a model is built, loaded or
# saved: listing models (the registry, folder configs) must not import torch,
# which takes seconds and would freeze the GUI thread that lists them.
if TYPE_CHECKING:
    import torch

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
    import torch

    from .model import UNet

    if seed is not None:
        torch.manual_seed(seed)
    return SegmentationModel(config=config, net=UNet(config.architecture), source="new")


def save_file(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file``, imported (with torch) on the first save."""
    from safetensors.torch import save_file as _save_file

    _save_file(tensors, filename, metadata=metadata)


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
def minimum_parameters(arch) -> int:
    """A lower bound of the parameters of a U-Net with ``arch``: the second 3x3
    convolution of every encoder level (``9 * width**2``). Cheap, so a config
    that names a huge network is refused before anything is allocated."""
    return sum(9 * width * width for width in arch.widths())


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
    with contextlib.suppress(OSError):  # a read-only folder is loaded as it is
        recover_model_folder(folder)
    config = read_config(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        pickles = [p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        hint = f" (found {', '.join(pickles)}: pickles are refused)" if pickles else ""
        raise ModelError(f"{folder} has no {WEIGHTS_FILE}{hint}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import UNet

    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights_path} is not a readable safetensors file: {exc}") from exc
    held = sum(int(t.numel()) for t in state.values())
    needed = minimum_parameters(config.architecture)
    if needed > held:  # refuse before building a network the weights cannot fill
        raise ModelError(
            f"{weights_path} does not match the architecture in {CONFIG_FILE}: it describes at least "
            f"{needed:,} parameters, the weights hold {held:,}"
        )
    net = UNet(config.architecture)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        raise ModelError(
            f"{weights_path} does not match the architecture in {CONFIG_FILE}: {detail}".rstrip(".")[:300]
        ) from exc
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

    At every instant ``folder`` holds either the complete previous model or
    the complete new one:

    * a new folder is written under a temporary name beside the target
      (``.NAME.<pid>.XXXX.partial``) and renamed into place in one step;
    * an existing folder (``overwrite``) keeps its name; the new files are
      written inside it under temporary names, the current pair is kept as
      ``.FILE.<pid>.prev`` (hard links), then ``config.json`` - which records
      the SHA-256 of its weights - and ``weights.safetensors`` are each
      replaced with one ``os.replace``. Between those two renames the pair is
      visibly inconsistent (the hash does not match); an interrupted save
      (Ctrl-C, an error) puts the previous pair back at once, and a killed one
      is repaired by the next save or load (:func:`recover_model_folder`).

    Leftovers of saves whose process is gone are removed by the next save or
    load. An existing folder is refused unless ``overwrite``; a bundled model
    is never overwritten.
    """
    folder = Path(folder)
    config = config or model.config
    if is_bundled_path(folder):
        raise ModelError(f"{folder} is a bundled model; napari-unet never overwrites it")
    if folder.exists() and not overwrite:
        raise ModelError(f"{folder} already exists; choose another folder or pass overwrite")
    if folder.exists() and not folder.is_dir():
        raise ModelError(f"{folder} is a file; a model is a folder with {WEIGHTS_FILE} + {CONFIG_FILE}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(folder.parent, prefix=f".{folder.name}.")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.net.state_dict().items()}
    if folder.is_dir():
        recover_model_folder(folder)
        _replace_model_files(folder, state, config)
    else:
        _write_new_model_folder(folder, state, config)
    return folder


# --------------------------------------------------------- atomic model saving
#: ``config.json`` key holding the SHA-256 of the weights it was saved with; it
#: tells a complete pair from one half-replaced by an interrupted save.
WEIGHTS_HASH_KEY = "weights_sha256"
_PARTIAL = ".partial"
_PREV = ".prev"
#: How long a load waits for another live process to finish replacing a model.
_WAIT_FOR_SAVER_S = 10.0
#: Where a process id cannot be probed (Windows), leftovers older than this are stale.
_STALE_AFTER_S = 24 * 3600.0


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX; a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_pair(weights_path: Path, config_path: Path, state: dict[str, torch.Tensor], config: ModelConfig) -> None:
    """Write and flush the weights, then a config recording their SHA-256."""
    save_file(state, str(weights_path), metadata={"format": "pt", "name": config.name})
    _fsync_file(weights_path)
    data = {**config.to_dict(), WEIGHTS_HASH_KEY: sha256_of(weights_path)}
    config_path.write_text(json.dumps(data, indent=2) + "\n")
    _fsync_file(config_path)


def _write_new_model_folder(folder: Path, state: dict[str, torch.Tensor], config: ModelConfig) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.", suffix=_PARTIAL, dir=folder.parent))
    try:
        _write_pair(tmp / WEIGHTS_FILE, tmp / CONFIG_FILE, state, config)
        if folder.exists():  # appeared meanwhile: never rename a folder over another one
            raise ModelError(f"{folder} appeared while saving; nothing was replaced")
        os.replace(tmp, folder)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_model_files(folder: Path, state: dict[str, torch.Tensor], config: ModelConfig) -> None:
    pid = os.getpid()
    tag = f"{pid}.{os.urandom(4).hex()}"
    new_weights = folder / f".{WEIGHTS_FILE}.{tag}{_PARTIAL}"
    new_config = folder / f".{CONFIG_FILE}.{tag}{_PARTIAL}"
    backups = {name: folder / f".{name}.{pid}{_PREV}" for name in (WEIGHTS_FILE, CONFIG_FILE)}
    try:
        _write_pair(new_weights, new_config, state, config)
        for name, backup in backups.items():
            if (folder / name).is_file():
                _keep_copy(folder / name, backup)
        # config first: from here until the weights are in place the new config's
        # hash does not match the weights, so the half-done pair cannot pass as complete
        os.replace(new_config, folder / CONFIG_FILE)
        os.replace(new_weights, folder / WEIGHTS_FILE)
        _fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            _restore_backups(folder, backups)
        for path in (new_weights, new_config):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise
    for backup in backups.values():  # the new pair is complete: the old one can go
        with contextlib.suppress(OSError):
            backup.unlink(missing_ok=True)


def _keep_copy(path: Path, backup: Path) -> None:
    """``backup`` = the current ``path`` (a hard link, or a copy renamed into place)."""
    backup.unlink(missing_ok=True)
    try:
        os.link(path, backup)
    except OSError:  # no hard links on this file system
        tmp = backup.with_name(backup.name + _PARTIAL)
        shutil.copy2(path, tmp)
        _fsync_file(tmp)
        os.replace(tmp, backup)


def _pair_is_complete(folder: Path) -> bool:
    """Whether ``config.json`` and ``weights.safetensors`` belong together.

    A config without :data:`WEIGHTS_HASH_KEY` predates it (or was never
    replaced: the config is always replaced before the weights), so it counts
    as complete."""
    try:
        data = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    expected = data.get(WEIGHTS_HASH_KEY) if isinstance(data, dict) else None
    if not expected:
        return True
    try:
        return sha256_of(folder / WEIGHTS_FILE) == expected
    except OSError:
        return False


def _restore_backups(folder: Path, backups: dict[str, Path]) -> None:
    """Put the kept pair back if the live pair is not a complete model; then drop it."""
    if all(b.is_file() for b in backups.values()) and not _pair_is_complete(folder):
        for name in (CONFIG_FILE, WEIGHTS_FILE):  # config first: the kept config matches the kept weights
            os.replace(backups[name], folder / name)
        _fsync_dir(folder)
    for backup in backups.values():
        backup.unlink(missing_ok=True)


def _leftover_pid(path: Path, suffix: str) -> int | None:
    """The process id in a leftover's name: ``.NAME.<pid>.prev`` or ``.NAME.<pid>.<random>.partial``."""
    parts = path.name[: -len(suffix)].split(".")
    part = parts[-1] if suffix == _PREV else parts[-2] if len(parts) > 1 else ""
    return int(part) if part.isdigit() else None


def _saver_alive(path: Path, pid: int | None) -> bool:
    """Whether the process that left ``path`` may still be writing it."""
    if pid is None or pid == os.getpid():
        return False  # our own leftovers are from a save that already returned or raised
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there: go by age
        with contextlib.suppress(OSError):
            return time.time() - path.stat().st_mtime < _STALE_AFTER_S
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def _remove_stale_partials(where: Path, prefix: str = ".") -> None:
    """Remove ``prefix*.partial`` leftovers in ``where`` whose saving process is gone."""
    with contextlib.suppress(OSError):
        for path in where.iterdir():
            if path.name.startswith(prefix) and path.name.endswith(_PARTIAL):
                if not _saver_alive(path, _leftover_pid(path, _PARTIAL)):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)


def recover_model_folder(folder: str | os.PathLike) -> None:
    """Repair a model folder after a save that was killed half-way.

    If the previous pair kept by :func:`save_model` is still there and the
    live pair is not complete, the previous pair is put back; then leftovers
    of dead saves are removed. A save still running in another process is
    waited for (a few seconds at most). Cheap when there is nothing to do.
    """
    folder = Path(folder)
    if not folder.is_dir() or is_bundled_path(folder):
        return
    deadline = time.monotonic() + _WAIT_FOR_SAVER_S
    while True:
        by_pid: dict[int | None, dict[str, Path]] = {}
        for path in folder.glob(f".*{_PREV}"):
            for name in (WEIGHTS_FILE, CONFIG_FILE):
                if path.name.startswith(f".{name}."):
                    by_pid.setdefault(_leftover_pid(path, _PREV), {})[name] = path
        live = {pid for pid, files in by_pid.items() if any(_saver_alive(p, pid) for p in files.values())}
        if not live or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid, backups in by_pid.items():
        if pid in live:  # still saving after the wait: leave its files alone
            continue
        if set(backups) == {WEIGHTS_FILE, CONFIG_FILE}:
            _restore_backups(folder, backups)
        else:  # only one file was kept: the live pair was never touched
            for backup in backups.values():
                backup.unlink(missing_ok=True)
    _remove_stale_partials(folder)
