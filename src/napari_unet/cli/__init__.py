"""The ``napari-unet`` command line: one module per sub-command.

Each sub-command module defines ``add_parser(subparsers)`` (which registers
the parser and sets ``func``) and raises :class:`CLIError` for bad input; the
dispatcher turns any such error into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .common import CLIError, advice, one_line_warnings, subcommand_parser

#: Sub-command modules, in the order ``--help`` lists them.
SUBCOMMANDS = ("predict", "batch", "train", "finetune", "export", "import_", "view")


def build_parser() -> argparse.ArgumentParser:
    from napari_unet import __version__

    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="U-Net segmentation of medical scans: predict, batch, train, fine-tune, export, import, view.",
    )
    parser.add_argument("--version", action="version", version=f"napari-unet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"napari_unet.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"napari_unet.cli.{name}":
                raise
            continue  # sub-command not available in this build
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    command = subcommand_parser(parser, args.command)
    try:
        with one_line_warnings(f"napari-unet {args.command}"):
            return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"napari-unet {args.command}: error: {advice(exc, command)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-unet {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
