import subprocess
import sys

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from napari_unet.cli import main


@pytest.fixture
def stack_tif(tmp_path):
    path = tmp_path / "stack.tif"
    data = np.random.default_rng(0).integers(0, 3000, (3, 37, 45)).astype(np.uint16)
    tifffile.imwrite(path, data, photometric="minisblack")
    return path


def test_predict_tif_stack_end_to_end(stack_tif, tiny_model_dir, tmp_path):
    out = tmp_path / "labels.tif"
    code = main(["predict", str(stack_tif), "-o", str(out), "--model", str(tiny_model_dir), "--tile", "32", "--quiet"])
    assert code == 0
    labels = tifffile.imread(out)
    assert labels.shape == (3, 37, 45) and labels.dtype == np.uint8 and labels.max() < 3


@pytest.mark.parametrize("suffix", [".png", ".npy", ".jpg"])
def test_predict_2d_formats(tmp_path, tiny_model_dir, suffix):
    image = np.random.default_rng(1).integers(0, 255, (40, 50, 3)).astype(np.uint8)
    src = tmp_path / f"photo{suffix}"
    if suffix == ".npy":
        np.save(src, image)
    else:
        imsave(src, image, check_contrast=False)
    out = tmp_path / "out.npy"
    assert main(["predict", str(src), "-o", str(out), "--model", str(tiny_model_dir), "--quiet"]) == 0
    assert np.load(out).shape == (40, 50)


def test_subprocess_reports_and_exits_zero(stack_tif, tiny_model_dir, tmp_path):
    out = tmp_path / "labels.tif"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_unet", "predict", str(stack_tif), "-o", str(out), "--model", str(tiny_model_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr and out.exists()


def _error_of(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_missing_input(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "o.tif"
    code, err = _error_of(capsys, ["predict", str(tmp_path / "nope.tif"), "-o", str(out), "--model", str(tiny_model_dir)])
    assert code == 2 and len(err) == 1 and "no such file" in err[0]
    assert not out.exists()


def test_existing_output_is_kept(capsys, stack_tif, tiny_model_dir, tmp_path):
    out = tmp_path / "o.tif"
    out.write_bytes(b"precious")
    code, err = _error_of(capsys, ["predict", str(stack_tif), "-o", str(out), "--model", str(tiny_model_dir)])
    assert code == 2 and "already exists" in err[0]
    assert out.read_bytes() == b"precious"
    assert main(["predict", str(stack_tif), "-o", str(out), "--model", str(tiny_model_dir), "--overwrite", "--quiet"]) == 0
    assert tifffile.imread(out).shape == (3, 37, 45)


def test_wrong_dims(capsys, tmp_path, tiny_model_dir):
    src = tmp_path / "t.npy"
    np.save(src, np.zeros((2, 3, 20, 20), np.float32))
    out = tmp_path / "o.tif"
    code, err = _error_of(capsys, ["predict", str(src), "-o", str(out), "--model", str(tiny_model_dir)])
    assert code == 2 and len(err) == 1 and "4D" in err[0] and "--index" in err[0]
    assert not out.exists()
    # choosing one volume of the 4D file works
    assert main(["predict", str(src), "-o", str(out), "--model", str(tiny_model_dir), "--index", "1", "--quiet"]) == 0
    assert tifffile.imread(out).shape == (3, 20, 20)


def test_bad_model_folder(capsys, stack_tif, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    out = tmp_path / "o.tif"
    code, err = _error_of(capsys, ["predict", str(stack_tif), "-o", str(out), "--model", str(bad)])
    assert code == 2 and "not a model folder" in err[0]
    assert not out.exists()


def test_no_bundled_model(capsys, stack_tif, tmp_path, monkeypatch):
    from napari_unet.core import weights

    monkeypatch.setattr(weights, "_registry_root", lambda: tmp_path / "empty")
    out = tmp_path / "o.tif"
    code, err = _error_of(capsys, ["predict", str(stack_tif), "-o", str(out)])
    assert code == 2 and "no bundled model is installed" in err[0]
    assert not out.exists()


def test_unknown_output_extension(capsys, stack_tif, tiny_model_dir, tmp_path):
    code, err = _error_of(capsys, ["predict", str(stack_tif), "-o", str(tmp_path / "o.xyz"), "--model", str(tiny_model_dir)])
    assert code == 2 and "unknown file type" in err[0]


def test_failure_during_prediction_writes_nothing(stack_tif, tiny_model_dir, tmp_path, monkeypatch):
    from napari_unet.core import predict as predict_module

    def broken(self, chunk):
        raise ValueError("simulated failure")

    monkeypatch.setattr(predict_module._TileRunner, "_run", broken)
    out = tmp_path / "o.tif"
    assert main(["predict", str(stack_tif), "-o", str(out), "--model", str(tiny_model_dir)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.tif", "tiny-model"]


def test_corrections_leave_out_regions_not_connected_to_them(tiny_model_dir, tmp_path, capsys, threshold_network):
    scan = np.zeros((4, 30, 30), np.uint16)
    scan[0:3, 5:10, 5:10] = 1000  # the lesion the user corrected on slice 1
    scan[3, 20:25, 20:25] = 1000  # a look-alike on another slice
    scan[1, 20:23, 2:5] = 1000  # and one on the corrected slice's neighbourhood, elsewhere
    scan_path = tmp_path / "scan.tif"
    tifffile.imwrite(scan_path, scan, photometric="minisblack")
    corrected = np.zeros(scan.shape, np.uint8)
    corrected[1, 5:10, 5:10] = 1
    trusted = np.zeros(scan.shape, np.uint8)
    trusted[1, :15, :15] = 1  # the user checked the lesion's part of slice 1 only
    labels_path, mask_path = tmp_path / "corrected.tif", tmp_path / "trusted.tif"
    tifffile.imwrite(labels_path, corrected, photometric="minisblack")
    tifffile.imwrite(mask_path, trusted, photometric="minisblack")
    args = ["predict", str(scan_path), "--model", str(tiny_model_dir)]
    plain, out = tmp_path / "plain.tif", tmp_path / "labels.tif"
    assert main([*args, "-o", str(plain), "--quiet"]) == 0
    assert (tifffile.imread(plain) == 1).sum() == 75 + 25 + 9  # without corrections: every region
    capsys.readouterr()
    assert main([*args, "-o", str(out), "--corrections", str(labels_path), "--mask", str(mask_path)]) == 0
    after = tifffile.imread(out)
    np.testing.assert_array_equal(after == 1, _only_lesion(scan))  # followed through slices 0-2
    assert "left out 2 others (34 voxels)" in capsys.readouterr().err


def test_grow_widens_the_connected_lesion_with_less_certain_pixels(tiny_model_dir, tmp_path, capsys, ramp_network):
    scan = np.full((3, 30, 30), 100, np.uint16)
    scan[:, 4:11, 4:11] = 300  # a dim rim: tumour probability 0.2
    scan[:, 5:10, 5:10] = 1100  # the lesion
    scan[:, 25, 25] = 300  # an uncertain pixel far from it
    scan_path, labels_path = tmp_path / "scan.tif", tmp_path / "corrected.tif"
    tifffile.imwrite(scan_path, scan, photometric="minisblack")
    corrected = np.zeros(scan.shape, np.uint8)
    corrected[1, 5:10, 5:10] = 1
    tifffile.imwrite(labels_path, corrected, photometric="minisblack")
    args = ["predict", str(scan_path), "--model", str(tiny_model_dir), "--corrections", str(labels_path)]
    wide, plain = tmp_path / "wide.tif", tmp_path / "plain.tif"
    assert main([*args, "-o", str(wide), "--grow", "0.15"]) == 0
    assert "widened by 72 less certain voxels" in capsys.readouterr().err  # the rim, 24 voxels a slice
    assert main([*args, "-o", str(plain), "--grow", "0.5"]) == 0
    assert "widened" not in capsys.readouterr().err
    wide, plain = tifffile.imread(wide), tifffile.imread(plain)
    assert (plain == 1).sum() == 25 * 3 and (wide == 1).sum() == 49 * 3
    assert (wide[:, 25, 25] == 0).all()  # uncertain but not connected: not added
    code, err = _error_of(capsys, [*args[:4], "-o", str(tmp_path / "x.tif"), "--grow", "0.2"])
    assert code == 2 and len(err) == 1 and "--grow needs --corrections" in err[0]
    code, err = _error_of(capsys, [*args, "-o", str(tmp_path / "x.tif"), "--grow", "0"])
    assert code == 2 and len(err) == 1 and "--grow" in err[0] and not (tmp_path / "x.tif").exists()


def test_the_grow_help_states_the_default_threshold(capsys):
    from napari_unet.core.postprocess import GROW_PROBABILITY

    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert f"default: {GROW_PROBABILITY:g};" in " ".join(capsys.readouterr().out.split())


def _only_lesion(scan):
    lesion = np.zeros(scan.shape, bool)
    lesion[0:3, 5:10, 5:10] = True
    return lesion


def test_corrections_must_fit_the_scan(stack_tif, tiny_model_dir, tmp_path, capsys):
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, np.ones((2, 37, 45), np.uint8))
    out = tmp_path / "o.tif"
    code, err = _error_of(capsys, ["predict", str(stack_tif), "-o", str(out), "--model", str(tiny_model_dir),
                                   "--corrections", str(wrong)])
    assert code == 2 and len(err) == 1 and "expected the scan's (3, 37, 45)" in err[0] and not out.exists()
    code, err = _error_of(capsys, ["predict", str(stack_tif), "-o", str(out), "--model", str(tiny_model_dir),
                                   "--mask", str(wrong)])
    assert code == 2 and "--mask needs --corrections" in err[0]


def test_flips_flag_reaches_the_prediction(stack_tif, tiny_model_dir, tmp_path, monkeypatch):
    """--flips 4 segments each tile four times (the network sees 4x the batches)."""
    from napari_unet.core import predict as predict_module

    calls = []
    original = predict_module._TileRunner._run

    def counting(self, chunk):
        calls.append(self.flips)
        return original(self, chunk)

    monkeypatch.setattr(predict_module._TileRunner, "_run", counting)
    plain, mirrored = tmp_path / "plain.tif", tmp_path / "mirrored.tif"
    base = ["--model", str(tiny_model_dir), "--tile", "32", "--quiet"]
    assert main(["predict", str(stack_tif), "-o", str(plain), *base]) == 0
    first = list(calls)
    calls.clear()
    assert main(["predict", str(stack_tif), "-o", str(mirrored), *base, "--flips", "4"]) == 0
    assert set(first) == {1} and set(calls) == {4} and len(calls) == len(first)
    assert tifffile.imread(mirrored).shape == tifffile.imread(plain).shape == (3, 37, 45)


def test_bad_flips_value_is_one_line(stack_tif, tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(stack_tif), "-o", str(tmp_path / "o.tif"), "--model", str(tiny_model_dir), "--flips", "2"])
    assert exit_info.value.code == 2
    assert "--flips" in capsys.readouterr().err
