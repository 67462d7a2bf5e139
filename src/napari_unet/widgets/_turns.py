"""Adding a layer over several short turns of the Qt event loop.

napari does everything a new layer needs (visuals, controls, selection, first
draw) in the call that inserts it; :func:`add_layer_in_turns` spreads that
over turns so that no single turn freezes the window for long. Qt-free until
a step is scheduled, and all at once under ``NAPARI_UNET_SYNC``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from ._common import synchronous

__all__ = ["add_layer_in_turns", "select_soon", "turns_pending"]


# The editing overlays napari gives every Labels layer (the polygon tool's and
# the brush outline's). napari makes an overlay's vispy visual when the layer
# is inserted if the overlay is visible, else when it becomes visible.
_EDITING_OVERLAYS = ("polygon", "brush_stroke")
# A real timer between the steps (not 0 ms, which Qt runs as a posted event
# in the same pass): input, painting and other timers get their turn.
_TURN_MS = 1
# the timers of steps still to run (a timer without an owner must outlive the call that made it)
_TIMERS: set[Any] = set()


def add_layer_in_turns(viewer: Any, layer: Any, on_added: Callable[[Any], None] | None = None) -> None:
    """Add ``layer`` to the viewer over several short turns of the event loop.

    Inserting a layer is napari's longest single piece of GUI work in the
    default flow: it makes the layer's vispy visual and controls, the visuals
    of a Labels layer's two editing overlays (polygon tool, brush outline:
    about 40 % of the call) and selects the layer (controls swap, layer list,
    context keys: 20-30 ms); the first draw after it compiles the layer's
    shaders and uploads its data (50-60 ms with Mesa's software OpenGL).
    Done in the turn that received a worker's result, next to the widget's
    own updates and the progress events, that was the first Segment's
    120-190 ms stall.

    So the steps get a turn each, starting with the next one: insert the
    layer hidden, unselected (napari's own ``LayerList._activate_on_insert``
    switch, on the viewer behind the plugin's proxy) and with its editing
    overlays hidden; show it (its first draw); select it; show each overlay
    (when napari makes its visual). The end state is the one
    ``viewer.add_layer`` leaves. ``on_added(layer)`` runs right after the
    insertion (also if it failed, with the exception re-raised after it), so
    a caller can keep its buttons off until the layer is there. A removed
    layer is not selected; a closed viewer ends the steps. With
    ``NAPARI_UNET_SYNC`` every step runs at once, in this call.
    """
    overlays = getattr(layer, "_overlays", {})
    hidden = [layer] if layer.visible else []
    hidden += [overlays[k] for k in _EDITING_OVERLAYS if k in overlays and overlays[k].visible is True]
    for item in hidden:
        item.visible = False

    def insert() -> None:
        layers = getattr(viewer, "__wrapped__", viewer).layers
        activate = getattr(layers, "_activate_on_insert", None)
        try:
            if isinstance(activate, bool):
                layers._activate_on_insert = False
                try:
                    viewer.add_layer(layer)
                finally:
                    layers._activate_on_insert = activate
            else:  # a napari without the switch: added and selected as napari does
                viewer.add_layer(layer)
        except BaseException:
            for item in hidden:
                item.visible = True
            del steps[:]  # nothing more to show or select
            raise
        finally:
            if on_added is not None:
                on_added(layer)

    def show(item: Any) -> Callable[[], None]:
        def run() -> None:
            item.visible = True  # also if the layer was removed meanwhile: it stays whole

        return run

    steps = [show(item) for item in hidden]
    steps.insert(1 if hidden and hidden[0] is layer else 0, _selector(viewer, layer))  # after the first draw
    steps.insert(0, insert)
    _in_turns(steps, _qt_window(viewer))


def select_soon(viewer: Any, layer: Any) -> None:
    """Make ``layer`` the active layer in the next turn of the event loop
    (at once with ``NAPARI_UNET_SYNC``), unless it was removed by then."""
    _in_turns([_selector(viewer, layer)], _qt_window(viewer))


def _selector(viewer: Any, layer: Any) -> Callable[[], None]:
    viewer_ref = weakref.ref(getattr(viewer, "__wrapped__", viewer))  # a pending step keeps no viewer alive

    def select() -> None:
        alive = viewer_ref()
        if alive is not None and layer in alive.layers:
            alive.layers.selection.active = layer

    return select


def _qt_window(viewer: Any) -> Any:
    """The Qt main window of ``viewer`` (None without one)."""
    window = getattr(getattr(viewer, "__wrapped__", viewer), "window", None)
    return getattr(window, "_qt_window", None)


def _in_turns(steps: list[Callable[[], None]], owner: Any = None) -> None:
    """Run ``steps`` one per turn of the Qt event loop, starting with the next
    (all at once with ``NAPARI_UNET_SYNC``). The timers are children of the
    QObject ``owner``: when it is deleted (the viewer closed) the remaining
    steps are dropped. A step that raises does not stop the ones after it
    (a step may empty ``steps`` to do that)."""
    if synchronous():
        while steps:
            steps.pop(0)()
        return
    from qtpy.QtCore import QTimer

    def schedule(parent: Any) -> None:
        timer = QTimer(parent)
        timer.setSingleShot(True)
        _TIMERS.add(timer)
        timer.timeout.connect(lambda: next_step(timer))
        timer.start(_TURN_MS)

    def next_step(timer: Any) -> None:
        _TIMERS.discard(timer)
        parent = timer.parent()  # not held in a closure: a pending step keeps no window alive
        timer.deleteLater()
        if not steps:
            return
        step = steps.pop(0)
        try:
            step()
        finally:
            if steps:
                schedule(parent)

    if steps:
        schedule(owner)


def turns_pending() -> bool:
    """Whether steps of :func:`add_layer_in_turns` or :func:`select_soon` are still to run."""
    return bool(_TIMERS)
