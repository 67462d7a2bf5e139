"""A small live plot of training loss and validation Dice for the Fine-tune widget.

A full matplotlib draw of even a tiny figure takes 100-250 ms on a busy CPU,
long enough to make the window stutter. So the axes are fixed for a whole
run (x: seconds of the time budget; loss: log scale 0.01-5; Dice: 0-1) and
the figure is drawn in full only when it is shown, resized or a run with
another budget starts. In between, new points are *blitted*: the cached
empty axes are restored and only the two lines are drawn (a few ms), at most
every ``min_interval`` seconds.
"""

from __future__ import annotations

import time
from typing import Any

from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["TrainingPlot"]

LOSS_RANGE = (0.01, 5.0)


class TrainingPlot:
    """Loss (left axis, log scale) and validation Dice (right axis, 0..1) over time."""

    def __init__(self, min_interval: float = 0.2, budget: float = 60.0) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

        owner = self

        class Canvas(FigureCanvasQTAgg):
            def draw_idle(self, force: bool = False) -> None:
                # matplotlib redraws on every resize; the dock widens when a layer is
                # added, which would cost a full draw (~0.2 s) of a plot folded away
                if force or owner.on_screen():
                    super().draw_idle()
                else:
                    owner._background = None  # drawn in full when it is shown

        self.min_interval = min_interval
        self.figure = Figure(figsize=(3.2, 1.6), dpi=90)
        self.figure.subplots_adjust(left=0.19, right=0.81, bottom=0.26, top=0.95)
        self.canvas = Canvas(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.canvas.setFixedHeight(140)  # compact: it sits in a folding section of a narrow dock
        self.loss_axes = self.figure.add_subplot(111)
        self.dice_axes = self.loss_axes.twinx()
        self.loss_axes.set_xlabel("seconds", fontsize=8)
        self.loss_axes.set_ylabel("training loss", fontsize=8, color="tab:blue")
        self.loss_axes.set_yscale("log")
        self.loss_axes.set_ylim(*LOSS_RANGE)
        # plain tick labels: the default log labels (10^-2) go through mathtext,
        # which makes a full draw several times slower
        self.loss_axes.yaxis.set_major_locator(FixedLocator([0.01, 0.1, 1.0]))
        self.loss_axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        self.loss_axes.yaxis.set_minor_formatter(NullFormatter())
        self.dice_axes.set_ylabel("validation Dice", fontsize=8, color="tab:orange")
        self.dice_axes.set_ylim(0, 1)
        for axes in (self.loss_axes, self.dice_axes):
            axes.tick_params(labelsize=7)
        (self._loss_line,) = self.loss_axes.plot([], [], color="tab:blue", lw=1, animated=True)
        (self._dice_line,) = self.dice_axes.plot([], [], "o-", color="tab:orange", lw=1, ms=3, animated=True)
        self.steps: list[int] = []
        self.times: list[float] = []
        self.losses: list[float] = []
        self.dice_times: list[float] = []
        self.dices: list[float] = []
        self._background: Any = None
        self._last_update = 0.0
        self.full_draws = 0
        self.blits = 0
        self.canvas.mpl_connect("draw_event", self._on_draw)
        self.set_budget(budget)

    @property
    def widget(self) -> QWidget:
        """The Qt widget to put in a layout."""
        return self.canvas

    def set_budget(self, seconds: float) -> None:
        """Fix the time axis to ``0..seconds`` (a full redraw only if it changed)."""
        limit = max(1.0, float(seconds))
        if self.loss_axes.get_xlim() != (0.0, limit):
            self.loss_axes.set_xlim(0.0, limit)
            self._background = None
            if self.on_screen():
                self.canvas.draw_idle()

    def clear(self) -> None:
        """Forget all points (a new run starts)."""
        for values in (self.steps, self.times, self.losses, self.dice_times, self.dices):
            values.clear()
        self.update(force=True)

    def add(self, step: int, elapsed: float, loss: float | None, val_dice: float | None) -> None:
        """Add one training event; the canvas is updated at most every ``min_interval`` s."""
        if loss is not None:
            self.steps.append(step)
            self.times.append(float(elapsed))
            self.losses.append(min(max(float(loss), LOSS_RANGE[0]), LOSS_RANGE[1]))
        if val_dice is not None:
            self.dice_times.append(float(elapsed))
            self.dices.append(float(val_dice))
        if time.perf_counter() - self._last_update >= self.min_interval:
            self.update()

    def update(self, force: bool = False) -> None:
        """Show the points: blit onto the cached axes, or schedule a full draw."""
        self._loss_line.set_data(self.times, self.losses)
        self._dice_line.set_data(self.dice_times, self.dices)
        self._last_update = time.perf_counter()
        if not self.on_screen():  # folded away: draw when shown (see :meth:`shown`)
            self._background = None
            return
        if self._background is None:
            self.canvas.draw_idle()
            return
        self.canvas.restore_region(self._background)
        self.loss_axes.draw_artist(self._loss_line)
        self.dice_axes.draw_artist(self._dice_line)
        self.canvas.blit(self.figure.bbox)
        self.blits += 1

    def on_screen(self) -> bool:
        """Whether any of the plot can be seen (not hidden, not in a folded section)."""
        return self.canvas.isVisible() and not self.canvas.visibleRegion().isEmpty()

    def shown(self, *_: Any) -> None:
        """The plot came into view (its section unfolded): draw it in full."""
        self._background = None
        self.canvas.draw_idle(force=True)  # even before Qt counts it as visible

    def _on_draw(self, _event: Any) -> None:
        """After a full draw: cache the empty axes, then draw the lines on them."""
        self.full_draws += 1
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self.loss_axes.draw_artist(self._loss_line)
        self.dice_axes.draw_artist(self._dice_line)
