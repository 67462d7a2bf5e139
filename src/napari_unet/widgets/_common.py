"""Helpers shared by the widgets: workers, failures, the shared model choice.

Heavy work runs in a worker thread (superqt's ``GeneratorWorker``, what
napari's ``thread_worker`` is built on). Setting the environment variable
``NAPARI_UNET_SYNC=1`` runs the same generator on the calling thread instead,
which keeps logic tests free of an event loop.

A worker's exception always ends in one place, the ``errored`` handler of the
widget that started it: napari's own workers would also relay it as a
traceback notification and re-raise it in the Qt event loop (which aborts a
script that runs without napari's exception hook).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal

__all__ = [
    "Failure",
    "LayerProblem",
    "ModelSelection",
    "check_image_layer",
    "describe_failure",
    "heavy_imports",
    "labels_digest",
    "model_selection",
    "rebuild_choices",
    "report_failure",
    "run_generator",
    "show_error",
    "show_info",
    "show_warning",
    "synchronous",
    "warm_up_once",
]

META_KEY = "napari_unet"
_log = logging.getLogger(__name__)
_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)


class LayerProblem(ValueError):
    """A layer that cannot be used; the message tells the user what to do."""


def synchronous() -> bool:
    return os.environ.get("NAPARI_UNET_SYNC", "") not in ("", "0", "false")


# torch imports large parts of itself lazily (torch._dynamo on the first
# optimiser, for one) and its modules import each other circularly; Python's
# import deadlock detection can then hand one of two importing threads a
# half-initialised module. Workers take this lock around their imports and
# model loading so that they never import torch at the same time.
_IMPORT_LOCK = threading.RLock()


@contextmanager
def heavy_imports() -> Iterator[None]:
    """Hold the lock that keeps workers from importing torch modules at the same time."""
    with _IMPORT_LOCK:
        yield


# ------------------------------------------------------------------ warm-up
_WARM_LOCK = threading.Lock()
_WARMED = threading.Event()
_WARMING: list[Any] = []  # the one warm-up worker of this process, once started


def warm_up() -> Generator[None, None, None]:
    """Do, off the GUI thread and before the first click, the first-time work
    that would otherwise freeze the window the first time it is needed.

    - torch and the core (the first optimiser made in a process imports a
      large part of torch; an import holds the GIL for long stretches);
    - pandas (the result layer's class features);
    - napari's first label colormap (it imports skimage.color, ~0.2 s);
    - vispy's dash patterns, computed in Python the first time any vispy line
      is made in the agg style (~0.2 s; napari's labels polygon overlay, made
      with every new Labels layer); vispy caches them for the process;
    - scipy.ndimage (the clean-up after a round);
    - then ``gc.freeze()``: with torch, napari and matplotlib loaded a process
      holds over half a million objects, and every full garbage collection
      walks them all (0.5 s on a 2-core laptop, at a moment nobody chooses: in
      the middle of adding a layer or of a training round). Frozen, the
      modules' objects are left out of later collections; new garbage is
      still collected.
    """
    with heavy_imports():
        import torch

        import napari_unet.core.finetune  # noqa: F401
        import napari_unet.core.postprocess  # noqa: F401
        import napari_unet.core.predict  # noqa: F401

        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    yield None
    import pandas  # noqa: F401

    yield None
    from napari.utils.colormaps import label_colormap

    label_colormap(49)
    yield None
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
    except Exception:  # a vispy without it: nothing to warm
        _log.debug("no vispy dash atlas to warm", exc_info=True)
    yield None
    import gc

    gc.freeze()
    yield None


#: the warm-up worker's state, read and written under its lock by the worker
#: thread and the exit hook (no event loop needed): ``stepping`` while a step
#: runs, ``exiting`` once the process is leaving (no step starts after that)
_WARM_STATE = threading.Condition()
_WARM_FLAGS = {"stepping": False, "exiting": False}
#: How long a process that exits during a warm-up step waits for it (seconds).
EXIT_WAIT_S = 120.0
#: then how long it waits for Qt's pool threads to leave their workers (ms)
EXIT_POOL_WAIT_MS = 5000


def _warm_up_in_worker() -> Generator[None, None, None]:
    """:func:`warm_up`, one step at a time, marking each step as running: a
    worker stopped between steps (napari asks every worker to quit when the
    application quits; superqt then leaves the generator suspended, never
    finished) holds nothing the exit has to wait for."""
    steps = warm_up()
    while True:
        with _WARM_STATE:
            if _WARM_FLAGS["exiting"]:
                return
            _WARM_FLAGS["stepping"] = True
        try:
            next(steps)
        except StopIteration:
            return
        finally:
            with _WARM_STATE:
                _WARM_FLAGS["stepping"] = False
                _WARM_STATE.notify_all()
        yield None


def _wait_for_warm_up_at_exit() -> None:
    """An interpreter that shuts down while a worker thread is in the middle
    of importing torch aborts (torch's operator registry is torn down under
    the import); the process waits for the step under way instead, and no
    later step starts. Qt's pool threads are not joined by Python, and at exit
    no event loop delivers the worker's signals, so this waits on a condition
    the thread sets itself. (It used to wait for the whole warm-up to finish:
    napari closed in its first seconds, whose worker it had quit between two
    steps, kept the process waiting the full 120 s.)"""
    with _WARM_STATE:
        _WARM_FLAGS["exiting"] = True
        if not _WARM_STATE.wait_for(lambda: not _WARM_FLAGS["stepping"], EXIT_WAIT_S):
            _log.warning("the warm-up was still running after %.0f s at exit", EXIT_WAIT_S)
            return
    # no step runs now, but a worker still alive emits ``returned``/``finished``
    # from the pool thread (its generator stops at the next step); interpreter
    # shutdown deleting the signals' Qt object under that emit aborted the
    # process (SIGABRT, seen once in a loaded test run)
    try:
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(EXIT_POOL_WAIT_MS)
    except Exception:  # noqa: BLE001 - best effort at exit, never raise there
        pass


def warm_up_once() -> threading.Event:
    """Start this process's warm-up worker (:func:`warm_up`) unless it has been
    started; the returned event is set when it is done (at once when
    :func:`synchronous`, where nothing is warmed). A process that exits
    before the warm-up is done waits for it (:func:`_wait_for_warm_up_at_exit`)."""
    with _WARM_LOCK:
        if synchronous():
            _WARMED.set()
        elif not _WARMING and not _WARMED.is_set():
            # weakref's own exit hook (which runs the finalizers torch makes
            # while it imports) must run after this wait: atexit runs last-in
            # first-out, so make sure it is registered first
            weakref.finalize(_wait_for_warm_up_at_exit, lambda: None)
            atexit.register(_wait_for_warm_up_at_exit)
            _WARMING.append(run_generator(_warm_up_in_worker, on_finish=_WARMED.set))
    return _WARMED


# ------------------------------------------------------------------ failures
@dataclass(frozen=True)
class Failure:
    """A worker's exception, worded for the user.

    ``expected`` failures (a bad setting, a missing device, an unusable model,
    too little memory) get a warning and no traceback; anything else is a bug,
    shown as an error, with the traceback in the log.
    """

    expected: bool
    message: str
    hint: str


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "OutOfMemoryError" in type(exc).__name__


def describe_failure(exc: BaseException) -> Failure:
    """What went wrong in a worker, and what the user can do about it."""
    from napari_unet.core.weights import ModelError

    text = str(exc) or type(exc).__name__
    if _is_out_of_memory(exc):
        return Failure(True, f"out of memory ({text})", "lower the zoom, segment one slice, or use device 'cpu'")
    if isinstance(exc, ModelError):
        return Failure(True, text, "choose another model, or a folder with config.json and weights.safetensors")
    if isinstance(exc, ValueError) and "device" in text.lower():
        return Failure(True, text, "choose device 'auto' or 'cpu'")
    if isinstance(exc, ValueError):
        return Failure(True, text, "check the settings above and try again")
    if isinstance(exc, OSError):
        return Failure(True, text, "check the file or folder and that it can be read")
    return Failure(False, f"{type(exc).__name__}: {text}", "this is a bug; the details are in the log")


def report_failure(exc: BaseException, what: str) -> str:
    """One notification for a failed worker (``what``: "Segmentation", ...);
    returns the status line that says what to do. Unexpected errors are
    logged with their traceback; the user sees one line."""
    failure = describe_failure(exc)
    if failure.expected:
        show_warning(f"{what} failed: {failure.message}. {failure.hint[:1].upper()}{failure.hint[1:]}.")
    else:
        _log.error("%s failed", what.lower(), exc_info=(type(exc), exc, exc.__traceback__))
        show_error(f"{what} failed: {failure.message} ({failure.hint}).")
    return f"failed: {failure.message}. To fix it: {failure.hint}. Nothing was changed."


def _report_unhandled(exc: BaseException) -> None:
    """Fallback for workers started without an error handler: one notification."""
    failure = describe_failure(exc)
    if not failure.expected:
        _log.error("napari-unet worker failed", exc_info=(type(exc), exc, exc.__traceback__))
    (show_warning if failure.expected else show_error)(f"{failure.message} ({failure.hint})")


def _relay_warning(args: tuple) -> None:
    """A warning raised in a worker: the project's own become a notification."""
    message, category, filename, lineno = args[:4]
    if str(filename).startswith(_PACKAGE_DIR):
        show_warning(str(message))
    else:
        _log.warning("%s: %s (%s:%s)", category.__name__, message, filename, lineno)


# ------------------------------------------------------------------- workers
class _RaisedInWorker(Exception):
    """Carries a worker's exception past superqt's worker loop, which takes any
    ``RuntimeError`` for a deleted Qt object and then ends the thread without
    emitting ``errored`` or ``finished`` (torch's errors, out-of-memory
    included, are RuntimeErrors)."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def _carrying_errors(generator_function: Callable[..., Generator]) -> Callable[..., Generator]:
    @functools.wraps(generator_function)
    def run(*args: Any, **kwargs: Any) -> Generator:
        try:
            return (yield from generator_function(*args, **kwargs))
        except RuntimeError as exc:
            raise _RaisedInWorker(exc) from exc

    return run


def _original(exc: BaseException) -> BaseException:
    return exc.original if isinstance(exc, _RaisedInWorker) else exc


class _SyncWorker:
    """The part of a GeneratorWorker's interface the widgets use, run inline."""

    def __init__(self) -> None:
        self.is_running = False
        self.abort_requested = False

    def quit(self) -> None:
        self.abort_requested = True


def run_generator(
    generator_function: Callable[..., Generator],
    *args: Any,
    on_yield: Callable[[Any], None] | None = None,
    on_return: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finish: Callable[[], None] | None = None,
    **kwargs: Any,
):
    """Run ``generator_function(*args, **kwargs)`` off the GUI thread.

    Each yielded value goes to ``on_yield`` (on the GUI thread), the return
    value to ``on_return``, an exception to ``on_error`` (connected to the
    worker's ``errored`` signal; without one, a single notification is shown)
    and is never re-raised; ``on_finish`` runs last in every case.
    ``worker.quit()`` stops it at its next ``yield``. Returns the worker (a
    superqt ``GeneratorWorker``, or an inline stand-in when :func:`synchronous`).
    """
    handle_error = on_error or _report_unhandled
    if synchronous():
        worker = _SyncWorker()
        gen = generator_function(*args, **kwargs)
        try:
            while True:
                try:
                    value = next(gen)
                except StopIteration as stop:
                    if on_return:
                        on_return(stop.value)
                    break
                if on_yield:
                    on_yield(value)
                if worker.abort_requested:
                    gen.close()
                    break
        except Exception as exc:  # noqa: BLE001 - reported like the threaded path does
            handle_error(exc)
        finally:
            if on_finish:
                on_finish()
        return worker

    from superqt.utils import GeneratorWorker, create_worker

    # _ignore_errors: errors go to handle_error only, never re-raised into Qt
    worker = create_worker(
        _carrying_errors(generator_function), *args,
        _start_thread=False, _ignore_errors=True, _worker_class=GeneratorWorker, **kwargs,
    )
    if on_yield:
        worker.yielded.connect(on_yield)
    if on_return:
        worker.returned.connect(on_return)
    worker.errored.connect(lambda exc: handle_error(_original(exc)))
    worker.warned.connect(_relay_warning)
    if on_finish:
        worker.finished.connect(on_finish)
    worker.start()
    return worker


# ------------------------------------------------------ the shared model choice
class ModelSelection:
    """The one model choice that the Segment and Fine-tune widgets of a viewer share.

    :attr:`source` is what both widgets use (a bundled model name or a model
    folder): the user's last choice, else the store's current version, else the
    bundled default. ``changed`` is emitted whenever the choice or the list of
    versions changes (a fine-tuning round, a rollback, a rename), so both
    widgets show the same entry and their lists stay current. Get the one for
    a viewer with :func:`model_selection`.
    """

    changed = Signal()

    def __init__(self, store: Any = None) -> None:
        self._store = store
        self._chosen: str | None = None
        self._folders: list[str] = []  # model folders chosen from elsewhere

    @property
    def store(self) -> Any:
        """The user's model store (created on first use)."""
        if self._store is None:
            from napari_unet.core.versions import ModelStore

            self._store = ModelStore()
        return self._store

    def _versions(self) -> tuple[list[Any], Any]:
        try:
            versions = list(self.store.list_versions())
            current = self.store.current()
        except Exception:  # noqa: BLE001 - a broken user store must not break the widgets
            return [], None
        return versions, current

    def choices(self) -> list[tuple[str, str]]:
        """``(label, source)`` pairs: bundled models (the default first), saved
        versions (labelled with their id), then folders chosen from elsewhere."""
        from napari_unet.core.weights import bundled_model_names, default_model_name

        choices: list[tuple[str, str]] = []
        default = default_model_name()
        for name in bundled_model_names():
            label = f"{name} (bundled{', default' if name == default else ''})"
            choices.insert(0 if name == default else len(choices), (label, name))
        versions, current = self._versions()
        for version in versions:
            choices.append((version_label(version, current is not None and version.id == current.id), str(version.path)))
        known = {source for _, source in choices}
        choices.extend((f"{folder} (folder)", folder) for folder in self._folders if folder not in known)
        return choices

    @property
    def source(self) -> str | None:
        """The model both widgets use now."""
        sources = [source for _, source in self.choices()]
        if self._chosen in sources:
            return self._chosen
        _, current = self._versions()
        if current is not None and str(current.path) in sources:
            return str(current.path)
        return sources[0] if sources else None

    def select(self, source: str | os.PathLike) -> None:
        """Make ``source`` (a bundled name, a version's or any model folder) the choice."""
        source = str(source)
        if source not in {s for _, s in self.choices()}:
            self._folders.append(source)
        self._chosen = source
        self.changed.emit()

    def refresh(self) -> None:
        """Tell the widgets that the list of versions changed."""
        self.changed.emit()


def version_label(version: Any, current: bool = False) -> str:
    """``v0002: liver CT (yours, current)``: the id always, the name when it differs."""
    label = version.id if version.name in ("", version.id) else f"{version.id}: {version.name}"
    return f"{label} (yours{', current' if current else ''})"


def rebuild_choices(combo: Any, choices: Callable[..., list], value: Any) -> None:
    """Fill ``combo`` from ``choices`` again, in their order, and select ``value`` if listed.

    magicgui's ``reset_choices`` appends new and relabelled entries at the end
    (a new version would land below "model folder below…") and may jump to
    another entry when the selected one is relabelled.
    """
    combo.choices = ()
    combo.choices = choices
    if value in combo.choices:
        combo.value = value


_SELECTIONS: weakref.WeakKeyDictionary[Any, ModelSelection] = weakref.WeakKeyDictionary()


def model_selection(viewer: Any) -> ModelSelection:
    """The :class:`ModelSelection` of ``viewer`` (one per viewer, made on first use)."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # napari hands plugins a proxy
    selection = _SELECTIONS.get(viewer)
    if selection is None:
        selection = _SELECTIONS[viewer] = ModelSelection()
    return selection


def check_image_layer(layer) -> None:
    """Raise :class:`LayerProblem` for layers the U-Net cannot segment."""
    if layer is None:
        raise LayerProblem("No image selected: open a scan (File > Open) or a sample, then choose it here.")
    shape = tuple(layer.data.shape) if not getattr(layer, "multiscale", False) else tuple(layer.data[0].shape)
    if any(s == 0 for s in shape):
        raise LayerProblem(f"Image '{layer.name}' is empty (shape {shape}).")
    if layer.rgb and shape[-1] == 4:
        raise LayerProblem(f"Image '{layer.name}' is RGBA: remove the alpha channel (RGB or grey images work).")
    spatial = len(shape) - (1 if layer.rgb else 0)
    if spatial > 3:
        raise LayerProblem(
            f"Image '{layer.name}' has {spatial} dimensions {shape}: segment one time point or channel "
            f"(a 2D image or a 3D stack); split it with Layers > Split stack first."
        )
    if spatial < 2:
        raise LayerProblem(f"Image '{layer.name}' is {spatial}D; a 2D image or 3D stack is needed.")


def labels_digest(data) -> str:
    """A fingerprint of a label array, to tell whether the user edited it."""
    array = np.ascontiguousarray(np.asarray(data))
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(array.shape).encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def labels_colormap(classes) -> Any:
    """A napari colormap giving every class its configured colour."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[Any, Any] = {c.id: c.rgba() for c in classes}
    colors[None] = (1.0, 0.0, 1.0, 1.0)  # ids outside the model's classes stand out
    return DirectLabelColormap(color_dict=colors)


def class_features(classes) -> Any:
    """Layer features so napari's status bar names the class under the cursor."""
    import pandas as pd

    return pd.DataFrame({"index": [c.id for c in classes], "class": [c.name for c in classes]})
