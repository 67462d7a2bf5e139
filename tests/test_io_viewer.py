"""Opening our formats in napari: our reader is chosen without a dialog, bad files are one line."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

from napari_unet import _napari_io
from napari_unet._napari_io import (
    PLUGIN_NAME,
    READER_PATTERNS,
    open_in_viewer,
    preference_patterns,
    preferred_readers,
)

nib = pytest.importorskip("nibabel")


@pytest.fixture
def nifti(tmp_path):
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(100, 20, (7, 6, 5)).astype(np.float32), np.eye(4)), path)
    return path


@pytest.fixture
def reader_settings():
    """napari's extension2reader, emptied for the test and restored after it."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    saved = dict(plugins.extension2reader)
    plugins.extension2reader = {}
    yield plugins
    plugins.extension2reader = saved


def test_reader_patterns_are_the_manifests():
    from importlib import resources

    manifest = yaml.safe_load((resources.files("napari_unet") / "napari.yaml").read_text())
    [reader] = manifest["contributions"]["readers"]
    assert tuple(reader["filename_patterns"]) == READER_PATTERNS


def test_preferences_are_added_for_every_pattern():
    merged = preferred_readers({})
    assert set(merged) == set(preference_patterns())
    assert set(merged.values()) == {PLUGIN_NAME}
    assert f"*.zarr{os.sep}" in merged  # napari matches a folder as "path/"


def test_user_preferences_are_never_overridden():
    user = {"*.tif": "napari", "*.gz": "other-plugin", "/data/special/*.nii": "napari"}
    merged = preferred_readers(user)
    for key, value in user.items():
        assert merged[key] == value
    assert "*.tiff" in merged and merged["*.tiff"] == PLUGIN_NAME
    assert "*.nii.gz" not in merged  # the user's "*.gz" already decides for these files
    assert preferred_readers(merged) == merged  # idempotent


def test_preferences_saved_under_the_former_name_follow_the_rename():
    saved = {"*.nii.gz": "napari-unet", "*.tif": "napari"}
    merged = preferred_readers(saved, former=("napari-unet",))
    assert merged["*.nii.gz"] == PLUGIN_NAME != "napari-unet"
    assert merged["*.tif"] == "napari"  # the user's own choice stays
    # while a plugin of the former name is installed, its preferences are its own
    assert preferred_readers(saved)["*.nii.gz"] == "napari-unet"


def test_viewer_open_without_plugin_uses_ours_after_first_use(make_napari_viewer, nifti, reader_settings, tmp_path):
    from napari.errors import MultipleReaderError

    viewer = make_napari_viewer()
    # plugin=None is what File > Open, drag and drop and widgets/launch.py ask for
    with pytest.raises(MultipleReaderError):  # the bug: builtins and this plugin both claim .nii.gz
        viewer.open(str(nifti), plugin=None)
    [layer] = open_in_viewer(viewer, nifti)  # what `napari-unet view FILE` does
    assert layer.metadata["format"] == "nifti"
    assert reader_settings.extension2reader["*.nii.gz"] == PLUGIN_NAME
    # File > Open / drag and drop now opens our formats without asking
    [again] = viewer.open(str(nifti), plugin=None)
    assert again.metadata["format"] == "nifti"
    tiff = tmp_path / "stack.tif"
    import tifffile

    tifffile.imwrite(tiff, np.zeros((3, 8, 8), np.uint16), photometric="minisblack")  # a stack, not RGB
    [stack] = viewer.open(str(tiff), plugin=None)
    assert stack.metadata["format"] == "tiff"


def test_first_read_sets_preferences_but_keeps_the_users(make_napari_viewer, nifti, reader_settings):
    reader_settings.extension2reader = {"*.tif": "napari"}
    viewer = make_napari_viewer()
    viewer.open(str(nifti), plugin=PLUGIN_NAME)
    prefs = reader_settings.extension2reader
    assert prefs["*.tif"] == "napari"
    assert prefs["*.nii.gz"] == PLUGIN_NAME and prefs["*.zarr"] == PLUGIN_NAME


def test_bad_file_in_napari_is_a_one_line_notification(make_napari_viewer, tmp_path, reader_settings, monkeypatch):
    shown = []
    monkeypatch.setattr(_napari_io, "notify_error", shown.append)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    viewer = make_napari_viewer()
    assert open_in_viewer(viewer, bad) == []
    assert viewer.layers == [] or len(viewer.layers) == 0
    assert len(shown) == 1 and "\n" not in shown[0] and "broken.nii.gz" in shown[0]
    # the same through napari's own open (File > Open once the preference is set): no reader dialog
    assert viewer.open(str(bad), plugin=None) == []
    assert len(shown) == 2
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    assert open_in_viewer(viewer, notes) == []
    assert "cannot open" in shown[-1]


def test_notify_error_reaches_napari_notifications(qtbot):
    from napari.utils.notifications import notification_manager

    before = len(notification_manager.records)
    _napari_io.notify_error("scan.nii.gz: not a NIfTI file")
    assert notification_manager.records[before:][0].message == "scan.nii.gz: not a NIfTI file"


# ------------------------------------------------------------ napari-unet view
def _run_view(argv, monkeypatch, capsys):
    from napari_unet.cli import main
    from napari_unet.widgets import launch

    launched = []
    monkeypatch.setattr(launch, "launch", lambda file, sample, screenshot: launched.append(file) or 0)
    code = main(["view", *argv])
    return code, capsys.readouterr().err, launched


def test_view_refuses_a_bad_file_in_one_line(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    for path, words in [
        (bad, "broken.nii.gz"),
        (tmp_path / "missing.nii.gz", "no such file"),
        (tmp_path, "not a scan napari-unet opens"),  # an empty folder
    ]:
        code, err, launched = _run_view([str(path)], monkeypatch, capsys)
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("napari-unet view: error:") and words in err
        assert "Traceback" not in err
        assert launched == []


def test_view_opens_a_good_file(nifti, monkeypatch, capsys):
    code, err, launched = _run_view([str(nifti)], monkeypatch, capsys)
    assert code == 0 and launched == [str(nifti)]
