"""``napari-unet predict INPUT -o OUTPUT``: segment a scan into a label image."""

from __future__ import annotations

import argparse
import sys

from .common import (
    DEVICE_CHOICES,
    CLIError,
    ProgressBar,
    check_device,
    check_output,
    load_model_or_fail,
    read_image,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment a scan and write a uint8 label image",
        description=(
            "Segment INPUT (2D grey, 2D RGB or a 3D stack; .tif/.tiff, .npy, .png/.jpg, "
            ".nii/.nii.gz, DICOM, .zarr) and write OUTPUT, a uint8 label image with the "
            "input's spatial shape (Z,Y,X for stacks); the format follows OUTPUT's extension."
        ),
    )
    p.add_argument("input", help="image file (or DICOM folder / .zarr)")
    p.add_argument("-o", "--output", required=True, help="label image to write (.tif, .npy, .png, .nii.gz, .zarr)")
    add_model_options(p)
    p.add_argument(
        "--index", type=int, default=None,
        help="for 4D/5D inputs: which time point / channel volume to segment (0-based)",
    )
    p.add_argument(
        "--uncertainty", metavar="OUT", default=None,
        help="also write the per-pixel uncertainty (normalised entropy of the class probabilities, "
        "float32 0..1, the labels' geometry; .tif, .nii.gz, .npy or .zarr) and print the slices "
        "to review first",
    )
    p.add_argument(
        "--corrections", metavar="LABELS", default=None,
        help="for a stack: the corrected labels a fine-tuning round learned from (e.g. finetune's LABELS); "
        "predicted regions that do not connect in 3D to a pixel corrected as their class are left out",
    )
    p.add_argument(
        "--mask", default=None,
        help="with --corrections: image that is nonzero where LABELS is trusted (default: LABELS' nonzero pixels)",
    )
    p.add_argument(
        "--grow", type=float, default=None, metavar="P",
        help="with --corrections: background pixels whose foreground probability is at least P and that "
        "connect to a kept region join it (default: 0.15; 0.5 keeps the plain argmax labels)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=run)


def read_seeds(args: argparse.Namespace, shape: tuple[int, ...]):
    """``--corrections``/``--mask`` as seeds for :func:`~napari_unet.core.postprocess.keep_connected`."""
    import numpy as np

    from napari_unet.core.postprocess import seeds_from_corrections

    if args.corrections is None:
        if args.mask is not None:
            raise CLIError("--mask needs --corrections LABELS (the labels it marks as trusted)")
        return None
    if len(shape) != 3:
        raise CLIError(f"--corrections works on stacks; {args.input} is a 2D image {tuple(shape)}")
    arrays = []
    for what, path in (("--corrections", args.corrections), ("--mask", args.mask)):
        if path is None:
            arrays.append(None)
            continue
        data = np.asarray(read_image(path).data)
        if tuple(data.shape) != tuple(shape):
            raise CLIError(f"{what} {path} has shape {tuple(data.shape)}; expected the scan's {tuple(shape)}")
        arrays.append(data)
    labels, mask = arrays
    trusted = labels != 0 if mask is None else mask != 0
    if not trusted.any():
        raise CLIError(f"{args.mask or args.corrections}: no trusted pixel; nothing to connect to")
    return seeds_from_corrections(labels, trusted)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model, --device and the tiling options (shared with ``napari-unet batch``)."""
    p.add_argument("--model", default=None, help="model folder or bundled model name (default: the bundled model)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="compute device (default: auto)")
    p.add_argument("--tile", type=int, default=512, help="tile edge in pixels (default: 512)")
    p.add_argument("--overlap", type=float, default=0.125, help="tile overlap fraction (default: 0.125)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per batch (default: 4)")
    p.add_argument(
        "--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
        help="numeric precision (default: auto = float16 on GPUs, bfloat16 on CPUs with native support, else float32)",
    )
    p.add_argument(
        "--zoom", type=float, default=None,
        help="resample each slice by this factor before the model and back after (e.g. 0.5 when "
        "structures are twice as large as the model expects); default: auto (1 for grey scans, "
        "about 512 px for colour photos larger than 768 px)",
    )
    p.add_argument(
        "--flips", type=int, default=1, choices=(1, 4),
        help="test-time mirroring: 4 also segments each tile mirrored left-right, up-down and both and "
        "averages the probabilities (4x the time; default: 1)",
    )


def prediction_options(args: argparse.Namespace):
    """The :class:`~napari_unet.core.predict.PredictOptions` of :func:`add_model_options`'s flags."""
    from napari_unet.core.predict import PredictOptions

    try:
        return PredictOptions(
            tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, device=args.device,
            precision=args.precision, zoom=args.zoom, flips=args.flips,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    from napari_unet.batch import ScanError, open_scan, segment_scan

    options = prediction_options(args)
    if args.grow is not None:
        if args.corrections is None:
            raise CLIError("--grow needs --corrections LABELS (it widens the regions connected to them)")
        import dataclasses

        try:
            options = dataclasses.replace(options, grow=args.grow)
        except ValueError as exc:
            raise CLIError(f"--grow: {exc}") from exc
    output = check_output(args.output, args.overwrite)
    uncertainty_path = None
    if args.uncertainty is not None:
        uncertainty_path = check_output(args.uncertainty, args.overwrite)
        if uncertainty_path.resolve() == output.resolve():
            raise CLIError(f"--uncertainty {args.uncertainty} is the labels output too; name another file")
        if uncertainty_path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            raise CLIError(f"{args.uncertainty}: the uncertainty map is float32; write it as .tif, .nii.gz, .npy or .zarr")
    check_device(args.device)
    try:
        scan, layout = open_scan(args.input, index=args.index)
    except ScanError as exc:
        raise CLIError(str(exc)) from exc
    from napari_unet.core.predict import spatial_shape

    seeds = read_seeds(args, spatial_shape(tuple(scan.data.shape), layout))
    model = load_model_or_fail(args.model, device="cpu")
    bar = ProgressBar("predict", delay=0.0 if not args.quiet else 1e9)
    try:
        written = segment_scan(
            scan, layout, model, output, options, overwrite=args.overwrite, uncertainty=uncertainty_path,
            progress=lambda event: bar.update(event.done, event.total), seeds=seeds,
        )
    except ScanError as exc:
        raise CLIError(str(exc)) from exc
    bar.close()
    result, spatial = written.prediction, written.shape
    if not args.quiet:
        voxels = written.counts  # counted while writing: no second pass over a big volume
        counts = {c.name: int(voxels.get(c.id, 0)) for c in model.config.classes if c.id}
        found = ", ".join(f"{name} {n} px" for name, n in counts.items())
        print(
            f"wrote {output} {tuple(spatial)} with {model.name} on {result.device} "
            f"({result.precision}) in {result.seconds:.2f}s: {found}",
            file=sys.stderr,
        )
        if result.slice_uncertainty is not None:
            from napari_unet.core.uncertainty import review_order

            scores = result.slice_uncertainty
            if len(scores) > 1:
                top = ", ".join(f"{z} ({score:.3f})" for z, score in review_order(scores, top=5))
                print(f"wrote {uncertainty_path}; slices to review first: {top}", file=sys.stderr)
            else:
                print(f"wrote {uncertainty_path}; mean uncertainty {scores[0]:.3f}", file=sys.stderr)
        if result.removed:
            from napari_unet.core.postprocess import describe

            names = {c.id: c.name for c in model.config.classes}
            print(describe(result.removed, names) or "every predicted region connects to the corrections",
                  file=sys.stderr)
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
    return 0
