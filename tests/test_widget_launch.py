"""`napari-unet view` (widgets/launch.py) and the Plugins menu, in a real napari window."""

from __future__ import annotations

import pytest


def _plugin_submenu(viewer):
    for action in viewer.window.plugins_menu.actions():
        if action.menu() is not None and "Segment" in action.text():
            return action
    raise AssertionError("the plugin's submenu is not in the Plugins menu")


def _action(submenu, text):
    for action in submenu.menu().actions():
        if action.text() == text:
            return action
    raise AssertionError(f"no '{text}' in {[a.text() for a in submenu.menu().actions()]}")


@pytest.fixture
def launched(make_napari_viewer, qtbot, monkeypatch):
    from napari_unet.widgets.launch import open_viewer

    monkeypatch.setenv("NAPARI_UNET_SYNC", "1")  # no warm-up thread outliving the test
    viewer = make_napari_viewer()
    open_viewer(sample="lesion_scan", viewer=viewer)
    return viewer


def test_menu_title_shows_the_display_name_without_a_mnemonic(launched):
    submenu = _plugin_submenu(launched)
    # Qt reads a single '&' as a shortcut marker: 'Segment & Fine-tune' showed 'Segment _Fine-tune'
    assert "&" not in submenu.text()
    assert submenu.text() == "U-Net Segment and Fine-tune"


@pytest.mark.parametrize("name", ["Segment", "Fine-tune"])
def test_plugins_menu_reuses_the_docked_widget(launched, name):
    viewer = launched
    docked = dict(viewer.window.dock_widgets)
    assert len(docked) == 2
    (key,) = [k for k in docked if k.startswith(f"{name} (")]
    widget = docked[key]
    action = _action(_plugin_submenu(viewer), name)
    for _ in range(2):  # napari's menu item toggles the docked widget: hide, show again
        action.trigger()  # as choosing Plugins > U-Net Segment and Fine-tune > name does
        assert len(viewer.window.dock_widgets) == 2, list(viewer.window.dock_widgets)
        assert viewer.window.dock_widgets[key] is widget


def test_docking_again_returns_the_same_widget(launched):
    from napari_unet.widgets.launch import dock_plugin_widget

    first = launched.window.dock_widgets
    again = dock_plugin_widget(launched, "Segment")
    assert len(launched.window.dock_widgets) == 2
    assert again is next(w for k, w in first.items() if k.startswith("Segment ("))


def test_the_window_is_kept_on_a_small_screen_and_fills_it(launched):
    from napari_unet.widgets.launch import SMALL_SCREEN, fit_window

    main = launched.window._qt_window
    area = main.screen().availableGeometry()
    main.resize(area.width() + 300, area.height() + 200)  # napari's saved size, larger than the screen
    main.move(area.x() + 50, area.y() + 40)
    fit_window(launched)
    frame = main.frameGeometry()
    assert frame.width() <= area.width() and frame.height() <= area.height()
    assert area.contains(frame)
    if area.width() <= SMALL_SCREEN:  # a laptop-sized screen: the window takes all of it
        main.resize(area.width() // 2, area.height() // 2)
        fit_window(launched)
        assert main.frameGeometry().width() == area.width()
        assert main.frameGeometry().height() == area.height()


def test_a_round_brings_its_progress_and_then_its_summary_into_view(make_napari_viewer, qtbot, monkeypatch):
    """On a 1280x800 screen the Fine-tune dock scrolls, and the round's progress
    bar and status line (and at the end its summary) sat below the fold."""
    from napari_unet.widgets.launch import open_viewer

    monkeypatch.setenv("NAPARI_UNET_SYNC", "1")
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1000, 520)
    open_viewer(sample="lesion_scan", viewer=viewer)
    tune = next(w for k, w in viewer.window.dock_widgets.items() if k.startswith("Fine-tune ("))
    tune.versions_section.expand(animate=False)  # a taller dock than the window
    qtbot.wait(200)
    scroll = tune._scroll
    assert scroll.verticalScrollBar().maximum() > 0 and scroll.verticalScrollBar().value() == 0

    def in_view(widget) -> bool:
        native = widget.native
        top = native.mapTo(scroll.viewport(), native.rect().topLeft()).y()
        return native.isVisible() and top >= 0 and top + native.height() <= scroll.viewport().height()

    assert not in_view(tune.progress)
    tune.status.value = "starting…"  # as Fine-tune does, then the round runs
    tune._set_running(True)
    qtbot.waitUntil(lambda: in_view(tune.status) and in_view(tune.progress), timeout=2000)
    tune._set_running(False)
    scroll.verticalScrollBar().setValue(0)
    tune.summary.value = "Round done in 61 s (200 steps): learned from 1234 trusted px on 3 slice(s)."
    from napari_unet.widgets._layout import bring_into_view

    bring_into_view(scroll, tune.summary)  # what the end of a round does
    qtbot.waitUntil(lambda: in_view(tune.summary), timeout=2000)


def test_the_folded_sections_do_not_widen_the_fine_tune_dock(launched):
    """Advanced's check boxes, folded away, set the whole column's width: their
    long texts made Fine-tune 407 px wide where Segment needs 261, and the
    canvas got 47 % of a 1280x800 window instead of 56 %."""
    docks = launched.window.dock_widgets
    segment = next(w for k, w in docks.items() if k.startswith("Segment ("))
    tune = next(w for k, w in docks.items() if k.startswith("Fine-tune ("))
    assert not tune.advanced_section.isExpanded()
    assert tune.native.minimumSizeHint().width() <= 1.25 * segment.native.minimumSizeHint().width()


def test_a_scrolling_dock_widens_with_its_fields(qtbot):
    from magicgui.widgets import Container, Label

    from napari_unet.widgets._layout import make_scrollable

    container = Container(widgets=[Label(value="short")])
    scroll = make_scrollable(container)
    qtbot.addWidget(container.native)
    before = scroll.minimumSizeHint().width()
    wide = Label(value="a status line that arrives later and is much wider than the first one")
    wide.native.setMinimumWidth(before + 200)
    container.append(wide)  # magicgui adds to the layout now inside the scroll area
    qtbot.wait(20)
    inner = scroll.widget()
    assert scroll.minimumSizeHint().width() >= inner.minimumSizeHint().width() >= before + 200


def test_long_messages_wrap_instead_of_narrowing_the_canvas(make_napari_viewer, qtbot, monkeypatch):
    """A status line appearing after the first Segment wraps inside the dock; it used to widen the dock, shrinking the
    canvas (a visible jump, and a relayout in the turn that adds the result)."""
    from napari_unet.widgets.launch import open_viewer

    monkeypatch.setenv("NAPARI_UNET_SYNC", "1")
    viewer = make_napari_viewer(show=True)
    open_viewer(sample="lesion_scan", viewer=viewer)
    qtbot.wait(300)  # laid out, and refitted
    canvas = viewer.window._qt_viewer.canvas.native
    docks = viewer.window.dock_widgets
    segment = next(w for k, w in docks.items() if k.startswith("Segment ("))
    tune = next(w for k, w in docks.items() if k.startswith("Fine-tune ("))
    before = canvas.width(), segment.native.minimumSizeHint().width(), tune.native.minimumSizeHint().width()
    segment.status.value = "done (image): tumor 123456 px, nerve 654321 px, vessel 1234567 px"
    tune.trusted_status.value = ("trusted: 1234567 px on 123 slice(s) (1234567 px edited, 123 reviewed); "
                                 "a second sentence as long, so that it cannot fit on one line of the dock")
    qtbot.wait(50)
    after = canvas.width(), segment.native.minimumSizeHint().width(), tune.native.minimumSizeHint().width()
    assert after == before
    line = tune.trusted_status.native.fontMetrics().lineSpacing()
    assert tune.trusted_status.native.height() >= 2 * line  # wrapped onto lines, all of them shown


def test_messages_take_the_whole_width_of_the_dock(make_napari_viewer, qtbot, monkeypatch):
    """A status line has no label of its own; it used to sit in the value
    column of the labelled form at its 120-px minimum, wrapping every two
    words ("done (image): / tumor 200201 / px, nerve ..." on six lines)."""
    from napari_unet.widgets.launch import open_viewer

    monkeypatch.setenv("NAPARI_UNET_SYNC", "1")
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    open_viewer(sample="lesion_scan", viewer=viewer)
    qtbot.wait(300)
    docks = viewer.window.dock_widgets
    segment = next(w for k, w in docks.items() if k.startswith("Segment ("))
    tune = next(w for k, w in docks.items() if k.startswith("Fine-tune ("))
    segment.status.value = "done (image): tumor 200201 px, nerve 15020 px. No tumor found; if there is one, paint it"
    tune.trusted_status.value = "trusted: 1234567 px on 123 slice(s) (1234567 px edited, 123 reviewed)"
    qtbot.wait(50)
    for widget, message in ((segment, segment.status), (tune, tune.trusted_status)):
        left = message.native.mapTo(widget.native, message.native.rect().topLeft()).x()
        assert left <= widget.image.native.mapTo(widget.native, widget.image.native.rect().topLeft()).x() // 2
        assert message.native.width() >= 0.8 * widget.image.native.mapTo(
            widget.native, widget.image.native.rect().topRight()).x()
    line = segment.status.native.fontMetrics().lineSpacing()
    assert segment.status.native.height() <= 3 * line + 8  # two or three lines, not six
    segment.status.value = ""
    segment.status.value = "done (image)"  # shown again: its row still has no label column
    qtbot.wait(20)
    assert segment.status.native.mapTo(segment.native, segment.status.native.rect().topLeft()).x() < 40
    assert segment.status.native.height() < 2 * line  # one line again: the height follows the text

    # the Review next list also takes the whole width (its entries end in "· near 15")
    import numpy as np

    from napari_unet.widgets._review import store_slice_scores

    image = viewer.layers[0]
    labels = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="result",
                               metadata={"napari_unet": {"role": "segmentation", "image_layer": image.name}})
    tune.reset_choices()
    tune.labels_layer.value = labels
    store_slice_scores(labels, np.linspace(0.1, 0.9, image.data.shape[0]))
    qtbot.wait(50)
    listed = tune.review_next.list
    assert listed.isVisible() and listed.count() == 5
    assert listed.mapTo(tune.native, listed.rect().topLeft()).x() < 40


def test_the_fine_tune_status_and_summary_show_when_they_have_something_to_say(make_napari_viewer, qtbot, monkeypatch):
    """Hidden while empty, they were never shown again: magicgui's label has no
    change signal, so the round's progress text and its summary stayed hidden."""
    from napari_unet.widgets.launch import open_viewer

    monkeypatch.setenv("NAPARI_UNET_SYNC", "1")
    viewer = make_napari_viewer(show=True)
    open_viewer(sample="lesion_scan", viewer=viewer)
    qtbot.wait(100)
    tune = next(w for k, w in viewer.window.dock_widgets.items() if k.startswith("Fine-tune ("))
    assert not tune.status.native.isVisible() and not tune.summary.native.isVisible()
    tune.status.value = "starting…"
    tune.summary.value = "Fine-tuned v0001: 0.000 -> 0.699"
    qtbot.wait(20)
    assert tune.status.native.isVisible() and tune.summary.native.isVisible()
    tune.status.value = ""
    qtbot.wait(20)
    assert not tune.status.native.isVisible() and tune.summary.native.isVisible()


def test_from_the_plugins_menu_segment_takes_its_height_and_fine_tune_the_rest(make_napari_viewer, qtbot):
    """Opened the usual napari way (Plugins menu, no launcher to size the docks),
    the Segment dock took all the spare height and left Fine-tune (the loop's
    button and Review next list) 89 px at the bottom of a 1600x1000 window."""
    from napari_unet._samples import lesion_scan

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1000, 800)
    viewer.add_image(lesion_scan()[0])
    submenu = _plugin_submenu(viewer)
    for name in ("Segment", "Fine-tune"):
        _action(submenu, name).trigger()
    qtbot.wait(300)
    docks = viewer.window._wrapped_dock_widgets
    segment = next(d for k, d in docks.items() if k.startswith("Segment ("))
    tune = next(d for k, d in docks.items() if k.startswith("Fine-tune ("))
    title = segment.titleBarWidget().sizeHint().height() if segment.titleBarWidget() else 30
    needs = segment.widget().sizeHint().height() + title + 16
    assert segment.height() <= needs
    assert tune.height() > segment.height()
