"""DICOM series: sorting, rescale, geometry, several series, broken folders."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from napari_unet.io import GeometryWarning, IOErrorMessage, read_scan, read_scans, write_labels  # noqa: E402

# An oblique orientation: rows run along -y (anterior), columns along +z...
# rotated so the slice normal is not an LPS axis.
_ROW = np.array([0.0, 1.0, 0.0])
_COL = np.array([0.0, 0.0, -1.0])
_NORMAL = np.cross(_ROW, _COL)  # (-1, 0, 0): slices step along -x (towards R)
_PIXEL_SPACING = (0.7, 0.5)  # row spacing (between rows), column spacing
_ORIGIN = np.array([12.0, -40.0, 80.0])


def _slice(
    pixels: np.ndarray,
    position: np.ndarray,
    number: int,
    series_uid: str,
    description: str = "CT head",
    slope: float = 1.0,
    intercept: float = -1024.0,
    signed: bool = False,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Anonymous^Test"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.SeriesNumber = 3
    ds.InstanceNumber = number
    ds.ImageOrientationPatient = [float(v) for v in (*_ROW, *_COL)]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = list(_PIXEL_SPACING)
    ds.SliceThickness = 2.0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    return ds


def make_series(
    folder: Path,
    stored: np.ndarray,
    step: float = 2.0,
    description: str = "CT head",
    skip: tuple[int, ...] = (),
    steps: list[float] | None = None,
    prefix: str = "im",
    **kwargs,
) -> str:
    """Write a series with shuffled file names; returns its SeriesInstanceUID."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    depth = np.cumsum([0.0, *(steps or [step] * (len(stored) - 1))])
    order = np.random.default_rng(1).permutation(len(stored))
    for n, z in enumerate(order):
        if z in skip:
            continue
        position = _ORIGIN + depth[z] * _NORMAL
        ds = _slice(stored[z], position, int(z) + 1, uid, description, **kwargs)
        ds.save_as(folder / f"{prefix}{n:03d}.dcm", enforce_file_format=True)
    return uid


@pytest.fixture
def stored():
    rng = np.random.default_rng(0)
    return rng.integers(0, 3000, size=(5, 6, 7)).astype(np.uint16)


def test_series_sorted_rescaled_with_geometry(tmp_path, stored):
    make_series(tmp_path / "ct", stored)
    scan = read_scan(tmp_path / "ct")
    assert scan.data.shape == (5, 6, 7)
    assert scan.name == "CT head"
    # sorted by position along the normal, whatever the file names
    np.testing.assert_array_equal(scan.data, stored.astype(np.int32) - 1024)
    assert scan.data.dtype == np.int16  # 0..2999 - 1024 fits int16
    assert scan.meta.spacing == pytest.approx((2.0, 0.7, 0.5))
    lps = np.eye(4)
    lps[:3, 0] = _ROW * 0.5
    lps[:3, 1] = _COL * 0.7
    lps[:3, 2] = _NORMAL * 2.0
    lps[:3, 3] = _ORIGIN
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    np.testing.assert_allclose(scan.meta.affine, expected)
    # voxel (z=4, y=2, x=3) lies at origin + 3*col_step*row + 2*row_step*col + 4*step*normal (LPS)
    world_lps = _ORIGIN + 3 * 0.5 * _ROW + 2 * 0.7 * _COL + 4 * 2.0 * _NORMAL
    ras = scan.meta.affine @ np.array([3, 2, 4, 1.0])
    np.testing.assert_allclose(ras[:3], world_lps * [-1, -1, 1])
    assert scan.meta.extra["dicom"]["window"] == (40.0, 400.0)
    assert "PatientName" not in str(scan.meta.extra)


def test_one_file_opens_its_series(tmp_path, stored):
    make_series(tmp_path / "ct", stored)
    scan = read_scan(sorted((tmp_path / "ct").iterdir())[2])
    assert scan.data.shape == (5, 6, 7)


def test_rescale_never_overflows(tmp_path):
    stored = np.full((3, 4, 4), 65000, np.uint16)
    stored[:, 0, 0] = 0
    make_series(tmp_path / "ct", stored, slope=2.0, intercept=-1024.0)
    scan = read_scan(tmp_path / "ct")
    assert scan.data.dtype == np.int32
    assert scan.data.max() == 65000 * 2 - 1024
    assert scan.data.min() == -1024


def test_fractional_slope_gives_float(tmp_path, stored):
    make_series(tmp_path / "pet", stored, slope=0.25, intercept=0.0)
    scan = read_scan(tmp_path / "pet")
    assert scan.data.dtype == np.float32
    np.testing.assert_allclose(scan.data, stored * 0.25)


def test_several_series_are_named(tmp_path, stored):
    make_series(tmp_path / "mixed", stored, description="CT head", prefix="a")
    make_series(tmp_path / "mixed", stored[:3], description="CT bone", prefix="b")
    scans = read_scans(tmp_path / "mixed")
    assert sorted(s.name for s in scans) == ["CT bone", "CT head"]
    assert sorted(s.data.shape[0] for s in scans) == [3, 5]
    with pytest.raises(IOErrorMessage, match="2 series.*CT bone.*CT head|2 series.*CT head.*CT bone"):
        read_scan(tmp_path / "mixed")


def test_missing_slice_warns_which(tmp_path, stored):
    make_series(tmp_path / "gap", stored, skip=(2,))
    with pytest.warns(GeometryWarning, match=r"missing slices after slice 1 \(.*\.dcm, ~1 missing\)"):
        scan = read_scan(tmp_path / "gap")
    assert scan.data.shape == (4, 6, 7)


def test_non_uniform_spacing_warns(tmp_path, stored):
    make_series(tmp_path / "uneven", stored, steps=[2.0, 2.0, 2.4, 2.0])
    with pytest.warns(GeometryWarning, match="non-uniform slice spacing.*2-3"):
        scan = read_scan(tmp_path / "uneven")
    assert scan.meta.spacing[0] == pytest.approx(2.0)


def test_uniform_series_does_not_warn(tmp_path, stored):
    make_series(tmp_path / "ct", stored)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_scan(tmp_path / "ct")


def test_corrupt_file_is_a_clear_error(tmp_path, stored):
    make_series(tmp_path / "ct", stored)
    (tmp_path / "ct" / "broken.dcm").write_bytes(b"\x00" * 10 + b"not dicom at all")
    with pytest.raises(IOErrorMessage, match="broken.dcm") as info:
        read_scan(tmp_path / "ct")
    assert "\n" not in str(info.value)


def test_truncated_pixel_data_is_a_clear_error(tmp_path, stored):
    make_series(tmp_path / "ct", stored)
    victim = sorted((tmp_path / "ct").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:-40])
    with pytest.raises(IOErrorMessage, match=victim.name):
        read_scan(tmp_path / "ct")


def test_stray_files_are_ignored(tmp_path, stored):
    make_series(tmp_path / "ct", stored)
    (tmp_path / "ct" / "README").write_text("scanned on Tuesday")
    assert read_scan(tmp_path / "ct").data.shape == (5, 6, 7)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IOErrorMessage, match="no DICOM images"):
        read_scan(tmp_path / "empty")


def test_duplicate_positions_fail(tmp_path, stored):
    make_series(tmp_path / "dup", stored, steps=[2.0, 0.0, 2.0, 2.0])
    with pytest.raises(IOErrorMessage, match="same position"):
        read_scan(tmp_path / "dup")


def test_labels_from_dicom_to_nifti_keep_the_affine(tmp_path, stored):
    nib = pytest.importorskip("nibabel")
    make_series(tmp_path / "ct", stored)
    scan = read_scan(tmp_path / "ct")
    labels = (np.asarray(scan.data) > 0).astype(np.uint8)
    write_labels(tmp_path / "mask.nii.gz", labels, like=scan)
    image = nib.load(tmp_path / "mask.nii.gz")
    np.testing.assert_allclose(image.affine, scan.meta.affine, atol=1e-5)
    assert image.header.get_sform(coded=True)[1] == 1  # scanner coordinates
    back = read_scan(tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(back.data, labels)
    assert back.is_labels


def test_napari_reader_opens_each_series(tmp_path, stored):
    from napari_unet._napari_io import get_reader

    make_series(tmp_path / "mixed", stored, description="CT head", prefix="a")
    make_series(tmp_path / "mixed", stored[:3], description="CT bone", prefix="b")
    reader = get_reader(str(tmp_path / "mixed"))
    assert reader is not None
    layers = reader(str(tmp_path / "mixed"))
    assert sorted(kwargs["name"] for _, kwargs, _ in layers) == ["CT bone", "CT head"]
    for data, kwargs, kind in layers:
        assert data.ndim == 3
        assert kind == "image"
        assert kwargs["scale"] == pytest.approx((2.0, 0.7, 0.5))
        assert kwargs["contrast_limits"] == (-160.0, 240.0)
        assert kwargs["metadata"]["affine"].shape == (4, 4)
    assert get_reader(str(tmp_path)) is not None  # sub-folders are searched
    files = [str(f) for f in sorted((tmp_path / "mixed").glob("*.dcm"))]
    layers = get_reader(files)(files)  # each series once, not once per file
    assert sorted(kwargs["name"] for _, kwargs, _ in layers) == ["CT bone", "CT head"]
    (tmp_path / "nothing").mkdir()
    assert get_reader(str(tmp_path / "nothing")) is None


def test_multiframe_file(tmp_path, stored):
    from pydicom.sequence import Sequence

    ds = _slice(stored[0], _ORIGIN, 1, generate_uid(), "enhanced")
    del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing
    ds.NumberOfFrames = len(stored)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    measures, plane = Dataset(), Dataset()
    measures.PixelSpacing = list(_PIXEL_SPACING)
    measures.SliceThickness = 2.0
    plane.ImageOrientationPatient = [float(v) for v in (*_ROW, *_COL)]
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([plane])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for z in (3, 1, 4, 0, 2):  # stored out of order
        position, group = Dataset(), Dataset()
        position.ImagePositionPatient = [float(v) for v in _ORIGIN + 2.0 * z * _NORMAL]
        group.PlanePositionSequence = Sequence([position])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = stored[[3, 1, 4, 0, 2]].astype(np.uint16).tobytes()
    ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    scan = read_scan(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(scan.data, stored.astype(np.int32) - 1024)
    assert scan.meta.spacing == pytest.approx((2.0, 0.7, 0.5))
