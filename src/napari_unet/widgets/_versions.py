"""The Fine-tune widget's version list: use, rename, export and import model versions
(folders, and BioImage.IO packages napari-unet exported, read in a worker thread).

A mixin of :class:`.finetune.FinetuneWidget`; it expects ``store``,
``versions``, ``new_name``, ``labels_layer``, ``status`` and ``_selection`` on
the widget. Every change goes through the viewer's shared
:class:`._common.ModelSelection`, so both widgets' lists follow it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import META_KEY, heavy_imports, report_failure, run_generator, show_info, show_warning

__all__ = ["VersionsMixin", "import_package_job"]


def import_package_job(path: str | Path, store: Any):
    """Worker: read a BioImage.IO package napari-unet exported and add it to ``store``."""
    yield f"reading {Path(path).name}"
    with heavy_imports():
        from napari_unet.io.bioimageio import read_package

        model = read_package(path)
    return store.add_version(model, parent=None, metrics={"imported_from": str(path)}, kind="import")


class VersionsMixin:
    """Version-list actions of the Fine-tune widget."""

    def _version_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        try:
            versions = list(self.store.list_versions())
        except Exception:  # noqa: BLE001 - a broken store must not break the widget
            return []
        try:
            current = self.store.current()
        except Exception:  # noqa: BLE001
            current = None
        current_id = None if current is None else current.id
        return [(self._version_label(v, v.id == current_id), v.id) for v in reversed(versions)]

    @staticmethod
    def _version_label(version: Any, in_use: bool) -> str:
        dice = version.metrics.get("val_dice_after", version.metrics.get("val_dice"))
        label = version.id if version.name in ("", version.id) else f"{version.id}: {version.name}"
        if isinstance(dice, float):
            label += f", Dice {dice:.3f}"
        return label + (" (current)" if in_use else "")

    def rollback(self, *_: Any) -> None:
        """Use the version chosen in the list for the next segmentation and fine-tune."""
        version_id = self.versions.value
        if not version_id:
            show_warning("No saved versions yet: fine-tune once to make one.")
            return
        try:
            version = self.store.rollback(version_id)
        except ValueError as exc:
            show_warning(f"Cannot use {version_id}: {exc}")
            return
        layer = self.labels_layer.value
        if layer is not None:
            meta = layer.metadata.setdefault(META_KEY, {})
            meta["model_source"] = meta["model"] = str(version.path)
        self._selection.select(version.path)
        self.status.value = f"using {version.id} ('{version.name}') from now on"
        show_info(f"Now using {version.id} ('{version.name}'); press Segment to see its labels.")

    def rename_version(self, old: str, new: str) -> None:
        """Rename a saved version (its folder and its config name)."""
        if not new.strip():
            show_warning("Type the new name first.")
            return
        try:
            self.store.rename(old, new.strip())
        except (ValueError, OSError) as exc:
            show_warning(f"Cannot rename '{old}': {exc}")
            return
        self._selection.refresh()
        self.status.value = f"renamed '{old}' to '{new.strip()}'"

    def export_version(self, name: str, destination: str | Path) -> Path | None:
        """Copy a version's folder to ``destination``."""
        try:
            path = self.store.export(name, Path(destination))
        except (ValueError, OSError) as exc:
            show_warning(f"Cannot export '{name}': {exc}")
            return None
        show_info(f"Exported '{name}' to {path}")
        return Path(path) if path is not None else Path(destination)

    def import_model(self, folder: str | Path) -> Any:
        """Add a model folder from elsewhere to the version list."""
        try:
            version = self.store.import_folder(Path(folder))
        except (ValueError, OSError) as exc:
            show_warning(f"Cannot import {folder}: {exc}")
            return None
        self._selection.refresh()
        show_info(f"Imported {folder} as {version.id} ('{version.name}')")
        return version

    def _on_rename(self, *_: Any) -> None:
        if self.versions.value:
            self.rename_version(self.versions.value, self.new_name.value)

    def _on_export(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        if not self.versions.value:
            show_warning("No saved versions yet.")
            return
        folder = QFileDialog.getExistingDirectory(self.native, "Export the model folder into…")
        if folder:
            self.export_version(self.versions.value, Path(folder) / self.versions.value)

    def _on_import(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self.native, "Model folder (weights.safetensors + config.json)")
        if folder:
            self.import_model(folder)

    def import_package(self, path: str | Path) -> Any:
        """Import a BioImage.IO package (.zip) napari-unet exported, off the GUI thread,
        as a new version; returns the worker."""
        self.import_package_button.enabled = False
        self.status.value = f"importing {Path(path).name}…"

        def done(version: Any) -> None:
            self._selection.refresh()
            self.status.value = f"imported {Path(path).name} as {version.id} ('{version.name}')"
            show_info(f"Imported {Path(path).name} as {version.id} ('{version.name}'); "
                      "choose it under Versions and press 'Use this version'.")

        def failed(exc: BaseException) -> None:
            self.status.value = report_failure(exc, "Import")

        def finish() -> None:
            self.import_package_button.enabled = True

        # kept on the widget so the worker thread is not collected while it runs
        self._import_worker = run_generator(import_package_job, path, self.store, on_return=done, on_error=failed,
                                            on_finish=finish)
        return self._import_worker

    def _on_import_package(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _filter = QFileDialog.getOpenFileName(
            self.native, "BioImage.IO package exported by napari-unet", "", "BioImage.IO package (*.zip)"
        )
        if path:
            self.import_package(path)
