"""``napari-unet train``: folders of pairs, the simulator, checkpoints, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.weights import load_model

TINY = ["--depth", "2", "--base-channels", "4", "--patch", "32", "--batch-size", "2",
        "--device", "cpu", "--threads", "1"]


def _dataset(root, count=3, shape=(40, 44)):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for i in range(count):
        labels = np.zeros(shape, np.uint8)
        labels[8 + i : 20 + i, 10:22] = 1
        labels[30, :] = 2
        image = (50 + 100 * (labels == 1) - 30 * (labels == 2) + rng.normal(0, 5, shape)).astype(np.float32)
        tifffile.imwrite(root / "images" / f"case{i}.tif", image)
        tifffile.imwrite(root / "labels" / f"case{i}.tif", labels)
    return root


def _step(folder) -> int:
    return json.loads((folder / "config.json").read_text())["provenance"]["training"]["step"]


def test_tiny_model_learns_on_the_simulator():
    import torch

    from napari_unet.core.config import ModelConfig, UNetConfig
    from napari_unet.core.datasets import SimulatedBatches
    from napari_unet.core.simulate import SimulatorConfig
    from napari_unet.core.train import TrainOptions, run_training
    from napari_unet.core.weights import new_model

    torch.set_num_threads(1)
    config = ModelConfig(name="tiny", architecture=UNetConfig(depth=2, base_channels=8))
    model = new_model(config, seed=0)
    sim = SimulatorConfig(tumor_probability=1.0, contrast=(0.8, 1.0), augment=False, real_backgrounds=False)
    sampler = SimulatedBatches(config, (48, 48), pool_size=16, fresh=4, modalities=["mri"], sim_config=sim)
    result = run_training(model, sampler, None, TrainOptions(max_steps=40, batch_size=4, lr=3e-3,
                                                              warmup_steps=0, device="cpu", seed=0))
    losses = [e.loss for e in result.history]
    assert np.mean(losses[-8:]) < 0.92 * np.mean(losses[:4])


def test_train_on_a_folder_writes_a_loadable_model(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    out = tmp_path / "model"
    code = main(["train", "--data", str(data), "--out", str(out), "--steps", "4", "--val-every", "2", *TINY])
    assert code == 0, capsys.readouterr().err
    model = load_model(out)
    assert model.config.architecture.base_channels == 4
    training = model.config.provenance["training"]
    assert training["step"] == 4 and "2 training + 1 validation pairs" in training["data"]
    assert "best validation Dice" in capsys.readouterr().err


def test_mixed_folder_and_simulator(tmp_path):
    data = _dataset(tmp_path / "data")
    out = tmp_path / "model"
    assert main(["train", "--data", str(data), "--simulate", "--out", str(out), "--steps", "2", *TINY]) == 0
    assert "simulated" in load_model(out).config.provenance["training"]["data"]


def test_mismatched_shapes_are_refused_with_the_file_name(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    tifffile.imwrite(data / "labels" / "case1.tif", np.zeros((10, 10), np.uint8))
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--steps", "1", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "case1.tif" in err and "does not match" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no training data"),
        (["--simulate", "--steps", "0"], "--steps"),
        (["--data", "/nonexistent-folder"], "no such folder"),
    ],
)
def test_bad_arguments(tmp_path, capsys, args, message):
    assert main(["train", "--out", str(tmp_path / "m"), *args, *TINY]) == 2
    assert message in capsys.readouterr().err


def test_existing_output_needs_resume_or_overwrite(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    assert main(["train", "--simulate", "--out", str(tmp_path / "m"), "--steps", "1", *TINY]) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_continues_the_step_count(tmp_path):
    data = _dataset(tmp_path / "data")
    out = tmp_path / "model"
    assert main(["train", "--data", str(data), "--out", str(out), "--steps", "3", *TINY]) == 0
    assert main(["train", "--data", str(data), "--out", str(out), "--steps", "2", "--resume", *TINY]) == 0
    assert _step(out) == 5


def test_interrupt_keeps_the_best_weights_so_far(tmp_path, monkeypatch, capsys):
    """Ctrl-C mid-run: the model folder holds a loadable checkpoint."""
    from napari_unet.core import datasets

    data = _dataset(tmp_path / "data")
    out = tmp_path / "model"
    calls = {"n": 0}
    original = datasets.FolderBatches.__call__

    def interrupt_later(self, rng, n):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, rng, n)

    monkeypatch.setattr(datasets.FolderBatches, "__call__", interrupt_later)
    code = main(["train", "--data", str(data), "--out", str(out), "--steps", "50",
                 "--checkpoint-every", "2", *TINY])
    assert code == 130 and "interrupted at step 3" in capsys.readouterr().err
    assert load_model(out).config.provenance["training"]["step"] == 3


def test_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """A run killed in the middle of writing a checkpoint never breaks the folder."""
    import napari_unet.core.weights as weights

    data = _dataset(tmp_path / "data")
    out = tmp_path / "model"
    assert main(["train", "--data", str(data), "--out", str(out), "--steps", "2", *TINY]) == 0
    before = (out / "weights.safetensors").read_bytes()

    def dies_half_way(state, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"\x00" * 100)  # a torn file
        raise SystemExit("killed")

    monkeypatch.setattr(weights, "save_file", dies_half_way)
    with pytest.raises(SystemExit):
        main(["train", "--data", str(data), "--out", str(out), "--steps", "4", "--resume",
              "--checkpoint-every", "1", *TINY])
    assert (out / "weights.safetensors").read_bytes() == before
    assert load_model(out).config.provenance["training"]["step"] == 2
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
