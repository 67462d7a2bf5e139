"""Open napari with the plugin's widgets docked and a scan loaded (``make run``)."""

from __future__ import annotations

from pathlib import Path

PLUGIN = "napari-unet-loop"
LEFT_MIN_WIDTH = 245
#: screens up to this wide (laptops) get the whole width for the window
SMALL_SCREEN = 1600


def dock_plugin_widget(viewer, widget_name: str):
    """Dock the plugin's widget ``widget_name`` ("Segment", "Fine-tune") the way
    *Plugins > ...* does, or return the copy already docked.

    napari's ``add_plugin_dock_widget`` names the dock after the plugin's
    manifest ``name`` while the Plugins menu looks for one named after its
    ``display_name``; a widget docked the first way is not found by the menu,
    which then docks a second copy. Docking under the menu's name lets the
    menu find (and show or hide) this one.
    """
    from napari.plugins import menu_item_template
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    contribution = next(w for w in manifest.contributions.widgets if w.display_name == widget_name)
    dock_name = menu_item_template.format(manifest.display_name, widget_name)
    docked = viewer.window.dock_widgets.get(dock_name)
    if docked is not None:
        return docked
    widget = contribution.get_callable()(viewer)
    viewer.window.add_dock_widget(widget, name=dock_name, area="right")
    return widget


def open_viewer(file: str | None = None, sample: str = "retina", viewer=None):
    """A napari viewer (a new one unless given) with ``file`` (or a sample) and both widgets docked."""
    import napari

    if viewer is None:
        viewer = napari.Viewer(title="napari-unet")
    if file:
        from napari_unet._napari_io import can_read, open_in_viewer

        # our formats with our reader (napari's builtins claim them too, and a
        # plain open would stop with MultipleReaderError); the rest as napari reads them
        if can_read(file):
            open_in_viewer(viewer, file)
        else:
            viewer.open(file)
    else:
        viewer.open_sample(PLUGIN, sample)
    dock_plugin_widget(viewer, "Segment")
    dock_plugin_widget(viewer, "Fine-tune")
    fit_window(viewer)
    fit_docks(viewer)
    # once the event loop has laid the window out at its real size, again
    from qtpy.QtCore import QTimer

    QTimer.singleShot(200, lambda: _refit(viewer))
    return viewer


def _refit(viewer) -> None:
    try:
        fit_window(viewer)
        fit_docks(viewer)
        viewer.reset_view()  # the scan fills the canvas at its final size
    except (AttributeError, RuntimeError):  # the window was closed before the timer fired
        pass


def fit_window(viewer) -> None:
    """Keep the window on its screen: napari opens at its saved (or default) size,
    which may be larger than a laptop's 1280x800; then the bottom of the docks
    and the status bar are off screen. A window that does not fit is shrunk to
    the screen's available area, and on a screen up to ``SMALL_SCREEN`` px wide it
    fills that area, width and height (the docks take ~600 px of the width, the
    image gets the rest; napari's first-start size is 1280x630 there, and
    Fine-tune then scrolls). A maximised or full-screen window is left alone."""
    main = viewer.window._qt_window
    screen = main.screen()
    if screen is None or main.isMaximized() or main.isFullScreen():
        return
    area = screen.availableGeometry()
    frame = main.frameGeometry()
    extra_w, extra_h = frame.width() - main.width(), frame.height() - main.height()
    small = area.width() <= SMALL_SCREEN
    if area.contains(frame) and not (small and (frame.width() < area.width() or frame.height() < area.height())):
        return
    width = area.width() - extra_w if small else min(main.width(), area.width() - extra_w)
    height = area.height() - extra_h if small else min(main.height(), area.height() - extra_h)
    main.resize(width, height)
    frame = main.frameGeometry()
    x = min(max(frame.x(), area.x()), area.right() - frame.width() + 1)
    y = min(max(frame.y(), area.y()), area.bottom() - frame.height() + 1)
    main.move(x, y)


def _clamp(value: float, low: int, high: int) -> int:
    return int(min(max(value, low), high))


def fit_docks(viewer) -> None:
    """Size the docks so the image gets most of the window, also on a 1280x800 laptop.

    napari's layer docks on the left and the plugin's on the right get about a
    fifth and a quarter of the width (the canvas keeps more than half). Qt
    keeps every dock at least as wide as its fields need. The heights need no
    sizing: the Segment widget asks for no more than its fields (its size
    policy), so Fine-tune gets the rest of the column, and scrolls when the
    screen is shorter than its fields.
    """
    from napari.plugins import menu_item_template
    from npe2 import PluginManager
    from qtpy.QtCore import Qt
    window = viewer.window
    main = window._qt_window
    display_name = PluginManager.instance().get_manifest(PLUGIN).display_name
    ours = [window._wrapped_dock_widgets.get(menu_item_template.format(display_name, n)) for n in ("Segment", "Fine-tune")]
    ours = [dock for dock in ours if dock is not None]
    left = window._qt_viewer.dockLayerControls
    # napari's layer controls ask for 320 px; their sliders and combos work in
    # less (the layer list's buttons need 244)
    for dock in (left, window._qt_viewer.dockLayerList):
        dock.setMinimumWidth(LEFT_MIN_WIDTH)
        dock.widget().setMinimumWidth(LEFT_MIN_WIDTH)
    width = main.width()
    docks, widths = [left], [_clamp(0.18 * width, LEFT_MIN_WIDTH, 300)]
    if ours:
        docks.append(ours[0])
        widths.append(_clamp(0.22 * width, 290, 420))
    main.resizeDocks(docks, widths, Qt.Orientation.Horizontal)


def launch(file: str | None = None, sample: str = "retina", screenshot: str | None = None) -> int:
    """Run napari until the window closes (or save a screenshot and quit)."""
    import napari

    if file and not Path(file).exists():
        from napari_unet.cli.common import CLIError

        raise CLIError(f"{file}: no such file")
    viewer = open_viewer(file, sample)
    if screenshot:
        from qtpy.QtCore import QTimer

        def shoot() -> None:
            viewer.screenshot(screenshot, canvas_only=False)
            viewer.close()

        QTimer.singleShot(1500, shoot)
    napari.run()
    return 0
