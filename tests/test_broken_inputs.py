"""Broken and odd inputs: a clear one-line message, never a traceback (issue 11).

Every case below is written to ``tmp_path`` by the test (no binary fixtures)
and run through both front ends:

* the CLI, ``napari-unet predict INPUT -o OUT --model TINY --quiet``: exit
  status 2 with exactly one stderr line ``napari-unet predict: error: ...``
  and nothing left in the output folder - or, where the input is converted
  with a clear meaning (bool, RGB24, float16, sanitised voxel spacing), exit
  status 0 and only one-line ``napari-unet predict: warning:`` lines;
* the napari reader (:func:`napari_unet._napari_io.read_layers_in_napari`,
  or :func:`~napari_unet._napari_io.read_layers` for formats the plugin
  leaves to napari's builtins): layers with a plain numeric dtype, no empty
  axis and finite positive scale - or exactly one one-line error notification
  coming from an :class:`~napari_unet.io.IOErrorMessage`.

The rules are in ``docs/io.md`` ("Broken and odd inputs").
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import shutil
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
tifffile = pytest.importorskip("tifffile")

from napari_unet import _napari_io  # noqa: E402
from napari_unet.cli import main  # noqa: E402
from napari_unet.io import IOErrorMessage  # noqa: E402

ERROR, OK, SKIP = "error", "ok", "skip"
PREFIX = "napari-unet predict: error: "
WARNING = "napari-unet predict: warning: "


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], Path]
    cli: str = ERROR  # ERROR or OK
    napari: str = ERROR  # ERROR, OK, or SKIP (not a file the reader opens: model cases)
    match: str = ""  # regex the CLI error line (or warning, for OK) must match
    args: tuple[str, ...] = ()
    output: str = "labels.tif"
    config: Callable[[dict], object] | None = None  # rewrites the tiny model's config.json
    warns: bool = False  # OK cases that must say once what was replaced


CASES: dict[str, Case] = {}


def case(name: str, **kwargs):
    def register(build):
        assert name not in CASES
        CASES[name] = Case(build, **kwargs)
        return build

    return register


def _grey(shape=(24, 28), dtype=np.float32, seed=0):
    return (np.random.default_rng(seed).random(shape) * 200).astype(dtype)


# ------------------------------------------------------------------ writers
def _nifti(path: Path, data: np.ndarray, *, zooms=None, dim=None, qform_code=0, sform_code=0, srow=None,
           quatern=None, gz=None) -> Path:
    """A NIfTI-1 file written byte by byte, so the header says exactly what we ask
    (nibabel's own writer would repair pixdim from the affine)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    if zooms is not None:
        header["pixdim"][1 : 1 + len(zooms)] = zooms
    if dim is not None:
        header["dim"][: len(dim)] = dim
    header["qform_code"] = qform_code
    header["sform_code"] = sform_code
    if quatern is not None:
        header["quatern_b"], header["quatern_c"], header["quatern_d"] = quatern
    if srow is not None:
        header["srow_x"], header["srow_y"], header["srow_z"] = srow
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + np.asarray(data).tobytes(order="F")
    gz = str(path).endswith(".gz") if gz is None else gz
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(path: Path, width: int, height: int, idat: bytes | None = None) -> Path:
    """A PNG whose header declares ``width x height`` 8-bit grey pixels, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64) if idat is None else idat
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def _zarr_v2(folder: Path, shape, dtype: str, chunks=None, fill_value=0, attrs=None) -> Path:
    """A zarr v2 array described by hand (``.zarray``), with no chunk written."""
    folder.mkdir()
    meta = {
        "zarr_format": 2, "shape": list(shape), "chunks": list(chunks or shape), "dtype": dtype,
        "compressor": None, "fill_value": fill_value, "order": "C", "filters": None,
    }
    (folder / ".zarray").write_text(json.dumps(meta))
    if attrs:
        (folder / ".zattrs").write_text(json.dumps(attrs))
    return folder


def _ome_zarr(folder: Path, data: np.ndarray, scale) -> Path:
    import zarr

    group = zarr.open_group(str(folder), mode="w", zarr_format=2)
    group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=data.shape)[...] = data
    axes = [{"name": n, "type": "space"} for n in "zyx"[-data.ndim:]]
    group.attrs["multiscales"] = [{
        "version": "0.4", "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}],
    }]
    return folder


def _write(path: Path, blob: bytes | str) -> Path:
    if isinstance(blob, str):
        path.write_text(blob)
    else:
        path.write_bytes(blob)
    return path


def _npy(path: Path, data) -> Path:
    np.save(path, data, allow_pickle=data.dtype == object)
    return path


# ------------------------------------------------------------ unusual dtypes
case("npy-complex64", match="complex")(lambda d: _npy(d / "k.npy", (_grey() + 1j * _grey()).astype(np.complex64)))
case("npy-complex128-3d", match="complex")(lambda d: _npy(d / "k.npy", _grey((3, 20, 20)) * (1 + 2j)))
case("npy-structured-xy", match="structured")(
    lambda d: _npy(d / "xy.npy", np.zeros((20, 20), [("x", "f4"), ("y", "f4")])))
case("npy-datetime64", match="datetime64")(
    lambda d: _npy(d / "t.npy", np.arange(400).astype("datetime64[s]").reshape(20, 20)))
case("npy-timedelta64", match="timedelta64")(
    lambda d: _npy(d / "t.npy", np.arange(400).astype("timedelta64[ms]").reshape(20, 20)))
case("npy-object", match="object|pickle")(lambda d: _npy(d / "o.npy", np.array([[1, "a"], [None, 2.5]], object)))
case("npy-unicode", match="text")(lambda d: _npy(d / "s.npy", np.full((20, 20), "abc")))
case("npy-bytes", match="text")(lambda d: _npy(d / "s.npy", np.full((20, 20), b"abc")))
case("npy-void", match="raw bytes|void")(lambda d: _npy(d / "v.npy", np.zeros((20, 20), "V4")))
case("npy-bool", cli=OK, napari=OK)(lambda d: _npy(d / "b.npy", _grey() > 100))
case("npy-float16", cli=OK, napari=OK)(lambda d: _npy(d / "h.npy", _grey(dtype=np.float16)))
case("npy-rgb24-record", cli=OK, napari=OK)(
    lambda d: _npy(d / "rgb.npy", np.zeros((20, 22), [("R", "u1"), ("G", "u1"), ("B", "u1")])))
case("tiff-complex64", match="complex")(
    lambda d: (tifffile.imwrite(d / "k.tif", (_grey() * 1j).astype(np.complex64)), d / "k.tif")[1])
case("tiff-bool", cli=OK, napari=OK)(lambda d: (tifffile.imwrite(d / "b.tif", _grey() > 100), d / "b.tif")[1])
case("tiff-float16", cli=OK, napari=OK)(
    lambda d: (tifffile.imwrite(d / "h.tif", _grey(dtype=np.float16)), d / "h.tif")[1])
case("nifti-complex64", match="complex")(lambda d: _nifti(d / "k.nii.gz", (_grey((8, 9, 3)) * 1j).astype(np.complex64)))
case("nifti-complex128", match="complex")(lambda d: _nifti(d / "k.nii", (_grey((8, 9)) * 1j).astype(np.complex128)))


def _rgb24(shape):
    data = np.zeros(shape, [("R", "u1"), ("G", "u1"), ("B", "u1")])
    data["R"], data["G"] = 200, _grey(shape).astype(np.uint8)
    return data


case("nifti-rgb24-2d", cli=OK, napari=OK)(lambda d: _nifti(d / "rgb.nii.gz", _rgb24((20, 24))))
case("nifti-rgb24-3d", cli=OK, napari=OK)(lambda d: _nifti(d / "rgb.nii", _rgb24((20, 24, 3))))
case("nifti-rgba32", match="RGBA|alpha", napari=OK)(
    lambda d: _nifti(d / "rgba.nii.gz", np.zeros((20, 24), [("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")])))
case("zarr-complex", match="complex")(lambda d: _zarr_v2(d / "k.zarr", (20, 20), "<c8", fill_value=[0.0, 0.0]))
case("zarr-bool", cli=OK, napari=OK)(lambda d: _zarr_v2(d / "b.zarr", (20, 20), "|b1", fill_value=True))
case("zarr-unicode", match="text")(lambda d: _zarr_v2(d / "s.zarr", (20, 20), "<U4", fill_value=""))
case("zarr-datetime", match="datetime64")(lambda d: _zarr_v2(d / "t.zarr", (20, 20), "<M8[s]", fill_value=0))


# --------------------------------------------------------- corrupt files
def _empty(name):
    return lambda d: _write(d / name, b"")


for _name in ("empty.tif", "empty.nii", "empty.nii.gz", "empty.npy", "empty.png", "empty.dcm"):
    case(f"zero-bytes-{_name}")(_empty(_name))


@case("png-named-tif", match="PNG file despite its .tif name; rename it to .png")
def _png_named_tif(d):
    from skimage.io import imsave

    imsave(d / "photo.png", _grey().astype(np.uint8), check_contrast=False)
    return (d / "photo.png").rename(d / "photo.tif")


@case("tiff-named-png", match="TIFF file despite its .png name")
def _tiff_named_png(d):
    tifffile.imwrite(d / "scan.tif", _grey().astype(np.uint16))
    return (d / "scan.tif").rename(d / "scan.png")


@case("gzip-named-nii", match=r"gzip-compressed; name it \.nii\.gz")
def _gzip_named_nii(d):
    _nifti(d / "scan.nii.gz", _grey((10, 10, 3)))
    return (d / "scan.nii.gz").rename(d / "scan.nii")


@case("npy-named-nii-gz", match="NumPy .npy file despite")
def _npy_named_nii(d):
    _npy(d / "a.npy", _grey())
    return (d / "a.npy").rename(d / "a.nii.gz")


case("text-named-nii-gz", match="NIfTI")(lambda d: _write(d / "t.nii.gz", "hello\n"))
case("text-named-nii", match="NIfTI")(lambda d: _write(d / "t.nii", "hello world\n" * 40))
case("text-named-npy", match="npy")(lambda d: _write(d / "t.npy", "hello\n"))


@case("truncated-nii-gz", match="truncated|NIfTI")
def _truncated_gz(d):
    _nifti(d / "full.nii.gz", _grey((30, 30, 10)))
    blob = (d / "full.nii.gz").read_bytes()
    (d / "full.nii.gz").unlink()
    (d / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    return d / "cut.nii.gz"


@case("gzip-garbage-nii-gz", match="NIfTI")
def _garbage_gz(d):
    blob = bytearray(gzip.compress(b"\0" * 2000))
    blob[20:40] = b"\xff" * 20
    (d / "bad.nii.gz").write_bytes(bytes(blob))
    return d / "bad.nii.gz"


@case("nifti-header-only", match="NIfTI")
def _header_only(d):
    _nifti(d / "h.nii", _grey((30, 30, 10)))
    blob = (d / "h.nii").read_bytes()
    (d / "h.nii").write_bytes(blob[:352])
    return d / "h.nii"


@case("tiff-truncated-stack", match="TIFF")
def _tiff_truncated(d):
    tifffile.imwrite(d / "s.tif", _grey((5, 40, 40)).astype(np.uint16), photometric="minisblack")
    blob = (d / "s.tif").read_bytes()
    (d / "s.tif").write_bytes(blob[: len(blob) * 2 // 3])
    return d / "s.tif"


@case("tiff-truncated-page", match="TIFF")
def _tiff_truncated_page(d):
    tifffile.imwrite(d / "p.tif", _grey((60, 60)).astype(np.uint16))
    blob = (d / "p.tif").read_bytes()
    (d / "p.tif").write_bytes(blob[: len(blob) - 3000])
    return d / "p.tif"


@case("tiff-garbage-compressed-page", match="TIFF")
def _tiff_garbage(d):
    tifffile.imwrite(d / "g.tif", _grey((60, 60)).astype(np.uint16), compression="zlib")
    with tifffile.TiffFile(d / "g.tif") as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    blob = bytearray((d / "g.tif").read_bytes())
    blob[offset : offset + count] = b"\x13" * count
    (d / "g.tif").write_bytes(bytes(blob))
    return d / "g.tif"


@case("tiff-bad-ifd-offset", match="TIFF")
def _tiff_bad_ifd(d):
    (d / "i.tif").write_bytes(b"II*\0" + struct.pack("<I", 10_000_000) + b"\0" * 100)
    return d / "i.tif"


@case("tiff-header-only", match="TIFF")
def _tiff_header_only(d):
    (d / "h.tif").write_bytes(b"II*\0\x08\0\0\0")
    return d / "h.tif"


@case("npy-truncated", match="npy")
def _npy_truncated(d):
    _npy(d / "c.npy", _grey((50, 50)))
    blob = (d / "c.npy").read_bytes()
    (d / "c.npy").write_bytes(blob[: len(blob) // 2])
    return d / "c.npy"


case("npy-bad-header", match="npy")(
    lambda d: _write(d / "b.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}\n" + b"\0" * 64))


@case("jpeg-truncated", match="image")
def _jpeg_truncated(d):
    from skimage.io import imsave

    imsave(d / "p.jpg", (_grey((64, 64)) + 20).astype(np.uint8), check_contrast=False)
    blob = (d / "p.jpg").read_bytes()
    (d / "p.jpg").write_bytes(blob[:200])
    return d / "p.jpg"


case("png-garbage-after-signature", match="image")(
    lambda d: _write(d / "g.png", b"\x89PNG\r\n\x1a\n" + b"\x01" * 200))
case("png-bad-idat", match="image")(lambda d: _png(d / "b.png", 40, 40, idat=b"\x78\x9c" + b"\xff" * 30))
case("zarr-bad-json", match="zarr")(
    lambda d: (d / "j.zarr").mkdir() or _write(d / "j.zarr" / ".zarray", "{not json").parent)


@case("zarr-corrupt-chunk", match="zarr|read")
def _zarr_corrupt_chunk(d):
    import zarr

    array = zarr.open_array(str(d / "c.zarr"), mode="w", shape=(2, 30, 30), chunks=(1, 30, 30), dtype="u2",
                            zarr_format=2)
    array[...] = 7
    for chunk in (d / "c.zarr").glob("[0-9]*"):
        chunk.write_bytes(b"\x02\x01garbage-not-blosc" * 3)
    return d / "c.zarr"


case("dicom-garbage-file", match="DICOM")(lambda d: _write(d / "x.dcm", b"\x01\x02" * 300))


@case("dicom-folder-garbage", match="DICOM")
def _dicom_folder(d):
    (d / "series").mkdir()
    (d / "series" / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x07" * 100)
    return d / "series"


# ------------------------------------------------------ absurd declared sizes
case("png-bomb-100000", match="100000 x 100000")(lambda d: _png(d / "bomb.png", 100_000, 100_000))
case("png-bomb-12000", match="image")(lambda d: _png(d / "big.png", 12_000, 12_000))
case("zarr-terabyte", match=r"1\.0 TB|10000 x 10000 x 10000", napari=OK)(
    lambda d: _zarr_v2(d / "tb.zarr", (10_000, 10_000, 10_000), "|u1", chunks=(1, 2500, 2500)))
case("zarr-huge-plane", match="plane")(lambda d: _zarr_v2(d / "wide.zarr", (100_000, 100_000), "|u1",
                                                            chunks=(1000, 1000)))
case("zarr-in-memory-output", match=r"\.zarr or \.tif", napari=OK, output="labels.npy")(
    lambda d: _zarr_v2(d / "big.zarr", (40, 8192, 8192), "|u1", chunks=(1, 1024, 1024)))
case("nifti-gz-huge-dims", match="30000 x 30000 x 30000")(
    lambda d: _nifti(d / "huge.nii.gz", _grey((4, 4, 4)), dim=[3, 30_000, 30_000, 30_000]))
case("nifti-huge-dims", match="truncated")(
    lambda d: _nifti(d / "huge.nii", _grey((4, 4, 4)), dim=[3, 30_000, 30_000, 30_000]))
case("nifti-negative-dim", match="shape|dim")(lambda d: _nifti(d / "neg.nii", _grey((4, 4, 4)), dim=[3, 4, -4, 4]))


@case("tiff-huge-declared", match="TIFF|plane")
def _tiff_huge(d):
    tifffile.imwrite(d / "w.tif", np.zeros((4, 4), np.uint8))
    blob = bytearray((d / "w.tif").read_bytes())
    with tifffile.TiffFile(d / "w.tif") as tif:
        tags = tif.pages[0].tags
        for name in ("ImageWidth", "ImageLength"):
            tag = tags[name]
            struct.pack_into("<I" if tag.dtype == 4 else "<H", blob, tag.valueoffset, 60_000)
    (d / "w.tif").write_bytes(bytes(blob))
    return d / "w.tif"


@case("npy-huge-header", match="npy")
def _npy_huge(d):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 100), }"
    header += " " * (117 - len(header)) + "\n"
    (d / "h.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 400)
    return d / "h.npy"


# ------------------------------------------------------------ voxel spacing
case("nifti-pixdim-nan", cli=OK, napari=OK, warns=True, match="spacing", output="labels.nii.gz")(
    lambda d: _nifti(d / "nan.nii.gz", _grey((20, 22, 3)), zooms=(np.nan, 1.0, 2.0)))
case("nifti-pixdim-zero", cli=OK, napari=OK, warns=True, match="spacing")(
    lambda d: _nifti(d / "zero.nii.gz", _grey((20, 22, 3)), zooms=(0.0, 0.0, 0.0)))
case("nifti-pixdim-inf", cli=OK, napari=OK, warns=True, match="spacing")(
    lambda d: _nifti(d / "inf.nii", _grey((20, 22, 3)), zooms=(1.0, np.inf, 1.0)))
case("nifti-pixdim-negative", cli=OK, napari=OK)(
    lambda d: _nifti(d / "neg.nii.gz", _grey((20, 22, 3)), zooms=(-1.0, -2.0, 3.0), qform_code=1))
case("nifti-qform-nan-pixdim", cli=OK, napari=OK, warns=True, match="spacing")(
    lambda d: _nifti(d / "q.nii.gz", _grey((20, 22, 3)), zooms=(1.0, np.nan, 1.0), qform_code=1))
case("nifti-sform-nan", cli=OK, napari=OK, warns=True, match="spacing", output="labels.nii.gz")(
    lambda d: _nifti(d / "s.nii.gz", _grey((20, 22, 3)), sform_code=1,
                     srow=([np.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0])))
case("nifti-sform-zero-column", cli=OK, napari=OK, warns=True, match="spacing")(
    lambda d: _nifti(d / "s0.nii.gz", _grey((20, 22, 3)), sform_code=2,
                     srow=([1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, np.inf])))


@case("tiff-imagej-spacing-nan", cli=OK, napari=OK, warns=True, match="spacing")
def _tiff_spacing(d):
    tifffile.imwrite(d / "s.tif", _grey((3, 20, 22)).astype(np.uint16), imagej=True,
                     resolution=(1.0, 1.0), metadata={"spacing": float("nan"), "unit": "um", "axes": "ZYX"})
    return d / "s.tif"


case("zarr-ome-scale-zero", cli=OK, napari=OK, warns=True, match="spacing")(
    lambda d: _ome_zarr(d / "s.zarr", _grey((3, 20, 22)), scale=[0.0, 1.0, 1.0]))
case("zarr-ome-scale-nan", cli=OK, napari=OK, warns=True, match="spacing", output="labels.nii.gz")(
    lambda d: _ome_zarr(d / "n.zarr", _grey((3, 20, 22)), scale=[1.0, float("nan"), -2.0]))


# --------------------------------------------------------------- odd shapes
case("npy-empty-2d", match="empty")(lambda d: _npy(d / "e.npy", np.zeros((0, 10), np.float32)))
case("npy-empty-3d", match="empty")(lambda d: _npy(d / "e.npy", np.zeros((5, 0, 7), np.uint8)))
case("npy-1d", match="1D")(lambda d: _npy(d / "l.npy", np.arange(100, dtype=np.float32)))
case("npy-0d", match="0D|scalar")(lambda d: _npy(d / "s.npy", np.array(3.0)))
case("npy-5d", match="--index N", napari=OK)(lambda d: _npy(d / "v.npy", _grey((2, 2, 3, 16, 16))))
case("npy-6d", match="--index N", napari=OK)(lambda d: _npy(d / "v.npy", _grey((2, 2, 2, 3, 16, 16))))
case("npy-5d-with-index", cli=OK, napari=OK, args=("--index", "3"))(
    lambda d: _npy(d / "v.npy", _grey((2, 2, 3, 16, 16))))
case("npy-3d-index-out-of-range", match="out of range", napari=OK, args=("--index", "9"))(
    lambda d: _npy(d / "v.npy", _grey((2, 3, 16, 16))))
case("nifti-5d", match="--index N", napari=OK)(lambda d: _nifti(d / "v.nii.gz", _grey((16, 16, 3, 2, 2))))
case("nifti-6d", match="6D")(lambda d: _nifti(d / "v.nii.gz", _grey((8, 8, 2, 2, 2, 2))))
case("nifti-1d", match="1D|shape")(lambda d: _nifti(d / "l.nii", _grey((50,))))
case("zarr-empty", match="empty")(lambda d: _zarr_v2(d / "e.zarr", (0, 10, 10), "|u1", chunks=(1, 10, 10)))
case("zarr-1d", match="1D")(lambda d: _zarr_v2(d / "l.zarr", (100,), "<f4"))
case("npy-rgba", match="RGBA|alpha", napari=OK)(lambda d: _npy(d / "rgba.npy", _grey((20, 20, 4)).astype(np.uint8)))


# ------------------------------------------------------------ non-finite values
case("npy-all-nan", match="finite")(lambda d: _npy(d / "n.npy", np.full((20, 20), np.nan, np.float32)))
case("npy-all-inf", match="finite")(lambda d: _npy(d / "i.npy", np.full((3, 20, 20), np.inf)))
case("npy-nan-and-inf", match="finite")(
    lambda d: _npy(d / "m.npy", np.where(_grey() > 100, np.nan, -np.inf).astype(np.float32)))
case("npy-some-nan", cli=OK, napari=OK)(lambda d: _npy(d / "s.npy", np.where(_grey() > 150, np.nan, _grey())))
case("npy-some-inf", cli=OK, napari=OK)(lambda d: _npy(d / "s.npy", np.where(_grey() > 150, np.inf, _grey())))
case("nifti-all-nan", match="finite")(lambda d: _nifti(d / "n.nii.gz", np.full((10, 10, 4), np.nan, np.float32)))
case("tiff-all-nan", match="finite")(
    lambda d: (tifffile.imwrite(d / "n.tif", np.full((3, 10, 10), np.nan, np.float32), photometric="minisblack"), d / "n.tif")[1])


# ------------------------------------------------------------- model config.json
def _model_case(name: str, rewrite: Callable[[dict], object], match: str):
    case(f"config-{name}", napari=SKIP, match=match, config=rewrite)(lambda d: _npy(d / "img.npy", _grey()))


def _arch(**changes):
    def rewrite(config):
        config["architecture"].update(changes)
        return config

    return rewrite


def _set(key, value):
    def rewrite(config):
        config[key] = value
        return config

    return rewrite


def _classes_with_id(config):
    config["classes"][2]["id"] = 70000
    return config


def _many_classes(config):
    config["architecture"]["num_classes"] = 300
    config["classes"] = [{"id": i, "name": f"c{i}", "color": "#ffffff"} for i in range(300)]
    return config


_model_case("list", lambda config: [config], "config.json.*object")
_model_case("float-depth", _arch(depth=2.5), "depth")
_model_case("string-num-classes", _arch(num_classes="3"), "num_classes")
_model_case("negative-channels", _arch(base_channels=-4), "base_channels")
_model_case("million-channels", _arch(base_channels=1_000_000), "base_channels")
_model_case("depth-50", _arch(depth=50), "depth")
_model_case("in-channels-7", _arch(in_channels=7), "in_channels")
_model_case("bool-in-channels", _arch(in_channels=True), "in_channels")
_model_case("norm-list", _arch(norm=["batch"]), "norm")
_model_case("label-id-70000", _classes_with_id, "id")
_model_case("300-classes", _many_classes, "num_classes")
_model_case("classes-not-list", _set("classes", "tumor"), "classes")
_model_case("class-without-name", lambda c: c["classes"][1].pop("name") and c, "name")
_model_case("bad-color", lambda c: c["classes"][1].update(color="red") or c, "color")
_model_case("architecture-list", _set("architecture", [1, 2]), "architecture")
_model_case("format-version-text", _set("format_version", "one"), "format_version")
_model_case("input-not-object", _set("input", "ct"), "input")
_model_case("percentile-text", lambda c: c["input"].update(low_percentile="low") or c, "low_percentile")
_model_case("ct-window-number", lambda c: c["input"].update(ct_window=40) or c, "ct_window")
_model_case("weights-too-small", _arch(base_channels=2048, max_channels=4096), "does not match")


def _not_json(config):
    return "{ this is not json"


_model_case("not-json", _not_json, "config.json")


# ------------------------------------------------------------------ the tests
@pytest.fixture(autouse=True)
def _no_napari_settings(monkeypatch):
    """The reader's preference tweak imports napari; not needed to test reading."""
    monkeypatch.setattr(_napari_io, "use_plugin_reader_by_default", lambda: False)


def _input(name: str, tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    return CASES[name].build(src)


def _model(name: str, tiny_model_dir: Path, tmp_path: Path) -> Path:
    rewrite = CASES[name].config
    if rewrite is None:
        return tiny_model_dir
    folder = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, folder)
    config = rewrite(json.loads((folder / "config.json").read_text()))
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config.json").write_text(text)
    return folder


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_predict(name, tmp_path, tiny_model_dir, capfd, caplog):
    spec = CASES[name]
    path = _input(name, tmp_path)
    model = _model(name, tiny_model_dir, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / spec.output
    argv = ["predict", str(path), "-o", str(out), "--model", str(model), "--quiet", "--tile", "32", *spec.args]
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert not [w for w in caught if not issubclass(w.category, DeprecationWarning)], [str(w.message) for w in caught]
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
    if spec.cli == ERROR:
        assert code == 2, err
        assert len(lines) == 1, err
        assert lines[0].startswith(PREFIX), err
        assert not lines[0].rstrip().endswith("()"), err
        assert re.search(spec.match, lines[0]), err
        assert not list(out_dir.iterdir()), "an output was left behind"
    else:
        assert code == 0, err
        assert out.exists()
        assert all(line.startswith(WARNING) for line in lines), err
        if spec.warns:
            assert len(lines) == 1 and re.search(spec.match, lines[0]), err
        else:
            assert not lines, err
        leftovers = [p.name for p in out_dir.iterdir() if p.name != out.name]
        assert not leftovers
        if out.name.endswith(".nii.gz"):  # the writer got a usable geometry
            written = nib.load(str(out))
            assert np.all(np.isfinite(written.affine)) and all(z > 0 for z in written.header.get_zooms())


def _check_layer(layer) -> None:
    data, kwargs, kind = layer
    assert kind in ("image", "labels")
    levels = data if isinstance(data, list) else [data]
    for level in levels:
        dtype = np.dtype(level.dtype)
        assert dtype.kind in "biuf" and dtype.names is None, dtype
        assert len(level.shape) >= 2 and 0 not in tuple(level.shape)
    for key in ("scale", "translate"):
        values = np.asarray(kwargs.get(key, ()), float)
        assert np.all(np.isfinite(values)), (key, values)
    assert np.all(np.asarray(kwargs.get("scale", (1.0,)), float) != 0)


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.napari != SKIP))
def test_napari_reader(name, tmp_path, monkeypatch):
    spec = CASES[name]
    path = _input(name, tmp_path)
    notes: list[str] = []
    monkeypatch.setattr(_napari_io, "notify_error", notes.append)
    claimed = _napari_io.can_read(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if claimed:
            layers = _napari_io.read_layers_in_napari(str(path))
        else:  # napari's builtins open it; the shared io must still fail cleanly
            try:
                layers = _napari_io.read_layers(str(path))
            except IOErrorMessage as exc:
                notes.append(str(exc))
                layers = [(None,)]
    shown = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    if spec.napari == ERROR:
        assert len(layers) == 1 and len(layers[0]) == 1 and layers[0][0] is None
        assert len(notes) == 1 and "\n" not in notes[0] and str(path.name) in notes[0], notes
        assert not notes[0].rstrip().endswith("()")
        # the cause raises the io layer's one-line error, not some library's exception
        with pytest.raises(IOErrorMessage):
            _napari_io.read_layers(str(path))
        assert not shown, shown
    else:
        assert not notes, notes
        assert layers and all(len(layer) == 3 for layer in layers)
        for layer in layers:
            _check_layer(layer)
        if spec.warns:
            assert len(shown) == 1 and re.search(spec.match, shown[0]), shown
        else:
            assert not shown, shown


def test_corpus_is_large_enough():
    assert len(CASES) >= 60
    classes = {name.split("-")[0] for name in CASES}
    assert {"npy", "nifti", "tiff", "zarr", "png", "config"} <= classes


# ------------------------------------------------ advice names the command's options
def test_finetune_4d_image_does_not_advise_index(tmp_path, tiny_model_dir, capfd):
    image = _nifti(tmp_path / "bold.nii.gz", _grey((16, 16, 3, 2)))
    labels = _npy(tmp_path / "labels.npy", np.zeros((3, 16, 16), np.uint8))
    code = main(["finetune", str(image), str(labels), "-o", str(tmp_path / "m"), "--model", str(tiny_model_dir),
                 "--steps", "1", "--quiet"])
    lines = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("napari-unet finetune: error:")
    assert "--index" not in lines[0] and "index=" not in lines[0]
    assert not (tmp_path / "m").exists()


def test_finetune_unknown_class_advises_the_flag(tmp_path, tiny_model_dir, capfd):
    image = _npy(tmp_path / "img.npy", _grey((32, 32)))
    labels = np.zeros((32, 32), np.uint8)
    labels[4:12, 4:12] = 5
    labels_path = _npy(tmp_path / "labels.npy", labels)
    code = main(["finetune", str(image), str(labels_path), "-o", str(tmp_path / "m"), "--model", str(tiny_model_dir),
                 "--steps", "1", "--quiet", "--device", "cpu"])
    lines = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "--add-classes" in lines[0] and "add_classes=True" not in lines[0]
