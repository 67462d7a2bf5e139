"""Label outputs filled plane by plane (``out[z] = plane``) and committed atomically.

zarr and TIFF outputs stream: every plane goes to disk as soon as it is set,
into a temporary file or folder beside the final path, so writing the labels
of a volume larger than memory needs memory for one plane only. The other
formats (NIfTI, NumPy, PNG) keep the labels in memory and write at commit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .base import AtomicTarget, IOErrorMessage, Scan, ScanMeta


class PlaneArray:
    """A write-mostly array on disk: ``out[z] = plane`` (or ``out[...] = labels``).

    It has ``shape``, ``dtype`` and ``ndim``; reading (``out[z]``,
    ``np.asarray(out)``) goes to the file, so it is meant for checks, not for
    the bulk of the data. Label counts are kept as planes are written.
    """

    def __init__(self, shape: tuple[int, ...], dtype):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._counts: dict[int, dict[int, int]] = {}
        self._written: set[int] = set()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def planes_written(self) -> int:
        """How many distinct planes have been written so far."""
        return len(self._written)

    # writing -------------------------------------------------------------
    def __setitem__(self, key, value) -> None:
        if self.ndim == 2:
            if key is not Ellipsis and key != slice(None) and key != (slice(None), slice(None)):
                raise IndexError("a 2D streaming output is written whole: out[...] = labels")
            self._put(0, value)
            return
        if isinstance(key, int | np.integer):
            self._put(int(key), value)
            return
        if key is Ellipsis or isinstance(key, slice):
            indices = range(*(slice(None) if key is Ellipsis else key).indices(self.shape[0]))
            values = value if np.ndim(value) == self.ndim else None
            for n, z in enumerate(indices):
                self._put(z, values[n] if values is not None else value)
            return
        raise IndexError("streaming outputs are written one whole plane at a time: out[z] = plane")

    def _put(self, z: int, plane) -> None:
        if z < 0:
            z += self.shape[0] if self.ndim > 2 else 1
        plane_shape = self.shape[-2:]
        data = np.asarray(plane)
        if data.ndim == 0:
            data = np.full(plane_shape, data)
        if data.shape != plane_shape:
            raise ValueError(f"plane of shape {data.shape} does not fit an output of planes {plane_shape}")
        if np.issubdtype(data.dtype, np.integer) and data.size:
            info = np.iinfo(self.dtype)
            low, high = int(data.min()), int(data.max())
            if low < info.min or high > info.max:
                raise ValueError(f"label values {low}..{high} do not fit the output's {self.dtype}")
            self._counts[z] = _count(data, low, high)
        data = data.astype(self.dtype, copy=False)
        self._write_plane(z, data)
        self._written.add(z)

    def _write_plane(self, z: int, plane: np.ndarray) -> None:
        raise NotImplementedError

    # reading -------------------------------------------------------------
    def _read(self) -> Any:
        raise NotImplementedError

    def __getitem__(self, key):
        return np.asarray(self._read()[key])

    def __array__(self, dtype=None, copy=None):
        data = np.asarray(self._read()[...])
        return data.astype(dtype) if dtype is not None else data

    def __eq__(self, other):  # type: ignore[override]
        """Element-wise comparison, reading the whole array (prefer :meth:`label_counts`)."""
        return np.asarray(self) == other

    def __ne__(self, other):  # type: ignore[override]
        return np.asarray(self) != other

    __hash__ = None  # type: ignore[assignment]

    def label_counts(self) -> dict[int, int]:
        """Voxels per label value over the planes written so far."""
        total: dict[int, int] = {}
        for counts in self._counts.values():
            for label, count in counts.items():
                total[label] = total.get(label, 0) + count
        return total


def _count(data: np.ndarray, low: int, high: int) -> dict[int, int]:
    """Voxels per value of an integer plane."""
    if low >= 0 and high < 2**16:
        counts = np.bincount(data.ravel())
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(data, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


class _ZarrPlanes(PlaneArray):
    def __init__(self, array, shape, dtype):
        super().__init__(shape, dtype)
        self.array = array
        self.final: Path | None = None

    def _write_plane(self, z: int, plane: np.ndarray) -> None:
        if self.ndim == 2:
            self.array[...] = plane
        else:
            self.array[z] = plane

    def _read(self):
        if self.final is not None:
            import zarr

            return zarr.open_array(str(self.final / "0"), mode="r")
        return self.array


class _TiffPlanes(PlaneArray):
    """Planes written with ``pwrite`` into a pre-laid-out uncompressed TIFF: no
    memory map, so written pages never count in this process's RSS."""

    def __init__(self, path: Path, shape, dtype, options: dict[str, Any]):
        import tifffile

        super().__init__(shape, dtype)
        self.path = path
        try:
            tifffile.imwrite(path, shape=self.shape, dtype=self.dtype, **options)
            with tifffile.TiffFile(path) as tif:
                offset = tif.series[0].dataoffset
                byteorder = tif.byteorder
        except (tifffile.TiffFileError, ValueError, OSError, TypeError) as exc:
            raise IOErrorMessage(f"{path}: cannot create a TIFF ({exc})") from exc
        if offset is None:
            raise IOErrorMessage(f"{path}: tifffile did not lay the TIFF out contiguously")
        self.offset = int(offset)
        self.file_dtype = self.dtype.newbyteorder(byteorder)
        self.plane_bytes = int(np.prod(self.shape[-2:])) * self.dtype.itemsize
        self.fd: int | None = os.open(path, os.O_WRONLY)

    def _write_plane(self, z: int, plane: np.ndarray) -> None:
        if self.fd is None:
            raise IOErrorMessage(f"{self.path}: the output is already closed")
        payload = np.ascontiguousarray(plane, dtype=self.file_dtype).tobytes()
        position = self.offset + z * self.plane_bytes
        written = 0
        while written < len(payload):
            written += os.pwrite(self.fd, payload[written:], position + written)

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.fsync(self.fd)
            finally:
                os.close(self.fd)
                self.fd = None

    def _read(self):
        return np.memmap(self.path, dtype=self.file_dtype, mode="r", offset=self.offset, shape=self.shape)


class LabelsOutput:
    """Where labels go plane by plane: fill :attr:`array`, then :meth:`commit`
    (atomic rename onto the final path) or :meth:`abort` (nothing left behind).

    Also a context manager: commits on success, aborts on an exception.
    """

    path: Path
    array: Any

    def commit(self) -> Path:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def label_counts(self) -> dict[int, int]:
        """Voxels per label value (counted while writing for streaming outputs)."""
        if isinstance(self.array, PlaneArray):
            return self.array.label_counts()
        if self.array is None:
            return {}
        data = np.asarray(self.array)
        return _count(data, int(data.min()), int(data.max())) if data.size else {}

    def __enter__(self) -> LabelsOutput:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


class MemoryLabelsOutput(LabelsOutput):
    """Labels held in memory (NumPy) and written by ``writer`` at commit."""

    def __init__(
        self,
        path: Path,
        shape: tuple[int, ...],
        meta: ScanMeta,
        overwrite: bool,
        writer: Callable[[Path, Any, ScanMeta, bool], Path],
        dtype=np.uint8,
    ):
        self.path, self.meta, self.overwrite, self.writer = path, meta, overwrite, writer
        self.array = np.zeros(shape, dtype=dtype)

    def commit(self) -> Path:
        if self.array is None:
            raise IOErrorMessage(f"{self.path}: the output was aborted")
        return self.writer(self.path, self.array, self.meta, self.overwrite)

    def abort(self) -> None:
        self.array = None


class ZarrLabelsOutput(LabelsOutput):
    """An OME-Zarr label image written chunk by chunk into a temporary folder."""

    def __init__(self, path: Path, shape: tuple[int, ...], meta: ScanMeta, overwrite: bool, dtype=np.uint8):
        from .zarrio import create_label_array

        self.path = path
        self.target = AtomicTarget(path, overwrite)
        name = path.name[: -len(".zarr")] if path.name.lower().endswith(".zarr") else path.name
        try:
            zarr_array = create_label_array(self.target.tmp, tuple(shape), dtype, meta, name)
        except BaseException:
            self.target.abort()
            raise
        self.array = _ZarrPlanes(zarr_array, shape, dtype)

    def commit(self) -> Path:
        final = self.target.commit()
        self.array.final = final
        return final

    def abort(self) -> None:
        self.target.abort()


class TiffLabelsOutput(LabelsOutput):
    """An uncompressed TIFF (ImageJ when it fits, else BigTIFF) written page by page."""

    def __init__(self, path: Path, shape: tuple[int, ...], meta: ScanMeta, overwrite: bool, dtype=np.uint8):
        from .tiff import tiff_write_options

        if len(shape) not in (2, 3):
            raise IOErrorMessage(f"{path}: TIFF labels must be 2D or 3D, got shape {tuple(shape)}")
        self.path = path
        self.target = AtomicTarget(path, overwrite)
        options = tiff_write_options(tuple(shape), np.dtype(dtype), meta.spacing, meta.units)
        try:
            self.array = _TiffPlanes(self.target.tmp, shape, dtype, options)
        except BaseException:
            self.target.abort()
            raise

    def commit(self) -> Path:
        self.array.close()
        final = self.target.commit()
        self.array.path = final
        return final

    def abort(self) -> None:
        try:
            self.array.close()
        finally:
            self.target.abort()


def scan_meta(like: Scan | ScanMeta | None) -> ScanMeta:
    """The geometry to write with: a scan's meta, a meta as is, or none."""
    if like is None:
        return ScanMeta()
    if isinstance(like, Scan):
        return like.meta
    return like
