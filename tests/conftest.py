"""Shared fixtures: tiny models and small synthetic images keep tests fast."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

# Keep napari's settings and caches inside the repository's ignored area, and
# never touch the real user's model folder.
_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "test-home"
for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache"), ("XDG_DATA_HOME", "data")):
    os.environ.setdefault(var, str(_CACHE / sub))
os.environ.setdefault("NAPARI_UNET_MODELS_DIR", str(_CACHE / "models"))


@pytest.fixture
def tiny_config():
    from napari_unet.core.config import ModelConfig, UNetConfig

    return ModelConfig(
        name="tiny-test",
        architecture=UNetConfig(in_channels=1, num_classes=3, depth=2, base_channels=4, norm="batch"),
    )


@pytest.fixture
def tiny_model(tiny_config):
    """A two-level U-Net with 4 channels (randomly initialised, seeded)."""
    from napari_unet.core.weights import new_model

    model = new_model(tiny_config, seed=0)
    model.net.eval()
    return model


@pytest.fixture
def tiny_model_dir(tiny_model, tmp_path):
    from napari_unet.core.weights import save_model

    return save_model(tiny_model, tmp_path / "tiny-model")


@pytest.fixture
def blob_image():
    """A 2D grey image (61 x 75, odd sizes) with a bright disc and a dark line."""
    yy, xx = np.mgrid[:61, :75]
    image = 100 + 5 * np.random.default_rng(0).standard_normal((61, 75))
    image[(yy - 30) ** 2 + (xx - 25) ** 2 < 81] += 80
    image[:, 50:52] -= 60
    return image.astype(np.float32)


@pytest.fixture
def one_torch_thread():
    """The test machine's 2 cores are shared: one torch thread avoids OpenMP stalls."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    """Each test gets its own empty model store."""
    folder = tmp_path / "store"
    monkeypatch.setenv("NAPARI_UNET_MODELS_DIR", str(folder))
    return folder


@pytest.fixture
def threshold_network(monkeypatch):
    """The network replaced by a threshold: class 1 where the normalised plane is bright."""
    import napari_unet.core.predict as predict_module

    def planes_by_threshold(planes, num_planes, shape, runner, divisor, options):
        for index, plane in enumerate(planes):
            middle = (plane[0].min() + plane[0].max()) / 2  # whatever the normalisation
            bright = (plane[0] > middle).astype(np.float32)
            yield index, np.stack([1 - bright, bright, np.zeros_like(bright)])

    monkeypatch.setattr(predict_module, "predict_planes", planes_by_threshold)


@pytest.fixture
def ramp_network(monkeypatch):
    """The network replaced by a ramp: the tumour probability of a pixel is its
    place between the plane's darkest (0) and brightest (1) value."""
    import napari_unet.core.predict as predict_module

    def planes_by_ramp(planes, num_planes, shape, runner, divisor, options):
        for index, plane in enumerate(planes):
            low, high = plane[0].min(), plane[0].max()
            tumour = np.clip((plane[0] - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)
            yield index, np.stack([1 - tumour, tumour, np.zeros_like(tumour)])

    monkeypatch.setattr(predict_module, "predict_planes", planes_by_ramp)


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("bench_hitl_real")``: a script in ``benchmarks/`` as a module."""

    def load(name: str):
        path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
