"""``napari-unet batch`` / ``napari_unet.predict_batch``: many scans on a Dask LocalCluster."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import tifffile

nib = pytest.importorskip("nibabel")
pytest.importorskip("distributed")

from napari_unet.batch import (  # noqa: E402
    BatchError,
    expand_inputs,
    output_names,
    plan_batch,
    scan_stem,
    start_local_cluster,
)
from napari_unet.cli import main  # noqa: E402
from test_io_dicom import make_series  # noqa: E402

AFFINE = np.array([[0.0, 0.0, -2.5, 10.0], [-0.8, 0.0, 0.0, 20.0], [0.0, 0.9, 0.0, -30.0], [0, 0, 0, 1.0]])


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes on the loopback, shared by the module's tests."""
    local, client = start_local_cluster(2)
    yield client
    client.close()
    local.close()


@pytest.fixture
def scans(tmp_path):
    """Two NIfTI volumes (4x32x32, oblique affine), a TIFF stack, a DICOM series and a broken file."""
    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("alpha", "beta"):
        nib.save(nib.Nifti1Image(rng.integers(0, 1000, (32, 32, 4)).astype(np.int16), AFFINE),
                 folder / f"{name}.nii.gz")
    tifffile.imwrite(folder / "gamma.tif", rng.integers(0, 3000, (4, 32, 32)).astype(np.uint16),
                     photometric="minisblack")
    make_series(folder / "delta", rng.integers(0, 3000, (4, 24, 20)).astype(np.uint16))
    (folder / "broken.nii.gz").write_bytes(b"this is not a NIfTI file" * 20)
    (folder / "notes.txt").write_text("not a scan")
    return folder


def _summary(out):
    with open(out / "batch_summary.csv", newline="") as fh:
        return {os.path.basename(r["input"]): r for r in csv.DictReader(fh)}


def test_batch_done_failed_skipped_overwrite(cluster, scans, tiny_model_dir, tmp_path, capsys):
    from napari_unet import predict_batch

    out = tmp_path / "out"
    rows = predict_batch([scans], out, model=str(tiny_model_dir), client=cluster)
    status = {os.path.basename(r["input"]): r["status"] for r in rows}
    assert status == {"alpha.nii.gz": "done", "beta.nii.gz": "done", "broken.nii.gz": "failed",
                      "delta": "done", "gamma.tif": "done"}
    assert sorted(p.name for p in out.iterdir()) == [
        "alpha_labels.nii.gz", "batch_summary.csv", "beta_labels.nii.gz", "delta_labels.nii.gz",
        "gamma_labels.nii.gz",
    ]
    # the same one-line reason as `napari-unet predict` gives, no traceback
    broken = next(r for r in rows if r["status"] == "failed")
    code = main(["predict", str(scans / "broken.nii.gz"), "-o", str(tmp_path / "x.nii.gz"),
                 "--model", str(tiny_model_dir)])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"napari-unet predict: error: {broken['error']}"
    assert broken["error"] and "\n" not in broken["error"] and "Traceback" not in broken["error"]
    # geometry: the labels overlay the scan
    labels = nib.load(out / "alpha_labels.nii.gz")
    np.testing.assert_allclose(labels.affine, AFFINE, atol=1e-5)
    assert labels.shape == (32, 32, 4) and labels.get_data_dtype() == np.uint8
    assert nib.load(out / "delta_labels.nii.gz").shape == (20, 24, 4)
    # counts per class name add up to the volume; the summary lists every input
    alpha = next(r for r in rows if r["input"].endswith("alpha.nii.gz"))
    assert sum(alpha["counts"].values()) == 4 * 32 * 32 and alpha["seconds"] > 0
    table = _summary(out)
    assert table["broken.nii.gz"]["status"] == "failed" and table["broken.nii.gz"]["error"] == broken["error"]
    assert int(table["alpha.nii.gz"]["background"]) == alpha["counts"]["background"]

    # again: the finished ones are skipped (untouched), the broken one fails again
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_labels.nii.gz")}
    rows = predict_batch([scans], out, model=str(tiny_model_dir), client=cluster)
    assert sorted(r["status"] for r in rows) == ["failed", "skipped", "skipped", "skipped", "skipped"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_labels.nii.gz")} == before
    table = _summary(out)
    assert table["alpha.nii.gz"]["status"] == "skipped"
    assert int(table["alpha.nii.gz"]["background"]) == alpha["counts"]["background"]  # kept from the first run

    # --overwrite redoes it
    rows = predict_batch([scans / "alpha.nii.gz"], out, model=str(tiny_model_dir), client=cluster, overwrite=True)
    assert [r["status"] for r in rows] == ["done"]
    assert (out / "alpha_labels.nii.gz").stat().st_mtime_ns != before["alpha_labels.nii.gz"]


def test_model_object_and_tif_format(cluster, scans, tiny_model, tmp_path):
    import torch

    from napari_unet import predict_batch

    assert set(cluster.run(torch.get_num_threads).values()) == {1}  # one torch thread per worker

    out = tmp_path / "out"
    rows = predict_batch([scans / "gamma.tif"], out, model=tiny_model, client=cluster, format="tif")
    assert [r["status"] for r in rows] == ["done"]
    assert tifffile.imread(out / "gamma_labels.tif").shape == (4, 32, 32)


def test_cli_reports_each_scan_and_exits_1_on_failure(cluster, scans, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    address = cluster.scheduler.address
    argv = ["batch", str(scans / "*.nii.gz"), "-o", str(out), "--model", str(tiny_model_dir),
            "--scheduler", address]
    assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    finished = [line for line in err if line.startswith("[")]
    assert len(finished) == 3 and all(line.startswith(("[1/3]", "[2/3]", "[3/3]")) for line in finished)
    assert any("alpha.nii.gz -> " in line and line.endswith(" s") for line in finished)
    assert any("broken.nii.gz failed: " in line for line in finished)
    assert "Traceback" not in "\n".join(err)
    assert "1 failed" in err[-1]
    # the good ones only: all done (or skipped), exit 0
    assert main([*argv[:1], str(scans / "alpha.nii.gz"), str(scans / "gamma.tif"), *argv[2:]]) == 0
    err = capsys.readouterr().err
    assert "skipping 1 of 2 scans" in err and "1 done, 1 skipped, 0 failed" in err


def test_cli_index_picks_the_volume_of_4d_scans_and_3d_ones_ignore_it(cluster, scans, tiny_model_dir, tmp_path, capsys):
    rng = np.random.default_rng(1)
    series = rng.integers(0, 1000, (32, 32, 4, 3)).astype(np.int16)  # x, y, z, t
    nib.save(nib.Nifti1Image(series, AFFINE), tmp_path / "series.nii.gz")
    inputs = [str(tmp_path / "series.nii.gz"), str(scans / "alpha.nii.gz")]
    common = ["--model", str(tiny_model_dir), "--scheduler", cluster.scheduler.address]

    # without --index the 4D scan fails with advice that names this command's real option
    assert main(["batch", *inputs, "-o", str(tmp_path / "none"), *common]) == 1
    err = capsys.readouterr().err
    assert "series.nii.gz failed: " in err and "--index N" in err and "0..2" in err
    assert (tmp_path / "none" / "alpha_labels.nii.gz").exists()

    out = tmp_path / "two"
    assert main(["batch", *inputs, "-o", str(out), "--index", "2", *common]) == 0
    capsys.readouterr()
    # the labels of time point 2 are those `predict --index 2` writes; the 3D scan ignores the index
    assert main(["predict", inputs[0], "-o", str(tmp_path / "p.nii.gz"), "--index", "2",
                 "--model", str(tiny_model_dir)]) == 0
    got = np.asarray(nib.load(out / "series_labels.nii.gz").dataobj)
    assert got.shape == (32, 32, 4)
    np.testing.assert_array_equal(got, np.asarray(nib.load(tmp_path / "p.nii.gz").dataobj))
    assert nib.load(out / "alpha_labels.nii.gz").shape == (32, 32, 4)
    with pytest.raises(BatchError, match="whole number"):
        plan_batch(inputs, out, index=-1)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["nothing-*.nii.gz"], "no file matches"),
        (["missing.nii.gz"], "no such file"),
        (["alpha.nii.gz", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "--workers"),
        (["alpha.nii.gz", "--tile", "3"], "tile must be at least 16"),
    ],
)
def test_cli_usage_errors_exit_2(scans, tiny_model_dir, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(scans)
    code = main(["batch", *extra, "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_local_cluster(scans, tiny_model_dir, tmp_path, capsys):
    """Without --scheduler the command starts (and stops) its own LocalCluster."""
    out = tmp_path / "out"
    code = main(["batch", str(scans / "gamma.tif"), "-o", str(out), "--model", str(tiny_model_dir),
                 "--workers", "1", "--format", "zarr"])
    assert code == 0, capsys.readouterr().err
    assert "local cluster of 1 worker" in capsys.readouterr().err
    assert (out / "gamma_labels.zarr").is_dir()


# ------------------------------------------------------------ planning (no cluster)
def test_stems_and_duplicate_names(tmp_path):
    assert scan_stem("a/brain.nii.gz") == "brain"
    assert scan_stem("x.OME.TIF") == "x"
    assert scan_stem("1.2.840.113619.2.55") == "1.2.840.113619.2.55"  # a DICOM series folder
    paths = [tmp_path / "a" / "scan.nii.gz", tmp_path / "b" / "scan.tif", tmp_path / "c.nii"]
    assert output_names(paths) == ["a_scan", "b_scan", "c"]
    assert output_names(paths[::-1]) == ["c", "b_scan", "a_scan"]  # independent of the order
    clash = [tmp_path / "x" / "a" / "scan.nii", tmp_path / "y" / "a" / "scan.nii"]
    names = output_names(clash)
    assert len(set(names)) == 2 and all(n.startswith("a_scan-") for n in names)
    assert output_names(clash) == names


def test_expand_folders_globs_and_skip(scans, tmp_path):
    found = [p.name for p in expand_inputs([scans, str(scans / "*.tif")])]
    assert found == ["alpha.nii.gz", "beta.nii.gz", "broken.nii.gz", "delta", "gamma.tif"]  # tif once
    with pytest.raises(BatchError, match="no such file"):
        expand_inputs([tmp_path / "nope.nii.gz"])
    jobs = plan_batch([scans / "alpha.nii.gz"], tmp_path / "o", format="tif")
    assert jobs[0].output == tmp_path / "o" / "alpha_labels.tif" and not jobs[0].skip
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "alpha_labels.tif").write_bytes(b"done before")
    assert plan_batch([scans / "alpha.nii.gz"], tmp_path / "o", format="tif")[0].skip
    # an output folder inside the input folder is not read as input
    assert "alpha_labels.tif" not in [p.name for p in expand_inputs([tmp_path], exclude=tmp_path / "o")]
