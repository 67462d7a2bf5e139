import json
import os
import pickle
import shutil

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


# ------------------------------------------------- replacing a model never loses it
def _bias(model):
    return float(model.net.head.bias.detach()[0])


def _two_models(tiny_model):
    from napari_unet.core.train import copy_model

    old, new = copy_model(tiny_model), copy_model(tiny_model)
    with torch.no_grad():
        old.net.head.bias.fill_(1.0)
        new.net.head.bias.fill_(2.0)
    return old, new


def _hidden(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


class _Steps:
    """Wraps every file-system step ``save_model`` takes; ``at(i, action)`` runs
    ``action`` just before the i-th one (0-based)."""

    NAMES = ("replace", "link", "unlink", "rename")

    def __init__(self, monkeypatch):
        self.count = 0
        self.hook = None
        self.calls = []
        for name in self.NAMES:
            monkeypatch.setattr(weights.os, name, self._wrap(getattr(weights.os, name), name))
        monkeypatch.setattr(weights, "save_file", self._wrap(weights.save_file, "save_file"))
        monkeypatch.setattr(weights, "_fsync_file", self._wrap(weights._fsync_file, "fsync"))

    def _wrap(self, func, name):
        def step(*args, **kwargs):
            index = self.count
            self.count += 1
            self.calls.append(name)
            if self.hook is not None:
                self.hook(index)
            return func(*args, **kwargs)

        return step


def test_replacing_a_model_counts_its_steps(tiny_model, tmp_path, monkeypatch):
    old, new = _two_models(tiny_model)
    folder = save_model(old, tmp_path / "m")
    steps = _Steps(monkeypatch)
    save_model(new, folder, overwrite=True)
    # two writes, two hard links, two renames: the test below interrupts each of them
    assert steps.calls.count("replace") == 2 and steps.calls.count("link") == 2
    assert _bias(load_model(folder)) == 2.0
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_interrupted_replace_keeps_the_old_model(tiny_model, tmp_path, monkeypatch, interrupt):
    """Ctrl-C (or an error) at any step of save(overwrite=True): the old model is back at once."""
    old, new = _two_models(tiny_model)
    probe = _Steps(monkeypatch)
    save_model(old, tmp_path / "probe")
    probe.count = 0
    save_model(new, tmp_path / "probe", overwrite=True)
    n_steps = probe.count
    assert n_steps >= 8
    for i in range(n_steps):
        folder = tmp_path / f"m{i}"
        save_model(old, folder)

        def hook(index, i=i):
            if index == i:
                raise interrupt(f"step {i}")

        probe.count, probe.calls, probe.hook = 0, [], hook
        try:
            save_model(new, folder, overwrite=True)
            finished = True
        except interrupt:
            finished = False
        finally:
            probe.hook = None
        loaded = _bias(load_model(folder))
        # an interrupted save restores the old model; one interrupted after its last rename may keep the new
        assert loaded == (2.0 if finished else 1.0) or (loaded == 2.0 and probe.calls[i] == "unlink"), (i, probe.calls)
        assert _hidden(tmp_path) == [], (i, probe.calls[i])


def test_killed_replace_leaves_old_or_new_model(tiny_model, tmp_path, monkeypatch):
    """A kill at any instant of save(overwrite=True): what is on disk loads as the old or the new model.

    The folder is copied just before each step (what a kill at that instant
    leaves); each copy is then loaded, which repairs it."""
    old, new = _two_models(tiny_model)
    root = tmp_path / "models"
    folder = save_model(old, root / "m")
    snapshots = tmp_path / "snapshots"

    def snapshot(index):
        shutil.copytree(root, snapshots / str(index), symlinks=True)

    steps = _Steps(monkeypatch)
    steps.hook = snapshot
    save_model(new, folder, overwrite=True)
    steps.hook = None
    n_steps = steps.count
    snapshot(n_steps)
    seen = []
    for i in range(n_steps + 1):
        copy = snapshots / str(i) / "m"
        seen.append(_bias(load_model(copy)))
        assert _hidden(snapshots / str(i)) == [], (i, steps.calls[i : i + 1])  # leftovers cleaned by the load
        assert _bias(load_model(copy)) == seen[-1]
    assert set(seen) == {1.0, 2.0}
    assert seen == sorted(seen)  # old until one instant, new from then on


def test_real_kill_between_the_renames(tiny_model, tmp_path):
    """A process killed (os._exit) right after config.json was replaced but before the
    weights: the next load gives the old model and cleans up; the next save works."""
    import subprocess
    import sys

    old, new = _two_models(tiny_model)
    folder = save_model(old, tmp_path / "m")
    save_model(new, tmp_path / "new")
    code = (
        "import os, sys\n"
        "from napari_unet.core import weights\n"
        "real = os.replace\n"
        "def replace(src, dst):\n"
        "    real(src, dst)\n"
        "    if str(dst).endswith('config.json'):\n"
        "        os._exit(9)\n"
        "weights.os.replace = replace\n"
        "weights.save_model(weights.load_model(sys.argv[2]), sys.argv[1], overwrite=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "new")], timeout=120)
    assert proc.returncode == 9
    assert _hidden(folder)  # the kill left the kept pair and the new weights behind
    assert _bias(load_model(folder)) == 1.0
    assert _hidden(tmp_path) == []
    save_model(new, folder, overwrite=True)
    assert _bias(load_model(folder)) == 2.0


def test_stale_partial_folders_are_removed_by_the_next_save(tiny_model, tmp_path):
    stale = tmp_path / ".m.999999999.abcdefgh.partial"  # no such process
    stale.mkdir()
    (stale / "weights.safetensors").write_bytes(b"half")
    legacy = tmp_path / ".m.k2j4h5.partial"  # written before the pid was in the name
    legacy.mkdir()
    save_model(tiny_model, tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_overwrite_refuses_a_file_and_keeps_other_files(tiny_model, tmp_path):
    (tmp_path / "f").write_text("not a model")
    with pytest.raises(ModelError, match="is a file"):
        save_model(tiny_model, tmp_path / "f", overwrite=True)
    folder = save_model(tiny_model, tmp_path / "m")
    (folder / "README.md").write_text("notes")
    save_model(tiny_model, folder, overwrite=True)
    assert (folder / "README.md").read_text() == "notes"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg[weights.WEIGHTS_HASH_KEY] == sha256_of(folder / "weights.safetensors")


def test_listing_models_does_not_import_torch(tiny_model, tmp_path):
    """The widgets list models on the GUI thread (the model combobox): reading
    the registry and the saved versions' configs must never import torch,
    which takes seconds and would freeze the window."""
    import subprocess
    import sys

    from napari_unet.core.versions import ModelStore

    ModelStore(tmp_path / "models").add_version(tiny_model, name="mine")
    code = (
        "import sys\n"
        "from napari_unet.widgets._common import ModelSelection\n"
        "labels = [label for label, _ in ModelSelection().choices()]\n"
        "assert any('mine' in label or 'v0001' in label for label in labels), labels\n"
        "assert 'torch' not in sys.modules, 'listing models imported torch'\n"
    )
    env = {**os.environ, "NAPARI_UNET_MODELS_DIR": str(tmp_path / "models")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
