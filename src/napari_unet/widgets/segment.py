"""The Segment widget: choose an image, a model and a device; press Segment.

Prediction runs in a worker thread with a progress bar and a Cancel button.
The result is a Labels layer named after the image, with the model's class
names and colours and the image's scale and translate; its metadata records
the model and the zoom it was made with (fine-tuning re-segments with them).
A result the user has edited is never overwritten: a new layer is made instead.
Segmenting a stack also scores every slice by the model's uncertainty (kept in
the result's metadata for the Fine-tune widget's "Review next" list, see
:mod:`._review`); "Show uncertainty" adds the per-pixel map as an Image layer.
The model list is the viewer's shared :class:`._common.ModelSelection`, so it
always shows the model the Fine-tune widget just made.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    RadioButtons,
    create_widget,
)

from napari_unet.core.tiling import auto_zoom

from ._common import (
    META_KEY,
    LayerProblem,
    check_image_layer,
    class_features,
    heavy_imports,
    labels_colormap,
    labels_digest,
    model_selection,
    rebuild_choices,
    report_failure,
    run_generator,
    show_info,
    show_warning,
    warm_up_once,
)
from ._layout import Message, compact_combos, wrap_text
from ._review import SCORES_KEY, DiscardMap, empty_map, show_uncertainty, store_slice_scores
from ._turns import add_layer_in_turns, select_soon

if TYPE_CHECKING:
    import napari

FOLDER_CHOICE = "model folder below…"
SCOPE_ALL = "whole image / stack"
SCOPE_SLICE = "slice on screen (3D)"
DEVICES = ("auto", "cpu", "cuda", "mps")


def result_layer_name(image_name: str) -> str:
    return f"{image_name} segmentation"


def find_result_layer(viewer, image_name: str):
    """The segmentation layer made from ``image_name`` (the newest), or None."""
    found = None
    for layer in viewer.layers:
        meta = layer.metadata.get(META_KEY, {}) if hasattr(layer, "metadata") else {}
        if meta.get("role") == "segmentation" and meta.get("image_layer") == image_name:
            found = layer
    return found


#: Results larger than this many voxels, of images that are not in memory
#: (dask, zarr, memory-mapped), are kept in a compressed, chunked zarr array
#: instead of one NumPy array, so a big volume is never copied at once.
LAZY_RESULT_VOXELS = 64 * 2**20


def empty_labels(shape: tuple[int, ...], chunked: bool):
    """A zero label array: NumPy, or a compressed in-memory zarr array (one chunk per plane)."""
    if not chunked:
        return np.zeros(shape, np.uint8)
    import zarr

    chunks = (1, *shape[1:]) if len(shape) == 3 else shape
    return zarr.create_array(store=zarr.storage.MemoryStore(), shape=shape, chunks=chunks, dtype="uint8", fill_value=0)


def wants_chunked_result(data, spatial: tuple[int, ...]) -> bool:
    return not isinstance(data, np.ndarray) and int(np.prod(spatial)) > LAZY_RESULT_VOXELS


def was_edited(layer) -> bool:
    """Whether the user changed a result layer since the plugin last wrote it:
    napari's paint events (brush, eraser, fill) set a flag, and for in-memory
    results a fingerprint also catches changes made by scripts."""
    meta = layer.metadata.get(META_KEY, {})
    if meta.get("edited"):
        return True
    from .corrections import tracker_for

    tracker = tracker_for(layer, create=False)
    if tracker is not None and (tracker.reviewed or tracker.edited_mask().any()):
        return True  # reviewed slices are the user's work even where no pixel changed
    if isinstance(layer.data, np.ndarray):
        return meta.get("digest") != labels_digest(layer.data)
    return False


def _mark_edited(layer):
    def on_paint(event=None) -> None:
        layer.metadata.setdefault(META_KEY, {})["edited"] = True

    return on_paint


def current_plane(viewer, layer) -> int:
    """Index along the first data axis of ``layer`` that the viewer shows now."""
    data_point = layer.world_to_data(viewer.dims.point[-layer.ndim :] if viewer.dims.ndim >= layer.ndim else viewer.dims.point)
    z = int(round(float(data_point[0])))
    return int(np.clip(z, 0, layer.data.shape[0] - 1))


def segment_job(
    data, rgb: bool, model_source: str | None, device: str, plane: int | None, tile: int, out=None,
    zoom: float | None = None, uncertainty: str = "none", uncertainty_out=None,
):
    """The worker: load the model, normalise over the whole image, predict.

    ``uncertainty``: ``none``, ``scores`` (per-slice scores only) or ``map``
    (scores and the per-pixel map, into ``uncertainty_out`` if given).
    Yields ``("status", text)`` and ``PredictProgress``; returns
    ``(model_config, labels, plane, source, uncertainty map or None, slice scores or None)``.
    """
    with heavy_imports():
        # pandas for the result layer's class features: imported here, as an import
        # on the GUI thread (in ``_on_result``) would freeze the window for ~1 s
        import pandas  # noqa: F401

        from napari_unet.core.normalize import intensity_ranges
        from napari_unet.core.predict import PredictOptions, predict_iter
        from napari_unet.core.weights import load_model

    yield ("status", "loading model…")
    with heavy_imports():
        model = load_model(model_source, device="cpu")
    yield ("status", "measuring intensities…")
    ranges = intensity_ranges(data, model.config.input, rgb)
    image = data if plane is None else data[plane]
    options = PredictOptions(device=device, tile=tile, zoom=zoom, uncertainty=uncertainty != "none")
    if uncertainty == "scores":
        uncertainty_out = DiscardMap(image.shape[:-1] if rgb else image.shape)
    result = yield from predict_iter(
        image, model, options, rgb=rgb, intensity_ranges=ranges, out=out, uncertainty_out=uncertainty_out
    )
    shown = result.uncertainty if uncertainty == "map" else None
    return model.config, result.labels, plane, model.source, shown, result.slice_uncertainty


class SegmentWidget(Container):
    """Dock widget: segment the chosen image with a U-Net."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        import napari

        super().__init__()
        self._viewer = viewer
        self._worker = None
        self._job: dict[str, Any] = {}
        self._tile = 512
        self._syncing = False
        self._selection = model_selection(viewer)
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.model = ComboBox(label="model", choices=self._model_choices)
        self._synced_source = self._selection.source
        if self._synced_source is not None:
            self.model.value = self._synced_source
        self.model_folder = FileEdit(label="model folder", mode="d", value="")
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.zoom = FloatSpinBox(
            label="zoom", value=0.0, min=0.0, max=4.0, step=0.05,
            tooltip="resample slices before the model (0.5 halves them): use it when structures look "
            "larger than the model expects. 'auto' (0): 1 for grey scans, about 512 px for colour "
            "photos larger than 768 px (0.36 for a 1411-pixel fundus photo)",
        )
        if hasattr(self.zoom.native, "setSpecialValueText"):
            self.zoom.native.setSpecialValueText("auto")
        self.scope = RadioButtons(label="segment", choices=(SCOPE_ALL, SCOPE_SLICE), value=SCOPE_ALL)
        self.show_uncertainty = CheckBox(
            text="Show uncertainty", value=False,
            tooltip="add a layer showing where the model is unsure (bright: the classes are equally likely)",
        )
        self.segment_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1, visible=False)
        self.status = Message(value="")
        run_row = Container(widgets=[self.segment_button, self.cancel_button], layout="horizontal", labels=False)
        run_row.margins = (0, 0, 0, 0)
        self.extend(
            [self.image, self.model, self.model_folder, self.device, self.zoom, self.scope, self.show_uncertainty,
             run_row, self.progress, self.status]
        )
        wrap_text(self.status)

        compact_combos(self.image, self.model, self.device)
        self.margins = (4, 4, 4, 4)
        from qtpy.QtWidgets import QSizePolicy

        # as tall as its fields: a dock area holding it and Fine-tune gives the rest to Fine-tune
        self.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.model.changed.connect(self._on_model_choice)
        self._selection.changed.connect(self._on_selection_changed)
        self.segment_button.changed.connect(self.segment)
        self.cancel_button.changed.connect(self.cancel)
        self.model_folder.visible = self.model.value == FOLDER_CHOICE
        self._warmed = warm_up_once()  # the first-time imports, before the first click

    # ---------------------------------------------------------------- models
    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        return [*self._selection.choices(), (FOLDER_CHOICE, FOLDER_CHOICE)]

    def _on_model_choice(self, *_: Any) -> None:
        """The user picked a model here: it becomes the shared choice (a folder stays local)."""
        self.model_folder.visible = self.model.value == FOLDER_CHOICE
        if not self._syncing and self.model.value not in (None, FOLDER_CHOICE):
            self._selection.select(self.model.value)

    def _on_selection_changed(self) -> None:
        """Another widget (or a fine-tuning round) changed the shared model choice."""
        source = self._selection.source
        keep_folder = self.model.value == FOLDER_CHOICE and source == self._synced_source
        self._syncing = True
        try:
            rebuild_choices(self.model, self._model_choices, FOLDER_CHOICE if keep_folder else source)
        finally:
            self._syncing = False
        self._synced_source = source
        self.model_folder.visible = self.model.value == FOLDER_CHOICE

    # ---------------------------------------------------------------- actions
    def _model_source(self) -> str | None:
        if self.model.value == FOLDER_CHOICE:
            folder = Path(str(self.model_folder.value or ""))
            if not (folder / "config.json").is_file():
                raise LayerProblem(
                    f"Choose a model folder: '{folder}' does not hold config.json and weights.safetensors."
                )
            return str(folder)
        return self.model.value

    def segment(self, *_: Any):
        """Start segmenting; returns the worker (None if the input is unusable)."""
        layer = self.image.value
        try:
            check_image_layer(layer)
            source = self._model_source()
        except LayerProblem as exc:
            show_warning(str(exc))
            return None
        data = layer.data[0] if layer.multiscale else layer.data
        spatial_ndim = data.ndim - (1 if layer.rgb else 0)
        plane = current_plane(self._viewer, layer) if (self.scope.value == SCOPE_SLICE and spatial_ndim == 3) else None
        self._set_running(True)
        self.status.value = "starting…"
        spatial = tuple(data.shape[:-1] if layer.rgb else data.shape)
        chunked = wants_chunked_result(data, spatial)
        out = empty_labels(spatial, chunked) if (chunked and plane is None) else None
        zoom = float(self.zoom.value) or auto_zoom(spatial[-2:], layer.rgb)  # 0 shows as "auto"
        uncertainty = "map" if self.show_uncertainty.value else ("scores" if spatial_ndim == 3 else "none")
        uncertainty_out = empty_map(spatial, True) if (uncertainty == "map" and out is not None) else None
        self._job: dict[str, Any] = {
            "outcome": None, "layer": layer, "plane": plane, "spatial": spatial, "chunked": chunked, "zoom": zoom,
        }
        worker = run_generator(
            segment_job, data, layer.rgb, source, self.device.value, plane, self._tile, out, zoom,
            uncertainty, uncertainty_out,
            on_yield=self._on_progress, on_return=self._on_result,
            on_error=self._on_error, on_finish=self._on_finish,
        )
        if not self._job.get("finished"):  # still running in its thread (not run inline)
            self._worker = worker
        return worker

    def cancel(self, *_: Any) -> None:
        if self._worker is not None:
            self._worker.quit()
            self.status.value = "cancelling…"

    # -------------------------------------------------------------- callbacks
    def _on_progress(self, event) -> None:
        if isinstance(event, tuple):
            self.status.value = event[1]
            return
        self.progress.visible = True
        self.progress.max = max(1, event.total)
        self.progress.value = event.done
        self.status.value = f"{event.done}/{event.total} tiles"

    def _on_error(self, exc: BaseException) -> None:
        """The worker's ``errored`` handler: one notification, and what to do in the status line."""
        self._job["outcome"] = "error"
        self.status.value = report_failure(exc, "Segmentation")

    def _on_finish(self) -> None:
        self._job["finished"] = True
        if self._job.get("outcome") is None:
            self.status.value = "cancelled: nothing was changed"
        self._worker = None
        if self._job.get("inserting"):  # the result layer goes in a turn later (_on_inserted)
            self.cancel_button.enabled = False
        else:
            self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.segment_button.enabled = not running
        self.cancel_button.enabled = running
        if not running:
            self.progress.visible = False

    def _on_result(self, result) -> None:
        config, labels, plane, source, uncertainty, scores = result
        job = self._job
        job["outcome"] = "done"
        layer = job["layer"]

        def then(layer_out: Any) -> None:  # once the result layer is in the layer list
            if uncertainty is not None:  # above the labels, in both modes
                show_uncertainty(self._viewer, layer, uncertainty, plane, job["spatial"], job["chunked"])
            if scores is not None:
                store_slice_scores(layer_out, scores, plane)  # after the map, so "Review next" sees both

        self._store_result(layer, config, labels, plane, source, then)
        where = f"slice {plane}" if plane is not None else "image"
        if isinstance(labels, np.ndarray):
            counts = {c.name: int((labels == c.id).sum()) for c in config.classes if c.id}
            unit = "voxels" if labels.ndim == 3 else "px"  # a whole stack, or one plane
            self.status.value = f"done ({where}): " + ", ".join(f"{k} {v} {unit}" for k, v in counts.items())
            missing = [k for k, v in counts.items() if v == 0]
            if missing:  # what to do next, rather than an empty layer and no word (a healthy scan has none)
                where_to = "on one slice " if len(job["spatial"]) == 3 else ""
                self.status.value += (f". No {' or '.join(missing)} found; if there is one, paint it "
                                      f"{where_to}with the brush, then press Fine-tune")
        else:
            self.status.value = f"done ({where})"

    def _store_result(self, image_layer, config, labels: np.ndarray, plane: int | None, source: str,
                      then: Callable[[Any], None]) -> None:
        """Put the prediction in a Labels layer, never overwriting user edits;
        ``then(layer)`` runs once the layer is in the viewer's list."""
        full_shape = self._job["spatial"]
        meta = {
            "role": "segmentation",
            "image_layer": image_layer.name,
            "model": config.name,
            "model_source": source,
            # the model a Fine-tune round retrains on every correction so far
            "first_model": source,
            "zoom": self._job.get("zoom", 1.0),
            "classes": {c.id: c.name for c in config.classes},
            "edited": False,
        }
        existing = find_result_layer(self._viewer, image_layer.name)
        if existing is not None and tuple(existing.data.shape) == full_shape and not was_edited(existing):
            if plane is None:
                existing.data = labels
            else:
                existing.data[plane] = labels
                existing.refresh()
            target = existing
            select_soon(self._viewer, target)
        else:
            if existing is not None:
                show_info(
                    f"'{existing.name}' has your edits, so it was kept; the new result is a new layer."
                )
            data = labels if plane is None else empty_labels(full_shape, self._job["chunked"])
            if plane is not None:
                data[plane] = labels
            extra = {k: v for k, v in image_layer.metadata.items() if k not in (META_KEY, SCORES_KEY)}
            # with the plugin's own metadata from the start, so the Fine-tune widget
            # sees a result layer the moment it is inserted
            extra[META_KEY] = dict(meta)
            from napari.layers import Labels

            target = Labels(
                data,
                name=result_layer_name(image_layer.name),
                scale=image_layer.scale[-len(full_shape):],
                translate=image_layer.translate[-len(full_shape):],
                colormap=labels_colormap(config.classes),
                features=class_features(config.classes),
                opacity=0.6,
                metadata=extra,  # the scan's geometry (affine) travels to the writers
            )
            target.events.paint.connect(_mark_edited(target))
            from .corrections import bind_review_key, tracker_for

            tracker_for(target)  # record corrections from the first brush stroke on
            bind_review_key(self._viewer, target)
        target.metadata[META_KEY] = {
            **target.metadata.get(META_KEY, {}),
            **meta,
            "digest": labels_digest(target.data) if isinstance(target.data, np.ndarray) else None,
        }
        if target is not existing:
            # inserted in the next turn of the event loop, shown and selected in
            # the turns after it; Segment stays off until it is in the list (a
            # second click must find it and not add a twin)
            job = self._job
            job["inserting"] = True
            add_layer_in_turns(self._viewer, target, on_added=lambda added: self._on_inserted(job, added, then))
        else:
            then(target)

    def _on_inserted(self, job: dict[str, Any], layer: Any, then: Callable[[Any], None]) -> None:
        job["inserting"] = False
        try:
            if layer in self._viewer.layers:
                then(layer)
        finally:
            if job.get("finished") and job is self._job:
                self._set_running(False)
