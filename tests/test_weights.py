import json
import pickle

import numpy as np
import pytest
import torch

from napari_unet.core import weights
from napari_unet.core.weights import (
    HashMismatchError,
    ModelError,
    NoBundledModelError,
    load_model,
    save_model,
    sha256_of,
)


def test_model_folder_round_trip(tiny_model, tmp_path):
    folder = save_model(tiny_model, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.safetensors"]
    loaded = load_model(folder)
    assert loaded.config == tiny_model.config
    for (k, a), (_, b) in zip(tiny_model.net.state_dict().items(), loaded.net.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), tiny_model.net(x))


def test_existing_folder_is_not_overwritten(tiny_model, tmp_path):
    folder = save_model(tiny_model, tmp_path / "m")
    before = sha256_of(folder / "weights.safetensors")
    with torch.no_grad():
        tiny_model.net.head.bias += 1
    with pytest.raises(ModelError, match="already exists"):
        save_model(tiny_model, folder)
    assert sha256_of(folder / "weights.safetensors") == before
    save_model(tiny_model, folder, overwrite=True)
    assert sha256_of(folder / "weights.safetensors") != before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary leftovers


def test_failed_save_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(weights, "save_file", boom)
    with pytest.raises(OSError):
        save_model(tiny_model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_pickled_checkpoints_are_refused(tiny_model, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    pt = tmp_path / "model.pt"
    pt.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelError, match="never unpickles"):
        load_model(pt)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_model.config.to_dict()))
    (folder / "model.pth").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelError, match="pickles are refused"):
        load_model(folder)


def test_bad_folders_get_clear_errors(tiny_model_dir, tmp_path, tiny_config):
    with pytest.raises(ModelError, match="not a model folder"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="neither a model folder"):
        load_model(tmp_path / "missing")
    (tiny_model_dir / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        load_model(tiny_model_dir)
    other = tmp_path / "other"
    save_model(weights.new_model(tiny_config, seed=0), other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["architecture"]["base_channels"] = 8
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="does not match the architecture"):
        load_model(other)


@pytest.fixture
def fake_registry(tmp_path, monkeypatch, tiny_model):
    root = tmp_path / "models"
    save_model(tiny_model, root / "tiny")
    registry = {
        "default": "tiny",
        "models": {
            "tiny": {
                "folder": "tiny",
                "sha256": {f: sha256_of(root / "tiny" / f) for f in ("weights.safetensors", "config.json")},
            }
        },
    }
    (root / "registry.json").write_text(json.dumps(registry))
    monkeypatch.setattr(weights, "_registry_root", lambda: root)
    return root


def test_bundled_model_loads_when_hash_matches(fake_registry):
    model = load_model(None)
    assert model.source == "tiny"
    assert load_model("tiny").config.name == "tiny-test"


def test_bundled_hash_mismatch_is_refused(fake_registry):
    path = fake_registry / "tiny" / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError, match="damaged"):
        load_model(None)


def test_bundled_models_are_never_overwritten(fake_registry, tiny_model):
    with pytest.raises(ModelError, match="never overwrites"):
        save_model(tiny_model, fake_registry / "tiny", overwrite=True)


def test_no_bundled_model_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_registry_root", lambda: tmp_path)
    with pytest.raises(NoBundledModelError, match="no bundled model is installed"):
        load_model(None)


def test_loading_runs_no_code(tiny_model_dir):
    """safetensors holds tensors only: the loaded state is plain arrays."""
    from safetensors.numpy import load_file

    state = load_file(str(tiny_model_dir / "weights.safetensors"))
    assert all(isinstance(v, np.ndarray) for v in state.values())
