"""Corrections survive saving: the trusted record travels with the labels file."""

import numpy as np
import pytest

from napari_unet._napari_io import get_reader, write_labels_nifti, write_labels_tiff
from napari_unet.io.trusted import (
    metadata_from_sidecar,
    read_trusted_file,
    sidecar_path,
    trusted_metadata,
    unpack_mask,
    write_trusted_file,
)


def _record():
    edited = np.zeros((3, 10, 12), bool)
    edited[1, 2:5, 3:7] = True
    return edited, [2]


def test_pack_round_trip():
    edited, reviewed = _record()
    meta = trusted_metadata(edited, reviewed)
    assert np.array_equal(unpack_mask(meta["edited"], meta["shape"]), edited)
    assert meta["reviewed"] == [2]


def test_sidecar_is_written_atomically(tmp_path):
    edited, reviewed = _record()
    path = write_trusted_file(tmp_path / "x.trusted.npz", edited, reviewed)
    back, rev = read_trusted_file(path)
    assert np.array_equal(back, edited) and rev == reviewed
    assert [p.name for p in tmp_path.iterdir()] == ["x.trusted.npz"]


@pytest.mark.parametrize("writer,name", [(write_labels_tiff, "labels.tif"), (write_labels_nifti, "labels.nii.gz")])
def test_napari_writer_saves_and_reader_restores_the_record(tmp_path, writer, name):
    edited, reviewed = _record()
    labels = np.zeros((3, 10, 12), np.uint8)
    labels[1, 2:5, 3:7] = 1
    meta = {"scale": (2.0, 1.0, 1.0), "translate": (0, 0, 0), "metadata": {"napari_unet": {"trusted": trusted_metadata(edited, reviewed)}}}
    written = writer(str(tmp_path / name), labels, meta)
    assert len(written) == 2 and written[1].endswith(".trusted.npz")
    assert metadata_from_sidecar(written[0]) is not None
    layers = get_reader(written[0])(written[0])
    data, kwargs, kind = layers[0]
    assert kind == "labels"
    record = kwargs["metadata"]["napari_unet"]["trusted"]
    assert np.array_equal(unpack_mask(record["edited"], record["shape"]), edited)
    assert record["reviewed"] == [2]


def test_no_record_no_sidecar(tmp_path):
    labels = np.zeros((10, 12), np.uint8)
    written = write_labels_tiff(str(tmp_path / "plain.tif"), labels, {"metadata": {}})
    assert written == [str(tmp_path / "plain.tif")]
    assert not sidecar_path(written[0]).exists()
