"""``napari-unet view [FILE]``: open napari with the plugin's widgets docked."""

from __future__ import annotations

import argparse


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


def run(args: argparse.Namespace) -> int:
    from napari_unet.widgets.launch import launch

    return launch(args.file, sample=args.sample, screenshot=args.screenshot)
