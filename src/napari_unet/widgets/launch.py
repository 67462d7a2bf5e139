"""Open napari with the plugin's widgets docked and a scan loaded (``make run``)."""

from __future__ import annotations

from pathlib import Path

PLUGIN = "napari-unet"


def open_viewer(file: str | None = None, sample: str = "retina"):
    """A napari viewer with ``file`` (or a sample) and both widgets docked."""
    import napari

    viewer = napari.Viewer(title="napari-unet")
    if file:
        viewer.open(file, plugin=None)
    else:
        viewer.open_sample(PLUGIN, sample)
    viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    try:
        viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    except Exception:  # noqa: BLE001 - the Fine-tune widget is optional for viewing
        pass
    return viewer


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
