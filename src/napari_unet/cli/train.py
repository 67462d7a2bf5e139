"""``napari-unet train``: train a model from scratch or from a base model.

Data comes from a folder of pairs and/or the scan simulator::

    DATA/images/case01.tif   DATA/labels/case01.tif
    DATA/images/case02.png   DATA/labels/case02.png     (TIFF, PNG/JPEG, NPY)

Labels hold one class id per pixel: 0 background, 1 tumor, 2 nerve (the
bundled classes); binary masks (0/1 or 0/255) are mapped to one class with
``--foreground-class``. Examples::

    # a model of your own on a public dataset, an hour on a CPU: DRIVE retina
    # vessels (masks converted to PNG/TIFF, names matched) as class 2 ...
    napari-unet train --data DRIVE/ --foreground-class 2 --out drive-model --minutes 60
    # ... or the LGG brain MRI slices (TCGA_*_N.tif + TCGA_*_N_mask.tif moved
    # to images/ and labels/ under the same name) with tumors as class 1:
    napari-unet train --data LGG/ --foreground-class 1 --out lgg-model --minutes 60

    # start from the bundled model and mix in simulated scans:
    napari-unet train --data DRIVE/ --simulate --model unet-sim-v1 --out my-model --steps 2000

    # continue a stopped run (the model folder records its step count):
    napari-unet train --data DRIVE/ --out my-model --minutes 60 --resume

Checkpoints are written atomically to ``--out`` every ``--checkpoint-every``
steps and at the end, always holding the best weights so far (by validation
Dice on a fixed split): a killed run leaves the last good checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .common import DEVICE_CHOICES, CLIError, ProgressBar, check_device, load_model_or_fail


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a model on a folder of image/label pairs and/or simulated scans",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("data")
    src.add_argument("--data", type=Path, action="append", default=[], metavar="DIR",
                     help="folder with images/ and labels/ sub-folders (repeatable)")
    src.add_argument("--simulate", action="store_true", help="train on simulated scans (alone or mixed in)")
    src.add_argument("--simulate-fraction", type=float, default=0.5,
                     help="share of each batch from the simulator when --data is also given (default 0.5)")
    src.add_argument("--val-fraction", type=float, default=0.2,
                     help="share of the folder's pairs held out for validation (fixed by --seed; default 0.2)")
    src.add_argument("--foreground-class", type=int, default=None, metavar="ID",
                     help="binary masks (0/1, 0/255): map every non-zero label to class ID "
                          "(1 tumor, 2 nerve), e.g. 2 for DRIVE vessel masks, 1 for LGG tumor masks")
    src.add_argument("--augment", choices=("heavy", "light", "none"), default=None,
                     help="augmentation of folder pairs (default: heavy from scratch, light from a base model)")
    m = p.add_argument_group("model")
    m.add_argument("--out", type=Path, required=True, help="model folder to write (checkpoints go here too)")
    m.add_argument("--model", default=None, metavar="BASE",
                   help="start from this model folder or bundled name (default: from scratch)")
    m.add_argument("--name", default=None, help="name written into config.json (default: the folder name)")
    m.add_argument("--base-channels", type=int, default=12, help="from scratch: width of the first level")
    m.add_argument("--depth", type=int, default=4, help="from scratch: number of down-sampling steps")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    m.add_argument("--resume", action="store_true", help="continue training the model in --out")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=None, help="optimisation steps (default 2000 unless --minutes)")
    t.add_argument("--minutes", type=float, default=None, help="wall-clock budget")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--patch", type=int, default=256, help="square training patch edge in pixels")
    t.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (2e-3 from scratch, 5e-4 from a base)")
    t.add_argument("--val-every", type=int, default=100)
    t.add_argument("--checkpoint-every", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    t.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    p.set_defaults(func=run)
    return p


class MixedBatches:
    """Each sample of a batch comes from ``first`` with probability ``share``, else from ``second``."""

    def __init__(self, first, second, share: float) -> None:
        self.first, self.second, self.share = first, second, share

    def __call__(self, rng: np.random.Generator, n: int):
        k = int(rng.binomial(n, self.share))
        parts = [s(rng, c) for s, c in ((self.first, k), (self.second, n - k)) if c]
        return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))


def _check_args(args: argparse.Namespace) -> None:
    if not args.data and not args.simulate:
        raise CLIError("no training data: give --data DIR (images/ + labels/) and/or --simulate")
    if args.resume and args.model:
        raise CLIError("--resume continues the model in --out; do not combine it with --model")
    if args.out.exists() and not (args.resume or args.overwrite):
        raise CLIError(f"{args.out} already exists (pass --resume to continue it or --overwrite to replace it)")
    if args.resume and not args.out.is_dir():
        raise CLIError(f"--resume: {args.out} is not a model folder to continue")
    for folder in args.data:
        if not folder.is_dir():
            raise CLIError(f"{folder}: no such folder")
    if args.steps is not None and args.steps < 1:
        raise CLIError("--steps must be at least 1")
    if args.minutes is not None and args.minutes <= 0:
        raise CLIError("--minutes must be positive")
    if not 0 <= args.simulate_fraction <= 1:
        raise CLIError("--simulate-fraction must be between 0 and 1")
    if args.foreground_class is not None and args.foreground_class < 1:
        raise CLIError("--foreground-class must be a class id >= 1 (1 tumor, 2 nerve)")
    if not 0 <= args.val_fraction < 1:
        raise CLIError("--val-fraction must be in [0, 1)")
    if args.batch_size < 1 or args.patch < 16:
        raise CLIError("--batch-size must be >= 1 and --patch >= 16")


def _build_model(args: argparse.Namespace):
    """(model, start_step): from --out (resume), --model (base) or from scratch."""
    from napari_unet.core.config import ModelConfig, UNetConfig
    from napari_unet.core.train import copy_model
    from napari_unet.core.weights import new_model

    name = args.name or args.out.name
    if args.resume:
        model = load_model_or_fail(str(args.out))
        step = int(model.config.provenance.get("training", {}).get("step", 0))
        return model, step
    if args.model:
        base = copy_model(load_model_or_fail(args.model))
        provenance = {"base_model": base.name, "base_provenance": base.config.provenance}
        base.config = base.config.replace(name=name, provenance=provenance)
        return base, 0
    try:
        arch = UNetConfig(in_channels=1, num_classes=3, depth=args.depth, base_channels=args.base_channels)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    return new_model(ModelConfig(name=name, architecture=arch), seed=args.seed), 0


def _build_data(args: argparse.Namespace, model):
    """(sample_batch, validation, description)."""
    from napari_unet.core.augment import AugmentConfig
    from napari_unet.core.datasets import (
        DatasetError,
        FolderBatches,
        SimulatedBatches,
        find_pairs,
        folder_validation,
        load_pair,
        simulated_batches,
        split_pairs,
    )

    config = model.config
    divisor = config.architecture.divisor
    patch = max(divisor, (args.patch // divisor) * divisor)
    size = (patch, patch)
    samplers, validation, described = [], [], []
    if args.data:
        try:
            pairs = [pair for folder in args.data for pair in find_pairs(folder)]
            train_pairs, val_pairs = split_pairs(pairs, args.val_fraction, args.seed)
            train_loaded = [load_pair(p, config, args.foreground_class) for p in train_pairs]
            val_loaded = [load_pair(p, config, args.foreground_class) for p in val_pairs]
        except DatasetError as exc:
            raise CLIError(str(exc)) from exc
        augment = {
            "heavy": AugmentConfig.heavy(),
            "light": AugmentConfig.light(),
            "none": AugmentConfig.none(),
            None: AugmentConfig.light() if (args.model or args.resume) else AugmentConfig.heavy(),
        }[args.augment]
        samplers.append(FolderBatches(train_loaded, size, augment=augment))
        validation += folder_validation(val_loaded, divisor)
        described.append(
            f"{len(train_pairs)} training + {len(val_pairs)} validation pairs from "
            + ", ".join(str(d) for d in args.data)
        )
    if args.simulate:
        samplers.append(SimulatedBatches(config, size, pool_size=256, fresh=max(1, args.batch_size // 2)))
        if not validation:
            validation = simulated_batches(args.seed, config, 32, size, batch_size=8)
        described.append("simulated scans (napari_unet.core.simulate)")
    if len(samplers) == 2:
        sampler = MixedBatches(samplers[1], samplers[0], args.simulate_fraction)
    else:
        sampler = samplers[0]
    return sampler, validation, "; ".join(described)


def run(args: argparse.Namespace) -> int:
    import torch

    from napari_unet.core.train import TrainOptions, train_iter
    from napari_unet.core.weights import ModelError, save_model

    _check_args(args)
    device = check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, start_step = _build_model(args)
    sampler, validation, data_text = _build_data(args, model)
    steps = args.steps if args.steps is not None else (None if args.minutes else 2000)
    lr = args.lr or (5e-4 if (args.model or args.resume) else 2e-3)
    try:
        options = TrainOptions(
            max_steps=start_step + steps if steps else None,
            max_seconds=args.minutes * 60 if args.minutes else None,
            batch_size=args.batch_size,
            lr=lr,
            warmup_steps=0 if args.resume else 50,
            val_every=args.val_every,
            checkpoint_every=args.checkpoint_every,
            device=str(device),
            seed=args.seed + start_step,
            start_step=start_step,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    base_provenance = dict(model.config.provenance)
    started = time.strftime("%Y-%m-%d")

    def config_for(step: int, best: float | None):
        training = dict(base_provenance.get("training", {}))
        training.update({
            "step": step, "best_val_dice": best, "data": data_text, "seed": args.seed, "lr": lr,
            "batch_size": args.batch_size, "patch": args.patch, "date": started,
        })
        return model.config.replace(provenance={**base_provenance, "training": training})

    def checkpoint(best_model, event) -> None:
        try:
            save_model(best_model, args.out, overwrite=True, config=config_for(event.step, event.best_val_dice))
        except ModelError as exc:
            raise CLIError(str(exc)) from exc

    print(f"napari-unet train: {model.name} on {data_text}; {len(validation)} validation batches",
          file=sys.stderr)
    bar = ProgressBar("train", delay=0.0)
    from napari_unet.core.predict import run_to_end

    gen = train_iter(model, sampler, validation, options, checkpoint=checkpoint)
    last = None
    interrupted = False

    def show(event) -> None:
        nonlocal last
        last = event
        best = f" best val Dice {event.best_val_dice:.3f}" if event.best_val_dice is not None else ""
        bar.update(int(event.fraction * 100), 100, f"step {event.step} loss {event.loss:.3f}{best}")

    try:
        result = run_to_end(gen, show)
    except KeyboardInterrupt:
        interrupted = True
        gen.close()  # the model now holds the best weights
        if last is not None:
            checkpoint(model, last)
    finally:
        bar.close()
    if interrupted:
        where = f"step {last.step}" if last else "the start"
        saved = f"best weights so far saved to {args.out}" if last else "nothing was written"
        print(f"napari-unet train: interrupted at {where}; {saved}", file=sys.stderr)
        return 130
    best = f"{result.best_val_dice:.3f}" if result.best_val_dice is not None else "n/a"
    print(
        f"napari-unet train: {result.steps} steps in {result.seconds:.0f}s ({result.stop_reason}); "
        f"best validation Dice {best} at step {result.best_step}; model in {args.out}",
        file=sys.stderr,
    )
    return 0
