"""``napari-unet import PACKAGE.zip -o MODEL_DIR``: a BioImage.IO package back into a model folder.

Only packages written by ``napari-unet export --format bioimageio`` can be
imported: their napari-unet config and safetensors weights are restored
(nothing is unpickled) and written atomically as MODEL_DIR, usable with
``--model MODEL_DIR``. An existing MODEL_DIR is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import CLIError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "import",
        help="turn a BioImage.IO package napari-unet exported back into a model folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("package", metavar="PACKAGE", help="BioImage.IO package (.zip) written by napari-unet export")
    p.add_argument("-o", "--output", required=True, metavar="MODEL_DIR", help="model folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace MODEL_DIR if it exists")
    p.add_argument("--quiet", action="store_true", help="no summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_unet.core.weights import ModelError
    from napari_unet.io.bioimageio import import_bioimageio

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise CLIError(f"{output} already exists (pass --overwrite to replace it)")
    if not Path(args.package).exists():
        raise CLIError(f"{args.package}: no such file")
    try:
        folder = import_bioimageio(args.package, output, overwrite=args.overwrite)
    except ModelError as exc:  # PackageError included
        raise CLIError(str(exc)) from exc
    if not args.quiet:
        print(f"wrote {folder}: use it with --model {folder}", file=sys.stderr)
    return 0
