"""Reproduce the bundled U-Net from a seed, on simulated scans only.

    python scripts/train_bundled.py --seed 2026 --max-minutes 40 --batch-size 4 \
        --work .cache/bundled-run --install unet-sim-v1

(the exact command of the shipped run: 2775 steps in 40 minutes on two
shared CPU cores; allow 60 minutes on 2 quiet cores, or use ``--device cuda``)

trains the default architecture (U-Net, depth 4, 12 base channels, batch
norm; 1.09 M parameters) from scratch on :mod:`napari_unet.core.simulate`
scans (256x256 patches, batch 4, AdamW, warm-up + cosine schedule, Dice +
cross-entropy), validates on a fixed simulated set from a stream disjoint
from training, writes an atomic checkpoint every ``--checkpoint-every``
steps under ``--work``, and with ``--install NAME`` copies the best weights
into ``src/napari_unet/models/NAME/`` and registers them (SHA-256) as the
default bundled model.

A time budget (``--max-minutes``) makes the step count depend on the
machine; the number of steps the bundled run reached is recorded in its
``config.json`` (``provenance.steps``): ``--max-steps N --max-minutes 0``
replays exactly that many steps on exactly the same simulated data on any
machine. The weights will not be byte-identical: summation order depends on
the thread count, which ``--threads auto`` switched between 1 and 2 during
the shipped run, and rounding differences grow over training; expect a
model of similar Dice (with ``--threads 1`` two runs give identical tensors on
one machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet.core.config import ModelConfig, UNetConfig
from napari_unet.core.datasets import SimulatedBatches, simulated_batches
from napari_unet.core.simulate import SimulatorConfig
from napari_unet.core.train import TrainOptions, train_iter
from napari_unet.core.weights import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    bundled_model_path,
    default_model_name,
    load_model_folder,
    new_model,
    save_model,
    sha256_of,
)

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "src" / "napari_unet" / "models"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--name", default="unet-sim-v1", help="model name written into config.json")
    p.add_argument("--max-minutes", type=float, default=60.0, help="wall-clock budget (0: none)")
    p.add_argument("--max-steps", type=int, default=0, help="step budget (0: none)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--base-channels", type=int, default=12)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--pool", type=int, default=400, help="simulated samples kept for reuse")
    p.add_argument("--fresh", type=int, default=4, help="new simulated samples per step")
    p.add_argument("--val-samples", type=int, default=48)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--threads", default="auto",
                   help="CPU threads for PyTorch, or 'auto': re-measure 1 vs 2 threads every 100 steps "
                        "and keep the faster (on a shared machine one thread is often faster)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="float32", choices=("float32", "auto", "bfloat16", "float16"),
                   help="training precision (default float32; 'auto' runs bfloat16 autocast on a CPU "
                        "with native bfloat16, float16 on CUDA); recorded in the stage")
    p.add_argument("--work", type=Path, default=REPO / ".cache" / "bundled-run")
    p.add_argument("--resume", action="store_true",
                   help="continue a run: from the checkpoint in --work if there is one, else from the "
                        "shipped default model (its provenance.stages are carried on)")
    p.add_argument("--resume-from", metavar="NAME|DIR", default=None,
                   help="with --resume and no checkpoint in --work: the bundled model (name) or model folder "
                        "to continue (default: the shipped default model), e.g. unet-sim-v2")
    p.add_argument("--canvas-scales", default="1:0.4,1.5:0.25,2:0.25,3:0.1",
                   help="SCALE:WEIGHT list: scans simulated SCALE times the patch size and cropped, so the "
                        "model sees anatomy at the pixel sizes of 256-768 px scans ('1:1' = patch-sized only)")
    p.add_argument("--max-vessel-width", type=float, default=16.0,
                   help="widest simulated vessel in px (a 1400 px fundus photo has vessels up to ~20 px)")
    p.add_argument("--install", metavar="NAME", help="copy the result into the package as bundled model NAME")
    return p.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def install(folder: Path, name: str) -> Path:
    """Copy a model folder into the package and register it as the default."""
    target = MODELS / name
    tmp = MODELS / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for filename in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy2(folder / filename, tmp / filename)
        (tmp / filename).chmod(0o644)  # readable by everyone once installed
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    registry_path = MODELS / "registry.json"
    registry = json.loads(registry_path.read_text()) if registry_path.is_file() else {"default": None, "models": {}}
    registry["models"][name] = {
        "folder": name,
        "sha256": {f: sha256_of(target / f) for f in (WEIGHTS_FILE, CONFIG_FILE)},
    }
    registry["default"] = name
    registry_path.write_text(json.dumps(registry, indent=2) + "\n")
    return target


class ThreadChooser:
    """Fixed thread count, or ``auto``: time 1 and 2 threads on a few steps
    every ``period`` steps and keep the faster one (on a CPU shared with other
    jobs, two threads can be three times slower than one)."""

    def __init__(self, setting: str, period: int = 100, probe: int = 6) -> None:
        self.auto = setting == "auto"
        self.current = 1 if self.auto else int(setting)
        self.period, self.probe = period, probe
        self.times: dict[int, list[float]] = {1: [], 2: []}
        self.last = None
        torch.set_num_threads(self.current)

    def after_step(self, step: int, elapsed: float, validated: bool) -> None:
        if self.last is not None and not validated:
            self.times[self.current].append(elapsed - self.last)
        self.last = elapsed
        if not self.auto:
            return
        phase = (step - 1) % self.period
        if phase == 0:
            self.times = {1: [], 2: []}
            self._set(1)
        elif phase == self.probe:
            self._set(2)
        elif phase == 2 * self.probe:
            t1 = np.median(self.times[1][1:]) if len(self.times[1]) > 1 else np.inf
            t2 = np.median(self.times[2][1:]) if len(self.times[2]) > 1 else np.inf
            self._set(1 if t1 < t2 else 2)
            log(f"threads: 1 -> {t1:.2f}s/step, 2 -> {t2:.2f}s/step; using {self.current}")

    def _set(self, n: int) -> None:
        self.current = n
        torch.set_num_threads(n)


def _git_commit() -> str:
    """The commit the simulator came from (``+dirty`` when the working tree differs)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    simulator_commit = _git_commit()  # at the start: the code this stage trains on
    threads = ThreadChooser(args.threads)
    checkpoint_dir = args.work / "checkpoint"
    state_file = args.work / "state.json"
    args.work.mkdir(parents=True, exist_ok=True)

    config = ModelConfig(
        name=args.name,
        architecture=UNetConfig(in_channels=1, num_classes=3, depth=args.depth, base_channels=args.base_channels),
    )
    start_step = 0
    stages: list = []
    if args.resume and checkpoint_dir.is_dir():
        model = load_model_folder(checkpoint_dir)
        model.net.train()
        start_step = json.loads(state_file.read_text())["step"] if state_file.is_file() else 0
        stages = list(model.config.provenance.get("stages", []))
        log(f"resuming from {checkpoint_dir} at step {start_step}")
    elif args.resume:
        shipped = args.resume_from or default_model_name()
        folder = Path(shipped) if Path(shipped).is_dir() else bundled_model_path(shipped)
        model = load_model_folder(folder)
        model.net.train()
        start_step = int(model.config.provenance.get("steps", 0))
        stages = list(model.config.provenance.get("stages", []))
        log(f"resuming from {shipped} at step {start_step}")
    else:
        model = new_model(config, seed=args.seed)
    config = model.config.replace(name=args.name) if args.resume else config
    scales = [tuple(float(v) for v in item.split(":")) for item in args.canvas_scales.split(",") if item]
    sim_config = SimulatorConfig(nerve_width=(1.0, args.max_vessel_width))

    size = (args.patch, args.patch)
    t0 = time.perf_counter()
    validation = simulated_batches(args.seed, config, args.val_samples, size, batch_size=8, sim_config=sim_config)
    log(f"validation set: {args.val_samples} simulated scans in {time.perf_counter() - t0:.1f}s")
    sampler = SimulatedBatches(config, size, pool_size=args.pool, fresh=args.fresh, sim_config=sim_config,
                               canvas_scales=scales)
    options = TrainOptions(
        max_steps=(start_step + args.max_steps) if args.max_steps else None,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=1e-4,
        warmup_steps=50,
        schedule="cosine",
        min_lr_ratio=0.02,
        val_every=args.val_every,
        device=args.device,
        precision=args.precision,
        seed=args.seed + start_step,
        checkpoint_every=args.checkpoint_every,
        start_step=start_step,
    )

    def checkpoint(best, event) -> None:
        save_model(best, checkpoint_dir, overwrite=True)
        state_file.write_text(json.dumps({"step": event.step, "best_val_dice": event.best_val_dice}) + "\n")

    log(f"training {config.name}: {sum(p.numel() for p in model.net.parameters())} parameters, "
        f"options {options}")
    gen = train_iter(model, sampler, validation, options, checkpoint=checkpoint)
    losses: list[float] = []
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        losses.append(event.loss)
        threads.after_step(event.step, event.elapsed, event.val_dice is not None)
        if event.val_dice is not None or event.step % 25 == 0:
            val = f" val {event.val_dice:.4f} best {event.best_val_dice:.4f}" if event.val_dice is not None else ""
            log(f"step {event.step} loss {np.mean(losses[-25:]):.4f} lr {event.lr:.2e} "
                f"{event.elapsed:.0f}s generated {sampler.generated}{val}")

    stage = {
        "stage": len(stages) + 1,
        "command": "python scripts/train_bundled.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "simulator_commit": simulator_commit,
        "start_step": start_step,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "stop_reason": result.stop_reason,
        "best_step": result.best_step,
        "best_val_dice": result.best_val_dice,
        "precision": result.precision,
        "validation": f"{args.val_samples} simulated scans of this stage's simulator, stream (seed, 1)",
    }
    final_config = config.replace(provenance={
        "trained_by": "scripts/train_bundled.py",
        "data": "simulated scans only (napari_unet.core.simulate: mri, ct, fundus, em; "
                "em backgrounds may use scikit-image's CC0 textures grass, gravel, brick, cell, camera)",
        "seed": args.seed,
        "steps": start_step + result.steps,
        "best_step": result.best_step,
        "batch_size": args.batch_size,
        "patch": list(size),
        "optimizer": f"AdamW lr {args.lr} weight_decay 1e-4, warm-up 50 steps, cosine to 2%",
        "loss": "cross-entropy + soft Dice (foreground classes)",
        "validation": f"{args.val_samples} simulated scans, stream (seed, 1)",
        "best_val_dice": result.best_val_dice,
        "train_seconds": round(result.seconds, 1),
        "stop_reason": result.stop_reason,
        "hardware": f"{args.device}, {args.threads} threads, {platform.machine()} (shared)",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "stages": [*stages, stage],
    })
    final = args.work / "final"
    save_model(result.model, final, overwrite=True, config=final_config)
    log(f"done: {result.steps} steps in {result.seconds:.0f}s ({result.stop_reason}), "
        f"best validation Dice {result.best_val_dice} at step {result.best_step}; saved {final}")
    if args.install:
        target = install(final, args.install)
        log(f"installed as bundled model {args.install!r} in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
