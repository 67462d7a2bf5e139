"""Segmenting many scans: one scan at a time, or many on a Dask cluster.

:func:`open_scan` + :func:`segment_scan` are what ``napari-unet predict`` does
for one scan (read it, predict, write the labels atomically through
:func:`napari_unet.io.labels_output`); :func:`predict_batch` runs the same two
on every scan of a batch, each scan one task on a ``dask.distributed`` cluster
(a :class:`~distributed.LocalCluster` of worker processes when no client is
given). Each worker process loads the model once and keeps it. A scan that
fails becomes a ``failed`` row with its one-line reason and the others go on;
outputs that already exist are ``skipped`` (they are written atomically, so an
existing output is a complete one). Every run writes ``batch_summary.csv``.

Qt-free: this module runs headless (checked by import-linter).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import os
import threading
import time
import uuid
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Output formats of a batch (``--format``) and their file suffixes.
FORMATS = {"nii.gz": ".nii.gz", "tif": ".tif", "zarr": ".zarr"}
#: The summary every batch writes into its output folder.
SUMMARY_NAME = "batch_summary.csv"
#: Statuses of a row.
DONE, SKIPPED, FAILED = "done", "skipped", "failed"
#: Memory each worker of a local cluster is sized for (the default worker count).
WORKER_MEMORY = 2 * 2**30

# Suffixes stripped from an input's name to make its output's name (longest first).
_STEM_SUFFIXES = (
    ".ome.tiff", ".ome.tif", ".ome.zarr", ".nii.gz", ".nii", ".tiff", ".tif", ".npy",
    ".png", ".jpeg", ".jpg", ".bmp", ".zarr", ".dicom", ".dcm", ".ima",
)
# Files in a folder that are scans of their own (a folder of DICOM files is one scan).
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".tiff", ".tif", ".npy", ".png", ".jpeg", ".jpg", ".bmp")
_GLOB_CHARS = frozenset("*?[")


class ScanError(Exception):
    """One scan cannot be segmented; the message is one line (what the CLI prints)."""


class BatchError(ValueError):
    """The batch itself is wrong (no inputs, a missing file, a bad format): nothing ran."""


# ------------------------------------------------------------------ one scan
@dataclass
class ScanResult:
    """What :func:`segment_scan` wrote."""

    output: Path
    shape: tuple[int, ...]
    #: the :class:`napari_unet.core.predict.Prediction` (its ``labels`` is the output's array)
    prediction: Any
    #: the committed :class:`napari_unet.io.LabelsOutput`
    sink: Any

    @property
    def counts(self) -> dict[int, int]:
        """Voxels per label id (counted while writing for streaming outputs)."""
        return self.sink.label_counts()


def open_scan(path: str | os.PathLike, index: int | None = None, *, leading_only: bool = False):
    """Read the scan at ``path`` and name its layout: ``(scan, layout)``.

    ``index`` picks one volume of a 4D/5D scan; with ``leading_only`` a 2D/3D
    scan ignores it (one index for a whole batch). Raises :class:`ScanError`
    with the CLI's one-line messages."""
    from napari_unet.core.predict import image_layout
    from napari_unet.io import IOErrorMessage, read_scan
    from napari_unet.io.base import IndexRequired

    path = Path(path)
    if not path.exists():
        raise ScanError(f"{path}: no such file")
    try:
        scan = read_scan(path, index=index, leading_only=leading_only)
    except IndexRequired as exc:
        if not leading_only:
            raise ScanError(str(exc)) from exc
        raise ScanError(f"{exc.summary}; pick one volume with --index N (index=N in Python), "
                        f"0..{exc.count - 1}") from exc
    except IOErrorMessage as exc:
        raise ScanError(str(exc)) from exc
    try:
        layout = image_layout(tuple(scan.data.shape), rgb=scan.rgb if scan.rgb else None)
    except ValueError as exc:
        raise ScanError(f"{path}: {exc}") from exc
    return scan, layout


def segment_scan(
    scan,
    layout: str,
    model,
    output: str | os.PathLike,
    options=None,
    *,
    overwrite: bool = False,
    uncertainty: str | os.PathLike | None = None,
    progress: Callable[[Any], None] | None = None,
    seeds: dict | None = None,
) -> ScanResult:
    """Predict ``scan`` (from :func:`open_scan`) with ``model`` and write the labels
    to ``output`` (and the uncertainty map to ``uncertainty``), atomically: on any
    error nothing is left under either name. Raises :class:`ScanError`.

    ``seeds`` (:func:`~napari_unet.core.postprocess.seeds_from_corrections`):
    regions not connected to the corrections are left out; the labels are then
    held in memory until the clean-up, and written after it."""
    import numpy as np

    from napari_unet.core.predict import predict_iter, run_to_end, spatial_shape
    from napari_unet.io import IOErrorMessage, labels_output

    output = Path(output)
    spatial = spatial_shape(tuple(scan.data.shape), layout)
    try:
        sink = labels_output(output, spatial, like=scan, overwrite=overwrite)
    except IOErrorMessage as exc:
        raise ScanError(str(exc)) from exc
    sinks = [sink]
    if uncertainty is not None:
        try:
            sinks.append(labels_output(uncertainty, spatial, like=scan, overwrite=overwrite, dtype=np.float32))
        except IOErrorMessage as exc:
            sink.abort()
            raise ScanError(str(exc)) from exc
    in_memory = bool(seeds) and len(spatial) == 3
    generator = predict_iter(scan.data, model, options, rgb=layout.endswith("C"),
                             out=None if in_memory else sink.array,
                             uncertainty_out=sinks[1].array if len(sinks) > 1 else None,
                             seeds=seeds if in_memory else None)
    try:
        result = run_to_end(generator, progress)
        if in_memory:
            for z, plane in enumerate(result.labels):
                sink.array[z] = plane
        for each in sinks:
            each.commit()
    except (ValueError, IOErrorMessage) as exc:
        for each in sinks:
            each.abort()
        raise ScanError(str(exc)) from exc
    except BaseException:
        for each in sinks:
            each.abort()
        raise
    return ScanResult(output=output, shape=tuple(spatial), prediction=result, sink=sink)


# ------------------------------------------------------------------ planning
@dataclass(frozen=True)
class BatchJob:
    """One scan of a batch: where it is read from and where its labels go."""

    input: Path
    output: Path
    #: the output exists and is kept (not segmented again)
    skip: bool = False
    #: replace an existing output
    overwrite: bool = False
    #: the volume of a 4D/5D scan to segment (2D/3D scans ignore it)
    index: int | None = None


def scan_stem(path: str | os.PathLike) -> str:
    """An input's name without its image suffix (``brain.nii.gz`` -> ``brain``);
    a folder (DICOM series) or an unknown file keeps its whole name."""
    name = Path(path).name
    lower = name.lower()
    for suffix in _STEM_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def output_names(paths: Sequence[Path]) -> list[str]:
    """Output stems for ``paths``, unique and independent of their order: a stem
    shared by several inputs gets the input's folder name in front
    (``a/scan``, ``b/scan`` -> ``a_scan``, ``b_scan``), and where that still
    clashes a short hash of the full path is added (``a_scan-1f2e3d4c``).
    Clashes are found ignoring case (case-insensitive file systems)."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    names = [scan_stem(p) for p in absolute]
    counts = Counter(n.casefold() for n in names)
    names = [n if counts[n.casefold()] == 1 else f"{p.parent.name}_{n}" for n, p in zip(names, absolute)]
    counts = Counter(n.casefold() for n in names)
    return [
        n if counts[n.casefold()] == 1 else f"{n}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
        for n, p in zip(names, absolute)
    ]


def expand_inputs(items: Iterable[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[Path]:
    """The scans named by ``items``: files, folders and glob patterns (expanded
    here, ``**`` included, since a shell may not have done it).

    A folder is walked: its image files (``.nii(.gz)``, ``.tif(f)``, ``.npy``,
    ``.png/.jpg``) and ``.zarr`` folders are one scan each, a folder that holds
    DICOM files is one scan (a series; its ``DICOMDIR`` is ignored), other
    sub-folders are walked in turn. ``exclude`` (the output folder) is never
    read. A missing file or a pattern that matches nothing is a
    :class:`BatchError`; the same scan named twice counts once."""
    skip = Path(os.path.abspath(exclude)) if exclude is not None else None
    found: list[Path] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    for item in items:
        text = os.fspath(item)
        path = Path(text)
        if path.exists():
            matches = [path]
        elif _GLOB_CHARS & set(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not matches:
                raise BatchError(f"{text}: no file matches")
        else:
            raise BatchError(f"{text}: no such file")
        for match in matches:
            if match.is_dir():
                for scan in _folder_scans(match, skip):
                    add(scan)
            else:
                add(match)
    return found


def _is_zarr(path: Path) -> bool:
    from napari_unet.io.base import is_zarr_folder

    return path.name.lower().endswith(".zarr") or is_zarr_folder(path)


def _folder_scans(folder: Path, skip: Path | None) -> list[Path]:
    from napari_unet.io.dicom import _SKIP_NAMES, looks_like_dicom

    if skip is not None and Path(os.path.abspath(folder)) == skip:
        return []
    if _is_zarr(folder):
        return [folder]
    try:
        entries = sorted(e for e in folder.iterdir() if not e.name.startswith("."))
    except OSError as exc:
        raise BatchError(f"{folder}: cannot list the folder ({exc})") from exc
    def kind(entry: Path) -> str:
        if entry.is_dir():
            return "scan" if _is_zarr(entry) else "folder"
        if entry.name.lower().endswith(_IMAGE_SUFFIXES):
            return "scan"
        return "other" if entry.is_file() and entry.name.lower() not in _SKIP_NAMES else "ignored"

    kinds = [(entry, kind(entry)) for entry in entries]
    if any(k == "other" and looks_like_dicom(entry) for entry, k in kinds):
        return [folder]  # a DICOM series: the folder is the scan
    scans: list[Path] = []
    for entry, k in kinds:  # in name order, sub-folders walked in place
        if k == "scan":
            scans.append(entry)
        elif k == "folder":
            scans.extend(_folder_scans(entry, skip))
    return scans


def output_format(format: str) -> str:
    """The format key (``nii.gz``, ``tif`` or ``zarr``) of ``format`` (a leading dot is fine)."""
    key = str(format).lower().lstrip(".")
    key = {"nii": "nii.gz", "nifti": "nii.gz", "tiff": "tif"}.get(key, key)
    if key not in FORMATS:
        raise BatchError(f"unknown output format {format!r} (choose {', '.join(FORMATS)})")
    return key


def plan_batch(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    format: str = "nii.gz",
    overwrite: bool = False,
    index: int | None = None,
) -> list[BatchJob]:
    """One :class:`BatchJob` per scan found in ``paths``: ``OUT_DIR/<stem>_labels.<format>``,
    marked ``skip`` when that output exists and not ``overwrite``; ``index``
    picks the volume of every 4D/5D scan."""
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise BatchError(f"index must be a whole number >= 0, got {index!r}")
    suffix = FORMATS[output_format(format)]
    out_dir = Path(out_dir)
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    inputs = expand_inputs(paths, exclude=out_dir)
    if not inputs:
        raise BatchError("no scans found in the inputs")
    jobs = []
    for path, name in zip(inputs, output_names(inputs)):
        output = out_dir / f"{name}_labels{suffix}"
        exists = output.exists() or output.is_symlink()
        jobs.append(BatchJob(path, output, skip=exists and not overwrite, overwrite=overwrite, index=index))
    return jobs


# ----------------------------------------------------------------- the workers
#: Models loaded by this (worker) process, most recent last: loaded once, reused by every scan.
_MODELS: OrderedDict[tuple, Any] = OrderedDict()
_MODELS_LOCK = threading.Lock()
_KEEP_MODELS = 2


@dataclass(frozen=True)
class _ModelRef:
    """How a worker finds the model: a folder path or bundled name (``source``)
    with a stamp that changes when the folder's weights do."""

    source: str
    stamp: tuple


def _model_ref(model) -> _ModelRef:
    source = str(model.source)
    path = Path(source)
    if path.is_dir():
        stat = (path / "weights.safetensors").stat()
        return _ModelRef(os.path.abspath(path), (stat.st_mtime_ns, stat.st_size))
    from napari_unet import __version__

    return _ModelRef(source, (__version__,))


def worker_model(ref: _ModelRef):
    """The model of ``ref``, loaded (on the CPU) the first time this process needs it."""
    from napari_unet.core.weights import load_model

    key = (ref.source, ref.stamp)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = load_model(ref.source, device="cpu")
            _MODELS[key] = model
            while len(_MODELS) > _KEEP_MODELS:
                _MODELS.popitem(last=False)
        else:
            _MODELS.move_to_end(key)
    return model


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_job(job: BatchJob, model, options, classes: Sequence[tuple[int, str]], torch_threads: int | None = None) -> dict:
    """Segment one scan of a batch (a Dask task; also runs in-process) and return its row.

    ``model``: a :class:`_ModelRef` (loaded once per process) or a model object;
    any failure becomes a ``failed`` row with a one-line reason, never an exception."""
    start = time.perf_counter()
    row = _row(job, FAILED)
    notes: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if torch_threads:
                import torch

                if torch.get_num_threads() != torch_threads:
                    torch.set_num_threads(torch_threads)
            loaded = worker_model(model) if isinstance(model, _ModelRef) else model
            scan, layout = open_scan(job.input, index=job.index, leading_only=True)
            result = segment_scan(scan, layout, loaded, job.output, options, overwrite=job.overwrite)
        notes.extend(result.prediction.notes)
        row["status"] = DONE
        voxels = result.counts
        row["counts"] = {name: int(voxels.get(cid, 0)) for cid, name in classes}
    except ScanError as exc:
        row["error"] = str(exc)
    except Exception as exc:  # a model error, out of memory, a bug: one line, the batch goes on
        from napari_unet.core.weights import ModelError

        row["error"] = _one_line(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {_one_line(exc)}"
    else:  # what the scan's reader warned about (geometry), not library deprecations
        notes.extend(_one_line(w.message) for w in caught if issubclass(w.category, UserWarning))
    row["seconds"] = time.perf_counter() - start
    row["notes"] = notes
    return row


def _row(job: BatchJob, status: str, error: str = "") -> dict:
    return {
        "input": str(job.input),
        "output": str(job.output),
        "status": status,
        "seconds": None,
        "counts": {},
        "error": error,
        "notes": [],
    }


# ------------------------------------------------------------------- clusters
def default_workers(device: str = "cpu") -> int:
    """Worker processes for a local cluster: one per CPU, at most one per 2 GB of
    memory; at most 2 when ``device`` resolves to a GPU (every worker holds its own
    copy of the model and CUDA context on the same GPU, and two already overlap
    one scan's reading and writing with the other's prediction)."""
    from dask.system import CPU_COUNT
    from distributed.system import MEMORY_LIMIT

    n = max(1, min(int(CPU_COUNT), int(MEMORY_LIMIT // WORKER_MEMORY)))
    if device != "cpu":
        from napari_unet.core.device import resolve_device

        with contextlib.suppress(ValueError):
            if resolve_device(device).type != "cpu":
                n = min(n, 2)
    return n


def local_workers(workers: int | None, device: str, scans: int) -> int:
    """How many workers a local cluster for ``scans`` scans starts: ``workers`` (or
    :func:`default_workers`), never more than there are scans."""
    n = default_workers(device) if workers is None else int(workers)
    if n < 1:
        raise BatchError(f"workers must be at least 1, got {workers}")
    return max(1, min(n, scans))


def start_local_cluster(workers: int | None = None, **kwargs):
    """A :class:`distributed.LocalCluster` for a batch: ``workers`` processes (default
    :func:`default_workers`) of one thread each, on the loopback, no dashboard;
    ``kwargs`` go to ``LocalCluster``. Returns ``(cluster, client)``."""
    from distributed import Client, LocalCluster

    n = default_workers() if workers is None else int(workers)
    if n < 1:
        raise BatchError(f"workers must be at least 1, got {workers}")
    settings = {
        "n_workers": n, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
        "dashboard_address": None,
        # the scheduler's HTTP routes (health, metrics) still listen: on a free loopback port,
        # not on 8787 (taken by another cluster or a notebook's dashboard)
        "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        "env": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    }
    settings.update(kwargs)
    cluster = LocalCluster(**settings)
    try:
        client = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    return cluster, client


# ---------------------------------------------------------------------- a batch
def predict_batch(
    paths: Iterable[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    model=None,
    client=None,
    format: str = "nii.gz",
    overwrite: bool = False,
    workers: int | None = None,
    *,
    device: str = "auto",
    tile: int = 512,
    overlap: float = 0.125,
    batch_size: int = 4,
    precision: str = "auto",
    zoom: float | None = None,
    index: int | None = None,
    progress: Callable[[dict, int, int], None] | None = None,
    jobs: Sequence[BatchJob] | None = None,
    flips: int = 1,
) -> list[dict]:
    """Segment every scan in ``paths`` (files, folders, glob patterns) into
    ``out_dir/<stem>_labels.<format>`` on a Dask cluster, and write
    ``out_dir/batch_summary.csv``.

    ``model``: a model folder, a bundled name, ``None`` (the bundled default;
    workers load it once each) or a model object (sent to every worker once).
    ``client``: a ``distributed.Client``; ``None`` starts a ``LocalCluster`` of
    ``workers`` single-threaded processes for this call. Outputs that exist are
    skipped unless ``overwrite`` (they are not passed to ``progress``).
    ``progress(row, finished, total)`` is called as each scan finishes;
    ``index``: the volume to segment of every 4D/5D scan (2D/3D scans ignore it).
    ``flips=4``: test-time mirroring (:class:`~napari_unet.core.predict.PredictOptions`).
    ``jobs``: a plan from :func:`plan_batch` to run instead of planning
    ``paths`` (``format``, ``overwrite`` and ``index`` are then the plan's). Returns one row per scan, in input order: ``input``,
    ``output``, ``status`` (``done``/``skipped``/``failed``), ``seconds``,
    ``counts`` (voxels per class name), ``error`` and ``notes``.

    Raises :class:`BatchError` (or ``ValueError``/``ModelError``) before any
    work when the inputs, options or model are wrong; a failing scan does not
    raise, it is a ``failed`` row.
    """
    from napari_unet.core.predict import PredictOptions
    from napari_unet.core.weights import SegmentationModel, load_model

    options = PredictOptions(tile=tile, overlap=overlap, batch_size=batch_size, device=device,
                             precision=precision, zoom=zoom, flips=flips)
    if client is not None and workers is not None:
        raise BatchError("workers applies to the local cluster only; size the cluster of your client instead")
    out_dir = Path(out_dir)
    if jobs is None:
        jobs = plan_batch(paths, out_dir, format=format, overwrite=overwrite, index=index)
    loaded = model if isinstance(model, SegmentationModel) else load_model(model, device="cpu")
    classes = [(int(c.id), str(c.name)) for c in loaded.config.classes]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchError(f"{out_dir}: cannot create the output folder ({exc})") from exc

    rows: list[dict | None] = [_row(job, SKIPPED) if job.skip else None for job in jobs]
    _carry_counts(rows, out_dir / SUMMARY_NAME, [name for _, name in classes])
    todo = [i for i, job in enumerate(jobs) if not job.skip]
    try:
        if todo:
            _run_on_cluster(jobs, todo, rows, loaded, model, options, classes, client, workers, progress)
    finally:
        # also after Ctrl-C: the summary lists what finished and what did not
        final = [row if row is not None else _row(job, FAILED, "interrupted before it finished")
                 for row, job in zip(rows, jobs)]
        write_summary(final, out_dir / SUMMARY_NAME, [name for _, name in classes])
    return final


def _run_on_cluster(jobs, todo, rows, loaded, model, options, classes, client, workers, progress) -> None:
    from distributed import as_completed

    from napari_unet.core.weights import SegmentationModel

    own = None
    if client is None:
        own = start_local_cluster(local_workers(workers, options.device, len(todo)))
        client = own[1]
    futures: dict[Any, int] = {}
    try:
        if isinstance(model, SegmentationModel):
            ref = client.scatter(model, broadcast=True, hash=False)
        else:
            ref = _model_ref(loaded)
        threads = 1 if own is not None else None
        token = uuid.uuid4().hex[:8]
        for i in todo:
            future = client.submit(run_job, jobs[i], ref, options, classes, threads, pure=False,
                                   key=f"napari-unet-scan-{token}-{i}")
            futures[future] = i
        finished = 0
        for future in as_completed(futures):
            i = futures[future]
            try:
                row = future.result()
            except Exception as exc:  # the task itself died (e.g. its worker was killed)
                row = _row(jobs[i], FAILED, _task_error(exc))
            rows[i] = row
            finished += 1
            if progress is not None:
                progress(row, finished, len(todo))
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(list(futures))
        raise
    finally:
        if own is not None:
            cluster, own_client = own
            with contextlib.suppress(Exception):
                own_client.close()
            with contextlib.suppress(Exception):
                cluster.close()


def _task_error(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "KilledWorker":
        return "the worker segmenting it died (out of memory?) on every try"
    return f"{name}: {_one_line(exc)}"


# --------------------------------------------------------------------- summary
_FIXED_COLUMNS = ("input", "output", "status", "seconds")


def _count_columns(class_names: Sequence[str]) -> list[str]:
    taken = set(_FIXED_COLUMNS) | {"error", "notes"}
    return [f"{name}_voxels" if name in taken else name for name in class_names]


def write_summary(rows: Sequence[dict], path: str | os.PathLike, class_names: Sequence[str]) -> Path:
    """Write ``rows`` as a CSV (input, output, status, seconds, voxels per class,
    error, notes), atomically."""
    from napari_unet.io import atomic_path

    path = Path(path)
    columns = _count_columns(class_names)
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*_FIXED_COLUMNS, *columns, "error", "notes"])
        for row in rows:
            seconds = "" if row.get("seconds") is None else f"{row['seconds']:.2f}"
            counts = row.get("counts") or {}
            writer.writerow([
                row["input"], row["output"], row["status"], seconds,
                *("" if name not in counts else int(counts[name]) for name in class_names),
                row.get("error", ""), "; ".join(row.get("notes") or []),
            ])
    return path


def _carry_counts(rows: list[dict | None], summary: Path, class_names: Sequence[str]) -> None:
    """Skipped scans keep the voxel counts an earlier run wrote for their output."""
    if not summary.is_file() or not any(rows):
        return
    try:
        with open(summary, newline="", encoding="utf-8") as fh:
            old = {r.get("output"): r for r in csv.DictReader(fh)}
    except (OSError, csv.Error, UnicodeDecodeError):
        return
    for row in rows:
        if row is None:
            continue
        before = old.get(row["output"])
        if before is None or before.get("status") not in (DONE, SKIPPED):
            continue
        with contextlib.suppress(TypeError, ValueError):
            row["counts"] = {
                name: int(before[column])
                for name, column in zip(class_names, _count_columns(class_names))
                if before.get(column) not in ("", None)
            }
