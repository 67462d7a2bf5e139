"""The installable plugin: a built wheel carries a valid manifest; the core is headless."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(out)],
        check=True, capture_output=True, timeout=300,
    )
    (path,) = out.glob("napari_unet_loop-*.whl")
    return path


def test_wheel_carries_the_manifest_and_entry_points(wheel, tmp_path):
    from npe2 import PluginManifest

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        manifest = zf.read("napari_unet/napari.yaml").decode()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert manifest == (ROOT / "napari.yaml").read_text()
    assert "napari-unet-loop = napari_unet:napari.yaml" in entry_points
    assert "napari-unet = napari_unet.cli:main" in entry_points
    (tmp_path / "napari.yaml").write_text(manifest)
    pm = PluginManifest.from_file(tmp_path / "napari.yaml")
    pm.validate_imports() if hasattr(pm, "validate_imports") else None
    assert pm.name == "napari-unet-loop"
    assert {w.display_name for w in pm.contributions.widgets} == {"Segment", "Fine-tune"}
    assert {s.key for s in pm.contributions.sample_data} == {"retina", "lesion_scan"}


def test_npe2_validates_the_installed_plugin():
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-unet-loop", "--imports"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_core_cli_and_io_import_no_qt_or_napari():
    code = (
        "import sys, napari_unet, napari_unet.core.predict, napari_unet.core.weights, napari_unet.cli, "
        "napari_unet.io\n"
        "from napari_unet.cli import build_parser; build_parser()\n"
        "bad = [m for m in ('qtpy', 'PyQt6', 'PyQt5', 'napari', 'magicgui') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == ""


def test_importing_the_package_is_light():
    code = "import sys, napari_unet; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "False"
