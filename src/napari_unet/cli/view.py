"""``napari-unet view [FILE]``: open napari with the plugin's widgets docked.

FILE is checked headlessly first (the plugin's reader must open it), so a
missing or damaged file is a one-line error and exit status 2, never a
traceback from inside napari.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from .common import CLIError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "view",
        help="open napari with the Segment and Fine-tune widgets and a scan",
        description="Open napari with the plugin's widgets docked and FILE loaded (default: a sample scan).",
    )
    p.add_argument("file", nargs="?", default=None, help="scan to open (default: the sample retina photo)")
    p.add_argument(
        "--sample", default="retina", choices=("retina", "lesion_scan"), help="sample to open when no FILE is given"
    )
    p.add_argument("--screenshot", default=None, help=argparse.SUPPRESS)  # for docs: save and quit
    p.set_defaults(func=run)


def check_viewable(file: str | Path) -> None:
    """Fail with a one-line :class:`CLIError` unless the plugin's reader opens ``file``.

    Reads the scan (lazily where the format allows) exactly as the napari reader
    will, so what fails here would have failed in napari with a traceback."""
    from napari_unet.io import IOErrorMessage, read_all_axes
    from napari_unet.io.formats import plugin_can_read

    path = Path(file)
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if not plugin_can_read(path):
        raise CLIError(f"{path}: not a scan napari-unet opens (NIfTI, DICOM folder or file, TIFF, zarr)")
    try:
        with warnings.catch_warnings():  # geometry warnings are shown again in napari
            warnings.simplefilter("ignore")
            scans = read_all_axes(path)
    except IOErrorMessage as exc:
        raise CLIError(str(exc)) from exc
    except (OSError, ValueError, MemoryError) as exc:
        raise CLIError(f"{path}: cannot be read ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    if not scans:
        raise CLIError(f"{path}: holds no image")


def run(args: argparse.Namespace) -> int:
    if args.file:
        check_viewable(args.file)
    from napari_unet.widgets.launch import launch

    return launch(args.file, sample=args.sample, screenshot=args.screenshot)
