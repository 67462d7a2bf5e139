"""Which pixels of a result layer the user vouched for: the trusted mask.

A :class:`CorrectionTracker` follows one napari Labels layer (a segmentation
result) and records every pixel the user painted, erased, filled or drew a
polygon over, straight from the layer's own edit history: napari emits
``layer.events.paint(value=item)`` with the history item (a list of atoms,
each holding a bounding box, a mask of the changed pixels and the old and new
values) whenever an edit is committed.

napari emits nothing dedicated when an edit is undone or redone, so the
tracker wraps the layer's public ``undo``/``redo`` methods (which napari's
Ctrl-Z / Ctrl-Shift-Z key bindings call) and mirrors the layer's undo stack:
after an undo, the tracker's newest recorded edit is moved to its own redo
stack if the layer's data shows the edit was really reverted (napari's history
may be empty or shorter than ours). A pixel is trusted while at least one
live edit covers it, or its slice is marked reviewed, or it was trusted when
the session was saved (restored from the layer's metadata or a sidecar file).

Storage: the live state is mirrored into
``layer.metadata["napari_unet"]["trusted"]`` (JSON-friendly: shape, reviewed
slice indices and the edited-pixel mask as zlib-compressed packed bits in
base64), and :func:`save_corrections` writes the labels plus a sidecar file
``<labels file>.trusted.npz`` that the tracker reads back when the labels are
opened again. See ``docs/finetune.md``.
"""

from __future__ import annotations

import weakref
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from ..io.trusted import (
    TRUSTED_SUFFIX,
    read_trusted_file,
    trusted_metadata,
    unpack_mask,
    write_trusted_file,
)
from ._common import META_KEY

if TYPE_CHECKING:
    import napari

__all__ = [
    "CorrectionTracker",
    "TRUSTED_SUFFIX",
    "current_slice",
    "read_trusted_file",
    "save_corrections",
    "tracker_for",
    "trusted_layer_name",
    "write_trusted_file",
]

#: Sidecar written beside saved labels: ``scan_labels.tif`` -> ``scan_labels.tif.trusted.npz``.
#: Values of the overlay layer: edited pixels, and pixels trusted only by review.
OVERLAY_EDITED = 1
OVERLAY_REVIEWED = 2
REVIEW_KEY = "Shift-R"

_TRACKERS: weakref.WeakKeyDictionary[Any, CorrectionTracker] = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------- history atoms
def _is_masked_atom(atom: Any) -> bool:
    """A mask-based atom (paint, fill, polygon) rather than a fancy-index tuple."""
    return hasattr(atom, "slice_key") and hasattr(atom, "new_value")


def _atom_footprint(atom: Any, shape: tuple[int, ...]) -> tuple[Any, np.ndarray | None]:
    """``(index, mask)`` of the pixels an atom changed.

    ``index`` is a tuple of slices (mask-based atoms: the bounding box, with
    ``mask`` of the box's shape or ``None`` for the whole box) or a tuple of
    integer arrays (``data_setitem`` atoms, ``mask`` None).
    """
    if _is_masked_atom(atom):
        return tuple(atom.slice_key), atom.mask
    indices = atom[0]
    return tuple(np.asarray(i) for i in indices), None


def _current_values(data: Any, atom: Any) -> np.ndarray:
    """The layer's values now, under the pixels an atom changed."""
    if _is_masked_atom(atom):
        region = np.asarray(data[tuple(atom.slice_key)])
        return region if atom.mask is None else region[atom.mask]
    return np.asarray(data[tuple(atom[0])])


def _atom_reverted(data: Any, atom: Any) -> bool:
    """Whether the layer holds the atom's old values again (it was undone)."""
    old = atom.old_values if _is_masked_atom(atom) else atom[1]
    return bool(np.array_equal(_current_values(data, atom), np.broadcast_to(old, np.shape(old))))


def _atom_applied(data: Any, atom: Any) -> bool:
    """Whether the layer holds the atom's new values (it was (re)done)."""
    new = atom.new_value if _is_masked_atom(atom) else atom[2]
    current = _current_values(data, atom)
    return bool(np.all(current == np.broadcast_to(new, current.shape)))


def trusted_layer_name(layer_name: str) -> str:
    """Name of the overlay layer that shows a result layer's trusted pixels."""
    return f"{layer_name} trusted"


def current_slice(viewer: napari.viewer.Viewer, layer: Any) -> int:
    """The slice (index along the first axis of a 3D layer) the viewer shows; 0 for 2D."""
    if layer.ndim < 3:
        return 0
    point = viewer.dims.point
    data_point = layer.world_to_data(point[-layer.ndim :] if len(point) >= layer.ndim else point)
    z = int(round(float(data_point[0])))
    return int(np.clip(z, 0, layer.data.shape[0] - 1))


# ------------------------------------------------------------------- tracker
class CorrectionTracker:
    """Records the trusted pixels of one Labels layer from its edit history.

    Use :func:`tracker_for` rather than constructing one directly, so every
    widget shares the layer's single tracker. ``changed`` is emitted after
    every change of the trusted mask.
    """

    changed = Signal()

    def __init__(self, layer: Any, restore: bool = True) -> None:
        layer = _unwrap(layer)
        self._layer_ref = weakref.ref(layer)
        self.shape: tuple[int, ...] = tuple(layer.data.shape)
        self._applied: list[list[Any]] = []  # live edits, oldest first (mirrors undo)
        self._undone: list[list[Any]] = []  # undone edits, newest last (mirrors redo)
        self._known_atoms: set[int] = set()
        self._base = np.zeros(self.shape, dtype=bool)  # trusted when the session was saved
        self._reviewed: set[int] = set()
        self._own_write = False
        self._cache: np.ndarray | None = None
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data_replaced)
        self._install_history_hooks(layer)
        if restore:
            self._restore(layer)
        self._sync_metadata()

    # ----------------------------------------------------------- properties
    @property
    def layer(self) -> Any:
        """The tracked Labels layer (``None`` once it has been deleted)."""
        return self._layer_ref()

    @property
    def is_volume(self) -> bool:
        """3D layers are reviewed slice by slice (first axis); 2D as a whole."""
        return len(self.shape) >= 3

    @property
    def reviewed(self) -> frozenset[int]:
        """Indices of reviewed slices (``{0}`` for a reviewed 2D image)."""
        return frozenset(self._reviewed)

    @property
    def num_edits(self) -> int:
        """How many recorded (not undone) edit steps there are."""
        return len(self._applied)

    # ---------------------------------------------------------------- masks
    def edited_mask(self) -> np.ndarray:
        """Pixels covered by a live edit (or restored as edited); bool, layer shape."""
        if self._cache is None:
            mask = self._base.copy()
            for item in self._applied:
                for atom in item:
                    index, atom_mask = _atom_footprint(atom, self.shape)
                    if atom_mask is None:
                        mask[index] = True
                    else:
                        mask[index] |= atom_mask
            self._cache = mask
        return self._cache.copy()

    def trusted_mask(self) -> np.ndarray:
        """Pixels the loss may use: edited pixels plus every pixel of a reviewed slice."""
        mask = self.edited_mask()
        for index in self._reviewed:
            if self.is_volume:
                mask[index] = True
            else:
                mask[...] = True
        return mask

    def overlay_data(self) -> np.ndarray:
        """uint8 image for the overlay: 1 edited, 2 trusted by review only, 0 untrusted."""
        edited = self.edited_mask()
        out = np.zeros(self.shape, dtype=np.uint8)
        for index in self._reviewed:
            if self.is_volume:
                out[index] = OVERLAY_REVIEWED
            else:
                out[...] = OVERLAY_REVIEWED
        out[edited] = OVERLAY_EDITED
        return out

    def trusted_slices(self) -> list[int]:
        """Slices (first axis of a 3D layer; ``[0]`` for 2D) holding any trusted pixel."""
        mask = self.trusted_mask()
        if not self.is_volume:
            return [0] if mask.any() else []
        return [int(i) for i in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))]

    def summary(self) -> dict[str, int]:
        """Counts for a status line: trusted/edited pixels, reviewed and trusted slices."""
        trusted = self.trusted_mask()
        return {
            "trusted_pixels": int(trusted.sum()),
            "edited_pixels": int(self.edited_mask().sum()),
            "reviewed_slices": len(self._reviewed),
            "trusted_slices": len(self.trusted_slices()),
        }

    # -------------------------------------------------------------- review
    def set_reviewed(self, index: int, reviewed: bool = True) -> None:
        """Mark slice ``index`` (use 0 for a 2D image) reviewed, or not."""
        limit = self.shape[0] if self.is_volume else 1
        if not 0 <= index < limit:
            raise IndexError(f"slice {index} is outside 0..{limit - 1}")
        before = index in self._reviewed
        if reviewed:
            self._reviewed.add(int(index))
        else:
            self._reviewed.discard(int(index))
        if before != reviewed:
            self._changed(edits=False)

    def toggle_reviewed(self, index: int) -> bool:
        """Flip the reviewed state of a slice; returns the new state."""
        state = index not in self._reviewed
        self.set_reviewed(index, state)
        return state

    def clear(self) -> None:
        """Forget every recorded edit, restored mask and review."""
        self._applied.clear()
        self._undone.clear()
        self._known_atoms.clear()
        self._reviewed.clear()
        self._base = np.zeros(self.shape, dtype=bool)
        self._changed()

    # ------------------------------------------------------- writing labels
    @contextmanager
    def writing_labels(self) -> Iterator[None]:
        """Let the plugin replace the layer's data without dropping the record.

        Use it when new data keeps every trusted pixel as it is (a
        re-segmentation that fills only untrusted pixels). Any other
        replacement of the data (a fresh segmentation, a file loaded into the
        layer) clears the record, since the corrections are gone.
        """
        self._own_write = True
        try:
            yield
        finally:
            self._own_write = False

    # --------------------------------------------------------------- saving
    def save(self, path: str | Path) -> Path:
        """Write the edited mask and reviewed slices to a sidecar ``.npz``."""
        return write_trusted_file(path, self.edited_mask(), sorted(self._reviewed))

    def load(self, path: str | Path) -> None:
        """Add the mask and reviews of a sidecar file to the record."""
        edited, reviewed = read_trusted_file(path)
        if edited.shape != self.shape:
            raise ValueError(f"{path} holds a {edited.shape} mask; the layer is {self.shape}")
        self._base |= edited
        self._reviewed.update(reviewed)
        self._changed()

    def detach(self) -> None:
        """Stop recording and restore the layer's own undo/redo."""
        layer = self.layer
        if layer is None:
            return
        layer.events.paint.disconnect(self._on_paint)
        layer.events.data.disconnect(self._on_data_replaced)
        for name in ("undo", "redo"):
            if getattr(layer.__dict__.get(name), "_napari_unet_hook", False):
                del layer.__dict__[name]
        _TRACKERS.pop(layer, None)

    # ---------------------------------------------------------- internals
    def _install_history_hooks(self, layer: Any) -> None:
        tracker = weakref.ref(self)
        original_undo, original_redo = layer.undo, layer.redo

        def undo() -> None:
            original_undo()
            if (t := tracker()) is not None:
                t._after_undo()

        def redo() -> None:
            original_redo()
            if (t := tracker()) is not None:
                t._after_redo()

        undo._napari_unet_hook = True  # type: ignore[attr-defined]
        redo._napari_unet_hook = True  # type: ignore[attr-defined]
        undo.__doc__ = getattr(type(layer), "undo", undo).__doc__
        redo.__doc__ = getattr(type(layer), "redo", redo).__doc__
        layer.undo = undo
        layer.redo = redo

    def _after_undo(self) -> None:
        layer = self.layer
        if layer is None or not self._applied:
            return
        item = self._applied[-1]
        # napari undoes the atoms of an item newest first, so the first atom's
        # pixels end at their old values exactly when the item was reverted.
        if _atom_reverted(layer.data, item[0]):
            self._undone.append(self._applied.pop())
            self._changed()

    def _after_redo(self) -> None:
        layer = self.layer
        if layer is None or not self._undone:
            return
        item = self._undone[-1]
        if _atom_applied(layer.data, item[-1]):
            self._applied.append(self._undone.pop())
            self._changed()

    def _on_paint(self, event: Any) -> None:
        item = list(event.value)
        if not item:
            return
        if all(id(atom) in self._known_atoms for atom in item):
            return  # a replay of a recorded edit (undo/redo), already handled
        self._undone.clear()
        self._applied.append(item)
        self._known_atoms.update(id(atom) for atom in item)
        self._changed()

    def _on_data_replaced(self, event: Any = None) -> None:
        layer = self.layer
        if layer is None:
            return
        if self._own_write and tuple(layer.data.shape) == self.shape:
            return
        self.shape = tuple(layer.data.shape)
        self.clear()

    def _restore(self, layer: Any) -> None:
        """Seed the record from the layer's metadata, else from a sidecar file."""
        stored = layer.metadata.get(META_KEY, {}).get("trusted")
        if isinstance(stored, dict) and tuple(stored.get("shape", ())) == self.shape:
            try:
                self._base = unpack_mask(stored["edited"], self.shape)
                self._reviewed = {int(i) for i in stored.get("reviewed", [])}
                return
            except (KeyError, ValueError, TypeError, OSError, zlib.error):
                pass
        source = getattr(getattr(layer, "source", None), "path", None)
        if source:
            sidecar = Path(str(source) + TRUSTED_SUFFIX)
            if sidecar.is_file():
                try:
                    edited, reviewed = read_trusted_file(sidecar)
                except (OSError, ValueError, KeyError):
                    return
                if edited.shape == self.shape:
                    self._base, self._reviewed = edited, set(reviewed)

    def _sync_metadata(self) -> None:
        layer = self.layer
        if layer is None:
            return
        meta = layer.metadata.setdefault(META_KEY, {})
        meta["trusted"] = trusted_metadata(self.edited_mask(), self._reviewed)

    def _changed(self, edits: bool = True) -> None:
        if edits:
            self._cache = None
        self._sync_metadata()
        self.changed.emit()


def _unwrap(layer: Any) -> Any:
    """The real layer behind napari's ``PublicOnlyProxy`` (what a plugin widget's
    viewer hands out), so trackers attach to, and are found for, the layer itself."""
    return getattr(layer, "__wrapped__", layer)


def tracker_for(layer: Any, create: bool = True) -> CorrectionTracker | None:
    """The layer's :class:`CorrectionTracker`, attached on first use."""
    layer = _unwrap(layer)
    tracker = _TRACKERS.get(layer)
    if tracker is None and create:
        tracker = CorrectionTracker(layer)
        _TRACKERS[layer] = tracker
    return tracker


def save_corrections(layer: Any, path: str | Path) -> tuple[Path, Path]:
    """Save a result layer's labels (via napari's writers) and its trusted sidecar.

    Returns ``(labels path, sidecar path)``; the sidecar is ``<path>.trusted.npz``
    and is picked up again when that labels file is opened and tracked.
    """
    path = Path(path)
    written = layer.save(str(path))
    labels_path = Path(written[0]) if written else path
    tracker = tracker_for(layer)
    assert tracker is not None
    sidecar = tracker.save(Path(str(labels_path) + TRUSTED_SUFFIX))
    return labels_path, sidecar


# ------------------------------------------------------------------- overlay
def show_trusted(viewer: napari.viewer.Viewer, layer: Any, visible: bool = True) -> Any:
    """Show (creating it if needed) or hide the "<name> trusted" overlay layer.

    The overlay follows the tracker: it is refreshed on every change while it
    is in the viewer. Returns the overlay layer (or ``None`` when hiding one
    that does not exist).
    """
    from napari.utils.colormaps import DirectLabelColormap

    name = trusted_layer_name(layer.name)
    overlay = viewer.layers[name] if name in viewer.layers else None
    if not visible:
        if overlay is not None:
            overlay.visible = False
        return overlay
    tracker = tracker_for(layer)
    assert tracker is not None
    if overlay is None:
        colormap = DirectLabelColormap(
            color_dict={
                0: (0.0, 0.0, 0.0, 0.0),
                OVERLAY_EDITED: (0.0, 0.9, 1.0, 1.0),
                OVERLAY_REVIEWED: (0.3, 1.0, 0.3, 1.0),
                None: (0.0, 0.0, 0.0, 0.0),
            }
        )
        overlay = viewer.add_labels(
            tracker.overlay_data(),
            name=name,
            scale=layer.scale,
            translate=layer.translate,
            colormap=colormap,
            opacity=0.35,
            blending="translucent_no_depth",
            metadata={META_KEY: {"role": "trusted", "labels_layer": layer.name}},
        )
        overlay.editable = False

        def refresh() -> None:
            if overlay in viewer.layers and overlay.visible:
                overlay.data = tracker.overlay_data()

        tracker.changed.connect(refresh)
        overlay.events.visible.connect(lambda _e: refresh())
        viewer.layers.events.removed.connect(
            lambda e: tracker.changed.disconnect(refresh) if e.value is overlay else None
        )
    overlay.visible = True
    overlay.data = tracker.overlay_data()
    return overlay


def bind_review_key(viewer: napari.viewer.Viewer, layer: Any, key: str = REVIEW_KEY) -> None:
    """Bind ``key`` on the layer: toggle "reviewed" on the slice on screen."""
    viewer_ref = weakref.ref(viewer)

    def toggle(bound_layer: Any) -> None:
        from napari.utils.notifications import show_info

        active_viewer = viewer_ref()
        if active_viewer is None:
            return
        tracker = tracker_for(bound_layer)
        assert tracker is not None
        index = current_slice(active_viewer, bound_layer)
        state = tracker.toggle_reviewed(index)
        where = f"slice {index}" if tracker.is_volume else "the image"
        show_info(f"{where} of '{bound_layer.name}' {'reviewed: all its pixels are trusted' if state else 'no longer reviewed'}")

    layer.bind_key(key, toggle, overwrite=True)
