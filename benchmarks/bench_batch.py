"""Batch prediction on a Dask LocalCluster against the plain sequential loop (not a test; run by hand).

Generates ``--scans`` simulated MRI volumes (``--shape`` Z Y X, NIfTI) in a
temporary folder, then segments them twice on the same cores:

* sequentially, in this process, with torch using ``--workers`` threads
  (what ``for f in files: napari-unet predict f`` does, minus the start-ups);
* with :func:`napari_unet.predict_batch` on a LocalCluster of ``--workers``
  single-threaded worker processes.

Prints the wall times, their ratio, the cluster's start-up (and the workers'
warm-up: imports and model load, once per worker), the per-scan
overhead of the cluster (wall time x workers / scans minus the time a worker
spends in a scan) and an extrapolation to 2000 scans on N machines like this
one. Checks that both runs wrote the same labels.

    python benchmarks/bench_batch.py [--scans 16] [--shape 64 256 256] [--workers 2] [--model M]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_scans(folder: Path, count: int, shape: tuple[int, int, int]) -> list[Path]:
    import nibabel as nib

    from napari_unet.core.simulate import simulate_volume

    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([0.9, 0.9, 2.0, 1.0])
    paths = []
    for i in range(count):
        volume, _ = simulate_volume(i, shape, "mri")
        path = folder / f"scan{i:04d}.nii.gz"
        # napari (Z, Y, X) is NIfTI (i, j, k) = (X, Y, Z)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine), path)
        paths.append(path)
    return paths


def model_folder(source: str | None, where: Path) -> str:
    """The model to use: ``source``, else the bundled one, else a random default U-Net (same speed)."""
    from napari_unet.core.config import ModelConfig
    from napari_unet.core.weights import NoBundledModelError, load_model, new_model, save_model

    try:
        return str(load_model(source).source)
    except NoBundledModelError:
        print("no bundled model: using a randomly initialised default U-Net (same cost per voxel)")
        return str(save_model(new_model(ModelConfig(), seed=0), where / "random-model"))


def sequential(paths: list[Path], out: Path, model_source: str, threads: int) -> tuple[float, list[float]]:
    import torch

    from napari_unet.batch import open_scan, segment_scan
    from napari_unet.core.predict import PredictOptions
    from napari_unet.core.weights import load_model

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = load_model(model_source)
    times = []
    for path in paths:
        t = time.perf_counter()
        scan, layout = open_scan(path)
        segment_scan(scan, layout, model, out / f"{path.name[:-7]}_labels.nii.gz", PredictOptions(device="cpu"),
                     overwrite=True)
        times.append(time.perf_counter() - t)
    return time.perf_counter() - start, times


def warm_up(ref) -> None:
    """On a worker: what its first scan would pay once (imports, the model load,
    torch's first forward pass), so the batch below times the steady state."""
    import napari_unet.io  # noqa: F401
    from napari_unet.batch import worker_model
    from napari_unet.core.predict import predict

    predict(np.zeros((1, 64, 64), np.float32), worker_model(ref), device="cpu")


def same_labels(a: Path, b: Path) -> float:
    import nibabel as nib

    equal = total = 0
    for left in sorted(a.glob("*_labels.nii.gz")):
        x = np.asarray(nib.load(left).dataobj)
        y = np.asarray(nib.load(b / left.name).dataobj)
        equal += int((x == y).sum())
        total += x.size
    return equal / total if total else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=16)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256), metavar=("Z", "Y", "X"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default=None, help="model folder or bundled name (default: bundled)")
    parser.add_argument("--machines", type=int, nargs="+", default=(1, 4, 16, 64),
                        help="machine counts for the 2000-scan extrapolation")
    args = parser.parse_args()

    import torch

    from napari_unet import predict_batch
    from napari_unet.batch import _model_ref, default_workers, start_local_cluster
    from napari_unet.core.weights import load_model

    shape = tuple(args.shape)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.scans} scans of {shape}, {args.workers} workers vs 1 process x {args.workers} threads")
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        paths = make_scans(tmp / "scans", args.scans, shape)
        print(f"generated the scans in {time.perf_counter() - t:.1f} s")
        source = model_folder(args.model, tmp)

        seq_wall, seq_times = sequential(paths[:1], tmp / "seq", source, args.workers)  # warm-up
        seq_wall, seq_times = sequential(paths, tmp / "seq", source, args.workers)

        t = time.perf_counter()
        cluster, client = start_local_cluster(args.workers)
        startup = time.perf_counter() - t
        try:
            t = time.perf_counter()
            client.run(warm_up, _model_ref(load_model(source)))
            warm = time.perf_counter() - t
            t = time.perf_counter()
            rows = predict_batch(paths, tmp / "dask", model=source, client=client, device="cpu")
            dask_wall = time.perf_counter() - t
        finally:
            client.close()
            cluster.close()
        failed = [r for r in rows if r["status"] != "done"]
        if failed:
            raise SystemExit(f"{len(failed)} scans failed, e.g. {failed[0]['error']}")
        worker_times = [r["seconds"] for r in rows]
        agreement = same_labels(tmp / "seq", tmp / "dask")

    n = args.scans
    seq_scan = statistics.median(seq_times)
    worker_scan = statistics.median(worker_times)
    overhead = dask_wall * args.workers / n - statistics.mean(worker_times)
    print(f"sequential: {seq_wall:.1f} s ({seq_scan:.2f} s per scan with {args.workers} threads)")
    print(f"dask:       {dask_wall:.1f} s + {startup:.1f} s cluster start-up + {warm:.1f} s warm-up "
          f"(imports, model load, first forward pass) ({worker_scan:.2f} s per scan in a 1-thread worker)")
    startup += warm
    print(f"ratio sequential / dask: {seq_wall / dask_wall:.2f}x without the start-up, "
          f"{seq_wall / (dask_wall + startup):.2f}x with it")
    print(f"per-scan overhead of the cluster: {overhead * 1000:.0f} ms "
          f"(wall x workers / scans - mean time in a worker)")
    print(f"labels equal between the two runs: {agreement:.6f} of the voxels")

    per_machine = default_workers()
    per_scan = statistics.mean(worker_times) + max(overhead, 0.0)
    print(f"\nextrapolation to 2000 scans of {shape}, {per_machine} workers per machine like this one "
          f"({per_scan:.2f} s per scan and worker, {startup:.0f} s start-up; assumes the shared "
          f"file system keeps up):")
    for machines in args.machines:
        hours = (startup + 2000 / (machines * per_machine) * per_scan) / 3600
        print(f"  {machines:3d} machine(s): {hours:6.2f} h")


if __name__ == "__main__":
    main()
