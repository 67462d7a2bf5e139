"""``napari-unet batch INPUTS... -o OUT_DIR``: segment many scans on a Dask cluster."""

from __future__ import annotations

import argparse
import sys
import time

from .common import CLIError, check_device
from .predict import add_model_options, prediction_options


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "batch",
        help="segment many scans in parallel (Dask), skipping those already done",
        description=(
            "Segment every scan in INPUTS (files, folders, glob patterns; a folder of DICOM files "
            "is one scan) into OUT_DIR/<name>_labels.<format>, one scan per task on a Dask "
            "cluster: a local one of worker processes, or the scheduler at --scheduler. A scan "
            "that fails is reported and the others go on; outputs that exist are skipped. "
            "OUT_DIR/batch_summary.csv lists every scan. Exit status 0 if all succeeded, 1 if "
            "any failed, 2 for bad arguments."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="scan file, folder or glob pattern (quote it)")
    p.add_argument("-o", "--out-dir", required=True, help="folder for the label images and the summary")
    add_model_options(p)
    p.add_argument(
        "--scheduler", default="local",
        help="'local' (default): start a local cluster; or a scheduler address (tcp://host:8786) to use",
    )
    p.add_argument(
        "--workers", type=int, default=None,
        help="worker processes of the local cluster (default: one per CPU, at most one per 2 GB of "
        "memory, at most 2 on a GPU, never more than there are scans)",
    )
    p.add_argument("--format", default="nii.gz", choices=("nii.gz", "tif", "zarr"),
                   help="output format (default: nii.gz)")
    p.add_argument(
        "--index", type=int, default=None,
        help="for 4D/5D inputs: which time point / channel volume to segment (0-based); 2D/3D inputs ignore it",
    )
    p.add_argument("--overwrite", action="store_true", help="segment again scans whose output exists")
    p.add_argument("--quiet", action="store_true", help="no line per scan (failures and the summary still print)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_unet.batch import (
        FAILED,
        SKIPPED,
        SUMMARY_NAME,
        BatchError,
        plan_batch,
        predict_batch,
    )
    from napari_unet.core.weights import ModelError

    options = prediction_options(args)
    local = args.scheduler.strip().lower() in ("", "local")
    if args.workers is not None:
        if not local:
            raise CLIError("--workers sizes the local cluster; with --scheduler ADDRESS the cluster is already sized")
        if args.workers < 1:
            raise CLIError(f"--workers must be at least 1, got {args.workers}")
    if local:
        check_device(args.device)  # a remote cluster's workers resolve the device themselves
    try:
        jobs = plan_batch(args.inputs, args.out_dir, format=args.format, overwrite=args.overwrite,
                          index=args.index)
    except BatchError as exc:
        raise CLIError(str(exc)) from exc
    skipped = sum(job.skip for job in jobs)
    if skipped:
        print(
            f"skipping {skipped} of {_plural(len(jobs), 'scan')}: their outputs exist (--overwrite redoes them)",
            file=sys.stderr,
        )

    def report(row: dict, finished: int, total: int) -> None:
        head = f"[{finished}/{total}] {row['input']}"
        if row["status"] == FAILED:
            print(f"{head} failed: {row['error']}", file=sys.stderr, flush=True)
        elif not args.quiet:
            print(f"{head} -> {row['output']} {row['seconds']:.1f} s", file=sys.stderr, flush=True)
        if not args.quiet:
            for note in row.get("notes") or []:
                print(f"  note: {note}", file=sys.stderr)

    client = None
    start = time.perf_counter()
    try:
        todo = len(jobs) - skipped
        if not local:
            client = _connect(args.scheduler)
            if todo and not args.quiet:
                workers = len(client.scheduler_info().get("workers", {}))
                print(f"segmenting {_plural(todo, 'scan')} on the cluster at {args.scheduler} "
                      f"({_plural(workers, 'worker')})", file=sys.stderr)
        elif todo and not args.quiet:
            from napari_unet.batch import local_workers

            workers = local_workers(args.workers, args.device, todo)
            print(f"segmenting {_plural(todo, 'scan')} on a local cluster of "
                  f"{_plural(workers, 'worker process', 'worker processes')}", file=sys.stderr)
        rows = predict_batch(
            args.inputs, args.out_dir, model=args.model, client=client, workers=args.workers,
            device=options.device, tile=options.tile, overlap=options.overlap,
            batch_size=options.batch_size, precision=options.precision, zoom=options.zoom,
            flips=options.flips, progress=report, jobs=jobs,
        )
    except (BatchError, ModelError) as exc:
        raise CLIError(str(exc)) from exc
    except KeyboardInterrupt:
        print(
            f"napari-unet batch: interrupted; the scans finished so far are kept (see "
            f"{args.out_dir}/{SUMMARY_NAME}); run it again to do the rest",
            file=sys.stderr,
        )
        return 130
    finally:
        if client is not None:
            client.close()
    failed = sum(row["status"] == FAILED for row in rows)
    done = len(rows) - failed - sum(row["status"] == SKIPPED for row in rows)
    print(
        f"batch: {done} done, {skipped} skipped, {failed} failed in {time.perf_counter() - start:.1f} s; "
        f"summary in {args.out_dir.rstrip('/')}/{SUMMARY_NAME}",
        file=sys.stderr,
    )
    return 1 if failed else 0


def _connect(address: str):
    from distributed import Client

    try:
        return Client(address, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise CLIError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"
