"""The Fine-tune widget: learn from the user's corrections, then segment again.

The user picks the image and its result layer, a time budget and a
learning-rate preset, and presses **Fine-tune**. The job (:mod:`._finetune_job`)
runs in a worker thread (through :func:`._common.run_generator`): it loads the
base model, fine-tunes it on the trusted pixels only (see :mod:`.corrections`),
saves the result as a new version in the user's model store (the bundled
model is never touched), applies the regression gate, and re-segments the
image with the zoom the layer was segmented with (scoring its slices' uncertainty
for the "Review next" list, :mod:`._review`). Back on the GUI thread the
trusted pixels are kept exactly as the user left them and the prediction fills
only the untrusted ones, and the new version becomes the viewer's shared model
choice (:class:`._common.ModelSelection`), which the Segment widget shows too.

A live plot shows training loss and validation Dice; Cancel stops at the next
training step and keeps the best weights so far as an (unused) version.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from ._common import (
    META_KEY,
    LayerProblem,
    check_image_layer,
    model_selection,
    rebuild_choices,
    report_failure,
    run_generator,
    show_info,
    show_warning,
    warm_up_once,
)
from ._finetune_job import FinetuneOutcome, FinetuneRequest, finetune_job, round_summary
from ._gate import GateMixin
from ._layout import (
    Message,
    bring_into_view,
    compact_combos,
    full_width,
    hide_when_empty,
    make_scrollable,
    section,
    wrap_text,
)
from ._review import ReviewNext, find_uncertainty_layer, refresh_uncertainty, store_slice_scores
from ._versions import VersionsMixin
from .corrections import (
    _unwrap,
    bind_review_key,
    current_slice,
    show_trusted,
    tracker_for,
    trusted_layer_name,
)
from .segment import DEVICES, find_result_layer

if TYPE_CHECKING:
    import napari

__all__ = ["FinetuneOutcome", "FinetuneRequest", "FinetuneWidget", "LR_PRESETS", "finetune_job"]

#: Learning-rate presets; ``None`` means the core's own default.
LR_PRESETS: dict[str, float | None] = {
    "default": None,
    "gentle (small corrections)": 1e-4,
    "strong (new kind of scan)": 1e-3,
}
LAYER_MODEL = "model that made the layer"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _layer_zoom(layer: Any) -> float:
    """The zoom the Segment widget made ``layer`` with (1 for layers from elsewhere)."""
    try:
        return float(layer.metadata.get(META_KEY, {}).get("zoom", 1.0))
    except (TypeError, ValueError):
        return 1.0


# ------------------------------------------------------------------ widget
class FinetuneWidget(GateMixin, VersionsMixin, Container):
    """Dock widget: fine-tune the model on the corrections of a result layer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        import napari

        super().__init__()
        self._viewer = viewer
        self._worker = None
        self._cancel = threading.Event()
        self._job: dict[str, Any] = {}
        self._replay: Any = None
        self._selection = model_selection(viewer)
        self._syncing = False
        self._status_tracker: Any = None
        self._pending: FinetuneOutcome | None = None
        self._add_classes = False
        self.last_summary: dict[str, Any] = {}

        self.image = create_widget(annotation=napari.layers.Image, label="image")
        # not ``self.labels``: that is magicgui's flag for showing the fields' labels
        self.labels_layer = create_widget(annotation=napari.layers.Labels, label="corrected labels")
        self.model = ComboBox(label="start from", choices=self._model_choices)
        self.budget = FloatSpinBox(
            label="time budget (s)", value=60.0, min=5.0, max=3600.0, step=5.0,
            tooltip="a round that has not learned a class you marked by then trains on, "
            "up to 3x this (the status line says so); Cancel stops it",
        )
        self.lr_preset = ComboBox(label="learning rate", choices=list(LR_PRESETS), value="default")
        self.steps = SpinBox(
            label="max steps", value=0, min=0, max=1_000_000, tooltip="0: as many as the time budget allows"
        )
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.keep_connected = CheckBox(
            text="keep regions touching corrections", value=True,
            tooltip="keep only regions connected to my corrections: in a stack, after a round, a predicted "
            "region that touches no pixel you corrected as its class (through the slices) becomes background",
        )
        self.widen = CheckBox(
            text="widen with less certain pixels", value=True,
            tooltip="pixels the new model gives at least 15 % of a class, next to a region kept for that "
            "class, join it (never across a pixel you trusted); off: the model's plain labels",
        )
        self.keep_connected.changed.connect(lambda value: setattr(self.widen, "enabled", bool(value)))
        self.restart = CheckBox(
            text="retrain the first model", value=True,
            tooltip="each round retrains the first model on all corrections. On: every round starts again "
            "from the model this layer was segmented with, and learns every correction so far (continuing "
            "the last round's model undid earlier rounds on real scans); off: each round continues the last "
            "round's model",
        )
        self.advanced = Container(
            widgets=[self.steps, self.device, self.seed, self.restart, self.keep_connected, self.widen]
        )
        self.advanced.margins = (0, 0, 0, 0)

        self.review_button = PushButton(text="Mark slice reviewed (Shift-R)")
        self.show_trusted_box = CheckBox(text="show trusted pixels", value=False)
        self.trusted_status = Message(value="")
        self.review_next = ReviewNext(viewer)

        self.finetune_button = PushButton(text="Fine-tune")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.add_class_button = PushButton(text="Add class", visible=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1000, visible=False)
        self.status = Message(value="")

        self.gate_status = Message(value="", visible=False)
        self.use_new_button = PushButton(text="Use new version", visible=False)
        self.keep_old_button = PushButton(text="Keep previous", visible=False)
        self.summary = Message(value="")

        self.versions = ComboBox(label="versions", choices=self._version_choices)
        self.rollback_button = PushButton(text="Use this version")
        self.new_name = LineEdit(label="new name", value="")
        self.rename_button = PushButton(text="Rename")
        self.export_button = PushButton(text="Export…")
        self.import_button = PushButton(text="Import folder…")
        self.import_package_button = PushButton(text="Import…", tooltip="a BioImage.IO package (.zip) napari-unet exported")
        version_row = Container(widgets=[self.rollback_button, self.export_button], layout="horizontal", labels=False)
        version_row.margins = (0, 0, 0, 0)
        rename_row = Container(widgets=[self.new_name, self.rename_button], layout="horizontal")
        run_row = Container(widgets=[self.finetune_button, self.cancel_button], layout="horizontal", labels=False)
        self.gate_row = Container(
            widgets=[self.use_new_button, self.keep_old_button], layout="horizontal", labels=False, visible=False
        )

        from .plot import TrainingPlot

        self.plot = TrainingPlot(budget=float(self.budget.value))
        self.extend(
            [
                self.image, self.labels_layer, self.review_button, self.show_trusted_box, self.trusted_status,
                self.review_next, self.model, self.budget, self.lr_preset,
                run_row, self.add_class_button, self.progress, self.status,
                self.gate_status, self.gate_row, self.summary,
            ]
        )
        # the rarely used parts fold away, so the dock fits a laptop screen beside the image
        self.plot_section = section("Training plot", [self.plot.widget])
        self.plot_section.toggled.connect(lambda expanded: expanded and self.plot.shown())
        import_row = Container(widgets=[self.import_button, self.import_package_button], layout="horizontal", labels=False)
        import_row.margins = (0, 0, 0, 0)
        self.versions_section = section("Versions", [self.versions, version_row, import_row, rename_row])
        self.advanced_section = section("Advanced", [self.advanced])
        layout = self.native.layout()
        for box in (self.plot_section, self.versions_section, self.advanced_section):
            layout.addWidget(box)
        wrap_text(self.status, self.summary, self.gate_status, self.trusted_status)
        full_width(self.review_next)
        for row in (run_row, self.gate_row):
            row.margins = (0, 0, 0, 0)
        for widget in (self.status, self.summary):  # an empty message takes no row
            hide_when_empty(widget)
        compact_combos(self.image, self.labels_layer, self.model, self.lr_preset, self.versions)
        self.margins = (4, 4, 4, 4)
        self._scroll = make_scrollable(self)

        self.budget.changed.connect(lambda v: self.plot.set_budget(float(v)))
        self.image.changed.connect(self._on_image_choice)
        self.labels_layer.changed.connect(self._on_labels_choice)
        self.model.changed.connect(self._on_model_choice)
        self._selection.changed.connect(self._on_selection_changed)
        self.review_button.changed.connect(self.toggle_reviewed)
        self.show_trusted_box.changed.connect(self._on_show_trusted)
        self.finetune_button.changed.connect(self.finetune)
        self.cancel_button.changed.connect(self.cancel)
        self.add_class_button.changed.connect(self.add_classes_and_finetune)
        self.use_new_button.changed.connect(self.use_candidate)
        self.keep_old_button.changed.connect(self.keep_previous)
        self.rollback_button.changed.connect(self.rollback)
        self.rename_button.changed.connect(self._on_rename)
        self.export_button.changed.connect(self._on_export)
        self.import_button.changed.connect(self._on_import)
        self.import_package_button.changed.connect(self._on_import_package)
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        viewer.dims.events.current_step.connect(self._update_trusted_status)
        for layer in viewer.layers:
            self._attach(layer)
        self._on_image_choice()
        self._on_labels_choice()
        self._warmed = warm_up_once()

    # ------------------------------------------------------------- plumbing
    @property
    def warmed_up(self) -> bool:
        """Whether the process's first-time imports (see :func:`._common.warm_up`) are done."""
        return self._warmed.is_set()

    @property
    def store(self) -> Any:
        """The user's model store (the viewer's shared one, created on first use)."""
        return self._selection.store

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        return [(LAYER_MODEL, LAYER_MODEL), *self._selection.choices()]

    def _on_model_choice(self, *_: Any) -> None:
        """The user picked a model to start from: it becomes the shared choice."""
        if not self._syncing and self.model.value not in (None, LAYER_MODEL):
            self._selection.select(self.model.value)

    def _on_selection_changed(self) -> None:
        """Refresh both lists; follow the shared choice unless starting from the layer's model."""
        follow = self.model.value != LAYER_MODEL
        source = self._selection.source
        self._syncing = True
        try:
            rebuild_choices(self.model, self._model_choices, source if follow and source is not None else LAYER_MODEL)
            rebuild_choices(self.versions, self._version_choices, self._version_id_of(source) or self.versions.value)
        finally:
            self._syncing = False

    def _version_id_of(self, source: str | None) -> str | None:
        """The id of the saved version whose folder is ``source`` (None if it is none)."""
        try:
            return next((v.id for v in self.store.list_versions() if str(v.path) == source), None)
        except Exception:  # noqa: BLE001 - a broken store must not break the widget
            return None

    def _attach(self, layer: Any, chosen: bool = False) -> None:
        """Track corrections on a segmentation result layer (or the one chosen here)
        and bind Shift-R on it."""
        import napari

        if not isinstance(layer, napari.layers.Labels):
            return
        if not chosen and layer.metadata.get(META_KEY, {}).get("role") != "segmentation":
            return
        tracker_for(layer)
        bind_review_key(self._viewer, layer)

    def _on_layer_inserted(self, event: Any) -> None:
        layer = _unwrap(event.value)
        self._attach(layer)
        meta = getattr(layer, "metadata", {}).get(META_KEY, {})
        image = self.image.value
        if image is not None and meta.get("role") == "segmentation" and meta.get("image_layer") == image.name:
            self.labels_layer.reset_choices()  # napari may refresh the list only after this handler
            if layer in self.labels_layer.choices:
                self.labels_layer.value = layer  # a new result of this image: fine-tune on it

    def _on_image_choice(self, *_: Any) -> None:
        image = self.image.value
        if image is None:
            return
        found = find_result_layer(self._viewer, image.name)
        if found is not None:
            self.labels_layer.value = _unwrap(found)

    def _on_labels_choice(self, *_: Any) -> None:
        """Follow the chosen layer's tracker, so the status line is live."""
        layer = self.labels_layer.value
        tracker = None if layer is None else tracker_for(layer)
        if tracker is not self._status_tracker:
            if self._status_tracker is not None:
                self._status_tracker.changed.disconnect(self._update_trusted_status)
            if tracker is not None:
                self._attach(layer, chosen=True)
                tracker.changed.connect(self._update_trusted_status)
            self._status_tracker = tracker
        self._update_trusted_status()
        self.review_next.set_layer(layer)
        if self.show_trusted_box.value:
            self._on_show_trusted(True)

    def _tracker(self):
        layer = self.labels_layer.value
        return None if layer is None else tracker_for(layer)

    def _update_trusted_status(self, *_: Any) -> None:
        tracker = self._tracker()
        if tracker is None:
            self.trusted_status.value = "no result layer: segment an image first"
            return
        counts = tracker.summary()
        here = current_slice(self._viewer, tracker.layer) if tracker.is_volume else 0
        reviewed_here = here in tracker.reviewed
        self.review_button.text = (
            ("Un-review" if reviewed_here else "Mark reviewed")
            + (f" slice {here}" if tracker.is_volume else " image")
            + " (Shift-R)"
        )
        self.trusted_status.value = (
            f"trusted: {counts['trusted_pixels']} px on {counts['trusted_slices']} slice(s) "
            f"({counts['edited_pixels']} px edited, {counts['reviewed_slices']} reviewed)"
        )

    # ----------------------------------------------------------- reviewing
    def toggle_reviewed(self, *_: Any) -> None:
        """Mark the slice on screen reviewed (all its pixels trusted), or undo that."""
        tracker = self._tracker()
        if tracker is None:
            show_warning("Choose a result (Labels) layer first.")
            return
        tracker.toggle_reviewed(current_slice(self._viewer, tracker.layer))
        self._update_trusted_status()

    def _on_show_trusted(self, visible: Any) -> None:
        layer = self.labels_layer.value
        if layer is None:
            return
        for other in list(self._viewer.layers):
            if other.name.endswith(" trusted") and other.name != trusted_layer_name(layer.name):
                other.visible = False
        show_trusted(self._viewer, layer, bool(visible))
        self._viewer.layers.selection.active = layer

    # --------------------------------------------------------- fine-tuning
    def _base_model(self, labels_layer: Any) -> str | None:
        if self.model.value != LAYER_MODEL:
            return self.model.value
        meta = labels_layer.metadata.get(META_KEY, {})
        return meta.get("model_source") or meta.get("model") or None

    def _start_model(self, labels_layer: Any, base: str | None) -> str | None:
        """The model a round retrains (``None``: continue ``base``): the one
        the layer was segmented with, or its first round's base ("": the
        default bundled model)."""
        if not self.restart.value or self.model.value != LAYER_MODEL:
            return None
        meta = labels_layer.metadata.setdefault(META_KEY, {})
        return meta.setdefault("first_model", base or "")

    def _request(self) -> FinetuneRequest:
        """Check the layers and copy what the worker needs; raise LayerProblem if unusable."""
        image_layer, labels_layer = self.image.value, self.labels_layer.value
        check_image_layer(image_layer)
        if labels_layer is None:
            raise LayerProblem("No result layer: press Segment first, correct its labels, then fine-tune.")
        if image_layer.multiscale or labels_layer.multiscale:
            raise LayerProblem("Multiscale layers cannot be fine-tuned on; open the full-resolution scan.")
        image = np.asarray(image_layer.data)
        spatial = image.shape[:-1] if image_layer.rgb else image.shape
        labels = np.asarray(labels_layer.data)
        if tuple(spatial) != tuple(labels.shape):
            raise LayerProblem(
                f"'{image_layer.name}' is {tuple(spatial)} but '{labels_layer.name}' is {labels.shape}: "
                f"pick the result layer that belongs to this image."
            )
        tracker = tracker_for(labels_layer)
        trusted = tracker.trusted_mask()
        if not trusted.any():
            raise LayerProblem(
                "No corrections yet: paint, erase or fill on the result layer, or mark a slice "
                "reviewed (Shift-R), then fine-tune."
            )
        lr = LR_PRESETS.get(self.lr_preset.value)
        base = self._base_model(labels_layer)
        return FinetuneRequest(
            image=image,
            labels=labels.copy(),
            trusted=trusted,
            rgb=bool(image_layer.rgb),
            base_model=base,
            start_model=self._start_model(labels_layer, base),
            max_seconds=float(self.budget.value),
            max_steps=int(self.steps.value) or None,
            lr=lr,
            device=self.device.value,
            seed=int(self.seed.value),
            add_classes=self._add_classes,
            image_name=image_layer.name,
            labels_name=labels_layer.name,
            slices=len(tracker.trusted_slices()),
            uncertainty_map=find_uncertainty_layer(self._viewer, image_layer.name) is not None,
            zoom=_layer_zoom(labels_layer),
            keep_connected=bool(self.keep_connected.value),
            widen=bool(self.widen.value),
        )

    def finetune(self, *_: Any):
        """Start a round; returns the worker, or None (with a notification) if unusable."""
        if self._worker is not None:
            show_info("A fine-tuning run is already going; cancel it first.")
            return None
        try:
            request = self._request()
        except LayerProblem as exc:
            show_warning(str(exc))
            return None
        if self._replay is None:
            from napari_unet.core.finetune import ReplayBuffer

            self._replay = ReplayBuffer()
        self._cancel.clear()
        self._pending = None
        self._show_gate(False)
        self.add_class_button.visible = False
        self.plot.clear()
        self._job = {
            "request": request,
            "outcome": None,
            "layer": self.labels_layer.value,
            "previous": np.asarray(self.labels_layer.value.data).copy(),
        }
        self.status.value = "starting…"
        self._set_running(True)
        worker = run_generator(
            finetune_job, request, self.store, self._replay, self._cancel,
            on_yield=self._on_event, on_return=self._on_result,
            on_error=self._on_error, on_finish=self._on_finish,
        )
        if not self._job.get("finished"):  # still running in its thread
            self._worker = worker
        return worker

    def cancel(self, *_: Any) -> None:
        """Stop at the next training step, keeping the best weights so far."""
        if self._job and not self._job.get("finished"):
            self._cancel.set()
            self.status.value = "cancelling after this step…"

    def add_classes_and_finetune(self, *_: Any):
        """Accept the offer: add the missing classes as new outputs, and fine-tune."""
        self._add_classes = True
        self.add_class_button.visible = False
        return self.finetune()

    # ------------------------------------------------------------ callbacks
    def _on_event(self, event: Any) -> None:
        if isinstance(event, tuple):
            self.status.value = str(event[1])
            return
        if hasattr(event, "loss"):
            self.plot.add(event.step, event.elapsed, event.loss, event.val_dice)
            fraction = getattr(event, "fraction", None)
            if fraction is None:
                fraction = event.step / event.max_steps if event.max_steps else 0.0
            self.progress.visible = True
            self.progress.value = int(1000 * fraction)
            best = getattr(event, "best_val_dice", None)
            self.status.value = (
                f"step {event.step}, {event.elapsed:.0f} s: {event.stage}" if getattr(event, "stage", "") else
                f"step {event.step}, {event.elapsed:.0f} s, loss {event.loss:.3f}, best val. Dice {_fmt(best)}"
            )
            return
        if hasattr(event, "done") and hasattr(event, "total"):
            self.progress.value = int(1000 * event.done / max(1, event.total))

    def _on_error(self, exc: BaseException) -> None:
        """The worker's ``errored`` handler: one notification, and what to do in the status line."""
        self._job["outcome"] = "error"
        self.status.value = report_failure(exc, "Fine-tuning")

    def _on_finish(self) -> None:
        self._job["finished"] = True
        if self._job.get("outcome") is None:
            self.status.value = "stopped: nothing was changed"
        self._set_running(False)
        self.plot.update(force=True)
        self._worker = None
        self._add_classes = False
        self._selection.refresh()  # a round (even a cancelled one) may have added a version

    def _set_running(self, running: bool) -> None:
        self.finetune_button.enabled = not running
        self.cancel_button.enabled = running
        self.progress.visible = running
        if running:  # the status line, and the progress bar above it, in view
            bring_into_view(self._scroll, self.status)

    def _on_result(self, outcome: FinetuneOutcome) -> None:
        self._job["outcome"] = outcome.status
        if outcome.status == "classes":
            missing = ", ".join(str(i) for i in outcome.missing_classes)
            self._job["missing"] = outcome.missing_classes
            self.add_class_button.text = f"Add class {missing} as a new output and fine-tune"
            self.add_class_button.visible = True
            self.status.value = f"labels use class {missing}, which the model does not know: nothing was changed"
            show_warning(
                f"The corrections use class id(s) {missing}, but the model only knows "
                f"{list(outcome.model_classes)}. Nothing was changed; press 'Add class' to give the model "
                f"a new output for it, or relabel those pixels."
            )
            return
        if outcome.status == "cancelled":
            if outcome.version is None:
                self.status.value = "cancelled before the first step: nothing was changed"
                show_info("Fine-tuning cancelled before the first step; nothing was changed.")
            else:
                self.status.value = (
                    f"cancelled after {outcome.steps} steps; best weights kept as {outcome.version.id}"
                )
                show_info(
                    f"Fine-tuning cancelled after {outcome.steps} steps. The best weights so far were kept "
                    f"as version {outcome.version.id} (not in use; pick it under versions to use it). "
                    f"The labels were not changed."
                )
            return
        if self._promoted(outcome.decision):
            self._apply(outcome)
        else:
            self._pending = outcome
            before, after, metric = self._gate_numbers(outcome)
            self.gate_status.value = (
                f"The new version {outcome.version.id} scores {_fmt(after)} ({metric}); "
                f"the previous model scored {_fmt(before)}. It was not used. Choose:"
            )
            self._show_gate(True)
            self.status.value = "the new version is worse than the previous one: your choice"
            bring_into_view(self._scroll, self.gate_row)  # the choice the notification points to
            show_warning(
                f"The fine-tuned version is worse than the previous one ({metric}: {_fmt(after)} vs "
                f"{_fmt(before)}); it was saved but not used. Choose in the widget."
            )

    # --------------------------------------------------------- applying
    def _apply(self, outcome: FinetuneOutcome) -> None:
        """Load the new labels: trusted pixels as corrected, predictions elsewhere."""
        layer = self._job["layer"]
        request: FinetuneRequest = self._job["request"]
        tracker = tracker_for(layer)
        current = np.asarray(layer.data)
        if current.shape != outcome.predicted.shape:
            show_warning(f"'{layer.name}' changed shape during fine-tuning; its labels were not replaced.")
            return
        trusted = tracker.trusted_mask()  # includes edits made while training ran
        merged = np.where(trusted, current, outcome.predicted).astype(current.dtype, copy=False)
        stats = round_summary(request.labels, request.trusted, outcome.predicted, self._job["previous"])
        with tracker.writing_labels():
            layer.data = merged
        if outcome.slice_uncertainty is not None:
            refresh_uncertainty(self._viewer, request.image_name, outcome.uncertainty)
            store_slice_scores(layer, outcome.slice_uncertainty)  # "Review next" ranks again
        meta = layer.metadata.setdefault(META_KEY, {})
        meta["model_source"] = str(outcome.version.path)
        meta["model"] = str(outcome.version.path)
        if request.add_classes and outcome.classes:
            from ._common import class_features, labels_colormap

            layer.colormap = labels_colormap(outcome.classes)
            layer.features = class_features(outcome.classes)
            meta["classes"] = {c.id: c.name for c in outcome.classes}
        self._selection.select(outcome.version.path)  # the Segment widget uses it from now on too
        self.model.value = LAYER_MODEL
        result = outcome.result
        before = result.val_dice_before if result is not None else None
        after = result.val_dice_after if result is not None else None
        self.last_summary = {
            "version": outcome.version.id,
            "trusted_pixels": stats["trusted_pixels"],
            "slices": request.slices,
            "val_dice_before": before,
            "val_dice_after": after,
            "seconds": outcome.seconds,
            "steps": outcome.steps,
            "disagree_trusted": stats["disagree_trusted"],
            "changed_untrusted": stats["changed_untrusted"],
        }
        self.summary.value = (
            f"Round done in {outcome.seconds:.0f} s ({outcome.steps} steps{_extended(result)}): learned from "
            f"{stats['trusted_pixels']} trusted px on {request.slices} slice(s). "
            f"Val. Dice {_fmt(before)} → {_fmt(after)}{_caveat(outcome)}. The new model disagrees with your corrections on "
            f"{100 * stats['disagree_trusted']:.1f}% of them and changed {stats['changed_untrusted']} "
            f"other px. Now using {outcome.version.id}."
        )
        if outcome.removed:
            self.last_summary["left_out_regions"] = sum(r.regions for r in outcome.removed)
        if outcome.removed_text:
            self.summary.value += f" In the new labels: {outcome.removed_text}."
        self.status.value = "done: labels updated (your corrections kept as they are)"
        bring_into_view(self._scroll, self.summary)
        show_info(f"Fine-tuned {outcome.version.id}: {_headline(result)}.")


def _headline(result) -> str:
    """The round's figure for the notification: what the version gate compared
    (the validation Dice, or, when the held-back pixels hold almost none of a
    class the round learned, that class's Dice on the corrected slices; a
    blind "val. Dice 0.000 → 1.000" alone would overstate the round)."""
    # loaded by the round already
    from napari_unet.core.finetune import OTHERS_FIGURE, STUCK_VALIDATION
    from napari_unet.core.versions import VALIDATION_FIGURE

    if result is None:
        return "val. Dice n/a"
    new, base, what = result.gate_scores()
    if what == VALIDATION_FIGURE:
        fit = result.fit_text().replace("->", "→")  # beside a validation figure near 0: the round's fit
        if fit and base is not None and base < STUCK_VALIDATION:
            # near 0 before and after, the validation figure cannot tell: the fit first
            return (f"{_fmt(result.fit_before)} → {_fmt(result.fit_after)} ({result.fit_names()} Dice on the "
                    f"slices it learned from; val. Dice {_fmt(base)} → {_fmt(new)}: the round missed the held-back pixels)")
        return f"val. Dice {_fmt(base)} → {_fmt(new)}" + (f"; {fit}" if fit else "")
    # the numbers first: a notification shows its first 40-odd characters
    if what == OTHERS_FIGURE:
        return f"{_fmt(base)} → {_fmt(new)} (val. Dice of the classes the held-back pixels hold)"
    why = "the held-back pixels could not tell" if result.validation_pixels else "no pixel was held back"
    return f"{_fmt(base)} → {_fmt(new)} ({what}; {why})"


def _extended(result) -> str:
    """``; 170 past the budget, as a class you marked was not learned yet`` when the round trained on."""
    extra = getattr(result, "extra_steps", 0) if result is not None else 0
    return f"; {extra} past the budget, as a class you marked was not learned yet" if extra else ""


def _caveat(outcome) -> str:
    """The round's validation caveat (a done round always carries its result)."""
    return outcome.result.validation_caveat().replace("->", "→") if outcome.result is not None else ""
