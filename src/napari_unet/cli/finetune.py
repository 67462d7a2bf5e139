"""``napari-unet finetune IMAGE LABELS -o MODEL_DIR``: learn from corrected labels.

IMAGE and LABELS have the same spatial shape (Y,X or Z,Y,X; IMAGE may be RGB).
LABELS holds class ids of the base model; MASK, when given, is nonzero where
LABELS is trusted (painted, erased, filled or reviewed); without it every
pixel is trusted. Only slices with trusted pixels are used. Writes a model
folder usable by ``napari-unet predict --model MODEL_DIR``. Examples::

    napari-unet finetune scan.tif corrected.tif -o my-model --mask trusted.tif
    napari-unet finetune scan.nii.gz labels.nii.gz -o my-model --model my-old-model --max-seconds 120
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from .common import (
    DEVICE_CHOICES,
    CLIError,
    ProgressBar,
    check_device,
    load_model_or_fail,
    read_image,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on corrected labels (trusted pixels only) and write a model folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", help="image file (or DICOM folder / .zarr)")
    p.add_argument("labels", help="label image with the image's spatial shape (class ids)")
    p.add_argument("-o", "--output", required=True, metavar="MODEL_DIR", help="model folder to write")
    p.add_argument("--mask", default=None, help="image that is nonzero where LABELS is trusted (default: all)")
    p.add_argument("--model", default=None, metavar="BASE",
                   help="model folder or bundled name to start from (default: the bundled model)")
    p.add_argument("--max-seconds", type=float, default=None, metavar="S",
                   help="time budget (default: 60 on a CPU, 20 on a GPU, unless --steps is given)")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="number of training steps")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="compute device (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split, crops and augmentation")
    p.add_argument("--add-classes", action="store_true",
                   help="add output classes when LABELS uses ids beyond the model's classes")
    p.add_argument("--width", type=int, default=None, metavar="C",
                   help="channels at full resolution of the fine-tuned network: a narrower model is widened "
                        "first, keeping what it learned (default: 32 where the round runs in bfloat16/float16, "
                        "else the model's width; 0 keeps the model's width)")
    p.add_argument("--overwrite", action="store_true", help="replace MODEL_DIR if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=run)
    return p


def _spatial(scan, what: str, path: str) -> tuple[int, ...]:
    if scan.leading_axes:
        raise CLIError(
            f"{path}: {what} has extra axes ({scan.leading_axes}); save one time point / channel first"
        )
    if scan.spatial_ndim not in (2, 3):
        raise CLIError(f"{path}: {what} must be 2D or 3D, got shape {tuple(scan.data.shape)}")
    return scan.spatial_shape


def run(args: argparse.Namespace) -> int:
    from napari_unet.core.finetune import FinetuneOptions, finetune_iter
    from napari_unet.core.predict import run_to_end
    from napari_unet.core.weights import ModelError, is_bundled_path, save_model

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise CLIError(f"{output} already exists (pass --overwrite to replace it)")
    if output.exists() and not output.is_dir():
        raise CLIError(f"{output} is a file; MODEL_DIR must be a folder")
    if is_bundled_path(output):
        raise CLIError(f"{output} is a bundled model; it is never overwritten")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps}")
    if args.max_seconds is not None and not (args.max_seconds > 0 and math.isfinite(args.max_seconds)):
        raise CLIError(f"--max-seconds must be a positive number, got {args.max_seconds}")
    if args.width is not None and not 0 <= args.width <= 512:
        raise CLIError(f"--width must be between 0 and 512 channels, got {args.width}")
    check_device(args.device)

    image = read_image(args.image)
    labels = read_image(args.labels)
    image_shape = _spatial(image, "the image", args.image)
    label_shape = _spatial(labels, "the labels", args.labels)
    if labels.rgb:
        raise CLIError(f"{args.labels}: labels must hold one class id per pixel, not RGB colours")
    if image_shape != label_shape:
        raise CLIError(
            f"IMAGE and LABELS differ in shape: {args.image} is {image_shape}, {args.labels} is {label_shape}"
        )
    label_data = np.asarray(labels.data)
    if not np.issubdtype(label_data.dtype, np.integer):
        if not np.all(np.equal(np.mod(label_data, 1), 0)):
            raise CLIError(f"{args.labels}: labels must be integer class ids")
        label_data = label_data.astype(np.int64)
    mask = None
    if args.mask is not None:
        mask_scan = read_image(args.mask)
        mask_shape = _spatial(mask_scan, "the mask", args.mask)
        if mask_scan.rgb or mask_shape != image_shape:
            raise CLIError(f"MASK {args.mask} has shape {tuple(mask_scan.data.shape)}; expected {image_shape}")
        mask = np.asarray(mask_scan.data) != 0
        if not mask.any():
            raise CLIError(f"{args.mask} marks no pixel as trusted; nothing to learn from")

    base = load_model_or_fail(args.model, device="cpu")
    bar = ProgressBar("finetune", delay=0.0 if not args.quiet else 1e9)
    generator = finetune_iter(
        image.data,
        label_data,
        mask,
        base,
        max_seconds=args.max_seconds,
        steps=args.steps,
        device=args.device,
        seed=args.seed,
        add_classes=args.add_classes,
        options=None if args.width is None else FinetuneOptions(widen_to=args.width or None),
    )

    def show(event) -> None:
        extra = f"loss {event.loss:.3f}"
        if event.best_val_dice is not None:
            extra += f" val Dice {event.best_val_dice:.3f}"
        if event.stage:  # beyond the budget: a marked class is not learned yet
            extra = event.stage
        bar.update(int(round(1000 * event.fraction)), 1000, extra)

    try:
        result = run_to_end(generator, show)
    except ValueError as exc:
        generator.close()
        raise CLIError(" ".join(str(exc).split())) from exc
    finally:
        bar.close()

    try:
        save_model(result.model, output, overwrite=args.overwrite)
    except ModelError as exc:
        raise CLIError(str(exc)) from exc
    if not args.quiet:
        before = "n/a" if result.val_dice_before is None else f"{result.val_dice_before:.3f}"
        after = "n/a" if result.val_dice_after is None else f"{result.val_dice_after:.3f}"
        print(
            f"wrote {output}: {result.trusted_pixels} trusted pixels on {result.slices} slice(s), "
            f"{result.steps} steps in {result.seconds:.1f}s ({result.stop_reason}); "
            f"validation Dice {before} -> {after}{result.validation_caveat()}",
            file=sys.stderr,
        )
    for note in result.notes:
        print(f"napari-unet finetune: warning: {note}", file=sys.stderr)
    return 0
