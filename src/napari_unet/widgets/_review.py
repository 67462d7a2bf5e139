"""Where the model is unsure: the uncertainty layer and the "Review next" list.

Segmenting a stack always scores every slice by its mean normalised entropy
(:mod:`napari_unet.core.uncertainty`, one pass over probabilities the
predictor has anyway) and keeps the scores in the result layer's metadata
under :data:`SCORES_KEY`, a plain list of floats, one per slice (NaN for a
slice not segmented yet). Writers emit ``layer.events.metadata`` so the list
follows. The Segment widget can also show the per-pixel map as an Image layer.

The Fine-tune widget's :class:`ReviewNext` lists the :data:`TOP` most uncertain
slices the user has not yet vouched for: a slice drops out as soon as it holds
a trusted pixel (marked reviewed with Shift-R, or corrected with the brush),
as the layer's :class:`~.corrections.CorrectionTracker` reports. Clicking an
entry shows that slice.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from magicgui.widgets import Container, Label

from ._common import META_KEY
from .corrections import _unwrap, tracker_for

SCORES_KEY = "napari_unet_slice_uncertainty"
TOP = 5
ROLE = "uncertainty"


# --------------------------------------------------------------- prediction side
class DiscardMap:
    """An ``uncertainty_out`` for the predictor that keeps no pixels, only the slice scores."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def empty_map(shape: tuple[int, ...], chunked: bool):
    """A zero float32 uncertainty map: NumPy, or compressed in-memory zarr (one chunk per plane)."""
    if not chunked:
        return np.zeros(shape, np.float32)
    import zarr

    chunks = (1, *shape[1:]) if len(shape) == 3 else shape
    return zarr.create_array(store=zarr.storage.MemoryStore(), shape=shape, chunks=chunks, dtype="float32", fill_value=0)


def store_slice_scores(layer: Any, scores: Any, plane: int | None = None) -> None:
    """Keep per-slice scores in ``layer.metadata`` (only entry ``plane`` when one plane was segmented)."""
    depth = layer.data.shape[0] if layer.ndim >= 3 else 1
    new = [float(s) for s in np.ravel(scores)]
    if plane is not None:
        old = list(layer.metadata.get(SCORES_KEY) or [])
        merged = old if len(old) == depth else [math.nan] * depth
        merged[plane] = new[0]
        new = merged
    if len(new) != depth:
        return
    layer.metadata[SCORES_KEY] = new
    layer.events.metadata()


def uncertainty_layer_name(image_name: str) -> str:
    return f"{image_name} uncertainty"


def find_uncertainty_layer(viewer: Any, image_name: str):
    """The uncertainty layer this plugin made for ``image_name`` (the newest), or None."""
    found = None
    for layer in viewer.layers:
        meta = layer.metadata.get(META_KEY, {})
        if meta.get("role") == ROLE and meta.get("image_layer") == image_name:
            found = layer
    return found


def show_uncertainty(viewer: Any, image_layer: Any, data: Any, plane: int | None, full_shape: tuple[int, ...], chunked: bool):
    """Put an uncertainty map (of the whole image, or of slice ``plane``) in our layer for the image.

    Only a layer this plugin made is updated; a layer of the same name from
    elsewhere is left alone (napari gives ours another name).
    """
    layer = find_uncertainty_layer(viewer, image_layer.name)
    if layer is not None and tuple(layer.data.shape) == tuple(full_shape):
        if plane is None:
            layer.data = data
        else:
            layer.data[plane] = data
            layer.refresh()
        return layer
    if plane is not None:
        whole = empty_map(full_shape, chunked)
        whole[plane] = data
        data = whole
    return viewer.add_image(
        data,
        name=uncertainty_layer_name(image_layer.name),
        scale=image_layer.scale[-len(full_shape):],
        translate=image_layer.translate[-len(full_shape):],
        colormap="magma",
        contrast_limits=(0.0, 1.0),
        blending="additive",
        opacity=0.6,
        metadata={META_KEY: {"role": ROLE, "image_layer": image_layer.name}},
    )


def refresh_uncertainty(viewer: Any, image_name: str, data: Any) -> None:
    """Replace the map in our uncertainty layer for ``image_name``, if there is one of that shape."""
    layer = find_uncertainty_layer(viewer, image_name)
    if layer is not None and data is not None and tuple(layer.data.shape) == tuple(np.shape(data)):
        layer.data = data


# ------------------------------------------------------------------ the list
def review_entries(scores: Any, reviewed: Any, top: int = TOP) -> list[tuple[int, float]]:
    """``(slice, score)`` of the ``top`` most uncertain scored slices not in ``reviewed``."""
    from napari_unet.core.uncertainty import review_order

    unscored = {i for i, s in enumerate(scores) if not math.isfinite(s)}
    return review_order([0.0 if i in unscored else s for i, s in enumerate(scores)], set(reviewed), top, skip=unscored)


def entry_text(entries: list[tuple[int, float]], reviewed: Any) -> list[str]:
    """One line per list entry: ``slice 16 — 0.005 · near 15`` when a slice
    listed above it or already reviewed lies within ``REVIEW_SPACING`` (such a
    slice competes at a discount, :func:`~napari_unet.core.uncertainty.review_order`),
    so a score below the next entry's does not read as a sorting fault."""
    from napari_unet.core.uncertainty import REVIEW_SPACING

    seen = sorted({int(z) for z in reviewed})
    lines = []
    for z, score in entries:
        near = [w for w in seen if 0 < abs(w - z) <= REVIEW_SPACING]
        text = f"slice {z} — {score:.3f}"
        lines.append(text + (f" · near {min(near, key=lambda w: (abs(w - z), w))}" if near else ""))
        seen.append(z)
    return lines


class ReviewNext(Container):
    """"Review next": the most uncertain unreviewed slices of a result layer; a click shows one."""

    def __init__(self, viewer: Any) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QListWidget

        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self._viewer = viewer
        self._layer: Any = None
        self._tracker: Any = None
        self.title = Label(value="")
        self.title.tooltip = (
            "the most uncertain slices not yet reviewed, most uncertain first; a slice next to one "
            "above it or already reviewed counts half (\"near\"), so the list spreads out; a click shows one"
        )
        self.list = QListWidget()
        self.list.setMaximumHeight(5 + TOP * 20)
        self.append(self.title)
        self.native.layout().addWidget(self.list)
        self._role = Qt.ItemDataRole.UserRole
        self.list.itemClicked.connect(lambda item: self.jump(int(item.data(self._role))))
        self.entries: list[tuple[int, float]] = []
        self.visible = False  # until there is a layer to rank

    def set_layer(self, layer: Any) -> None:
        """Follow ``layer`` (a result Labels layer, or None): its scores and its trusted slices."""
        layer = None if layer is None else _unwrap(layer)
        if layer is not self._layer:
            if self._layer is not None:
                self._layer.events.metadata.disconnect(self.refresh)
                self._tracker.changed.disconnect(self.refresh)
            self._layer, self._tracker = layer, (None if layer is None else tracker_for(layer))
            if layer is not None:
                layer.events.metadata.connect(self.refresh)
                self._tracker.changed.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """Rank again: after new scores or a change of the trusted slices."""
        from qtpy.QtWidgets import QListWidgetItem

        layer, self.entries, lines = self._layer, [], []
        scores = None if layer is None else layer.metadata.get(SCORES_KEY)
        # short titles, one line in the narrow dock (a wrapped one was cut off)
        if layer is None or layer.ndim < 3:  # nothing to rank in a 2D image: no row at all
            text = ""
        elif not scores or len(scores) != layer.data.shape[0]:
            text = "Review next: Segment the stack"
        else:
            reviewed = self._tracker.trusted_slices()
            self.entries = review_entries(scores, reviewed)
            lines = entry_text(self.entries, reviewed)
            text = "Review next:" if self.entries else "Review next: all reviewed"
        self.title.value = text
        self.visible = bool(text)  # no empty rows in the dock
        self.list.clear()
        for (z, _), line in zip(self.entries, lines):
            item = QListWidgetItem(line)
            item.setData(self._role, z)
            self.list.addItem(item)
        self.list.setVisible(bool(self.entries))

    def jump(self, z: int) -> None:
        """Show slice ``z`` (first data axis) of the layer, wherever the layer sits in world space."""
        layer, dims = self._layer, self._viewer.dims
        if layer is None or layer.ndim < 3:
            return
        axis = dims.ndim - layer.ndim
        point = np.array(layer.world_to_data(dims.point[axis:]), dtype=float)
        point[0] = z
        dims.set_point(axis, layer.data_to_world(point)[0])
