"""NIfTI: axis order, geometry, labels, round trip, 4D, broken files, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from napari_unet.io import IOErrorMessage, labels_output, read_scan, write_labels  # noqa: E402

#: Non-isotropic, non-identity orientation: i -> -y (P), j -> +z (S), k -> -x (L).
AFFINE = np.array(
    [
        [0.0, 0.0, -2.5, 10.0],
        [-0.8, 0.0, 0.0, 20.0],
        [0.0, 0.9, 0.0, -30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


@pytest.fixture
def volume():
    """A (i, j, k) = (7, 6, 5) int16 image: odd sizes, many values (an MRI, not labels)."""
    return np.random.default_rng(0).integers(-500, 1500, size=(7, 6, 5)).astype(np.int16)


@pytest.fixture
def scan_path(tmp_path, volume):
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, AFFINE), path)
    return path


def test_axes_reversed_and_geometry(scan_path, volume):
    scan = read_scan(scan_path)
    assert scan.data.shape == (5, 6, 7)  # (k, j, i) = napari (Z, Y, X)
    np.testing.assert_array_equal(scan.data[4, 3, 2], volume[2, 3, 4])
    assert scan.meta.spacing == pytest.approx((2.5, 0.9, 0.8))
    assert scan.meta.origin == pytest.approx((-30.0, 20.0, 10.0))
    np.testing.assert_allclose(scan.meta.affine, AFFINE, atol=1e-6)
    assert scan.meta.extra["orientation"] == "PSL"
    assert scan.meta.units == "mm"
    assert not scan.is_labels
    assert scan.name == "scan"


def test_uncompressed_nifti_is_memory_mapped(tmp_path, volume):
    path = tmp_path / "scan.nii"
    nib.save(nib.Nifti1Image(volume, AFFINE), path)
    scan = read_scan(path)
    assert isinstance(scan.data, np.memmap)


def test_integer_label_map_opens_as_labels(tmp_path):
    labels = np.zeros((7, 6, 5), np.uint8)
    labels[2:4, 1:3, 1:4] = 2
    nib.save(nib.Nifti1Image(labels, AFFINE), tmp_path / "seg.nii.gz")
    assert read_scan(tmp_path / "seg.nii.gz").is_labels
    # a float image never is, even with few values
    nib.save(nib.Nifti1Image(labels.astype(np.float32), AFFINE), tmp_path / "prob.nii.gz")
    assert not read_scan(tmp_path / "prob.nii.gz").is_labels


def test_round_trip_keeps_shape_affine_voxels(tmp_path, scan_path):
    scan = read_scan(scan_path)
    labels = np.zeros(scan.data.shape, np.uint8)
    labels[1:4, 2:5, 3:6] = 1
    labels[0, 0, 0] = 2
    out = write_labels(tmp_path / "labels.nii.gz", labels, like=scan)
    back = read_scan(out)
    assert back.data.shape == labels.shape
    np.testing.assert_array_equal(back.data, labels)
    np.testing.assert_allclose(back.meta.affine, scan.meta.affine)
    assert back.is_labels
    source, written = nib.load(scan_path), nib.load(out)
    np.testing.assert_allclose(written.get_qform(), source.get_qform(), atol=1e-6)
    np.testing.assert_allclose(written.get_sform(), source.get_sform(), atol=1e-6)
    assert written.header.get_sform(coded=True)[1] == source.header.get_sform(coded=True)[1]
    assert written.get_data_dtype() == np.uint8
    # voxel by voxel in the file's own (i, j, k) order, as other tools see it
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), labels.transpose(2, 1, 0))


def test_streamed_output_writes_nifti_at_commit(tmp_path, scan_path):
    scan = read_scan(scan_path)
    sink = labels_output(tmp_path / "out.nii.gz", scan.data.shape, like=scan)
    for z in range(scan.data.shape[0]):
        sink.array[z] = np.full(scan.data.shape[1:], z % 3, np.uint8)
    assert not (tmp_path / "out.nii.gz").exists()
    sink.commit()
    back = read_scan(tmp_path / "out.nii.gz")
    assert back.data[4].max() == 1
    np.testing.assert_allclose(back.meta.affine, AFFINE, atol=1e-6)
    assert sink.label_counts() == {0: 2 * 42, 1: 2 * 42, 2: 42}


def test_4d_needs_an_index(tmp_path):
    data = np.random.default_rng(0).normal(size=(7, 6, 5, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "bold.nii.gz")
    with pytest.raises(IOErrorMessage, match=r"4D .*3 time points.*index=N"):
        read_scan(tmp_path / "bold.nii.gz")
    scan = read_scan(tmp_path / "bold.nii.gz", index=2)
    assert scan.data.shape == (5, 6, 7)
    np.testing.assert_allclose(scan.data, data[..., 2].transpose(2, 1, 0))
    assert scan.meta.spacing == pytest.approx((2.5, 0.9, 0.8))
    with pytest.raises(IOErrorMessage, match="out of range"):
        read_scan(tmp_path / "bold.nii.gz", index=3)


def test_index_on_3d_is_refused(scan_path):
    with pytest.raises(IOErrorMessage, match="index 1 given but the scan is 3D"):
        read_scan(scan_path, index=1)


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz"])
def test_truncated_file_is_a_clear_error(tmp_path, volume, name):
    whole = tmp_path / f"whole_{name}"
    nib.save(nib.Nifti1Image(volume, AFFINE), whole)
    payload = whole.read_bytes()
    (tmp_path / name).write_bytes(payload[: len(payload) * 2 // 3])
    with pytest.raises(IOErrorMessage, match=name) as info:
        read_scan(tmp_path / name)
    assert "\n" not in str(info.value)


def test_garbage_is_a_clear_error(tmp_path):
    (tmp_path / "junk.nii").write_bytes(b"hello" * 100)
    with pytest.raises(IOErrorMessage, match="not a readable NIfTI"):
        read_scan(tmp_path / "junk.nii")


def test_existing_output_is_refused(tmp_path, scan_path):
    scan = read_scan(scan_path)
    labels = np.zeros(scan.data.shape, np.uint8)
    target = tmp_path / "labels.nii.gz"
    target.write_bytes(b"precious")
    with pytest.raises(IOErrorMessage, match="already exists"):
        write_labels(target, labels, like=scan)
    with pytest.raises(IOErrorMessage, match="already exists"):
        labels_output(target, labels.shape, like=scan)
    assert target.read_bytes() == b"precious"
    write_labels(target, labels, like=scan, overwrite=True)
    assert read_scan(target).data.shape == labels.shape


def test_failed_write_leaves_nothing(tmp_path, scan_path, monkeypatch):
    scan = read_scan(scan_path)
    labels = np.ones(scan.data.shape, np.uint8)

    def half_write(image, filename):
        with open(filename, "wb") as fh:
            fh.write(b"half a header")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", half_write)
    with pytest.raises(IOErrorMessage, match="disk full"):
        write_labels(tmp_path / "labels.nii.gz", labels, like=scan)
    assert list(tmp_path.iterdir()) == [scan_path]


def test_shape_mismatch_with_the_scan_is_refused(tmp_path, scan_path):
    scan = read_scan(scan_path)
    with pytest.raises(IOErrorMessage, match="differs from the scan"):
        write_labels(tmp_path / "labels.nii.gz", np.zeros((2, 2, 2), np.uint8), like=scan)


def test_labels_without_a_source_get_spacing(tmp_path):
    from napari_unet.io import ScanMeta

    labels = np.zeros((3, 4, 5), np.uint8)
    write_labels(tmp_path / "l.nii.gz", labels, like=ScanMeta(spacing=(3.0, 2.0, 1.0), origin=(7.0, 8.0, 9.0)))
    image = nib.load(tmp_path / "l.nii.gz")
    np.testing.assert_allclose(image.affine, [[1, 0, 0, 9], [0, 2, 0, 8], [0, 0, 3, 7], [0, 0, 0, 1]])
