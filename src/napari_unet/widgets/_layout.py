"""Layout helpers that keep the docks small enough for a 1280x800 laptop screen.

The canvas should get most of the window: the docks are as narrow as their
fields allow, the rarely used parts fold away (:func:`section`) and a dock
that is taller than the screen scrolls (:func:`make_scrollable`) instead of
stretching the window past the screen's bottom edge.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Label

__all__ = [
    "Message", "bring_into_view", "compact_combos", "full_width", "hide_when_empty", "make_scrollable", "section",
    "wrap_text",
]

# A combobox as wide as its longest entry ("v0003: liver CT, 2nd round (yours,
# current)") would widen the whole dock; this many characters show, the rest elide.
COMBO_CHARACTERS = 8


def section(title: str, widgets: list[Any], expanded: bool = False) -> Any:
    """A collapsible section (superqt's ``QCollapsible``) holding magicgui ``widgets``
    (or Qt widgets) in a labelled column; folded unless ``expanded``."""
    from magicgui.widgets import Container
    from superqt import QCollapsible

    body = Container(labels=True)
    for widget in widgets:
        if hasattr(widget, "native"):
            body.append(widget)
        else:
            body.native.layout().addWidget(widget)
    body.margins = (0, 0, 0, 0)
    box = QCollapsible(title)
    box.layout().setContentsMargins(0, 0, 0, 0)  # folded, a section is one header line
    box.layout().setSpacing(0)
    box.setDuration(0)  # no animation: it repaints the canvas next to it for ~0.3 s
    box.addWidget(body.native)
    box._magic_body = body  # keep the magicgui wrapper alive with the Qt widget
    if expanded:
        box.expand(animate=False)
    else:
        box.collapse(animate=False)
    return box


# A word-wrapped message line asks for about the width of its text at a third
# of its height; a long status ("trusted: 12 034 px on 3 slices ...") would
# widen the dock (and shrink the canvas) when it first appears.
WRAP_MIN_WIDTH = 120


def wrap_text(*labels: Any) -> None:
    """Let magicgui Labels wrap their text, never asking for more than
    ``WRAP_MIN_WIDTH`` px of width (an explicit minimum overrides the hint),
    and fill the dock's width: a message with no label of its own also takes
    the label column, which a labelled container keeps for every row (a
    status in the value column alone wrapped every two words, six lines tall).
    A :class:`Message` is also kept as tall as its text (a plain Label's text
    changes are not signalled, so its height is left to Qt). Call it after
    the labels are in their container."""
    from qtpy.QtWidgets import QSizePolicy

    for label in labels:
        native = getattr(label, "native", label)
        native.setWordWrap(True)
        native.setMinimumWidth(WRAP_MIN_WIDTH)
        native.setSizePolicy(QSizePolicy.Policy.Expanding, native.sizePolicy().verticalPolicy())
        full_width(label)
        if isinstance(label, Message):  # a fitted height must follow every new text, or it clips
            refit = _fit_height_to_width(native)
            label.changed.connect(lambda *_, fit=refit: fit())


def full_width(*widgets: Any) -> None:
    """Let magicgui widgets without a label of their own take their row's label
    column too (a labelled container keeps that column empty for them)."""
    for widget in widgets:
        wrapper = widget._labeled_widget() if hasattr(widget, "_labeled_widget") else None
        if wrapper is not None and not wrapper.label:
            # hidden in Qt, so showing the row again (hide_when_empty) leaves it hidden
            wrapper._label_widget.native.setVisible(False)


def _fit_height_to_width(native: Any) -> Any:
    """Keep a wrapped QLabel exactly as tall as its text at its current width.

    Qt sizes a word-wrapped label's hint for its minimum width (two words a
    line), and a dock sized from hints kept that height empty below a
    two-line status. Returns the function that refits it (after a new text)."""
    from qtpy.QtCore import QObject

    def fit() -> None:
        width = native.width()
        if width > 0:
            native.setMaximumHeight(max(native.heightForWidth(width), native.fontMetrics().lineSpacing()))

    class _Refit(QObject):
        def eventFilter(self, watched, event):  # noqa: N802 (Qt's name)
            if event.type() == event.Type.Resize:
                fit()
            return False

    native._napari_unet_refit = _Refit(native)  # parented: lives and dies with the label
    native.installEventFilter(native._napari_unet_refit)
    return fit


class Message(Label):
    """A message line: a magicgui Label that emits ``changed`` when its text is set.

    magicgui's Qt label has no change signal, so a plain Label's ``changed``
    never fires; :func:`hide_when_empty` and :func:`wrap_text` follow the
    text through it (before 0.9.13 the Fine-tune status line and round
    summary, hidden while empty, were never shown again)."""

    def set_value(self, value: Any) -> None:
        super().set_value(value)
        self.changed.emit(self.get_value())


def hide_when_empty(label: Any) -> None:
    """Hide a :class:`Message` while its text is empty (an empty row still takes height)."""
    label.visible = bool(label.value)
    label.changed.connect(lambda value: setattr(label, "visible", bool(value)))


def compact_combos(*combos: Any) -> None:
    """Let magicgui ComboBoxes shrink below their longest entry (it is elided)."""
    from qtpy.QtWidgets import QComboBox, QSizePolicy

    for combo in combos:
        native = getattr(combo, "native", combo)
        if isinstance(native, QComboBox):
            native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            native.setMinimumContentsLength(COMBO_CHARACTERS)
            native.setSizePolicy(QSizePolicy.Policy.Expanding, native.sizePolicy().verticalPolicy())


def make_scrollable(container: Any) -> Any:
    """Move the contents of magicgui ``container`` into a vertical scroll area inside it.

    napari docks ``container.native``; whatever the Qt layout holds moves to an
    inner widget of a ``QScrollArea`` (magicgui keeps adding to the same layout),
    so a dock shorter than its fields scrolls instead of forcing the window taller.
    Returns the scroll area.
    """
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

    outer = container.native
    layout = outer.layout()
    layout.addStretch(1)  # the fields stay at the top of a tall dock
    inner = QWidget()
    inner.setLayout(layout)  # takes the layout (and its widgets) from ``outer``
    class Scroll(QScrollArea):
        """As wide as the fields need now (they grow after construction: a status
        line, a layer name), so the dock never clips them on the right."""

        def minimumSizeHint(self):
            hint = super().minimumSizeHint()
            fields = self.widget()
            if fields is not None:
                need = fields.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
                hint.setWidth(max(hint.width(), need))
            return hint

        def eventFilter(self, watched, event):
            if watched is self.widget() and event.type() == event.Type.LayoutRequest:
                self.updateGeometry()
            return super().eventFilter(watched, event)

    scroll = Scroll()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    scroll.setWidget(inner)
    box = QVBoxLayout(outer)
    box.setContentsMargins(0, 0, 0, 0)
    box.addWidget(scroll)
    return scroll


def bring_into_view(scroll: Any, widget: Any) -> None:
    """Scroll ``scroll`` (from :func:`make_scrollable`) so that ``widget``
    (magicgui or Qt) is in view, once the layout has placed it: a round's
    progress bar and status line sat below the fold of a 1280x800 window, and
    its summary too."""
    from qtpy.QtCore import QTimer

    native = getattr(widget, "native", widget)

    def show() -> None:
        try:
            if native.isVisible():
                scroll.ensureWidgetVisible(native, 0, 8)
        except RuntimeError:  # the dock was closed meanwhile
            pass

    QTimer.singleShot(0, show)
