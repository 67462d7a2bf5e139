"""The Fine-tune widget's worker: fine-tune, save a version, gate it, segment again.

Runs off the GUI thread (see :func:`._common.run_generator`); everything it
needs is copied off the layers into a :class:`FinetuneRequest` first, and it
hands a :class:`FinetuneOutcome` back. No Qt here.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._common import heavy_imports
from ._review import DiscardMap

__all__ = ["FinetuneOutcome", "FinetuneRequest", "finetune_job", "round_summary"]


@dataclass
class FinetuneRequest:
    """Everything the worker needs, copied off the layers on the GUI thread."""

    image: np.ndarray
    labels: np.ndarray
    trusted: np.ndarray
    rgb: bool
    #: the model the user has now: the new version's parent, and what it is compared with
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
    #: the zoom the layer was segmented with, so segmenting again gives comparable labels
    zoom: float = 1.0
    #: whether an uncertainty layer is shown (else only the per-slice scores are kept)
    uncertainty_map: bool = False
    #: in a stack, leave out predicted regions that touch no pixel the user
    #: trusted as their class (:mod:`napari_unet.core.postprocess`)
    keep_connected: bool = True
    #: and widen the kept regions with less certain pixels connected to them
    #: (:data:`napari_unet.core.postprocess.GROW_PROBABILITY`)
    widen: bool = True
    #: train from this model (the one the layer's first round started from;
    #: "": the default bundled model) on every correction so far, instead of
    #: continuing ``base_model``; ``None``: continue ``base_model``
    start_model: str | None = None


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
    #: the re-segmentation's uncertainty map and per-slice scores (for "Review next")
    uncertainty: np.ndarray | None = None
    slice_uncertainty: np.ndarray | None = None
    #: regions the re-segmentation left out (:class:`~napari_unet.core.postprocess.Removed`),
    #: and the sentence that says so ("" when none)
    removed: list = field(default_factory=list)
    removed_text: str = ""


#: seconds between two training steps shown in the GUI (validation checks always are)
GUI_EVENT_INTERVAL = 0.25


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
    with heavy_imports():
        from napari_unet.core.finetune import FinetuneOptions, finetune_iter
        from napari_unet.core.predict import PredictOptions, predict_iter
        from napari_unet.core.weights import load_model

    start = time.perf_counter()
    yield ("status", "loading model…")
    restart = request.start_model is not None and request.start_model != (request.base_model or "")
    with heavy_imports():
        model = current = load_model(request.base_model, device="cpu")
        if restart:
            try:
                model = load_model(request.start_model or None, device="cpu")
            except (OSError, ValueError) as exc:  # gone or broken: continue the current model
                yield ("status", f"the first model cannot be loaded ({exc}); continuing the current one")
                restart = False
    if restart and {c.id for c in current.config.classes} - {c.id for c in model.config.classes}:
        model, restart = current, False  # the current model learnt classes the first lacks: keep them
    known = {c.id for c in model.config.classes}
    used = {int(v) for v in np.unique(request.labels[request.trusted])}
    missing = tuple(sorted(used - known))
    if missing and not request.add_classes:
        return FinetuneOutcome("classes", missing_classes=missing, model_classes=tuple(sorted(known)))

    yield ("status", "retraining the first model on every correction…" if restart else "fine-tuning…")
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
    if restart:
        kwargs["reference"] = current  # "better" means better than the model the user has now
    graceful = _accepts(finetune_iter, "stop")
    if graceful:
        kwargs["stop"] = cancel.is_set
    training = finetune_iter(request.image, request.labels, request.trusted, model, **kwargs)
    steps = 0
    result = None
    last_shown = -math.inf
    while True:
        try:
            event = next(training)
        except StopIteration as stop:
            result = stop.value
            break
        steps = event.step
        # every step handed to the GUI costs the event loop (and the GIL) a plot
        # update: pass validation checks always, plain steps a few times a second
        now = time.perf_counter()
        if getattr(event, "val_dice", None) is None and now - last_shown < GUI_EVENT_INTERVAL:
            if cancel.is_set() and not graceful:
                training.close()
                return FinetuneOutcome("cancelled", steps=steps, seconds=time.perf_counter() - start)
            continue
        last_shown = now
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
    after, before, metric = result.gate_scores()  # validation, or the fit when validation is blind
    decision = store.promote(version, parent, after, before, metric=metric)
    yield ("status", "segmenting again…")
    from napari_unet.core.postprocess import GROW_PROBABILITY

    grow = GROW_PROBABILITY if request.widen else 0.5
    options = PredictOptions(device=request.device, zoom=request.zoom, uncertainty=True, grow=grow)
    spatial = request.image.shape[:-1] if request.rgb else request.image.shape
    discard = None if request.uncertainty_map else DiscardMap(spatial)  # scores only: no float map in memory
    seeds = None
    if request.keep_connected:
        from napari_unet.core.postprocess import seeds_from_corrections

        seeds = seeds_from_corrections(request.labels, request.trusted)
    prediction = yield from predict_iter(
        request.image, trained, options, rgb=request.rgb, uncertainty_out=discard, seeds=seeds
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
        uncertainty=prediction.uncertainty if request.uncertainty_map else None,
        slice_uncertainty=prediction.slice_uncertainty,
        removed=list(prediction.removed),
        removed_text=_describe_removed(prediction.removed, trained.config.classes),
    )


def _describe_removed(removed: list, classes) -> str:
    if not removed:
        return ""
    from napari_unet.core.postprocess import describe

    return describe(removed, {c.id: c.name for c in classes})


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
