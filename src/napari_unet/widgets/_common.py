"""Helpers shared by the widgets: workers, notifications, layer checks.

Heavy work runs in napari's ``thread_worker``. Setting the environment
variable ``NAPARI_UNET_SYNC=1`` runs the same generator on the calling thread
instead, which keeps logic tests free of an event loop.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning

__all__ = [
    "LayerProblem",
    "check_image_layer",
    "labels_digest",
    "run_generator",
    "show_error",
    "show_info",
    "show_warning",
    "synchronous",
]

META_KEY = "napari_unet"


class LayerProblem(ValueError):
    """A layer that cannot be used; the message tells the user what to do."""


def synchronous() -> bool:
    return os.environ.get("NAPARI_UNET_SYNC", "") not in ("", "0", "false")


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
    value to ``on_return``; ``worker.quit()`` stops it at its next ``yield``.
    Returns the worker (a napari ``GeneratorWorker``, or an inline stand-in
    when :func:`synchronous`).
    """
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
            if on_error is None:
                raise
            on_error(exc)
        finally:
            if on_finish:
                on_finish()
        return worker

    from napari.qt.threading import thread_worker

    worker = thread_worker(generator_function, start_thread=False)(*args, **kwargs)
    if on_yield:
        worker.yielded.connect(on_yield)
    if on_return:
        worker.returned.connect(on_return)
    if on_error:
        worker.errored.connect(on_error)
    if on_finish:
        worker.finished.connect(on_finish)
    worker.start()
    return worker


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
