"""The Fine-tune widget's live plot: full draws only when it can be seen."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")


def test_folded_plot_is_not_redrawn_on_resize_and_draws_when_shown(qtbot):
    from qtpy.QtWidgets import QVBoxLayout, QWidget

    from napari_unet.widgets.plot import TrainingPlot

    holder = QWidget()
    layout = QVBoxLayout(holder)
    section = QWidget()  # a folded section: shown, but squeezed to no height (as superqt's QCollapsible)
    QVBoxLayout(section).addWidget((plot := TrainingPlot(budget=10)).widget)
    section.setMaximumHeight(0)
    layout.addWidget(section)
    qtbot.addWidget(holder)
    holder.resize(300, 200)
    holder.show()
    qtbot.wait(50)
    before = plot.full_draws
    for width in (320, 360, 400):  # the dock widens when a layer is added
        holder.resize(width, 200)
        qtbot.wait(30)
    plot.add(1, 0.5, 0.7, 0.3)
    assert plot.full_draws == before

    section.setMaximumHeight(1000)
    plot.shown()
    qtbot.waitUntil(lambda: plot.full_draws > before, timeout=5000)
    # on screen: points are blitted onto the cached axes, no full draw
    drawn = plot.full_draws
    plot.add(2, 1.5, 0.5, None)
    plot.update()
    assert plot.blits >= 1 and plot.full_draws == drawn
    # the log axis is labelled in plain numbers (no mathtext)
    labels = [t.get_text() for t in plot.loss_axes.get_yticklabels()]
    assert labels == ["0.01", "0.1", "1"]
