"""``napari-unet export MODEL -o PACKAGE.zip --format bioimageio``: a BioImage.IO model package.

MODEL is a model folder or a bundled model's name. The package (BioImage.IO
model format 0.5) holds TorchScript weights that end in a softmax, the
normalisation as the input's preprocessing, test tensors, a cover, a README
(the model card for bundled models) and napari-unet's own config and weights,
so ``napari-unet import`` restores the model folder. Needs the ``bioimageio``
extra (``pip install "napari-unet-loop[bioimageio]"``). Examples::

    napari-unet export unet-sim-v1 -o unet-sim-v1.zip --format bioimageio
    napari-unet export my-ct-model -o ct.zip --normalization ct --author "A. Person" --license CC-BY-4.0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import CLIError, load_model_or_fail


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a model as a BioImage.IO package (.zip) other software can run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="model folder or bundled model name")
    p.add_argument("-o", "--output", required=True, metavar="PACKAGE", help="package to write (.zip)")
    p.add_argument("--format", default="bioimageio", choices=("bioimageio",), help="package format (default: bioimageio)")
    p.add_argument(
        "--normalization", default=None, choices=("percentile", "ct", "body"),
        help="normalisation to describe as preprocessing (default: the model's own; 'auto' becomes 'percentile')",
    )
    p.add_argument("--author", action="append", default=None, metavar="NAME",
                   help="an author of the model (repeat for several; default: the napari-unet developers for "
                   "bundled models)")
    p.add_argument("--license", default="BSD-3-Clause", metavar="SPDX",
                   help="SPDX licence of the package (default: BSD-3-Clause)")
    p.add_argument("--overwrite", action="store_true", help="replace PACKAGE if it exists")
    p.add_argument("--quiet", action="store_true", help="no summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_unet.io.bioimageio import PackageError, export_bioimageio, preprocessing_steps

    output = Path(args.output)
    if output.suffix.lower() != ".zip":
        raise CLIError(f"{output}: a BioImage.IO package is a .zip file")
    if output.exists() and not args.overwrite:
        raise CLIError(f"{output} already exists (pass --overwrite to replace it)")
    if not output.parent.is_dir():
        raise CLIError(f"{output.parent}: no such folder for the output")
    model = load_model_or_fail(args.model, device="cpu")
    try:
        pre = preprocessing_steps(model.config.input, args.normalization)
        written = export_bioimageio(
            model, output, normalization=args.normalization, authors=args.author, license=args.license,
            overwrite=args.overwrite,
        )
    except PackageError as exc:
        raise CLIError(str(exc)) from exc
    if not args.quiet:
        exactness = "exactly napari-unet's" if pre.exact else "approximately napari-unet's (see the README)"
        print(f"wrote {written}: BioImage.IO model with TorchScript weights; preprocessing '{pre.mode}' "
              f"({exactness}): {pre.describe()}", file=sys.stderr)
        for note in pre.notes:
            print(f"note: {note}", file=sys.stderr)
    return 0
