"""Streaming prediction of a large uint16 zarr volume: peak memory and time per slice.

Creates (in a child process, so its memory is not counted) a uint16 OME-Zarr
volume of ``--gb`` gigabytes (1 GB = 1e9 bytes) with planes of
``--height`` x ``--width`` pixels, chunked one plane (1 x 1024 x 1024) at a
time, then segments it slice by slice with a randomly initialised model of the
default architecture into a zarr label output, and prints the process's peak
RSS and the seconds per slice. ``--slices N`` predicts only the first N planes
(normalisation is still estimated over the whole volume) to keep a CPU run short.

    python benchmarks/bench_stream.py                      # 4 GB, every slice (hours on a CPU)
    python benchmarks/bench_stream.py --gb 0.5 --slices 12 --threads 1

The target (issue 5): a 4 GB volume on CPU with peak RSS under 2 GB.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MiB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def create_volume(path: Path, depth: int, height: int, width: int) -> None:
    """A uint16 OME-Zarr volume written plane by plane (bounded memory)."""
    import zarr

    group = zarr.open_group(str(path), mode="w-", zarr_format=2)
    array = group.create_array(
        "0", shape=(depth, height, width), dtype="uint16", chunks=(1, min(height, 1024), min(width, 1024))
    )
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}],
        }
    ]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    background = (1000 + 200 * np.sin(xx / 97.0) * np.cos(yy / 61.0)).astype(np.float32)
    noise = rng.normal(0, 40, size=(height, width)).astype(np.float32)
    for z in range(depth):
        plane = background + np.roll(noise, 37 * z, axis=1)
        cy, cx = height // 2 + int(height / 4 * np.sin(z / 50)), width // 2
        radius = 40 + 30 * np.sin(z / 20) ** 2
        plane[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] += 1500
        array[z] = np.clip(plane, 0, 65535).astype(np.uint16)


def run(args: argparse.Namespace) -> None:
    import torch

    from napari_unet.core.config import ModelConfig
    from napari_unet.core.normalize import intensity_ranges
    from napari_unet.core.predict import PredictOptions, PredictProgress, predict_iter
    from napari_unet.core.weights import new_model
    from napari_unet.io import labels_output, read_scan

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    source = Path(args.input) if args.input else work / "volume.zarr"
    try:
        if not source.exists():
            start = time.perf_counter()
            command = [
                sys.executable, __file__, "--create-only", str(source),
                "--gb", str(args.gb), "--height", str(args.height), "--width", str(args.width),
            ]
            subprocess.run(command, check=True)
            print(f"created {source} in {time.perf_counter() - start:.1f}s (child process)")
        scan = read_scan(source)
        volume_gb = np.prod(scan.data.shape) * scan.data.dtype.itemsize / 1e9
        print(f"input {tuple(scan.data.shape)} {scan.data.dtype} = {volume_gb:.2f} GB, lazy {type(scan.data).__name__}")
        model = new_model(ModelConfig(name="bench"), seed=0)
        options = PredictOptions(tile=args.tile, batch_size=args.batch_size, device=args.device)
        print(f"rss after loading torch and the model: {rss_mb():.0f} MiB; torch threads {torch.get_num_threads()}")

        start = time.perf_counter()
        ranges = intensity_ranges(scan.data, model.config.input, False)
        print(f"intensity range over the whole volume {ranges[0].round(1).tolist()} in {time.perf_counter() - start:.1f}s")

        n = min(args.slices or scan.data.shape[0], scan.data.shape[0])
        image = scan.data[:n] if n < scan.data.shape[0] else scan.data
        output = work / "labels.zarr"
        sink = labels_output(output, tuple(image.shape), like=scan if n == scan.data.shape[0] else None, overwrite=True)
        checkpoints = sorted({0, n // 4, n // 2, 3 * n // 4, n - 1})
        written = 0
        slice_start = time.perf_counter()
        per_slice: list[float] = []
        generator = predict_iter(image, model, options, intensity_ranges=ranges, out=sink.array)
        while True:
            try:
                event = next(generator)
            except StopIteration as stop:
                result = stop.value
                break
            if isinstance(event, PredictProgress):
                planes_done = sink.array.planes_written
                while written < planes_done:
                    now = time.perf_counter()
                    per_slice.append(now - slice_start)
                    slice_start = now
                    if written in checkpoints:
                        print(f"  slice {written + 1}/{n}: rss {rss_mb():.0f} MiB, peak {peak_rss_mb():.0f} MiB")
                    written += 1
        sink.commit()
        counts = sink.label_counts()
        print(f"wrote {output} {tuple(image.shape)} on {result.device} ({result.precision}); labels {counts}")
        print(
            f"seconds per slice: median {np.median(per_slice):.2f}, mean {np.mean(per_slice):.2f} "
            f"({len(per_slice)} slices of {args.height}x{args.width}); total {result.seconds:.1f}s"
        )
        print(f"peak RSS {peak_rss_mb():.0f} MiB (target for a 4 GB volume: under 2048 MiB)")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.0, help="volume size in GB (default 4)")
    parser.add_argument("--height", type=int, default=1024, help="plane height (default 1024)")
    parser.add_argument("--width", type=int, default=2048, help="plane width (default 2048)")
    parser.add_argument("--slices", type=int, default=0, help="predict only the first N slices (default: all)")
    parser.add_argument("--tile", type=int, default=512, help="tile edge (default 512)")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per batch (default 4)")
    parser.add_argument("--device", default="cpu", help="compute device (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--input", default=None, help="reuse an existing zarr volume instead of creating one")
    parser.add_argument("--workdir", default=None, help="folder for the volume and labels (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--create-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.create_only:
        depth = max(1, round(args.gb * 1e9 / (args.height * args.width * 2)))
        create_volume(Path(args.create_only), depth, args.height, args.width)
        return
    run(args)


if __name__ == "__main__":
    main()
