"""Model versions in a user models directory, with a regression gate.

Every fine-tuning round produces a new version: a model folder under the
store's root (never overwritten; bundled models are never touched) and an
entry in ``index.json`` (written atomically) that records its name, parent,
metrics and which version is *current*::

    store = ModelStore()                      # $NAPARI_UNET_MODELS_DIR or the user data dir
    v = store.add_version(model, parent=store.current(), metrics={"val_dice": 0.81})
    decision = store.promote(v, previous, 0.81, 0.84)
    if not decision.promoted:                 # worse on the same trusted pixels: ask the user
        ...                                   # store.rollback(v.id) promotes it anyway
    store.rollback("v0003"); store.rename("v0003", "liver CT, 3 rounds")
    store.export("v0003", "/tmp/liver-model"); store.import_folder("/tmp/other-model")
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .weights import ModelError, SegmentationModel, is_bundled_path, load_model_folder, save_model

INDEX_FILE = "index.json"
INDEX_FORMAT = 1
ENV_VAR = "NAPARI_UNET_MODELS_DIR"


class VersionError(ModelError):
    """An unknown version id or an operation the store refuses; the message says why."""


def default_models_dir() -> Path:
    """``$NAPARI_UNET_MODELS_DIR``, else ``<user data dir>/napari-unet/models``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-unet")) / "models"


@dataclass
class Version:
    """One stored model version. ``folder`` is relative to the store's root."""

    id: str
    name: str
    folder: str
    parent: str | None = None
    created: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    kind: str = "finetune"
    root: Path | None = field(default=None, repr=False, compare=False)

    @property
    def path(self) -> Path:
        """The version's model folder."""
        if self.root is None:
            raise VersionError(f"version {self.id} is not attached to a store")
        return self.root / self.folder

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("root")
        return data


#: the regression gate's usual figure, as the user reads it
VALIDATION_FIGURE = "validation Dice on the held-back trusted pixels"


@dataclass(frozen=True)
class PromotionDecision:
    """What :meth:`ModelStore.promote` decided, with both numbers for the user.

    ``promoted`` is False when the candidate's validation Dice is worse than
    the previous version's on the same trusted pixels; the candidate is stored
    either way and ``ModelStore.rollback(candidate)`` promotes it on request.
    """

    promoted: bool
    candidate: str
    previous: str | None
    val_dice_candidate: float | None
    val_dice_previous: float | None
    reason: str
    #: what the two numbers are, said in full (the validation Dice, or a
    #: class's Dice on the corrected slices when validation cannot see it)
    metric: str = VALIDATION_FIGURE

    @property
    def needs_confirmation(self) -> bool:
        return not self.promoted


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelStore:
    """Versions of fine-tuned models under ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_models_dir()
        if is_bundled_path(self.root / "x"):
            raise VersionError(f"{self.root} is inside the bundled models; choose a user folder")

    # ---------------------------------------------------------------- index
    @property
    def index_path(self) -> Path:
        return self.root / INDEX_FILE

    def _read(self) -> dict[str, Any]:
        if not self.index_path.is_file():
            return {"format": INDEX_FORMAT, "current": None, "versions": []}
        try:
            data = json.loads(self.index_path.read_text())
        except json.JSONDecodeError as exc:
            raise VersionError(f"{self.index_path} is damaged ({exc}); fix or remove it") from exc
        if int(data.get("format", 0)) > INDEX_FORMAT:
            raise VersionError(f"{self.index_path} was written by a newer napari-unet; upgrade it")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.index_path, data)

    def _version(self, entry: dict[str, Any]) -> Version:
        known = {k: entry[k] for k in ("id", "name", "folder", "parent", "created", "metrics", "kind") if k in entry}
        return Version(**known, root=self.root)

    def _new_id(self, data: dict[str, Any]) -> str:
        used = {v["id"] for v in data["versions"]}
        number = len(data["versions"]) + 1
        while f"v{number:04d}" in used or (self.root / f"v{number:04d}").exists():
            number += 1
        return f"v{number:04d}"

    @staticmethod
    def _id_of(version: Version | str | None) -> str | None:
        if version is None:
            return None
        return version.id if isinstance(version, Version) else str(version)

    # ------------------------------------------------------------ queries
    def list_versions(self) -> list[Version]:
        """All versions, oldest first."""
        return [self._version(v) for v in self._read()["versions"]]

    def get(self, version_id: Version | str) -> Version:
        """The version with this id (or exact name); ``VersionError`` if unknown."""
        wanted = self._id_of(version_id)
        versions = self.list_versions()
        for v in versions:
            if v.id == wanted:
                return v
        named = [v for v in versions if v.name == wanted]
        if len(named) == 1:
            return named[0]
        known = ", ".join(v.id for v in versions) or "none"
        raise VersionError(f"no model version {wanted!r} in {self.root} (versions: {known})")

    def current(self) -> Version | None:
        """The promoted version, or ``None`` (then the bundled model is in use)."""
        current = self._read().get("current")
        return self.get(current) if current else None

    def load(self, version_id: Version | str, device: str = "cpu") -> SegmentationModel:
        """Load a version's model."""
        return load_model_folder(self.get(version_id).path, device)

    # ------------------------------------------------------------ changes
    def add_version(
        self,
        model: SegmentationModel,
        parent: Version | str | None = None,
        metrics: dict[str, Any] | None = None,
        name: str | None = None,
        kind: str = "finetune",
        make_current: bool = False,
    ) -> Version:
        """Save ``model`` as a new version (a new folder; nothing is overwritten).

        ``parent`` is the version (or a bundled model name / folder) it was
        trained from. The new version is not made current unless
        ``make_current``; use :meth:`promote` for the gated decision.
        """
        data = self._read()
        version_id = self._new_id(data)
        self.root.mkdir(parents=True, exist_ok=True)
        save_model(model, self.root / version_id, overwrite=False)
        entry = Version(
            id=version_id,
            name=name or model.config.name,
            folder=version_id,
            parent=self._id_of(parent),
            created=_now(),
            metrics=dict(metrics or {}),
            kind=kind,
        ).to_dict()
        data = self._read()  # re-read: keep what another writer added meanwhile
        data["versions"].append(entry)
        if make_current:
            data["current"] = version_id
        self._write(data)
        return self._version(entry)

    def rollback(self, version_id: Version | str) -> Version:
        """Make ``version_id`` the current version (one click in the GUI)."""
        version = self.get(version_id)
        if not (version.path / "config.json").is_file():
            raise VersionError(f"version {version.id}'s folder {version.path} is missing")
        data = self._read()
        data["current"] = version.id
        self._write(data)
        return version

    def clear_current(self) -> None:
        """Go back to the bundled model (no version current)."""
        data = self._read()
        data["current"] = None
        self._write(data)

    def rename(self, version_id: Version | str, name: str) -> Version:
        """Give a version a new display name (its folder and id stay)."""
        name = str(name).strip()
        if not name:
            raise VersionError("a version name cannot be empty")
        target = self.get(version_id).id
        data = self._read()
        for entry in data["versions"]:
            if entry["id"] == target:
                entry["name"] = name
                self._write(data)
                return self._version(entry)
        raise VersionError(f"no model version {target!r}")  # pragma: no cover - raced deletion

    def export(self, version_id: Version | str, dest: str | os.PathLike, overwrite: bool = False) -> Path:
        """Copy a version's model folder to ``dest`` (usable with ``--model dest``)."""
        version = self.get(version_id)
        dest = Path(dest)
        if dest.exists() and not overwrite:
            raise VersionError(f"{dest} already exists; choose another folder")
        if is_bundled_path(dest):
            raise VersionError(f"{dest} is a bundled model; it is never overwritten")
        # save_model replaces an existing folder without a moment where dest holds no model
        return save_model(load_model_folder(version.path, "cpu"), dest, overwrite=True)

    def import_folder(self, src: str | os.PathLike, name: str | None = None) -> Version:
        """Add a model folder from elsewhere as a new version, after checking
        that it loads (safetensors + a valid config; pickles are refused)."""
        model = load_model_folder(src, "cpu")
        return self.add_version(model, parent=None, metrics={"imported_from": str(Path(src))}, name=name, kind="import")

    def promote(
        self,
        candidate: Version | str,
        previous: Version | str | None,
        val_dice_candidate: float | None,
        val_dice_previous: float | None,
        tolerance: float = 0.0,
        metric: str = VALIDATION_FIGURE,
    ) -> PromotionDecision:
        """The regression gate: make ``candidate`` current unless its validation
        Dice is worse than ``previous``'s (by more than ``tolerance``) on the
        same trusted pixels. Missing numbers cannot show a regression, so the
        candidate is promoted then (the reason says so)."""
        cand = self.get(candidate)
        prev_id = self._id_of(previous)
        cand_score = _number(val_dice_candidate)
        prev_score = _number(val_dice_previous)
        if cand_score is None or prev_score is None:
            promoted, reason = True, f"no {metric} to compare; promoted"
        elif cand_score + tolerance >= prev_score:
            promoted = True
            reason = f"{metric} {cand_score:.3f} vs {prev_score:.3f} before: promoted"
        else:
            promoted = False
            reason = (
                f"{metric} fell from {prev_score:.3f} to {cand_score:.3f}: "
                f"stored as {cand.id} but not made current"
            )
        data = self._read()
        for entry in data["versions"]:
            if entry["id"] == cand.id:
                entry.setdefault("metrics", {}).update(
                    {"val_dice": cand_score, "val_dice_previous": prev_score, "promoted": promoted,
                     "gate": metric}
                )
        if promoted:
            data["current"] = cand.id
        self._write(data)
        return PromotionDecision(promoted, cand.id, prev_id, cand_score, prev_score, reason, metric)


def _number(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else value  # NaN counts as missing
