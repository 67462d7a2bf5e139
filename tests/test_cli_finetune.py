"""``napari-unet finetune``: the CLI contract end to end on small TIFF files."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.weights import load_model


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    labels = np.zeros((48, 48), np.uint8)
    labels[(yy - 20) ** 2 + (xx - 24) ** 2 < 64] = 1
    image = (1000 + 50 * rng.standard_normal((48, 48)) + 600 * (labels == 1)).astype(np.uint16)
    mask = np.zeros((48, 48), np.uint8)
    mask[8:40, 8:40] = 1
    paths = {name: tmp_path / f"{name}.tif" for name in ("image", "labels", "mask")}
    tifffile.imwrite(paths["image"], image)
    tifffile.imwrite(paths["labels"], labels)
    tifffile.imwrite(paths["mask"], mask)
    return paths


def test_finetune_writes_a_usable_model(files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "tuned"
    argv = [
        "finetune", str(files["image"]), str(files["labels"]), "-o", str(out),
        "--mask", str(files["mask"]), "--model", str(tiny_model_dir), "--steps", "3",
        "--device", "cpu", "--seed", "1",
    ]
    assert main(argv) == 0
    model = load_model(out)
    prov = model.config.provenance
    assert prov["trusted_pixels"] == 32 * 32 and prov["steps"] == 3 and prov["seed"] == 1
    assert "wrote" in capsys.readouterr().err
    # the result predicts through the predict sub-command
    assert main(["predict", str(files["image"]), "-o", str(tmp_path / "pred.tif"), "--model", str(out), "--device", "cpu", "--quiet"]) == 0
    assert tifffile.imread(tmp_path / "pred.tif").shape == (48, 48)

    # an existing MODEL_DIR is refused (exit 2, nothing changed) unless --overwrite
    before = (out / "weights.safetensors").read_bytes()
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "weights.safetensors").read_bytes() == before
    assert main([*argv, "--overwrite", "--seed", "2"]) == 0
    assert load_model(out).config.provenance["seed"] == 2
    # --width widens the tiny (4-channel) base; --width 0 keeps its width
    assert main([*argv, "--overwrite", "--width", "8"]) == 0
    assert load_model(out).config.architecture.base_channels == 8
    assert main([*argv, "--overwrite", "--width", "0"]) == 0
    assert load_model(out).config.architecture.base_channels == 4


@pytest.mark.parametrize(
    "change, message",
    [
        ("shape", "differ in shape"),
        ("class", "pass --add-classes"),
        ("empty-mask", "no pixel"),
        ("steps", "--steps"),
        ("missing", "no such file"),
        ("width", "--width"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(files, tiny_model_dir, tmp_path, capsys, change, message):
    out = tmp_path / "tuned"
    labels, mask, steps, image = files["labels"], files["mask"], "2", files["image"]
    if change == "shape":
        labels = tmp_path / "small.tif"
        tifffile.imwrite(labels, np.zeros((40, 48), np.uint8))
    elif change == "class":
        labels = tmp_path / "class7.tif"
        tifffile.imwrite(labels, np.full((48, 48), 7, np.uint8))
    elif change == "empty-mask":
        mask = tmp_path / "empty.tif"
        tifffile.imwrite(mask, np.zeros((48, 48), np.uint8))
    elif change == "steps":
        steps = "0"
    elif change == "missing":
        image = tmp_path / "nope.tif"
    argv = ["finetune", str(image), str(labels), "-o", str(out), "--mask", str(mask),
            "--model", str(tiny_model_dir), "--steps", steps, "--device", "cpu"]
    if change == "width":
        argv += ["--width", "-3"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_subprocess_entry_point(files, tiny_model_dir, tmp_path):
    out = tmp_path / "tuned-sub"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "napari_unet", "finetune", str(files["image"]), str(files["labels"]),
         "-o", str(out), "--model", str(tiny_model_dir), "--steps", "2", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "weights.safetensors").is_file() and (out / "config.json").is_file()
    assert "validation Dice" in proc.stderr
