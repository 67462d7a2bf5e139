"""A small live plot of training loss and validation Dice for the Fine-tune widget.

Updating a matplotlib canvas costs milliseconds, so points are appended on
every training event but the canvas is redrawn at most every
``min_interval`` seconds (and once more when the run ends): the event loop is
never held up by drawing.
"""

from __future__ import annotations

import time

from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["TrainingPlot"]


class TrainingPlot:
    """Loss (left axis, log scale) and validation Dice (right axis, 0..1) per step."""

    def __init__(self, min_interval: float = 0.25) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.min_interval = min_interval
        self.figure = Figure(figsize=(3.2, 2.0), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.canvas.setFixedHeight(190)
        self.loss_axes = self.figure.add_subplot(111)
        self.dice_axes = self.loss_axes.twinx()
        self.loss_axes.set_xlabel("step", fontsize=8)
        self.loss_axes.set_ylabel("loss", fontsize=8, color="tab:blue")
        self.dice_axes.set_ylabel("val. Dice", fontsize=8, color="tab:orange")
        self.dice_axes.set_ylim(0, 1)
        for axes in (self.loss_axes, self.dice_axes):
            axes.tick_params(labelsize=7)
        (self._loss_line,) = self.loss_axes.plot([], [], color="tab:blue", lw=1)
        (self._dice_line,) = self.dice_axes.plot([], [], "o-", color="tab:orange", lw=1, ms=3)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.dice_steps: list[int] = []
        self.dices: list[float] = []
        self._last_draw = 0.0
        self.draws = 0

    @property
    def widget(self) -> QWidget:
        """The Qt widget to put in a layout."""
        return self.canvas

    def clear(self) -> None:
        """Forget all points (a new run starts)."""
        self.steps.clear()
        self.losses.clear()
        self.dice_steps.clear()
        self.dices.clear()
        self.redraw()

    def add(self, step: int, loss: float | None, val_dice: float | None) -> None:
        """Add one training event; redraws only if the last draw is old enough."""
        if loss is not None:
            self.steps.append(step)
            self.losses.append(float(loss))
        if val_dice is not None:
            self.dice_steps.append(step)
            self.dices.append(float(val_dice))
        if time.perf_counter() - self._last_draw >= self.min_interval:
            self.redraw()

    def redraw(self) -> None:
        """Push the points to the lines and schedule a repaint."""
        self._loss_line.set_data(self.steps, self.losses)
        self._dice_line.set_data(self.dice_steps, self.dices)
        last = max(self.steps[-1] if self.steps else 1, self.dice_steps[-1] if self.dice_steps else 1)
        self.loss_axes.set_xlim(0, max(1, last))
        positive = [v for v in self.losses if v > 0]
        if positive:
            low, high = min(positive), max(positive)
            self.loss_axes.set_yscale("log")
            self.loss_axes.set_ylim(low / 1.2, high * 1.2 if high > low else low * 2)
        self.canvas.draw_idle()
        self._last_draw = time.perf_counter()
        self.draws += 1
