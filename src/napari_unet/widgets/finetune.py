"""The Fine-tune widget: learn from the user's corrections, then segment again.

The user picks the image and its result layer, a time budget and a
learning-rate preset, and presses **Fine-tune**. The job runs in napari's
``thread_worker`` (through :func:`._common.run_generator`): it loads the base
model, fine-tunes it on the trusted pixels only (see :mod:`.corrections`),
saves the result as a new version in the user's model store (the bundled
model is never touched), applies the regression gate, and re-segments the
image. Back on the GUI thread the trusted pixels are kept exactly as the user
left them and the prediction fills only the untrusted ones.

A live plot shows training loss and validation Dice; Cancel stops at the next
training step and keeps the best weights so far as an (unused) version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
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
    run_generator,
    show_error,
    show_info,
    show_warning,
    synchronous,
)
from .corrections import (
    bind_review_key,
    current_slice,
    show_trusted,
    tracker_for,
    trusted_layer_name,
)
from .segment import DEVICES, find_result_layer, model_choices

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


@dataclass
class FinetuneRequest:
    """Everything the worker needs, copied off the layers on the GUI thread."""

    image: np.ndarray
    labels: np.ndarray
    trusted: np.ndarray
    rgb: bool
    base_model: str | None
    max_seconds: float
    max_steps: int | None = None
    lr: float | None = None
    device: str = "auto"
    seed: int = 0
    add_classes: bool = False
    image_name: str = ""
    labels_name: str = ""
    slices: int = 0


@dataclass
class FinetuneOutcome:
    """What the worker hands back to the GUI thread.

    ``status`` is ``done``, ``cancelled`` or ``classes`` (labels use class ids
    the model lacks: ``missing_classes``; nothing was trained).
    """

    status: str
    version: Any = None
    decision: Any = None
    result: Any = None
    predicted: np.ndarray | None = None
    missing_classes: tuple[int, ...] = ()
    model_classes: tuple[int, ...] = ()
    seconds: float = 0.0
    steps: int = 0
    classes: tuple[Any, ...] = ()
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ the job
def _store_version_of(store: Any, source: str | None) -> str | None:
    """The id of the store version whose folder is ``source``, if it is one."""
    if not source:
        return None
    try:
        wanted = Path(source).resolve()
        for version in store.list_versions():
            if version.path.resolve() == wanted:
                return version.id
    except (OSError, ValueError):
        return None
    return None


def warm_up() -> Generator[None, None, None]:
    """Import what a fine-tune needs, off the GUI thread, before the first click.

    The first optimiser made in a process imports a large part of torch; any
    import holds the GIL for long stretches, which would freeze the window for
    up to a second at the start of the first round if left to the run itself.
    """
    import torch

    import napari_unet.core.finetune  # noqa: F401
    import napari_unet.core.predict  # noqa: F401

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    yield None


def _accepts(function: Any, name: str) -> bool:
    import inspect

    return name in inspect.signature(function).parameters


def finetune_job(
    request: FinetuneRequest, store: Any, replay: Any, cancel: threading.Event
) -> Generator[Any, None, FinetuneOutcome]:
    """The worker: fine-tune, save a version, gate it, re-segment.

    Yields ``("status", text)``, training events and prediction progress.
    Cancelling (``cancel.set()``) stops training at the next step. When the
    core can stop a run gracefully (a ``stop`` callable), the best weights so
    far are saved as a version that is not promoted; otherwise the run is
    dropped and nothing changes.
    """
    from napari_unet.core.finetune import FinetuneOptions, finetune_iter
    from napari_unet.core.predict import PredictOptions, predict_iter
    from napari_unet.core.weights import load_model

    start = time.perf_counter()
    yield ("status", "loading model…")
    model = load_model(request.base_model, device="cpu")
    known = {c.id for c in model.config.classes}
    used = {int(v) for v in np.unique(request.labels[request.trusted])}
    missing = tuple(sorted(used - known))
    if missing and not request.add_classes:
        return FinetuneOutcome("classes", missing_classes=missing, model_classes=tuple(sorted(known)))

    yield ("status", "fine-tuning…")
    kwargs: dict[str, Any] = {
        "max_seconds": request.max_seconds,
        "steps": request.max_steps,
        "device": request.device,
        "seed": request.seed,
        "replay": replay,
        "add_classes": request.add_classes,
    }
    if request.lr is not None:
        kwargs["options"] = FinetuneOptions(lr=request.lr)
    graceful = _accepts(finetune_iter, "stop")
    if graceful:
        kwargs["stop"] = cancel.is_set
    training = finetune_iter(request.image, request.labels, request.trusted, model, **kwargs)
    steps = 0
    result = None
    while True:
        try:
            event = next(training)
        except StopIteration as stop:
            result = stop.value
            break
        steps = event.step
        yield event
        if cancel.is_set() and not graceful:
            training.close()  # the core drops the run; the base model is untouched
            return FinetuneOutcome("cancelled", steps=steps, seconds=time.perf_counter() - start)
    cancelled = cancel.is_set()
    if cancelled and (result is None or result.steps == 0):
        return FinetuneOutcome("cancelled", steps=steps, seconds=time.perf_counter() - start)

    yield ("status", "saving the new version…")
    trained = result.model
    parent = _store_version_of(store, request.base_model)
    metrics = {
        "val_dice_before": result.val_dice_before,
        "val_dice_after": result.val_dice_after,
        "trusted_pixels": int(result.trusted_pixels),
        "slices": int(result.slices),
        "seconds": round(float(result.seconds), 2),
        "steps": int(result.steps),
        "image": request.image_name,
        "cancelled": cancelled,
    }
    version = store.add_version(trained, parent=parent or request.base_model, metrics=metrics)
    if cancelled:
        return FinetuneOutcome(
            "cancelled", version=version, result=result, steps=steps, seconds=time.perf_counter() - start
        )
    yield ("status", "checking against the previous version…")
    decision = store.promote(version, parent, result.val_dice_after, result.val_dice_before)
    yield ("status", "segmenting again…")
    prediction = yield from predict_iter(
        request.image, trained, PredictOptions(device=request.device), rgb=request.rgb
    )
    return FinetuneOutcome(
        "done",
        version=version,
        decision=decision,
        result=result,
        predicted=np.asarray(prediction.labels),
        steps=steps,
        seconds=time.perf_counter() - start,
        classes=tuple(trained.config.classes),
        notes=list(getattr(prediction, "notes", [])),
    )


# ------------------------------------------------------------- statistics
def round_summary(
    corrected: np.ndarray, trusted: np.ndarray, predicted: np.ndarray, previous: np.ndarray
) -> dict[str, float]:
    """How the new prediction relates to the user's corrections.

    ``disagree_trusted``: fraction of trusted pixels where the new model
    disagrees with the corrected labels (what it has not learned);
    ``changed_untrusted``: pixels outside the trusted mask whose label the new
    prediction changes.
    """
    n_trusted = int(trusted.sum())
    disagree = int(((predicted != corrected) & trusted).sum())
    changed = int(((predicted != previous) & ~trusted).sum())
    return {
        "trusted_pixels": n_trusted,
        "disagree_trusted": disagree / n_trusted if n_trusted else 0.0,
        "changed_untrusted": changed,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ------------------------------------------------------------------ widget
class FinetuneWidget(Container):
    """Dock widget: fine-tune the model on the corrections of a result layer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        import napari

        super().__init__()
        self._viewer = viewer
        self._worker = None
        self._cancel = threading.Event()
        self._job: dict[str, Any] = {}
        self._replay: Any = None
        self._store: Any = None
        self._pending: FinetuneOutcome | None = None
        self._add_classes = False
        self.last_summary: dict[str, Any] = {}

        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.labels = create_widget(annotation=napari.layers.Labels, label="corrected labels")
        self.model = ComboBox(label="start from", choices=self._model_choices)
        self.budget = FloatSpinBox(label="time budget (s)", value=60.0, min=5.0, max=3600.0, step=5.0)
        self.lr_preset = ComboBox(label="learning rate", choices=list(LR_PRESETS), value="default")
        self.show_advanced = CheckBox(text="advanced", value=False)
        self.steps = SpinBox(label="max steps (0 = budget)", value=0, min=0, max=1_000_000)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.advanced = Container(widgets=[self.steps, self.device, self.seed], visible=False)

        self.review_button = PushButton(text="Mark slice reviewed (Shift-R)")
        self.show_trusted_box = CheckBox(text="show trusted pixels", value=False)
        self.trusted_status = Label(value="")

        self.finetune_button = PushButton(text="Fine-tune")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.add_class_button = PushButton(text="Add class", visible=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1000, visible=False)
        self.status = Label(value="")

        self.gate_status = Label(value="", visible=False)
        self.use_new_button = PushButton(text="Use new version", visible=False)
        self.keep_old_button = PushButton(text="Keep previous", visible=False)
        self.summary = Label(value="")

        self.versions = ComboBox(label="versions", choices=self._version_choices)
        self.rollback_button = PushButton(text="Use this version")
        self.new_name = LineEdit(label="new name", value="")
        self.rename_button = PushButton(text="Rename")
        self.export_button = PushButton(text="Export…")
        self.import_button = PushButton(text="Import folder…")
        version_row = Container(
            widgets=[self.rollback_button, self.export_button, self.import_button], layout="horizontal", labels=False
        )
        rename_row = Container(widgets=[self.new_name, self.rename_button], layout="horizontal")
        run_row = Container(widgets=[self.finetune_button, self.cancel_button], layout="horizontal", labels=False)
        gate_row = Container(widgets=[self.use_new_button, self.keep_old_button], layout="horizontal", labels=False)
        review_row = Container(widgets=[self.review_button, self.show_trusted_box], layout="horizontal", labels=False)

        from .plot import TrainingPlot

        self.plot = TrainingPlot(budget=float(self.budget.value))
        self.extend(
            [
                self.image, self.labels, review_row, self.trusted_status,
                self.model, self.budget, self.lr_preset, self.show_advanced, self.advanced,
                run_row, self.add_class_button, self.progress, self.status,
            ]
        )
        self.native.layout().addWidget(self.plot.widget)
        self.extend([self.gate_status, gate_row, self.summary, self.versions, version_row, rename_row])
        for widget in (self.status, self.summary, self.gate_status, self.trusted_status):
            widget.native.setWordWrap(True)

        self.budget.changed.connect(lambda v: self.plot.set_budget(float(v)))
        self.show_advanced.changed.connect(lambda v: setattr(self.advanced, "visible", bool(v)))
        self.image.changed.connect(self._on_image_choice)
        self.labels.changed.connect(self._on_labels_choice)
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
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        viewer.dims.events.current_step.connect(self._update_trusted_status)
        for layer in viewer.layers:
            self._attach(layer)
        self._on_image_choice()
        self._update_trusted_status()
        self.warmed_up = synchronous()
        if not self.warmed_up:
            run_generator(warm_up, on_finish=lambda: setattr(self, "warmed_up", True))

    # ------------------------------------------------------------- plumbing
    @property
    def store(self) -> Any:
        """The user's model store (created on first use, so torch loads lazily)."""
        if self._store is None:
            from napari_unet.core.versions import ModelStore

            self._store = ModelStore()
        return self._store

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        return [(LAYER_MODEL, LAYER_MODEL), *model_choices()[:-1]]

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

    def _attach(self, layer: Any) -> None:
        """Track corrections on every segmentation result layer."""
        import napari

        if not isinstance(layer, napari.layers.Labels):
            return
        if layer.metadata.get(META_KEY, {}).get("role") != "segmentation":
            return
        tracker = tracker_for(layer)
        bind_review_key(self._viewer, layer)
        tracker.changed.connect(self._update_trusted_status)

    def _on_layer_inserted(self, event: Any) -> None:
        self._attach(event.value)
        if self.labels.value is None:
            self._on_image_choice()

    def _on_image_choice(self, *_: Any) -> None:
        image = self.image.value
        if image is None:
            return
        found = find_result_layer(self._viewer, image.name)
        if found is not None:
            self.labels.value = found

    def _on_labels_choice(self, *_: Any) -> None:
        self._update_trusted_status()
        if self.show_trusted_box.value:
            self._on_show_trusted(True)

    def _tracker(self):
        layer = self.labels.value
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
        layer = self.labels.value
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

    def _request(self) -> FinetuneRequest:
        """Check the layers and copy what the worker needs; raise LayerProblem if unusable."""
        image_layer, labels_layer = self.image.value, self.labels.value
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
        return FinetuneRequest(
            image=image,
            labels=labels.copy(),
            trusted=trusted,
            rgb=bool(image_layer.rgb),
            base_model=self._base_model(labels_layer),
            max_seconds=float(self.budget.value),
            max_steps=int(self.steps.value) or None,
            lr=lr,
            device=self.device.value,
            seed=int(self.seed.value),
            add_classes=self._add_classes,
            image_name=image_layer.name,
            labels_name=labels_layer.name,
            slices=len(tracker.trusted_slices()),
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
            "layer": self.labels.value,
            "previous": np.asarray(self.labels.value.data).copy(),
        }
        self._set_running(True)
        self.status.value = "starting…"
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
                f"step {event.step}, {event.elapsed:.0f} s, loss {event.loss:.3f}, best val. Dice {_fmt(best)}"
            )
            return
        if hasattr(event, "done") and hasattr(event, "total"):
            self.progress.value = int(1000 * event.done / max(1, event.total))

    def _on_error(self, exc: BaseException) -> None:
        from napari_unet.core.weights import ModelError

        self._job["outcome"] = "error"
        self.status.value = "failed: nothing was changed"
        if isinstance(exc, ValueError | ModelError):
            show_warning(f"Fine-tuning failed: {exc}")
        else:
            show_error(f"Fine-tuning failed: {type(exc).__name__}: {exc}")

    def _on_finish(self) -> None:
        self._job["finished"] = True
        if self._job.get("outcome") is None:
            self.status.value = "stopped: nothing was changed"
        self._set_running(False)
        self.plot.update(force=True)
        self._worker = None
        self._add_classes = False
        self.versions.reset_choices()

    def _set_running(self, running: bool) -> None:
        self.finetune_button.enabled = not running
        self.cancel_button.enabled = running
        self.progress.visible = running

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
            before, after = self._gate_numbers(outcome)
            self.gate_status.value = (
                f"The new version {outcome.version.id} scores val. Dice {_fmt(after)} on your trusted "
                f"pixels; the previous model scored {_fmt(before)}. It was not used. Choose:"
            )
            self._show_gate(True)
            self.status.value = "the new version is worse than the previous one: your choice"
            show_warning(
                f"The fine-tuned version is worse than the previous one on the same trusted pixels "
                f"(val. Dice {_fmt(after)} vs {_fmt(before)}); it was saved but not used. Choose in the widget."
            )

    # ----------------------------------------------------- regression gate
    @staticmethod
    def _promoted(decision: Any) -> bool:
        if decision is None:
            return True
        return bool(decision.promoted)

    @staticmethod
    def _gate_numbers(outcome: FinetuneOutcome) -> tuple[float | None, float | None]:
        decision, result = outcome.decision, outcome.result
        before = getattr(decision, "val_dice_previous", None)
        after = getattr(decision, "val_dice_candidate", None)
        if before is None:
            before = getattr(result, "val_dice_before", None)
        if after is None:
            after = getattr(result, "val_dice_after", None)
        return before, after

    def _show_gate(self, visible: bool) -> None:
        for widget in (self.gate_status, self.use_new_button, self.keep_old_button):
            widget.visible = visible

    def use_candidate(self, *_: Any) -> None:
        """Use the version the regression gate held back, as the user chose."""
        if self._pending is None:
            return
        outcome, self._pending = self._pending, None
        self._show_gate(False)
        self.store.rollback(outcome.version.id)
        self._apply(outcome)
        self.versions.reset_choices()

    def keep_previous(self, *_: Any) -> None:
        """Keep the previous model and the labels as they are."""
        if self._pending is None:
            return
        name = self._pending.version.id
        self._pending = None
        self._show_gate(False)
        self.status.value = f"kept the previous model; '{name}' stays in the version list"

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
        meta = layer.metadata.setdefault(META_KEY, {})
        meta["model_source"] = str(outcome.version.path)
        meta["model"] = str(outcome.version.path)
        if request.add_classes and outcome.classes:
            from ._common import class_features, labels_colormap

            layer.colormap = labels_colormap(outcome.classes)
            layer.features = class_features(outcome.classes)
            meta["classes"] = {c.id: c.name for c in outcome.classes}
        self.model.reset_choices()
        self.model.value = LAYER_MODEL
        before, after = self._gate_numbers(outcome)
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
            f"Round done in {outcome.seconds:.0f} s ({outcome.steps} steps): learned from "
            f"{stats['trusted_pixels']} trusted px on {request.slices} slice(s). "
            f"Val. Dice {_fmt(before)} → {_fmt(after)}. The new model disagrees with your corrections on "
            f"{100 * stats['disagree_trusted']:.1f}% of them and changed {stats['changed_untrusted']} "
            f"other px. Now using {outcome.version.id}."
        )
        self.status.value = "done: labels updated (your corrections kept as they are)"
        show_info(f"Fine-tuned {outcome.version.id}: val. Dice {_fmt(before)} → {_fmt(after)}.")

    # ------------------------------------------------------------ versions
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
        layer = self.labels.value
        if layer is not None:
            meta = layer.metadata.setdefault(META_KEY, {})
            meta["model_source"] = meta["model"] = str(version.path)
        self.versions.reset_choices()
        self.model.reset_choices()
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
        self.versions.reset_choices()
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
        self.versions.reset_choices()
        self.model.reset_choices()
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
